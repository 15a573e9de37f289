"""VACUUM ANALYZE of the tables whose dead tuples pass autovacuum's formula."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from data_lifecycle import pg_catalog
from data_lifecycle.exceptions import (
    LifecycleConfigError,
)
from data_lifecycle.operators.postgres.base import (
    DEFAULT_LOCK_TIMEOUT_SECONDS,
    DEFAULT_POSTGRES_CONN_ID,
    PostgresLifecycleBaseOperator,
    as_positive_int,
    as_seconds,
)
from data_lifecycle.pg_catalog import TableRef
from data_lifecycle.rendered import as_bool

if TYPE_CHECKING:
    from airflow.sdk import Context

# VACUUM selection: autovacuum's formula, with more eager defaults than PostgreSQL's (50, 0.2).
DEFAULT_VACUUM_THRESHOLD = 50
DEFAULT_VACUUM_SCALE_FACTOR = 0.05
DEFAULT_BUFFER_USAGE_LIMIT = "256MB"
# VACUUM (BUFFER_USAGE_LIMIT) exists from PostgreSQL 16.
BUFFER_USAGE_LIMIT_MIN_VERSION = 160_000
# pg_stat_force_next_flush() exists from PostgreSQL 15.
FORCE_FLUSH_MIN_VERSION = 150_000
_BUFFER_LIMIT_RE = re.compile(r"\d+\s*(kB|MB|GB)?")
# Why VACUUM skipped a table, from its WARNING: a lock it could not take at once (SKIP_LOCKED), or
# a privilege the login lacks ("only table or database owner can vacuum it" up to PostgreSQL 15,
# "permission denied to vacuum ..." from 16).
SKIP_LOCKED_NOTICE = "lock not available"
SKIP_PERMISSION_NOTICES = ("only superuser", "only table or database owner", "permission denied")


class PostgresVacuumAnalyzeOperator(PostgresLifecycleBaseOperator):
    """``VACUUM (ANALYZE, SKIP_LOCKED)`` the tables whose dead tuples pass autovacuum's formula.

    Candidates are the tables of ``schemas`` with ``n_dead_tup > threshold + scale_factor *
    reltuples`` (``pg_stat_user_tables``), or every table in ``tables``. Tables an autovacuum worker is
    processing right now are skipped. Runs on an autocommit connection; adds ``BUFFER_USAGE_LIMIT`` on
    PostgreSQL 16+. ``VACUUM FULL`` (an exclusive lock for the whole rewrite) only with ``full=True``
    and ``allow_full=True``. Reports dead tuples and size before and after each table, and tables
    whose ``autovacuum_enabled`` is off.

    Every statement runs under ``lock_timeout``: a table another session holds locked (even the
    statistics read before the VACUUM) is reported as ``skipped: "locked"`` instead of waiting;
    one the login may not vacuum is reported as ``skipped: "permission_denied"``. Neither counts
    as vacuumed.

    :param postgres_conn_id: the Airflow connection to PostgreSQL.
    :param tables: ``"schema.table"`` names vacuumed whatever their dead tuples. (templated)
    :param schemas: schemas whose tables are picked by the dead-tuple formula (default ``["public"]``
        when ``tables`` is not given). (templated)
    :param threshold: the formula's fixed part (autovacuum_vacuum_threshold).
    :param scale_factor: the formula's share of reltuples (autovacuum_vacuum_scale_factor).
    :param buffer_usage_limit: ring buffer size on PostgreSQL 16+, e.g. ``"256MB"``; None for the default.
    :param full: run VACUUM FULL (needs ``allow_full``).
    :param allow_full: the explicit permission for ``full``.
    :param lock_timeout: how long any statement may wait for a lock (seconds or timedelta).
    :param dry_run: list the candidates, vacuum nothing. (templated)
    """

    template_fields: Sequence[str] = ("tables", "schemas", "dry_run")
    ui_color = "#b0c4de"

    def __init__(
        self,
        *,
        postgres_conn_id: str = DEFAULT_POSTGRES_CONN_ID,
        tables: list[str] | None = None,
        schemas: list[str] | None = None,
        threshold: int = DEFAULT_VACUUM_THRESHOLD,
        scale_factor: float = DEFAULT_VACUUM_SCALE_FACTOR,
        buffer_usage_limit: str | None = DEFAULT_BUFFER_USAGE_LIMIT,
        full: bool = False,
        allow_full: bool = False,
        lock_timeout: timedelta | float = DEFAULT_LOCK_TIMEOUT_SECONDS,
        dry_run: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(postgres_conn_id=postgres_conn_id, **kwargs)
        self.tables = tables
        self.schemas = schemas
        self.threshold = threshold
        self.scale_factor = scale_factor
        self.buffer_usage_limit = buffer_usage_limit
        self.full = full
        self.allow_full = allow_full
        self.lock_timeout = lock_timeout
        as_seconds(lock_timeout, field="lock_timeout")
        # Shadows BaseOperator.dry_run(), a render-only helper Airflow 3 never calls: the flag is templated.
        self.dry_run = dry_run  # type: ignore[method-assign,assignment]
        if full and not allow_full:
            raise LifecycleConfigError(
                "full=True rewrites tables under an exclusive lock; also pass allow_full=True"
            )
        as_positive_int(threshold, field="threshold", minimum=0)
        if isinstance(scale_factor, bool) or not isinstance(scale_factor, int | float) or scale_factor < 0:
            raise LifecycleConfigError(f"scale_factor must be >= 0, got {scale_factor!r}")
        if buffer_usage_limit is not None and not _BUFFER_LIMIT_RE.fullmatch(buffer_usage_limit):
            raise LifecycleConfigError(f"buffer_usage_limit={buffer_usage_limit!r} is not like '256MB'")

    def execute(self, context: Context) -> dict[str, Any]:
        from psycopg import sql

        started = time.monotonic()
        dry_run = as_bool(self.dry_run, field="dry_run")
        conn = self._connect()
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(str(d.message_primary)))
        try:
            version = int(conn.info.server_version)
            candidates, scope = self._candidates(conn)
            busy = {
                int(r[0])
                for r in conn.execute(
                    "SELECT p.relid FROM pg_stat_progress_vacuum p JOIN pg_stat_activity a ON a.pid = p.pid"
                    " WHERE a.backend_type = 'autovacuum worker'"
                ).fetchall()
            }
            disabled = [
                f"{r[0]}.{r[1]}"
                for r in conn.execute(
                    """
                    SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.relkind IN ('r', 'p', 'm') AND (c.oid = ANY(%s) OR n.nspname = ANY(%s))
                      AND EXISTS (SELECT 1 FROM unnest(c.reloptions) o
                                  WHERE lower(o) IN ('autovacuum_enabled=false', 'autovacuum_enabled=off',
                                                     'autovacuum_enabled=no', 'autovacuum_enabled=0'))
                    ORDER BY 1, 2
                    """,
                    ([t.oid for t in candidates], scope),
                ).fetchall()
            ]
            if disabled:
                self.log.warning("Autovacuum is disabled on %s", ", ".join(disabled))
            options: list[sql.Composable] = [sql.SQL("ANALYZE"), sql.SQL("SKIP_LOCKED")]
            full = bool(self.full and self.allow_full)
            if full:
                options.append(sql.SQL("FULL"))
            elif self.buffer_usage_limit and version >= BUFFER_USAGE_LIMIT_MIN_VERSION:
                options.append(sql.SQL("BUFFER_USAGE_LIMIT {}").format(sql.Literal(self.buffer_usage_limit)))
            reports: list[dict[str, Any]] = []
            skipped_autovacuum: list[str] = []
            for table in candidates:
                if table.oid in busy:
                    self.log.info("Skipping %s: an autovacuum worker is on it", table.qualified)
                    skipped_autovacuum.append(table.qualified)
                    continue
                before = self._stats(conn, table)
                if before is None:
                    self.log.warning("Skipping %s: locked by another session", table.qualified)
                    reports.append({"table": table.qualified, "skipped": "locked"})
                    continue
                report: dict[str, Any] = {
                    "table": table.qualified,
                    "dead_tuples_before": before[0],
                    "size_before": before[1],
                }
                if dry_run:
                    self.log.info("Dry run: would vacuum %s (%d dead tuples)", table.qualified, before[0])
                    reports.append(report)
                    continue
                notices.clear()
                t0 = time.monotonic()
                conn.execute(sql.SQL("VACUUM ({}) {}").format(sql.SQL(", ").join(options), table.ident))
                took = time.monotonic() - t0
                skipped = _skip_reason(notices)
                if version >= FORCE_FLUSH_MIN_VERSION:
                    conn.execute("SELECT pg_stat_force_next_flush()")
                conn.execute("SELECT pg_stat_clear_snapshot()")
                after = self._stats(conn, table) or (None, None)
                report.update(
                    {
                        "dead_tuples_after": after[0],
                        "size_after": after[1],
                        "full": full,
                        "seconds": round(took, 3),
                        "skipped": skipped,
                        "skipped_locked": skipped == "locked",
                    }
                )
                reports.append(report)
                if skipped:
                    self.log.warning("Skipped %s: %s", table.qualified, skipped.replace("_", " "))
                    continue
                self.log.info(
                    "Vacuumed %s in %.2fs: dead tuples %s -> %s, size %s -> %s bytes",
                    table.qualified,
                    took,
                    before[0],
                    after[0],
                    before[1],
                    after[1],
                )
            return {
                "tables": reports,
                "vacuumed": 0
                if dry_run
                else sum(1 for r in reports if "size_after" in r and not r["skipped"]),
                "skipped_locked": [r["table"] for r in reports if r.get("skipped") == "locked"],
                "skipped_permission_denied": [
                    r["table"] for r in reports if r.get("skipped") == "permission_denied"
                ],
                "skipped_autovacuum_running": skipped_autovacuum,
                "autovacuum_disabled": disabled,
                "seconds": round(time.monotonic() - started, 3),
                "dry_run": dry_run,
            }
        finally:
            self._backend_pid = None
            conn.close()

    def _candidates(self, conn: Any) -> tuple[list[TableRef], list[str]]:
        """The tables to vacuum, and the schemas whose reloptions are reported."""
        if self.tables:
            if not isinstance(self.tables, list | tuple):
                raise LifecycleConfigError(f"tables must be a list of 'schema.table', got {self.tables!r}")
            tables = [pg_catalog.resolve_table(conn, t, field="tables", kinds="rpm") for t in self.tables]
            return tables, []
        schemas = list(self.schemas or ["public"])
        for schema in schemas:
            pg_catalog.check_identifier(schema, field="schemas")
            if not pg_catalog.schema_exists(conn, schema):
                raise LifecycleConfigError(f"schemas: {schema!r} does not exist")
        conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = conn.execute(
            """
            SELECT s.relid FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
            WHERE s.schemaname = ANY(%s) AND s.n_dead_tup > %s + %s * greatest(c.reltuples, 0)
            ORDER BY s.n_dead_tup DESC, s.relid
            """,
            (schemas, self.threshold, float(self.scale_factor)),
        ).fetchall()
        return [pg_catalog.table_by_oid(conn, int(r[0])) for r in rows], schemas

    @staticmethod
    def _stats(conn: Any, table: TableRef) -> tuple[int, int] | None:
        """Dead tuples and table size, summed over leaf partitions; None when the table is locked.

        ``pg_table_size`` takes a share lock: behind another session's ACCESS EXCLUSIVE lock it
        waits until the session's lock_timeout, which is reported as a skip, not an error.
        """
        from psycopg.errors import LockNotAvailable

        try:
            row = conn.execute(
                """
            SELECT coalesce(sum(s.n_dead_tup), 0), coalesce(sum(pg_table_size(c.oid)), 0)
            FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
            WHERE c.oid = %s OR c.oid IN (SELECT relid FROM pg_partition_tree(%s::oid::regclass) WHERE isleaf)
            """,
                (table.oid, table.oid),
            ).fetchone()
        except LockNotAvailable:
            return None
        return int(row[0]), int(row[1])


def _skip_reason(notices: list[str]) -> str | None:
    """``"locked"`` or ``"permission_denied"`` when VACUUM's warnings say it skipped the table."""
    for notice in notices:
        text = notice.lower()
        if SKIP_LOCKED_NOTICE in text:
            return "locked"
        if "skipping" in text and any(p in text for p in SKIP_PERMISSION_NOTICES):
            return "permission_denied"
    return None
