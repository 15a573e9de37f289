"""What every PostgreSQL cleanup operator shares: the connection, session settings, ``on_kill``.

* Cutoffs come from :mod:`data_lifecycle.cutoff` (``anchor - retention``, never the wall clock), so a
  cleared or backfilled run does the same work and a second run finds nothing left.
* Every schema, table and column is checked against the catalog and quoted with
  ``psycopg.sql.Identifier``; values are bound parameters. Bad names fail before any write.
* ``dry_run`` counts and logs what would change and changes nothing.
* ``execute`` returns a small JSON-serialisable summary (pushed to XCom).
* ``on_kill`` cancels the running statement from a second connection (``pg_cancel_backend``).
"""

from __future__ import annotations

import json
import math
from contextlib import closing
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

from airflow.sdk import BaseOperator

from data_lifecycle.archive import (
    json_default,
)
from data_lifecycle.exceptions import (
    LifecycleConfigError,
)

if TYPE_CHECKING:
    import psycopg
    from airflow.providers.postgres.hooks.postgres import PostgresHook

DEFAULT_POSTGRES_CONN_ID = "lifecycle_postgres"
DEFAULT_LOCK_TIMEOUT_SECONDS = 2.0
DEFAULT_STATEMENT_TIMEOUT_SECONDS = 60.0


def as_seconds(value: Any, *, field: str, allow_none: bool = False) -> float | None:
    """Seconds from a timedelta or a positive number."""
    if value is None and allow_none:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0 or math.isinf(value):
        raise LifecycleConfigError(
            f"{field} must be a positive number of seconds or a timedelta, got {value!r}"
        )
    return float(value)


def as_positive_int(value: Any, *, field: str, allow_none: bool = False, minimum: int = 1) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LifecycleConfigError(f"{field} must be a whole number >= {minimum}, got {value!r}")
    return value


def as_pg_ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=json_default))


def scalar(conn: Any, query: Any, params: Any = None) -> Any:
    """The first column of the first row of ``query``."""
    row = conn.execute(query, params).fetchone()
    assert row is not None, "an aggregate query returned no row"
    return row[0]


def set_config(conn: Any, name: str, value: str, *, local: bool = True) -> None:
    """``SET [LOCAL] name = value`` with the value bound (SET itself takes no parameters)."""
    conn.execute("SELECT set_config(%s, %s, %s)", (name, value, local))


class PostgresLifecycleBaseOperator(BaseOperator):
    """Connection handling shared by the operators below (not used directly)."""

    def __init__(self, *, postgres_conn_id: str = DEFAULT_POSTGRES_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.postgres_conn_id = postgres_conn_id
        self._backend_pid: int | None = None

    @cached_property
    def hook(self) -> PostgresHook:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        return PostgresHook(postgres_conn_id=self.postgres_conn_id)

    def on_kill(self) -> None:
        """Cancel the statement this task is running, from a second connection."""
        pid = self._backend_pid
        if pid is None:
            return
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        self.log.warning("Cancelling the running statement of backend %d", pid)
        raw = PostgresHook(postgres_conn_id=self.postgres_conn_id).get_conn()
        with closing(cast("psycopg.Connection[Any]", raw)) as conn:
            conn.autocommit = True
            conn.execute("SELECT pg_cancel_backend(%s)", (pid,))

    def _connect(self) -> psycopg.Connection[Any]:
        """An autocommit connection in UTC; explicit transactions use ``conn.transaction()``.

        A lock timeout is set for the whole session before the first statement (the operator's own
        ``lock_timeout``, else the default), so no statement of any operator (catalog reads, counts,
        statistics, guard checks) queues behind another session's table lock.
        """
        conn = cast("psycopg.Connection[Any]", self.hook.get_conn())
        conn.autocommit = True
        set_config(conn, "TimeZone", "UTC", local=False)
        set_config(conn, "application_name", f"data_lifecycle:{self.task_id}"[:63], local=False)
        session_lock_timeout = getattr(self, "lock_timeout", None) or DEFAULT_LOCK_TIMEOUT_SECONDS
        seconds = as_seconds(session_lock_timeout, field="lock_timeout") or DEFAULT_LOCK_TIMEOUT_SECONDS
        set_config(conn, "lock_timeout", as_pg_ms(seconds), local=False)
        self._backend_pid = conn.info.backend_pid
        return conn
