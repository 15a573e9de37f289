"""PostgreSQL goes away in the middle of a batched delete: the task fails with a connection error that
the retry policy retries, and the retry finishes the job. Batches are atomic: a user is deleted
together with the rows that reference it, or not at all.

The restart is real (``pg_ctl restart -m fast``), short, and happens once: the server is shared.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from data_lifecycle.alerts import NO_RETRY_POLICY
from data_lifecycle.exceptions import LifecycleConfigError
from data_lifecycle.operators.postgres import PostgresBatchedDeleteOperator
from tests.reliability.data import ANCHOR
from tests.reliability.harness import connect, restart_postgres, run_context

RETENTION_DAYS = 30
CUTOFF = ANCHOR - timedelta(days=RETENTION_DAYS)
DUE_USERS = 1_500
KEPT_USERS = 300
# The outage other sessions on the shared server may see.
MAX_OUTAGE_SECONDS = 10.0


def _load(pg: psycopg.Connection[Any]) -> tuple[set[int], set[int]]:
    """Users soft-deleted before the cutoff (due) and after it (kept), each with two sessions."""
    pg.execute(
        "INSERT INTO app.users (email, display_name, created_at, deleted_at)"
        " SELECT 'due' || g || '@example.com', 'Due ' || g, %s, %s - g * interval '1 minute'"
        " FROM generate_series(1, %s) g",
        (ANCHOR - timedelta(days=400), CUTOFF, DUE_USERS),
    )
    pg.execute(
        "INSERT INTO app.users (email, display_name, created_at, deleted_at)"
        " SELECT 'kept' || g || '@example.com', 'Kept ' || g, %s, %s + g * interval '1 minute'"
        " FROM generate_series(0, %s - 1) g",
        (ANCHOR - timedelta(days=400), CUTOFF, KEPT_USERS),
    )
    pg.execute(
        "INSERT INTO app.sessions (user_id, token, created_at, expires_at)"
        " SELECT u.id, md5(u.id::text || s), %s, %s FROM app.users u, generate_series(1, 2) s",
        (ANCHOR - timedelta(days=60), ANCHOR + timedelta(days=1)),
    )
    due = {r[0] for r in pg.execute("SELECT id FROM app.users WHERE deleted_at < %s", (CUTOFF,))}
    kept = {r[0] for r in pg.execute("SELECT id FROM app.users WHERE deleted_at >= %s", (CUTOFF,))}
    return due, kept


def _op() -> PostgresBatchedDeleteOperator:
    return PostgresBatchedDeleteOperator(
        task_id="purge_users",
        table="app.users",
        timestamp_column="deleted_at",
        retention_days=RETENTION_DAYS,
        children=[{"table": "app.sessions", "column": "user_id"}],
        batch_size=50,
        min_batch_size=50,
        max_batch_size=50,
        sleep_between_batches=0.05,
        max_delete_fraction=1.0,
    )


def _state(dbname: str) -> tuple[set[int], dict[int, int]]:
    with connect(dbname) as conn:
        users = {r[0] for r in conn.execute("SELECT id FROM app.users")}
        sessions = dict(
            conn.execute("SELECT user_id, count(*) FROM app.sessions GROUP BY user_id").fetchall()
        )
    return users, sessions


@pytest.mark.slow
def test_restart_mid_delete_fails_clearly_and_the_retry_finishes(
    pg: psycopg.Connection[Any], pg_database: str, local_stack: Any
) -> None:
    due, kept = _load(pg)
    pg.close()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["summary"] = _op().execute(run_context(ANCHOR))
        except Exception as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    with connect(pg_database) as watcher:
        deadline = time.monotonic() + 60
        while watcher.execute("SELECT count(*) FROM app.users").fetchone()[0] > len(due) + len(kept) - 150:
            assert worker.is_alive() and time.monotonic() < deadline, outcome
            time.sleep(0.01)
    outage = restart_postgres(local_stack)
    worker.join(60)

    assert outage < MAX_OUTAGE_SECONDS
    error = outcome.get("error")
    assert error is not None, f"the restart came too late: {outcome.get('summary')}"
    assert isinstance(error, psycopg.OperationalError), repr(error)
    assert not isinstance(error, LifecycleConfigError)
    assert NO_RETRY_POLICY.evaluate(error, 1, 4).action.value != "fail"

    users, sessions = _state(pg_database)
    assert kept <= users, "users inside retention were deleted"
    assert users - kept < due, "no batch was committed before the restart"
    assert all(sessions.get(u) == 2 for u in users), "a batch was half applied"
    assert not (set(sessions) - users)

    summary = _op().execute(run_context(ANCHOR))
    assert summary["remaining"] == 0
    users, sessions = _state(pg_database)
    assert users == kept
    assert set(sessions) == kept and set(sessions.values()) == {2}

    again = _op().execute(run_context(ANCHOR))
    assert (again["deleted"], again["batches"]) == (0, 0)
    assert _state(pg_database) == (users, sessions)


def test_connection_lost_while_planning_is_retried(pg: psycopg.Connection[Any], pg_database: str) -> None:
    _load(pg)
    holder = connect(pg_database, autocommit=False)
    holder.execute("LOCK TABLE app.users IN ACCESS EXCLUSIVE MODE")
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["summary"] = _op().execute(run_context(ANCHOR))
        except Exception as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while True:
            row = pg.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s"
                " AND wait_event_type = 'Lock'",
                (pg_database, "data_lifecycle:purge_users"),
            ).fetchone()
            if row:
                break
            assert time.monotonic() < deadline, "the task never waited on the lock"
            time.sleep(0.02)
        # The session is lost while the task plans its delete (a failover, an idle-session killer...).
        pg.execute("SELECT pg_terminate_backend(%s)", (row[0],))
        worker.join(20)
    finally:
        holder.rollback()
        holder.close()

    error = outcome.get("error")
    assert error is not None
    assert NO_RETRY_POLICY.evaluate(error, 1, 4).action.value != "fail", repr(error)
    assert not isinstance(error, LifecycleConfigError), repr(error)
