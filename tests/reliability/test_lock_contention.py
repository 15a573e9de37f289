"""Lock contention: another session holds locks on the target rows or table; the task must end within
its budget (never hang), and must never make that session, or a reader, wait longer than
lock_timeout.

The holder releases its lock after HOLD_SECONDS; an operator that ends only after that has waited
for the holder instead of timing out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg

from data_lifecycle.exceptions import LockTimeoutExhausted
from data_lifecycle.operators.postgres import (
    PostgresBatchedDeleteOperator,
    PostgresPartitionRetentionOperator,
)
from tests.reliability.data import ANCHOR, load_monthly_progress, load_sessions, month
from tests.reliability.harness import connect, run_context

HOLD_SECONDS = 3.0
LOCK_TIMEOUT = 0.3
MAX_LOCK_RETRIES = 3
# Scheduling noise on a busy machine, on top of lock_timeout, for one statement.
MARGIN = 0.7
SESSIONS_RETENTION = 30
CUTOFF = ANCHOR - timedelta(days=SESSIONS_RETENTION)
# The task's own budget; it may overrun by one lock wait and its back-off.
MAX_RUNTIME = 2.0
DELETE_BUDGET = MAX_RUNTIME + LOCK_TIMEOUT + 0.05 * MAX_LOCK_RETRIES + MARGIN
DDL_BUDGET = LOCK_TIMEOUT * 6 + 2.0


class Holder:
    """A session that takes locks, keeps them for ``hold`` seconds, and meanwhile runs ``probe`` (its
    own statements) in a loop, recording how long each took."""

    def __init__(self, dbname: str, lock_sql: str, params: Any = None, *, hold: float = HOLD_SECONDS) -> None:
        self.conn = connect(dbname, autocommit=False)
        self.conn.execute(lock_sql, params)
        self.hold = hold
        self.waits: list[float] = []
        self.errors: list[str] = []
        self.released = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, probe: Callable[[psycopg.Connection[Any]], Any] | None = None) -> None:
        def run() -> None:
            until = time.monotonic() + self.hold
            try:
                while time.monotonic() < until:
                    if probe is not None:
                        t0 = time.monotonic()
                        probe(self.conn)
                        self.waits.append(time.monotonic() - t0)
                    time.sleep(0.05)
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            finally:
                self.conn.rollback()
                self.conn.close()
                self.released.set()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def join(self) -> None:
        assert self._thread is not None
        self._thread.join(HOLD_SECONDS + 30)


class Reader:
    """Another session reading the table in a loop, recording how long each read took."""

    def __init__(self, dbname: str, query: str) -> None:
        self.dbname = dbname
        self.query = query
        self.waits: list[float] = []
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with connect(self.dbname) as conn:
            while not self.stop.is_set():
                t0 = time.monotonic()
                conn.execute(self.query).fetchall()
                self.waits.append(time.monotonic() - t0)
                time.sleep(0.05)

    def __enter__(self) -> Reader:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self._thread.join(HOLD_SECONDS + 30)


def _run(fn: Callable[[], Any]) -> tuple[float, Any, BaseException | None]:
    t0 = time.monotonic()
    try:
        result = fn()
    except Exception as exc:
        return time.monotonic() - t0, None, exc
    return time.monotonic() - t0, result, None


def _delete_op(**overrides: Any) -> PostgresBatchedDeleteOperator:
    kwargs: dict[str, Any] = {
        "task_id": "delete_sessions",
        "table": "app.sessions",
        "timestamp_column": "expires_at",
        "retention_days": SESSIONS_RETENTION,
        "batch_size": 100,
        "min_batch_size": 20,
        "lock_timeout": LOCK_TIMEOUT,
        "max_lock_retries": MAX_LOCK_RETRIES,
        "max_delete_fraction": 1.0,
        "max_runtime": MAX_RUNTIME,
    }
    return PostgresBatchedDeleteOperator(**{**kwargs, **overrides})


class TestRowLocks:
    def test_locked_rows_time_out_back_off_and_never_block_the_holder(
        self, pg: psycopg.Connection[Any], pg_database: str
    ) -> None:
        due = load_sessions(pg, cutoff=CUTOFF, due=600, kept=50)
        ordered = sorted(due)
        held, near = ordered[250:260], ordered[230:250]
        holder = Holder(pg_database, "SELECT id FROM app.sessions WHERE id = ANY(%s) FOR UPDATE", (held,))
        # The holder's own statements touch the rows the operator locks just before it reaches the
        # held ones: they may wait for the operator's batch, never longer than its lock_timeout.
        holder.start(
            lambda c: c.execute("SELECT id FROM app.sessions WHERE id = ANY(%s) FOR UPDATE", (near,))
        )

        seconds, summary, error = _run(lambda: _delete_op().execute(run_context(ANCHOR)))
        released_before = holder.released.is_set()
        holder.join()

        # Either the lock retries ran out, or the runtime budget stopped it cleanly between batches.
        if error is not None:
            assert isinstance(error, LockTimeoutExhausted), error
            assert "lock_timeout" in str(error)
        else:
            assert summary["stopped_by"] == "max_runtime" and summary["remaining"] > 0, summary
        assert not released_before, "the operator ended only after the holder released its locks"
        assert seconds < DELETE_BUDGET
        assert not holder.errors
        assert holder.waits and max(holder.waits) < LOCK_TIMEOUT + MARGIN, holder.waits
        left = {r[0] for r in pg.execute("SELECT id FROM app.sessions").fetchall()}
        assert set(held) <= left
        assert pg.execute(
            "SELECT count(*) FROM app.sessions WHERE expires_at >= %s", (CUTOFF,)
        ).fetchone() == (50,)

        summary = _delete_op().execute(run_context(ANCHOR))
        assert summary["remaining"] == 0
        assert pg.execute("SELECT count(*) FROM app.sessions").fetchone() == (50,)
        assert pg.execute("SELECT min(expires_at) FROM app.sessions").fetchone() == (CUTOFF,)

    def test_table_lock_on_the_target_ends_within_budget(
        self, pg: psycopg.Connection[Any], pg_database: str
    ) -> None:
        load_sessions(pg, cutoff=CUTOFF, due=200, kept=20)
        holder = Holder(pg_database, "LOCK TABLE app.sessions IN ACCESS EXCLUSIVE MODE")
        holder.start()

        seconds, summary, error = _run(lambda: _delete_op().execute(run_context(ANCHOR)))
        released_before = holder.released.is_set()
        holder.join()

        assert pg.execute("SELECT count(*) FROM app.sessions").fetchone() == (220,) or error is None
        assert not released_before, f"waited {seconds:.1f}s, until the holder released its lock"
        assert isinstance(error, LockTimeoutExhausted | psycopg.errors.LockNotAvailable) or (
            error is None and summary["stopped_by"] == "max_runtime"
        ), error
        assert seconds < DELETE_BUDGET


PARTITION_FIRST = 2026 * 12 + 6  # July 2026
PARTITION_MONTHS = 9
EXPIRED = [f"student_progress_{month(PARTITION_FIRST + i):%Y_%m}" for i in range(5)]


def _partitions(pg: psycopg.Connection[Any]) -> list[str]:
    rows = pg.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'app.student_progress'::regclass ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def _retention_op() -> PostgresPartitionRetentionOperator:
    return PostgresPartitionRetentionOperator(
        task_id="retention_progress",
        table="app.student_progress",
        retention_months=3,
        lock_timeout=LOCK_TIMEOUT,
    )


class TestPartitionParentLocks:
    def _load(self, pg: psycopg.Connection[Any], *, default: bool = False) -> list[str]:
        load_monthly_progress(
            pg, first=PARTITION_FIRST, months=PARTITION_MONTHS, per_month=10, default=default
        )
        return _partitions(pg)

    def test_detach_waits_at_most_lock_timeout_and_never_stalls_readers(
        self, pg: psycopg.Connection[Any], pg_database: str
    ) -> None:
        """With a DEFAULT partition the detach needs ACCESS EXCLUSIVE on the parent; a long report
        holds ACCESS SHARE. Readers queue behind the waiting detach only up to lock_timeout."""
        before = self._load(pg, default=True)
        rows = pg.execute("SELECT count(*) FROM app.student_progress").fetchone()
        holder = Holder(pg_database, "SELECT count(*) FROM app.student_progress")
        holder.start(lambda c: c.execute("SELECT count(*) FROM app.student_progress").fetchone())

        with Reader(pg_database, "SELECT count(*) FROM app.student_progress") as reader:
            seconds, _, error = _run(lambda: _retention_op().execute(run_context(ANCHOR)))
            released_before = holder.released.is_set()
            time.sleep(0.2)
        holder.join()

        assert isinstance(error, psycopg.errors.LockNotAvailable | LockTimeoutExhausted), error
        assert not released_before and seconds < DDL_BUDGET
        assert reader.waits and max(reader.waits) < LOCK_TIMEOUT + MARGIN, reader.waits
        assert holder.waits and max(holder.waits) < LOCK_TIMEOUT + MARGIN, holder.waits
        assert _partitions(pg) == before
        assert pg.execute("SELECT count(*) FROM app.student_progress").fetchone() == rows

        summary = _retention_op().execute(run_context(ANCHOR))
        assert summary["dropped"] == [f"app.{name}" for name in EXPIRED]
        assert _partitions(pg) == sorted(set(before) - set(EXPIRED))

    def test_access_exclusive_lock_on_the_parent_ends_within_budget(
        self, pg: psycopg.Connection[Any], pg_database: str
    ) -> None:
        before = self._load(pg)
        holder = Holder(pg_database, "LOCK TABLE app.student_progress IN ACCESS EXCLUSIVE MODE")
        holder.start(lambda c: c.execute("SELECT count(*) FROM app.student_progress").fetchone())

        seconds, _, error = _run(lambda: _retention_op().execute(run_context(ANCHOR)))
        released_before = holder.released.is_set()
        holder.join()

        assert _partitions(pg) == before or error is None
        assert holder.waits and max(holder.waits) < LOCK_TIMEOUT + MARGIN
        assert not released_before, f"waited {seconds:.1f}s, until the holder released its lock"
        assert isinstance(error, LockTimeoutExhausted | psycopg.errors.LockNotAvailable), error
        assert seconds < DDL_BUDGET

    def test_share_lock_on_the_parent_ends_within_budget(
        self, pg: psycopg.Connection[Any], pg_database: str
    ) -> None:
        before = self._load(pg)
        holder = Holder(pg_database, "LOCK TABLE app.student_progress IN SHARE MODE")
        holder.start(lambda c: c.execute("SELECT count(*) FROM app.student_progress").fetchone())

        seconds, _, error = _run(lambda: _retention_op().execute(run_context(ANCHOR)))
        released_before = holder.released.is_set()
        holder.join()

        assert _partitions(pg) == before or error is None
        assert holder.waits and max(holder.waits) < LOCK_TIMEOUT + MARGIN
        assert not released_before, f"waited {seconds:.1f}s, until the holder released its lock"
        assert isinstance(error, LockTimeoutExhausted | psycopg.errors.LockNotAvailable), error
        assert seconds < DDL_BUDGET

    def test_share_lock_on_a_later_partition_ends_within_budget(
        self, pg: psycopg.Connection[Any], pg_database: str
    ) -> None:
        before = self._load(pg)
        holder = Holder(pg_database, f"LOCK TABLE app.{EXPIRED[1]} IN SHARE MODE")
        holder.start(lambda c: c.execute(f"SELECT count(*) FROM app.{EXPIRED[1]}").fetchone())

        seconds, _, error = _run(lambda: _retention_op().execute(run_context(ANCHOR)))
        released_before = holder.released.is_set()
        holder.join()

        assert holder.waits and max(holder.waits) < LOCK_TIMEOUT + MARGIN
        assert not released_before, f"waited {seconds:.1f}s, until the holder released its lock"
        assert isinstance(error, LockTimeoutExhausted | psycopg.errors.LockNotAvailable), error
        assert seconds < DDL_BUDGET
        assert _partitions(pg) == [p for p in before if p != EXPIRED[0]], "only the first partition went"
