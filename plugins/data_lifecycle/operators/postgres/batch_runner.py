"""The batch loop of :class:`PostgresBatchedDeleteOperator`: adaptive size, lock retries, budgets."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from data_lifecycle import pg_catalog
from data_lifecycle.archive import (
    ArchiveConfig,
    RowTransform,
    S3ArchiveWriter,
)
from data_lifecycle.exceptions import (
    LockTimeoutExhausted,
    ResidueLeft,
    VerificationFailed,
)
from data_lifecycle.kill_switch import STOPPED_BY as KILL_SWITCH_STOP
from data_lifecycle.kill_switch import KillSwitch
from data_lifecycle.operators.postgres.archive_batch import archive_batch, next_limit
from data_lifecycle.operators.postgres.base import (
    DEFAULT_LOCK_TIMEOUT_SECONDS,
    as_pg_ms,
    as_seconds,
    set_config,
)
from data_lifecycle.pg_catalog import ChildRef, Column, TableRef

# One adjustment never more than doubles or halves the batch.
MAX_BATCH_GROWTH = 2.0
MIN_BATCH_SHRINK = 0.5
# Pause before retrying a batch that hit a lock timeout, times the attempt number.
LOCK_RETRY_BACKOFF_SECONDS = 0.05
# The summary lists at most this many archive keys (all are logged).
MAX_SUMMARY_FILES = 200
# The due rows left after a run are counted up to this many ("at least N" above it): an exact
# count of a large backlog on a big table could outlast the statement timeout.
REMAINING_COUNT_LIMIT = 10_000
# Passes over the key range: a row can become due behind the keyset cursor while a run is going
# (a session row extended, then expired again); a second pass from the start picks it up.
MAX_PASSES = 2


class BatchSettings(Protocol):
    """What the loop reads from its operator (PostgresBatchedDeleteOperator), named here so the
    runner does not import the operator module back."""

    @property
    def log(self) -> Any: ...

    batch_size: int
    min_batch_size: int
    max_batch_size: int
    target_batch_seconds: float
    sleep_between_batches: float
    lock_timeout: timedelta | float
    max_lock_retries: int
    max_runtime: timedelta | float | None
    max_rows: int | None
    archive_row_transform: RowTransform | None

    @property
    def statement_timeout_seconds(self) -> float: ...


@dataclass(frozen=True)
class DeletePlan:
    """Everything a batch needs, resolved against the catalog."""

    table: TableRef
    cutoff: datetime
    keys: list[Column]
    children: list[ChildRef]
    where: Any  # psycopg.sql.Composable
    params: dict[str, Any]
    archive: ArchiveConfig | None
    audit: TableRef | None


class BatchRunner:
    """The batch loop of PostgresBatchedDeleteOperator: adaptive size, lock retries, budgets."""

    def __init__(self, op: BatchSettings, conn: Any, plan: DeletePlan, due: int, *, started: float) -> None:
        self.op = op
        self.started = started
        self.log = op.log
        self.conn = conn
        self.plan = plan
        self.due = due
        self.lock_timeout = as_seconds(op.lock_timeout, field="lock_timeout") or DEFAULT_LOCK_TIMEOUT_SECONDS
        self.statement_timeout = op.statement_timeout_seconds
        self.max_runtime = as_seconds(op.max_runtime, field="max_runtime", allow_none=True)
        self.kill_switch = KillSwitch(plan.table.qualified)
        self.writer: S3ArchiveWriter | None = None
        self.columns: list[Column] = []
        if plan.archive is not None:
            self.columns = list(pg_catalog.columns(conn, plan.table).values())
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            client = S3Hook(aws_conn_id=plan.archive.aws_conn_id).get_conn()
            self.writer = S3ArchiveWriter(client, plan.archive.bucket, op.archive_row_transform)

    def run(self) -> dict[str, Any]:
        from psycopg.errors import DeadlockDetected, LockNotAvailable

        op, plan = self.op, self.plan
        started = self.started  # the runtime budget counts from the start of execute
        size = min(op.max_batch_size, max(op.min_batch_size, op.batch_size))
        last_key: tuple[Any, ...] | None = None
        deleted = batches = archived_rows = lock_failures = 0
        children = {c.table.qualified: 0 for c in plan.children}
        files: list[str] = []
        stopped_by: str | None = None
        passes = 1
        replaced = 0
        while True:
            elapsed = time.monotonic() - started
            if self.max_runtime is not None and elapsed >= self.max_runtime:
                stopped_by = "max_runtime"
                break
            if self.kill_switch.tripped():  # between batches: the last one is committed
                stopped_by = KILL_SWITCH_STOP
                break
            limit = size
            if op.max_rows is not None:
                if deleted >= op.max_rows:
                    stopped_by = "max_rows"
                    break
                limit = min(limit, op.max_rows - deleted)
            batch_started = time.monotonic()
            try:
                result = self._one_batch(limit, last_key)
            except (LockNotAvailable, DeadlockDetected) as exc:
                # A deadlock (another cleanup or an erasure touching the same rows) rolled this
                # batch back like a lock timeout does: retry it, smaller.
                reason = "Deadlock" if isinstance(exc, DeadlockDetected) else "Lock timeout"
                lock_failures += 1
                size = max(op.min_batch_size, int(size * MIN_BATCH_SHRINK))
                if lock_failures > op.max_lock_retries:
                    raise LockTimeoutExhausted(
                        f"{plan.table.qualified}: {lock_failures} batches in a row waited longer than"
                        f" lock_timeout={self.lock_timeout}s for rows or tables locked by other sessions"
                        " (or deadlocked with them);"
                        f" stopped after deleting {deleted} rows in {batches} batches (committed; the next"
                        " run resumes)."
                    ) from None
                self.log.warning(
                    "%s on %s (attempt %d of %d); retrying with batch size %d",
                    reason,
                    plan.table.qualified,
                    lock_failures,
                    op.max_lock_retries,
                    size,
                )
                time.sleep(LOCK_RETRY_BACKOFF_SECONDS * lock_failures)
                continue
            lock_failures = 0
            if result is None:
                if passes < MAX_PASSES and self._any_due():
                    passes += 1
                    last_key = None
                    self.log.info(
                        "%s: due rows appeared behind the cursor; one more pass", plan.table.qualified
                    )
                    continue
                break
            count, child_counts, key_range, archived = result
            batches += 1
            deleted += count
            last_key = key_range[1]
            for name, n in child_counts.items():
                children[name] += n
            if archived is not None:
                archived_rows += archived.archived.rows
                files.append(archived.archived.key)
                replaced += len(archived.replaced)
            took = time.monotonic() - batch_started
            if archived is not None:
                assert plan.archive is not None
                size = next_limit(
                    archived, plan.archive.min_object_bytes, low=op.min_batch_size, high=op.max_batch_size
                )
            else:
                factor = min(
                    MAX_BATCH_GROWTH, max(MIN_BATCH_SHRINK, op.target_batch_seconds / max(took, 1e-3))
                )
                size = min(op.max_batch_size, max(op.min_batch_size, int(size * factor)))
            self._log_progress(batches, count, deleted, started, took)
            if op.sleep_between_batches:
                time.sleep(op.sleep_between_batches)
        remaining, remaining_exact = self._remaining()
        if stopped_by is not None and remaining == 0:
            stopped_by = None
        if stopped_by is None and remaining:
            # A green run never leaves due rows behind without saying why.
            raise ResidueLeft(
                f"{plan.table.qualified}: {remaining}{'' if remaining_exact else '+'} due rows are still there"
                f" after deleting {deleted} rows in {batches} batches and {passes} passes (rows made due"
                " behind the cursor, or keys the batches cannot reach); the next run retries them."
            )
        if stopped_by:
            self.log.warning(
                "%s: stopped by %s after %d rows; %d due rows remain for the next run",
                plan.table.qualified,
                stopped_by,
                deleted,
                remaining,
            )
        self.log.info("%s: deleted %d rows in %d batches", plan.table.qualified, deleted, batches)
        return {
            "table": plan.table.qualified,
            "cutoff": plan.cutoff.isoformat(),
            "deleted": deleted,
            "batches": batches,
            "remaining": remaining,
            "remaining_exact": remaining_exact,
            "seconds": round(time.monotonic() - started, 3),
            "children": children,
            "archived_files": files[:MAX_SUMMARY_FILES],
            "archived_files_total": len(files),
            "archived_rows": archived_rows,
            "archive_objects_replaced": replaced,
            "dry_run": False,
            "stopped_by": stopped_by,
        }

    def _one_batch(
        self, limit: int, last_key: tuple[Any, ...] | None
    ) -> tuple[int, dict[str, int], tuple[tuple[Any, ...], tuple[Any, ...]], Any] | None:
        """Lock, (archive,) delete children, delete one batch; None when nothing is due past ``last_key``."""
        from psycopg import sql
        from psycopg.rows import dict_row

        plan = self.plan
        key_names = [k.name for k in plan.keys]
        key_list = sql.SQL(", ").join(k.ident for k in plan.keys)
        params = dict(plan.params)
        where = plan.where
        if last_key is not None:
            placeholders = []
            for i, (column, value) in enumerate(zip(plan.keys, last_key, strict=True)):
                params[f"lc_last_{i}"] = value
                placeholders.append(
                    sql.SQL("{}::{}").format(sql.Placeholder(f"lc_last_{i}"), sql.SQL(column.regtype))
                )
            where = sql.SQL("{} AND ({}) > ({})").format(where, key_list, sql.SQL(", ").join(placeholders))
        if self.writer is not None:
            with self.conn.transaction():
                set_config(self.conn, "lock_timeout", as_pg_ms(self.lock_timeout))
                set_config(self.conn, "statement_timeout", as_pg_ms(self.statement_timeout))
                batch = archive_batch(
                    self.conn, plan, self.writer, self.columns, limit=limit, last_key=last_key
                )
            if batch is None:
                return None
            self.log.info(
                "Archived %d rows to s3://%s/%s (%d bytes, verified)%s",
                batch.archived.rows,
                batch.archived.bucket,
                batch.archived.key,
                batch.archived.size,
                f"; replaced an earlier upload of this batch: {batch.replaced}" if batch.replaced else "",
            )
            return batch.count, {}, (batch.first, batch.last), batch
        if not plan.children:
            return self._range_batch(limit, where, params, key_list)
        wanted = list(dict.fromkeys(key_names + [c.parent_column for c in plan.children]))
        select_list = sql.SQL(", ").join(sql.Identifier(n) for n in wanted)
        select = sql.SQL("SELECT {cols} FROM {t} WHERE {w} ORDER BY {k} LIMIT {n} FOR UPDATE").format(
            cols=select_list, t=plan.table.ident, w=where, k=key_list, n=sql.Literal(limit)
        )
        with self.conn.transaction():
            set_config(self.conn, "lock_timeout", as_pg_ms(self.lock_timeout))
            set_config(self.conn, "statement_timeout", as_pg_ms(self.statement_timeout))
            with self.conn.cursor(row_factory=dict_row) as cur:
                rows = cur.execute(select, params).fetchall()
            if not rows:
                return None
            keys = [tuple(row[n] for n in key_names) for row in rows]
            child_counts: dict[str, int] = {}
            for child in plan.children:
                values = list(
                    dict.fromkeys(
                        row[child.parent_column] for row in rows if row[child.parent_column] is not None
                    )
                )
                cur = self.conn.execute(
                    sql.SQL("DELETE FROM {} WHERE {} = ANY({}::{}[])").format(
                        child.table.ident,
                        child.column.ident,
                        sql.Placeholder(),
                        sql.SQL(child.column.regtype),
                    ),
                    (values,),
                )
                child_counts[child.table.qualified] = (
                    child_counts.get(child.table.qualified, 0) + cur.rowcount
                )
            arrays = sql.SQL(", ").join(
                sql.SQL("{}::{}[]").format(sql.Placeholder(), sql.SQL(k.regtype)) for k in plan.keys
            )
            cur = self.conn.execute(
                sql.SQL("DELETE FROM {t} WHERE ({k}) IN (SELECT * FROM unnest({a}))").format(
                    t=plan.table.ident, k=key_list, a=arrays
                ),
                [list(col) for col in zip(*keys, strict=True)],
            )
            if cur.rowcount != len(keys):
                raise VerificationFailed(
                    f"{plan.table.qualified}: locked {len(keys)} rows but the delete matched {cur.rowcount};"
                    " the batch was rolled back"
                )
        return len(keys), child_counts, (keys[0], keys[-1]), None

    def _range_batch(
        self, limit: int, where: Any, params: dict[str, Any], key_list: Any
    ) -> tuple[int, dict[str, int], tuple[tuple[Any, ...], tuple[Any, ...]], None] | None:
        """One batch by key range: find the batch's upper key, then delete the due rows up to it.

        Used when no key has to leave the database first (no archive, no children): the keys never
        travel to Python and back, and rows are locked only by the DELETE itself, which re-checks
        the predicate, so a row changed since the upper key was read is kept if no longer due.
        """
        from psycopg import sql

        plan = self.plan
        descending = sql.SQL(", ").join(sql.SQL("{} DESC").format(k.ident) for k in plan.keys)
        upper_sql = sql.SQL(
            "SELECT {k} FROM (SELECT {k} FROM {t} WHERE {w} ORDER BY {k} LIMIT {n}) AS batch ORDER BY {d} LIMIT 1"
        ).format(k=key_list, t=plan.table.ident, w=where, n=sql.Literal(limit), d=descending)
        with self.conn.transaction():
            set_config(self.conn, "lock_timeout", as_pg_ms(self.lock_timeout))
            set_config(self.conn, "statement_timeout", as_pg_ms(self.statement_timeout))
            upper = self.conn.execute(upper_sql, params).fetchone()
            if upper is None:
                return None
            upper_key = tuple(upper)
            bounds = dict(params)
            placeholders = []
            for i, (column, value) in enumerate(zip(plan.keys, upper_key, strict=True)):
                bounds[f"lc_upper_{i}"] = value
                placeholders.append(
                    sql.SQL("{}::{}").format(sql.Placeholder(f"lc_upper_{i}"), sql.SQL(column.regtype))
                )
            cur = self.conn.execute(
                sql.SQL("DELETE FROM {t} WHERE {w} AND ({k}) <= ({u})").format(
                    t=plan.table.ident, w=where, k=key_list, u=sql.SQL(", ").join(placeholders)
                ),
                bounds,
            )
        return cur.rowcount, {}, (upper_key, upper_key), None

    def _remaining(self) -> tuple[int, bool]:
        """Due rows left, counted up to REMAINING_COUNT_LIMIT, and whether the figure is exact."""
        from psycopg import sql

        with self.conn.transaction():
            set_config(self.conn, "statement_timeout", as_pg_ms(self.statement_timeout))
            row = self.conn.execute(
                sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} WHERE {} LIMIT {}) AS due").format(
                    self.plan.table.ident, self.plan.where, sql.Literal(REMAINING_COUNT_LIMIT + 1)
                ),
                self.plan.params,
            ).fetchone()
        count = int(row[0])
        return min(count, REMAINING_COUNT_LIMIT), count <= REMAINING_COUNT_LIMIT

    def _any_due(self) -> bool:
        """Whether any due row is left (``LIMIT 1``: stops at the first one)."""
        from psycopg import sql

        with self.conn.transaction():
            set_config(self.conn, "statement_timeout", as_pg_ms(self.statement_timeout))
            row = self.conn.execute(
                sql.SQL("SELECT 1 FROM {} WHERE {} LIMIT 1").format(self.plan.table.ident, self.plan.where),
                self.plan.params,
            ).fetchone()
        return row is not None

    def _log_progress(self, batches: int, count: int, deleted: int, started: float, took: float) -> None:
        elapsed = max(time.monotonic() - started, 1e-6)
        rate = deleted / elapsed
        left = max(self.due - deleted, 0)
        eta = f"{left / rate:.0f}s" if rate > 0 else "unknown"
        self.log.info(
            "Batch %d: %d rows in %.2fs; %d deleted, %.0f rows/s, ~%d left, ETA %s",
            batches,
            count,
            took,
            deleted,
            rate,
            left,
            eta,
        )
