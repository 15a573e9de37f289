"""PostgreSQL cleanup operators: batched deletes, partition retention and premake, VACUUM ANALYZE.

Shared behaviour:

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
import re
import time
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, cast

from airflow.sdk import BaseOperator

from data_lifecycle import pg_catalog
from data_lifecycle.archive import (
    ArchiveConfig,
    S3ArchiveWriter,
    batch_key,
    json_default,
    partition_key,
)
from data_lifecycle.cutoff import compute_cutoff, compute_cutoff_months, parse_retention_days, run_anchor
from data_lifecycle.exceptions import (
    GuardrailTripped,
    LifecycleConfigError,
    LockTimeoutExhausted,
    VerificationFailed,
)
from data_lifecycle.pg_catalog import ChildRef, Column, Partition, TableRef
from data_lifecycle.rendered import as_bool

if TYPE_CHECKING:
    import psycopg
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from airflow.sdk import Context

DEFAULT_POSTGRES_CONN_ID = "lifecycle_postgres"

# Batch sizing for PostgresBatchedDeleteOperator.
DEFAULT_BATCH_SIZE = 1_000
DEFAULT_MIN_BATCH_SIZE = 100
DEFAULT_MAX_BATCH_SIZE = 50_000
DEFAULT_TARGET_BATCH_SECONDS = 0.5
# One adjustment never more than doubles or halves the batch.
MAX_BATCH_GROWTH = 2.0
MIN_BATCH_SHRINK = 0.5
DEFAULT_LOCK_TIMEOUT_SECONDS = 2.0
DEFAULT_STATEMENT_TIMEOUT_SECONDS = 60.0
DEFAULT_MAX_LOCK_RETRIES = 5
# Pause before retrying a batch that hit a lock timeout, times the attempt number.
LOCK_RETRY_BACKOFF_SECONDS = 0.05
DEFAULT_MAX_DELETE_FRACTION = 0.5
# Above this many estimated rows the guardrail uses pg_class.reltuples instead of count(*).
EXACT_COUNT_MAX_ROWS = 1_000_000
DEFAULT_SAMPLE_SIZE = 10
# The summary lists at most this many archive keys (all are logged).
MAX_SUMMARY_FILES = 200
# Placeholders in an extra predicate may not use this prefix: the operator's own parameters do.
RESERVED_PARAM_PREFIX = "lc_"
_FORBIDDEN_PREDICATE = re.compile(r";|--|/\*")

# Partition maintenance.
DEFAULT_MONTHS_AHEAD = 3
MAX_MONTHS_AHEAD = 36
DEFAULT_DDL_LOCK_TIMEOUT_SECONDS = 5.0
DEFAULT_ARCHIVE_CHUNK_ROWS = 50_000
# COMMENT put on a partition before it is detached, so a run interrupted between detach and drop is
# finished by the next one (a detached table is no longer listed in pg_inherits).
DETACH_MARKER = "data_lifecycle: detached by partition retention from {parent}"
PARTITION_SUFFIX_LENGTH = len("_YYYY_MM")

# VACUUM selection: autovacuum's formula, with more eager defaults than PostgreSQL's (50, 0.2).
DEFAULT_VACUUM_THRESHOLD = 50
DEFAULT_VACUUM_SCALE_FACTOR = 0.05
DEFAULT_BUFFER_USAGE_LIMIT = "256MB"
# VACUUM (BUFFER_USAGE_LIMIT) exists from PostgreSQL 16.
BUFFER_USAGE_LIMIT_MIN_VERSION = 160_000
# pg_stat_force_next_flush() exists from PostgreSQL 15.
FORCE_FLUSH_MIN_VERSION = 150_000
_BUFFER_LIMIT_RE = re.compile(r"\d+\s*(kB|MB|GB)?")


def _as_seconds(value: Any, *, field: str, allow_none: bool = False) -> float | None:
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


def _as_positive_int(value: Any, *, field: str, allow_none: bool = False, minimum: int = 1) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LifecycleConfigError(f"{field} must be a whole number >= {minimum}, got {value!r}")
    return value


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=json_default))


def _scalar(conn: Any, query: Any, params: Any = None) -> Any:
    """The first column of the first row of ``query``."""
    row = conn.execute(query, params).fetchone()
    assert row is not None, "an aggregate query returned no row"
    return row[0]


def _set_local(conn: Any, name: str, value: str, *, local: bool = True) -> None:
    """``SET [LOCAL] name = value`` with the value bound (SET itself takes no parameters)."""
    conn.execute("SELECT set_config(%s, %s, %s)", (name, value, local))


class _PostgresLifecycleOperator(BaseOperator):
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

        The operator's lock timeout is set for the whole session before the first catalog read, so
        planning, counting and guard checks never queue behind another session's table lock either.
        """
        conn = cast("psycopg.Connection[Any]", self.hook.get_conn())
        conn.autocommit = True
        _set_local(conn, "TimeZone", "UTC", local=False)
        _set_local(conn, "application_name", f"data_lifecycle:{self.task_id}"[:63], local=False)
        session_lock_timeout = getattr(self, "lock_timeout", None)
        if session_lock_timeout is not None:
            seconds = _as_seconds(session_lock_timeout, field="lock_timeout") or DEFAULT_LOCK_TIMEOUT_SECONDS
            _set_local(conn, "lock_timeout", _ms(seconds), local=False)
        self._backend_pid = conn.info.backend_pid
        return conn


class PostgresBatchedDeleteOperator(_PostgresLifecycleOperator):
    """Delete rows older than a cutoff in short keyset batches, children first, optionally archiving to S3.

    A row is due when ``timestamp_column < cutoff`` (strictly: a row exactly at the cutoff is kept)
    and the optional ``extra_predicate`` holds. ``cutoff = (data_interval_end or dag_run.run_after) -
    retention_days``. Rows go in batches ordered by the primary key (or ``key_columns``); each batch
    is one transaction with ``SET LOCAL lock_timeout``/``statement_timeout`` that locks the batch
    (``SELECT ... FOR UPDATE``; locked rows are waited for, never skipped), deletes the child rows that
    reference it, then exactly the locked keys. The batch size adapts toward
    ``target_batch_seconds``; a lock timeout halves it and retries up to ``max_lock_retries`` times in
    a row, then raises ``LockTimeoutExhausted`` (batches already committed stay deleted).

    In archive mode each batch is written to S3 as gzip JSON lines under
    ``{prefix}/{schema}.{table}/cutoff=.../keys_{first}-{last}.jsonl.gz`` and verified (size,
    SHA-256, row count) while the rows are locked; only then are those keys deleted. The batch size is
    then fixed (it shrinks only on lock timeouts) so a rerun after a crash rewrites the same objects.
    Archive mode cannot be combined with children: their rows would be deleted without an archive.

    ``max_runtime`` and ``max_rows`` stop cleanly between batches (``stopped_by`` in the summary,
    ``remaining > 0``); the next run resumes. A run that would delete more than
    ``max_delete_fraction`` of the table raises ``GuardrailTripped`` before deleting anything unless
    ``allow_large_delete``. With ``audit_table`` every real (non-dry) run writes one row, also when it
    deleted nothing, so the ledger shows that the rerun ran.

    :param table: ``"schema.table"`` (schema defaults to ``public``); a table or partitioned table.
    :param timestamp_column: the column compared with the cutoff (timestamp, timestamptz or date).
    :param retention_days: days to keep, at least one. (templated)
    :param postgres_conn_id: the Airflow connection to PostgreSQL.
    :param extra_predicate: an SQL boolean fragment ANDed to the timestamp predicate, with named
        placeholders (``deleted_at IS NOT NULL AND tenant = %(tenant)s``; write ``%%`` for ``%``).
    :param extra_params: values for the placeholders of ``extra_predicate``. (templated)
    :param key_columns: batch over these columns instead of the primary key; a unique index without
        predicate must cover exactly them.
    :param children: tables deleted first, ``[{"table": "app.sessions", "column": "user_id",
        "parent_column": "id"}]``; ``parent_column`` defaults to the single key column.
    :param discover_children: add every table whose single-column foreign key references this one.
    :param archive: ``{"bucket": ..., "prefix": ..., "aws_conn_id": "lifecycle_aws"}`` to archive rows
        to S3 before deleting them.
    :param audit_table: ``"schema.table"`` with the ``app.cleanup_audit`` columns.
    :param batch_size: rows in the first batch (kept within the min and max sizes).
    :param min_batch_size: the smallest batch.
    :param max_batch_size: the largest batch.
    :param target_batch_seconds: the batch duration the size adapts toward.
    :param sleep_between_batches: seconds to pause after each batch.
    :param lock_timeout: per-batch lock timeout (seconds or timedelta).
    :param statement_timeout: per-statement timeout (seconds or timedelta).
    :param max_lock_retries: lock timeouts in a row tolerated before failing.
    :param max_runtime: stop cleanly after this long (seconds or timedelta).
    :param max_rows: stop cleanly after deleting this many rows.
    :param max_delete_fraction: the largest share of the table one run may delete.
    :param allow_large_delete: disable the ``max_delete_fraction`` guardrail.
    :param dry_run: count and log a sample of due keys, change nothing. (templated)
    :param sample_size: keys logged in a dry run.
    """

    template_fields: Sequence[str] = ("retention_days", "extra_params", "dry_run")
    template_fields_renderers: ClassVar[dict[str, str]] = {"extra_params": "json"}
    ui_color = "#f4a460"

    def __init__(
        self,
        *,
        table: str,
        timestamp_column: str,
        retention_days: int | str,
        postgres_conn_id: str = DEFAULT_POSTGRES_CONN_ID,
        extra_predicate: str | None = None,
        extra_params: dict[str, Any] | None = None,
        key_columns: list[str] | None = None,
        children: list[dict[str, str]] | None = None,
        discover_children: bool = False,
        archive: dict[str, str] | None = None,
        audit_table: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        min_batch_size: int = DEFAULT_MIN_BATCH_SIZE,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        target_batch_seconds: float = DEFAULT_TARGET_BATCH_SECONDS,
        sleep_between_batches: float = 0.0,
        lock_timeout: timedelta | float = DEFAULT_LOCK_TIMEOUT_SECONDS,
        statement_timeout: timedelta | float = DEFAULT_STATEMENT_TIMEOUT_SECONDS,
        max_lock_retries: int = DEFAULT_MAX_LOCK_RETRIES,
        max_runtime: timedelta | float | None = None,
        max_rows: int | None = None,
        max_delete_fraction: float = DEFAULT_MAX_DELETE_FRACTION,
        allow_large_delete: bool = False,
        dry_run: bool | str = False,
        sample_size: int = DEFAULT_SAMPLE_SIZE,
        **kwargs: Any,
    ) -> None:
        super().__init__(postgres_conn_id=postgres_conn_id, **kwargs)
        self.table = table
        self.timestamp_column = timestamp_column
        self.retention_days = retention_days
        self.extra_predicate = extra_predicate
        self.extra_params = extra_params
        self.key_columns = key_columns
        self.children = children
        self.discover_children = discover_children
        self.archive = archive
        self.audit_table = audit_table
        self.batch_size = batch_size
        self.min_batch_size = min_batch_size
        self.max_batch_size = max_batch_size
        self.target_batch_seconds = target_batch_seconds
        self.sleep_between_batches = sleep_between_batches
        self.lock_timeout = lock_timeout
        self.statement_timeout = statement_timeout
        self.max_lock_retries = max_lock_retries
        self.max_runtime = max_runtime
        self.max_rows = max_rows
        self.max_delete_fraction = max_delete_fraction
        self.allow_large_delete = allow_large_delete
        # Shadows BaseOperator.dry_run(), a render-only helper Airflow 3 never calls: the flag is templated.
        self.dry_run = dry_run  # type: ignore[method-assign,assignment]
        self.sample_size = sample_size
        self._validate_static()

    def execute(self, context: Context) -> dict[str, Any]:
        started = time.monotonic()
        retention = parse_retention_days(self.retention_days)
        cutoff = compute_cutoff(context, retention)
        dry_run = as_bool(self.dry_run, field="dry_run")
        extra_params = self._checked_extra_params()
        conn = self._connect()
        try:
            plan = self._plan(conn, cutoff, extra_params)
            due, total = self._count_due_and_total(conn, plan)
            self.log.info(
                "%s: %d of %d rows have %s < %s%s",
                plan.table.qualified,
                due,
                total,
                self.timestamp_column,
                cutoff.isoformat(),
                " (dry run)" if dry_run else "",
            )
            fraction = due / total if total else 0.0
            too_large = fraction > self.max_delete_fraction and not self.allow_large_delete
            if dry_run:
                return self._dry_run_summary(
                    conn=conn, plan=plan, due=due, total=total, too_large=too_large, started=started
                )
            if too_large:
                raise GuardrailTripped(
                    f"{plan.table.qualified}: {due} of {total} rows ({fraction:.0%}) are due, more than"
                    f" max_delete_fraction={self.max_delete_fraction:.0%}; nothing was deleted. Check"
                    " retention_days, or pass allow_large_delete=True if this is intended."
                )
            summary = _BatchRunner(self, conn, plan, due, started=started).run()
            summary["seconds"] = round(time.monotonic() - started, 3)
            if plan.audit is not None:
                self._write_audit(conn, plan, context, summary)
            return summary
        finally:
            self._backend_pid = None
            conn.close()

    # -- validation and planning ------------------------------------------------------------------

    def _validate_static(self) -> None:
        pg_catalog.parse_table_name(self.table)
        if not self.timestamp_column:
            raise LifecycleConfigError(
                f"{self.table}: a rule needs a timestamp_column; refusing a delete without a time predicate"
            )
        pg_catalog.check_identifier(self.timestamp_column, field="timestamp_column")
        if self.audit_table is not None:
            pg_catalog.parse_table_name(self.audit_table, field="audit_table")
        if self.extra_predicate is not None:
            if not isinstance(self.extra_predicate, str) or not self.extra_predicate.strip():
                raise LifecycleConfigError("extra_predicate must be a non-empty SQL fragment")
            if _FORBIDDEN_PREDICATE.search(self.extra_predicate):
                raise LifecycleConfigError(
                    f"extra_predicate {self.extra_predicate!r} must be one boolean expression (no ;, --, /*)"
                )
        for name in ("batch_size", "min_batch_size", "max_batch_size", "sample_size"):
            _as_positive_int(getattr(self, name), field=name)
        _as_positive_int(self.max_lock_retries, field="max_lock_retries", minimum=0)
        _as_positive_int(self.max_rows, field="max_rows", allow_none=True)
        if self.min_batch_size > self.max_batch_size:
            raise LifecycleConfigError("min_batch_size must not exceed max_batch_size")
        _as_seconds(self.target_batch_seconds, field="target_batch_seconds")
        _as_seconds(self.lock_timeout, field="lock_timeout")
        _as_seconds(self.statement_timeout, field="statement_timeout")
        _as_seconds(self.max_runtime, field="max_runtime", allow_none=True)
        if self.sleep_between_batches < 0:
            raise LifecycleConfigError("sleep_between_batches must be >= 0")
        if not 0 < self.max_delete_fraction <= 1:
            raise LifecycleConfigError(
                f"max_delete_fraction must be in (0, 1], got {self.max_delete_fraction!r}"
            )
        if self.archive is not None:
            ArchiveConfig.from_value(self.archive)
            if self.children or self.discover_children:
                raise LifecycleConfigError(
                    "archive mode cannot delete children: their rows would go without an archive"
                )
        for i, child in enumerate(self.children or []):
            if not isinstance(child, Mapping) or not {"table", "column"} <= set(child):
                raise LifecycleConfigError(
                    f"children[{i}] must be {{'table': ..., 'column': ...}}, got {child!r}"
                )
            unknown = set(child) - {"table", "column", "parent_column"}
            if unknown:
                raise LifecycleConfigError(f"children[{i}] has unknown keys {sorted(unknown)}")
            pg_catalog.parse_table_name(child["table"], field=f"children[{i}].table")
            pg_catalog.check_identifier(child["column"], field=f"children[{i}].column")

    def _checked_extra_params(self) -> dict[str, Any]:
        params = self.extra_params or {}
        if not isinstance(params, Mapping):
            raise LifecycleConfigError(f"extra_params must be a mapping, got {type(params).__name__}")
        for name in params:
            pg_catalog.check_identifier(name, field="extra_params key")
            if name.startswith(RESERVED_PARAM_PREFIX):
                raise LifecycleConfigError(
                    f"extra_params key {name!r}: the prefix {RESERVED_PARAM_PREFIX!r} is reserved"
                )
        return dict(params)

    def _plan(self, conn: Any, cutoff: datetime, extra_params: dict[str, Any]) -> _DeletePlan:
        from psycopg import sql

        table = pg_catalog.resolve_table(conn, self.table)
        ts = pg_catalog.require_column(
            conn, table, self.timestamp_column, field="timestamp_column", types=pg_catalog.TIMESTAMP_TYPES
        )
        keys = pg_catalog.key_columns(conn, table, self.key_columns)
        children = self._resolve_children(conn, table, keys)
        audit = None
        if self.audit_table is not None:
            audit = pg_catalog.resolve_table(conn, self.audit_table, field="audit_table", kinds="r")
            for col in (
                "dag_id",
                "run_id",
                "task_id",
                "target",
                "action",
                "cutoff",
                "rows_affected",
                "summary",
            ):
                pg_catalog.require_column(conn, audit, col, field=f"audit_table column {col}")
        where = sql.SQL("{} < %(lc_cutoff)s").format(ts.ident)
        if self.extra_predicate:
            where = sql.SQL("{} AND ({})").format(where, sql.SQL(self.extra_predicate))
        plan = _DeletePlan(
            table=table,
            cutoff=cutoff,
            keys=keys,
            children=children,
            where=where,
            params={**extra_params, "lc_cutoff": cutoff},
            archive=ArchiveConfig.from_value(self.archive) if self.archive is not None else None,
            audit=audit,
        )
        # Plan the statement once so a bad predicate or a missing parameter fails before any write.
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("EXPLAIN SELECT 1 FROM {} WHERE {}").format(table.ident, where), plan.params
                )
        except (LifecycleConfigError, KeyError) as exc:
            raise LifecycleConfigError(f"extra_predicate needs a parameter that is missing: {exc}") from exc
        except Exception as exc:
            # Only a statement the server refuses to plan is a configuration error; a lost
            # connection or a lock timeout is an operational one, and the task's retries handle it.
            from psycopg.errors import DataError, ProgrammingError

            if isinstance(exc, ProgrammingError | DataError):
                raise LifecycleConfigError(
                    f"{table.qualified}: the delete predicate is invalid: {exc}"
                ) from exc
            raise
        return plan

    def _resolve_children(self, conn: Any, table: TableRef, keys: list[Column]) -> list[ChildRef]:
        found: list[ChildRef] = []
        parent_cols = pg_catalog.columns(conn, table)
        for i, spec in enumerate(self.children or []):
            child = pg_catalog.resolve_table(conn, spec["table"], field=f"children[{i}].table")
            column = pg_catalog.require_column(conn, child, spec["column"], field=f"children[{i}].column")
            parent_column = spec.get("parent_column")
            if parent_column is None:
                if len(keys) != 1:
                    raise LifecycleConfigError(
                        f"children[{i}]: {table.qualified} has a composite key; give parent_column"
                    )
                parent_column = keys[0].name
            pg_catalog.check_identifier(parent_column, field=f"children[{i}].parent_column")
            if parent_column not in parent_cols:
                raise LifecycleConfigError(
                    f"children[{i}].parent_column={parent_column!r}: {table.qualified} has no such column"
                )
            found.append(ChildRef(table=child, column=column, parent_column=parent_column))
        if self.discover_children:
            listed = {(c.table.oid, c.column.name) for c in found}
            for ref in pg_catalog.foreign_key_children(conn, table):
                if (ref.table.oid, ref.column.name) not in listed:
                    found.append(ref)
        return found

    def _count_due_and_total(self, conn: Any, plan: _DeletePlan) -> tuple[int, int]:
        from psycopg import sql

        with conn.transaction():
            _set_local(conn, "statement_timeout", _ms(self._statement_timeout))
            due = conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE {}").format(plan.table.ident, plan.where), plan.params
            ).fetchone()[0]
            estimate = pg_catalog.estimated_rows(conn, plan.table)
            if estimate > EXACT_COUNT_MAX_ROWS:
                total = int(estimate)
            else:
                total = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(plan.table.ident)).fetchone()[
                    0
                ]
        return int(due), max(int(total), int(due))

    def _dry_run_summary(
        self, *, conn: Any, plan: _DeletePlan, due: int, total: int, too_large: bool, started: float
    ) -> dict[str, Any]:
        from psycopg import sql

        key_list = sql.SQL(", ").join(k.ident for k in plan.keys)
        sample = conn.execute(
            sql.SQL("SELECT {k} FROM {t} WHERE {w} ORDER BY {k} LIMIT {n}").format(
                k=key_list, t=plan.table.ident, w=plan.where, n=sql.Literal(self.sample_size)
            ),
            plan.params,
        ).fetchall()
        children: dict[str, int] = {}
        for child in plan.children:
            children[child.table.qualified] = conn.execute(
                sql.SQL("SELECT count(*) FROM {c} WHERE {cc} IN (SELECT {pc} FROM {t} WHERE {w})").format(
                    c=child.table.ident,
                    cc=child.column.ident,
                    pc=sql.Identifier(child.parent_column),
                    t=plan.table.ident,
                    w=plan.where,
                ),
                plan.params,
            ).fetchone()[0]
        sample_keys = _jsonable([list(row) for row in sample])
        self.log.info(
            "Dry run: would delete %d rows from %s; first keys: %s", due, plan.table.qualified, sample_keys
        )
        if too_large:
            self.log.warning(
                "Dry run: a real run would refuse: %d of %d rows exceed max_delete_fraction=%s",
                due,
                total,
                self.max_delete_fraction,
            )
        return {
            "table": plan.table.qualified,
            "cutoff": plan.cutoff.isoformat(),
            "deleted": 0,
            "would_delete": due,
            "table_rows": total,
            "guardrail_would_trip": too_large,
            "sample_keys": sample_keys,
            "batches": 0,
            "remaining": due,
            "seconds": round(time.monotonic() - started, 3),
            "children": children,
            "archived_files": [],
            "archived_rows": 0,
            "dry_run": True,
            "stopped_by": None,
        }

    def _write_audit(self, conn: Any, plan: _DeletePlan, context: Context, summary: dict[str, Any]) -> None:
        from psycopg import sql
        from psycopg.types.json import Jsonb

        assert plan.audit is not None
        dag_run = context.get("dag_run")
        dag_id = getattr(dag_run, "dag_id", None) or self.dag_id
        run_id = context.get("run_id") or getattr(dag_run, "run_id", None) or "unknown"
        with conn.transaction():
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (dag_id, run_id, task_id, target, action, cutoff, rows_affected, summary)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                ).format(plan.audit.ident),
                (
                    dag_id,
                    run_id,
                    self.task_id,
                    plan.table.qualified,
                    "archive_delete" if plan.archive else "delete",
                    plan.cutoff,
                    summary["deleted"],
                    Jsonb(summary),
                ),
            )

    @property
    def _statement_timeout(self) -> float:
        return (
            _as_seconds(self.statement_timeout, field="statement_timeout")
            or DEFAULT_STATEMENT_TIMEOUT_SECONDS
        )


@dataclass(frozen=True)
class _DeletePlan:
    """Everything a batch needs, resolved against the catalog."""

    table: TableRef
    cutoff: datetime
    keys: list[Column]
    children: list[ChildRef]
    where: Any  # psycopg.sql.Composable
    params: dict[str, Any]
    archive: ArchiveConfig | None
    audit: TableRef | None


class _BatchRunner:
    """The batch loop of PostgresBatchedDeleteOperator: adaptive size, lock retries, budgets."""

    def __init__(
        self, op: PostgresBatchedDeleteOperator, conn: Any, plan: _DeletePlan, due: int, *, started: float
    ) -> None:
        self.op = op
        self.started = started
        self.log = op.log
        self.conn = conn
        self.plan = plan
        self.due = due
        self.lock_timeout = _as_seconds(op.lock_timeout, field="lock_timeout") or DEFAULT_LOCK_TIMEOUT_SECONDS
        self.statement_timeout = op._statement_timeout
        self.max_runtime = _as_seconds(op.max_runtime, field="max_runtime", allow_none=True)
        self.writer: S3ArchiveWriter | None = None
        if plan.archive is not None:
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            client = S3Hook(aws_conn_id=plan.archive.aws_conn_id).get_conn()
            self.writer = S3ArchiveWriter(client, plan.archive.bucket)

    def run(self) -> dict[str, Any]:
        from psycopg.errors import LockNotAvailable

        op, plan = self.op, self.plan
        started = self.started  # the runtime budget counts from the start of execute
        size = min(op.max_batch_size, max(op.min_batch_size, op.batch_size))
        last_key: tuple[Any, ...] | None = None
        deleted = batches = archived_rows = lock_failures = 0
        children = {c.table.qualified: 0 for c in plan.children}
        files: list[str] = []
        stopped_by: str | None = None
        while True:
            elapsed = time.monotonic() - started
            if self.max_runtime is not None and elapsed >= self.max_runtime:
                stopped_by = "max_runtime"
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
            except LockNotAvailable:
                lock_failures += 1
                size = max(op.min_batch_size, int(size * MIN_BATCH_SHRINK))
                if lock_failures > op.max_lock_retries:
                    raise LockTimeoutExhausted(
                        f"{plan.table.qualified}: {lock_failures} batches in a row waited longer than"
                        f" lock_timeout={self.lock_timeout}s for rows or tables locked by other sessions;"
                        f" stopped after deleting {deleted} rows in {batches} batches (committed; the next"
                        " run resumes)."
                    ) from None
                self.log.warning(
                    "Lock timeout on %s (attempt %d of %d); retrying with batch size %d",
                    plan.table.qualified,
                    lock_failures,
                    op.max_lock_retries,
                    size,
                )
                time.sleep(LOCK_RETRY_BACKOFF_SECONDS * lock_failures)
                continue
            lock_failures = 0
            if result is None:
                break
            count, child_counts, key_range, archived = result
            batches += 1
            deleted += count
            last_key = key_range[1]
            for name, n in child_counts.items():
                children[name] += n
            if archived is not None:
                archived_rows += archived.rows
                files.append(archived.key)
            took = time.monotonic() - batch_started
            if self.writer is None:
                factor = min(
                    MAX_BATCH_GROWTH, max(MIN_BATCH_SHRINK, op.target_batch_seconds / max(took, 1e-3))
                )
                size = min(op.max_batch_size, max(op.min_batch_size, int(size * factor)))
            self._log_progress(batches, count, deleted, started, took)
            if op.sleep_between_batches:
                time.sleep(op.sleep_between_batches)
        remaining = self._remaining()
        if stopped_by is not None and remaining == 0:
            stopped_by = None
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
            "seconds": round(time.monotonic() - started, 3),
            "children": children,
            "archived_files": files[:MAX_SUMMARY_FILES],
            "archived_files_total": len(files),
            "archived_rows": archived_rows,
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
        if self.writer is None and not plan.children:
            return self._range_batch(limit, where, params, key_list)
        if self.writer is not None:
            select_list: Any = sql.SQL("*")
        else:
            wanted = list(dict.fromkeys(key_names + [c.parent_column for c in plan.children]))
            select_list = sql.SQL(", ").join(sql.Identifier(n) for n in wanted)
        select = sql.SQL("SELECT {cols} FROM {t} WHERE {w} ORDER BY {k} LIMIT {n} FOR UPDATE").format(
            cols=select_list, t=plan.table.ident, w=where, k=key_list, n=sql.Literal(limit)
        )
        with self.conn.transaction():
            _set_local(self.conn, "lock_timeout", _ms(self.lock_timeout))
            _set_local(self.conn, "statement_timeout", _ms(self.statement_timeout))
            with self.conn.cursor(row_factory=dict_row) as cur:
                rows = cur.execute(select, params).fetchall()
            if not rows:
                return None
            keys = [tuple(row[n] for n in key_names) for row in rows]
            archived = None
            if self.writer is not None:
                assert plan.archive is not None
                key = batch_key(
                    plan.archive.prefix,
                    schema=plan.table.schema,
                    table=plan.table.name,
                    cutoff=plan.cutoff,
                    first=keys[0],
                    last=keys[-1],
                )
                archived = self._archive(key, rows)
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
        return len(keys), child_counts, (keys[0], keys[-1]), archived

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
            _set_local(self.conn, "lock_timeout", _ms(self.lock_timeout))
            _set_local(self.conn, "statement_timeout", _ms(self.statement_timeout))
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

    def _archive(self, key: str, rows: list[dict[str, Any]]) -> Any:
        assert self.writer is not None
        archived = self.writer.write(key, rows)
        self.log.info(
            "Archived %d rows to s3://%s/%s (verified)", archived.rows, archived.bucket, archived.key
        )
        return archived

    def _remaining(self) -> int:
        from psycopg import sql

        with self.conn.transaction():
            _set_local(self.conn, "statement_timeout", _ms(self.statement_timeout))
            row = self.conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE {}").format(self.plan.table.ident, self.plan.where),
                self.plan.params,
            ).fetchone()
        return int(row[0])

    def _log_progress(self, batches: int, count: int, deleted: int, started: float, took: float) -> None:
        elapsed = max(time.monotonic() - started, 1e-6)
        rate = deleted / elapsed
        left = max(self.due - deleted, 0)
        eta = left / rate if rate else float("nan")
        self.log.info(
            "Batch %d: %d rows in %.2fs; %d deleted, %.0f rows/s, ~%d left, ETA %.0fs",
            batches,
            count,
            took,
            deleted,
            rate,
            left,
            eta,
        )


class PartitionRetentionMode(StrEnum):
    """What happens to an expired partition once detached."""

    DROP = "drop"
    ARCHIVE_SCHEMA = "archive_schema"
    S3 = "s3"


class PostgresPartitionRetentionOperator(_PostgresLifecycleOperator):
    """Detach and drop (or keep, or archive to S3) range partitions whose upper bound is at or before the cutoff.

    Partitions and bounds are read from the catalog (``pg_inherits``, ``pg_get_expr(relpartbound)``),
    never from names. A partition is expired when its upper bound ``<= cutoff``: every row in it is
    then strictly older than the cutoff. Before anything changes, each expired partition's real
    ``max(guard_column)`` is checked; a row at or after the cutoff raises ``GuardrailTripped``. The
    last remaining partition is never removed.

    Detach uses ``DETACH PARTITION ... CONCURRENTLY`` (autocommit) when the parent has no DEFAULT
    partition, else a plain detach under ``lock_timeout``. A concurrent detach left pending by an
    interrupted run (``pg_inherits.inhdetachpending``) is completed with ``DETACH PARTITION ...
    FINALIZE``. Each partition is marked with a comment before it is detached, so one left detached
    by a crash is finished by the next run. Then, by ``mode``: ``drop``; ``archive_schema`` (``ALTER
    TABLE ... SET SCHEMA``); ``s3`` (rows to verified gzip JSON lines objects, then drop).

    :param table: the partitioned parent, ``"schema.table"``.
    :param retention_days: days to keep, at least one. (templated)
    :param retention_months: calendar months to keep instead of days, at least one. (templated)
    :param postgres_conn_id: the Airflow connection to PostgreSQL.
    :param mode: ``"drop"``, ``"archive_schema"`` or ``"s3"``.
    :param archive_schema: the existing schema expired partitions move to (mode ``archive_schema``).
    :param archive: ``{"bucket": ..., "prefix": ..., "aws_conn_id": ...}`` (mode ``s3``).
    :param guard_column: the timestamp column checked before removal; defaults to the partition key.
    :param lock_timeout: lock timeout for detach and drop (seconds or timedelta).
    :param archive_chunk_rows: rows per S3 object in mode ``s3``.
    :param dry_run: list what would be detached, change nothing. (templated)
    """

    template_fields: Sequence[str] = ("retention_days", "retention_months", "dry_run")
    ui_color = "#deb887"

    def __init__(
        self,
        *,
        table: str,
        retention_days: int | str | None = None,
        retention_months: int | str | None = None,
        postgres_conn_id: str = DEFAULT_POSTGRES_CONN_ID,
        mode: PartitionRetentionMode | str = PartitionRetentionMode.DROP,
        archive_schema: str | None = None,
        archive: dict[str, str] | None = None,
        guard_column: str | None = None,
        lock_timeout: timedelta | float = DEFAULT_DDL_LOCK_TIMEOUT_SECONDS,
        archive_chunk_rows: int = DEFAULT_ARCHIVE_CHUNK_ROWS,
        dry_run: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(postgres_conn_id=postgres_conn_id, **kwargs)
        self.table = table
        if (retention_days is None) == (retention_months is None):
            raise LifecycleConfigError(
                f"{self.task_id}: give exactly one of retention_days or retention_months"
            )
        self.retention_days = retention_days
        self.retention_months = retention_months
        try:
            self.mode = PartitionRetentionMode(mode)
        except ValueError:
            raise LifecycleConfigError(
                f"mode={mode!r} is not one of {[m.value for m in PartitionRetentionMode]}"
            ) from None
        self.archive_schema = archive_schema
        self.archive = archive
        self.guard_column = guard_column
        self.lock_timeout = lock_timeout
        self.archive_chunk_rows = archive_chunk_rows
        # Shadows BaseOperator.dry_run(), a render-only helper Airflow 3 never calls: the flag is templated.
        self.dry_run = dry_run  # type: ignore[method-assign,assignment]
        pg_catalog.parse_table_name(table)
        _as_seconds(lock_timeout, field="lock_timeout")
        _as_positive_int(archive_chunk_rows, field="archive_chunk_rows")
        if guard_column is not None:
            pg_catalog.check_identifier(guard_column, field="guard_column")
        if self.mode is PartitionRetentionMode.ARCHIVE_SCHEMA:
            pg_catalog.check_identifier(archive_schema, field="archive_schema")
        if self.mode is PartitionRetentionMode.S3:
            if archive is None:
                raise LifecycleConfigError("mode='s3' needs archive={'bucket': ..., 'prefix': ...}")
            ArchiveConfig.from_value(archive)

    def execute(self, context: Context) -> dict[str, Any]:
        started = time.monotonic()
        if self.retention_months is not None:
            cutoff = compute_cutoff_months(context, self.retention_months)
        else:
            cutoff = compute_cutoff(context, parse_retention_days(self.retention_days))
        dry_run = as_bool(self.dry_run, field="dry_run")
        conn = self._connect()
        try:
            parent = pg_catalog.resolve_table(conn, self.table)
            key = pg_catalog.range_partition_key(conn, parent)
            guard = (
                pg_catalog.require_column(
                    conn, parent, self.guard_column, field="guard_column", types=pg_catalog.TIMESTAMP_TYPES
                )
                if self.guard_column
                else key
            )
            if self.mode is PartitionRetentionMode.ARCHIVE_SCHEMA and not pg_catalog.schema_exists(
                conn, str(self.archive_schema)
            ):
                raise LifecycleConfigError(f"archive_schema={self.archive_schema!r} does not exist")
            parts = pg_catalog.partitions(conn, parent)
            has_default = any(p.is_default for p in parts)
            expired = [p for p in parts if not p.is_default and p.upper is not None and p.upper <= cutoff]
            pending_live = [p for p in parts if p.detach_pending and p not in expired]
            kept_last = None
            if expired and len(expired) == len(parts):
                kept_last = expired.pop().table.qualified
                self.log.warning(
                    "%s: every partition is expired; keeping the newest, %s", parent.qualified, kept_last
                )
            leftovers = self._leftovers(conn, parent)
            self._guard(conn, [p.table for p in expired] + leftovers, guard, cutoff)
            summary: dict[str, Any] = {
                "table": parent.qualified,
                "cutoff": cutoff.isoformat(),
                "mode": self.mode.value,
                "expired": [p.table.qualified for p in expired],
                "detached": [],
                "finalized": [],
                "dropped": [],
                "moved": [],
                "archived_files": [],
                "archived_rows": 0,
                "kept_last": kept_last,
                "partitions_left": len(parts) - len(expired),
                "seconds": 0.0,
                "dry_run": dry_run,
            }
            if dry_run:
                self.log.info("Dry run: would detach %s from %s", summary["expired"], parent.qualified)
            else:
                for part in pending_live:
                    self._detach(conn, parent, part, has_default, summary, mark=False)
                    self.log.warning(
                        "%s: finalized a pending detach of %s, which is not expired; left it detached",
                        parent.qualified,
                        part.table.qualified,
                    )
                for table in leftovers:
                    self.log.info(
                        "%s: finishing %s, detached by an earlier run", parent.qualified, table.qualified
                    )
                    self._dispose(conn, parent, table, cutoff, summary)
                for part in expired:
                    self._detach(conn, parent, part, has_default, summary, mark=True)
                    self._dispose(conn, parent, part.table, cutoff, summary)
            if not summary["expired"] and not leftovers:
                self.log.info(
                    "%s: no partition ends at or before %s; nothing to do", parent.qualified, cutoff
                )
            summary["seconds"] = round(time.monotonic() - started, 3)
            return summary
        finally:
            self._backend_pid = None
            conn.close()

    def _leftovers(self, conn: Any, parent: TableRef) -> list[TableRef]:
        """Tables this operator marked and detached from ``parent`` but did not finish with."""
        rows = conn.execute(
            """
            SELECT c.oid FROM pg_class c
            JOIN pg_description d ON d.objoid = c.oid AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0
            WHERE d.description = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition
              AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = %s)
            ORDER BY c.relname
            """,
            (DETACH_MARKER.format(parent=parent.qualified), parent.oid),
        ).fetchall()
        return [pg_catalog.table_by_oid(conn, int(r[0])) for r in rows]

    def _guard(self, conn: Any, tables: list[TableRef], guard: Column, cutoff: datetime) -> None:
        from psycopg import sql

        offending = []
        for table in tables:
            newest = conn.execute(
                sql.SQL("SELECT max({})::timestamptz FROM {}").format(guard.ident, table.ident)
            ).fetchone()[0]
            if newest is not None and newest >= cutoff:
                offending.append(f"{table.qualified} (max {guard.name} {newest.isoformat()})")
        if offending:
            raise GuardrailTripped(
                f"Refusing to remove partitions holding rows inside retention (>= {cutoff.isoformat()}):"
                f" {', '.join(offending)}. Nothing was detached or dropped."
            )

    def _detach(
        self,
        conn: Any,
        parent: TableRef,
        part: Partition,
        has_default: bool,
        summary: dict[str, Any],
        *,
        mark: bool,
    ) -> None:
        from psycopg import sql

        lock_timeout = _ms(
            _as_seconds(self.lock_timeout, field="lock_timeout") or DEFAULT_DDL_LOCK_TIMEOUT_SECONDS
        )
        if mark:
            # Lets the next run find and finish this partition if the run stops after the detach.
            marker = DETACH_MARKER.format(parent=parent.qualified)
            conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(part.table.ident, sql.Literal(marker)))
        if part.detach_pending:
            statement = sql.SQL("ALTER TABLE {} DETACH PARTITION {} FINALIZE")
            summary["finalized"].append(part.table.qualified)
        elif has_default:
            statement = sql.SQL("ALTER TABLE {} DETACH PARTITION {}")
        else:
            statement = sql.SQL("ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY")
        query = statement.format(parent.ident, part.table.ident)
        if has_default and not part.detach_pending:
            with conn.transaction():
                _set_local(conn, "lock_timeout", lock_timeout)
                conn.execute(query)
        else:
            # CONCURRENTLY and FINALIZE cannot run inside a transaction block: the session's
            # lock_timeout, set to the operator's value when it connected, bounds them.
            conn.execute(query)
        summary["detached"].append(part.table.qualified)
        self.log.info("Detached %s from %s", part.table.qualified, parent.qualified)

    def _dispose(
        self, conn: Any, parent: TableRef, table: TableRef, cutoff: datetime, summary: dict[str, Any]
    ) -> None:
        from psycopg import sql

        lock_timeout = _ms(
            _as_seconds(self.lock_timeout, field="lock_timeout") or DEFAULT_DDL_LOCK_TIMEOUT_SECONDS
        )
        if self.mode is PartitionRetentionMode.S3:
            self._archive_partition(conn, parent, table, summary)
        with conn.transaction():
            _set_local(conn, "lock_timeout", lock_timeout)
            if self.mode is PartitionRetentionMode.ARCHIVE_SCHEMA:
                target = str(self.archive_schema)
                clash = conn.execute(
                    "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = %s AND c.relname = %s",
                    (target, table.name),
                ).fetchone()
                if clash:
                    raise LifecycleConfigError(
                        f"{target}.{table.name} already exists; {table.qualified} stays detached in place"
                    )
                conn.execute(
                    sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(table.ident, sql.Identifier(target))
                )
                note = (
                    f"data_lifecycle: expired partition of {parent.qualified} (cutoff {cutoff.isoformat()})"
                )
                conn.execute(
                    sql.SQL("COMMENT ON TABLE {} IS {}").format(
                        sql.Identifier(target, table.name), sql.Literal(note)
                    )
                )
                summary["moved"].append(f"{target}.{table.name}")
                self.log.info("Moved %s to schema %s", table.qualified, target)
            else:
                conn.execute(sql.SQL("DROP TABLE {}").format(table.ident))
                summary["dropped"].append(table.qualified)
                self.log.info("Dropped %s", table.qualified)

    def _archive_partition(
        self, conn: Any, parent: TableRef, table: TableRef, summary: dict[str, Any]
    ) -> None:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        from psycopg import sql
        from psycopg.rows import dict_row

        config = ArchiveConfig.from_value(self.archive or {})
        writer = S3ArchiveWriter(S3Hook(aws_conn_id=config.aws_conn_id).get_conn(), config.bucket)
        try:
            order = [k.ident for k in pg_catalog.key_columns(conn, table)]
        except LifecycleConfigError:
            order = [sql.Identifier(name) for name in pg_catalog.columns(conn, table)]
        chunk = int(self.archive_chunk_rows)
        part_no = 0
        with conn.transaction(), conn.cursor(name=f"lc_archive_{table.oid}", row_factory=dict_row) as cur:
            cur.execute(
                sql.SQL("SELECT * FROM {} ORDER BY {}").format(table.ident, sql.SQL(", ").join(order))
            )
            while True:
                rows = cur.fetchmany(chunk)
                if not rows and part_no > 0:
                    break
                key = partition_key(config.prefix, parent.schema, parent.name, table.name, part_no)
                archived = writer.write(key, rows)
                summary["archived_files"].append(archived.key)
                summary["archived_rows"] += archived.rows
                self.log.info(
                    "Archived %d rows of %s to s3://%s/%s (verified)",
                    archived.rows,
                    table.qualified,
                    config.bucket,
                    key,
                )
                part_no += 1
                if len(rows) < chunk:
                    break


class PostgresPartitionPremakeOperator(_PostgresLifecycleOperator):
    """Create the monthly range partitions from the run's month up to ``months_ahead`` months later.

    Partitions are named ``{table}_YYYY_MM`` with bounds at UTC month starts. A month whose range
    overlaps an existing partition is skipped (already done). A month for which the DEFAULT partition
    already holds rows cannot be created (PostgreSQL would refuse): it is skipped, reported in the
    summary and logged as a warning; so is a DEFAULT partition holding any rows.

    :param table: the partitioned parent, ``"schema.table"``.
    :param postgres_conn_id: the Airflow connection to PostgreSQL.
    :param months_ahead: future months kept ready after the current one. (templated)
    :param lock_timeout: lock timeout for each CREATE (seconds or timedelta).
    :param dry_run: list the partitions that would be created, change nothing. (templated)
    """

    template_fields: Sequence[str] = ("months_ahead", "dry_run")
    ui_color = "#deb887"

    def __init__(
        self,
        *,
        table: str,
        postgres_conn_id: str = DEFAULT_POSTGRES_CONN_ID,
        months_ahead: int | str = DEFAULT_MONTHS_AHEAD,
        lock_timeout: timedelta | float = DEFAULT_DDL_LOCK_TIMEOUT_SECONDS,
        dry_run: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(postgres_conn_id=postgres_conn_id, **kwargs)
        self.table = table
        self.months_ahead = months_ahead
        self.lock_timeout = lock_timeout
        # Shadows BaseOperator.dry_run(), a render-only helper Airflow 3 never calls: the flag is templated.
        self.dry_run = dry_run  # type: ignore[method-assign,assignment]
        _, name = pg_catalog.parse_table_name(table)
        if len(name) + PARTITION_SUFFIX_LENGTH > pg_catalog.MAX_IDENTIFIER_LENGTH:
            raise LifecycleConfigError(f"{table}: the name is too long to add a _YYYY_MM suffix")
        _as_seconds(lock_timeout, field="lock_timeout")

    def execute(self, context: Context) -> dict[str, Any]:
        from psycopg import sql

        started = time.monotonic()
        months = _as_positive_int(self.months_ahead, field="months_ahead", minimum=0)
        assert months is not None
        if months > MAX_MONTHS_AHEAD:
            raise LifecycleConfigError(f"months_ahead={months} is above the limit of {MAX_MONTHS_AHEAD}")
        dry_run = as_bool(self.dry_run, field="dry_run")
        anchor = run_anchor(context)
        lock_timeout = _ms(
            _as_seconds(self.lock_timeout, field="lock_timeout") or DEFAULT_DDL_LOCK_TIMEOUT_SECONDS
        )
        conn = self._connect()
        try:
            parent = pg_catalog.resolve_table(conn, self.table)
            key = pg_catalog.range_partition_key(conn, parent)
            parts = pg_catalog.partitions(conn, parent)
            default = next((p for p in parts if p.is_default), None)
            default_rows = 0
            if default is not None:
                default_rows = _scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(default.table.ident))
                if default_rows:
                    self.log.warning(
                        "%s: the DEFAULT partition %s holds %d rows; move them into real partitions",
                        parent.qualified,
                        default.table.qualified,
                        default_rows,
                    )
            summary: dict[str, Any] = {
                "table": parent.qualified,
                "anchor": anchor.isoformat(),
                "months_ahead": months,
                "created": [],
                "existing": [],
                "blocked_by_default": [],
                "default_partition": default.table.qualified if default else None,
                "default_partition_rows": int(default_rows),
                "seconds": 0.0,
                "dry_run": dry_run,
            }
            start = datetime(anchor.year, anchor.month, 1, tzinfo=UTC)
            for i in range(months + 1):
                lower, upper = _add_months(start, i), _add_months(start, i + 1)
                name = f"{parent.name}_{lower:%Y_%m}"
                if any(_overlaps(p, lower, upper) for p in parts):
                    summary["existing"].append(f"{lower:%Y-%m}")
                    continue
                if default is not None and default_rows:
                    blocking = _scalar(
                        conn,
                        sql.SQL("SELECT count(*) FROM {} WHERE {} >= %s AND {} < %s").format(
                            default.table.ident, key.ident, key.ident
                        ),
                        (lower, upper),
                    )
                    if blocking:
                        self.log.warning(
                            "%s: cannot create %s: the DEFAULT partition holds %d rows in [%s, %s)",
                            parent.qualified,
                            name,
                            blocking,
                            lower.date(),
                            upper.date(),
                        )
                        summary["blocked_by_default"].append(f"{lower:%Y-%m}")
                        continue
                clash = conn.execute(
                    "SELECT 1 FROM pg_class WHERE relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = %s)"
                    " AND relname = %s",
                    (parent.oid, name),
                ).fetchone()
                if clash:
                    raise LifecycleConfigError(
                        f"{parent.schema}.{name} exists but is not a partition of {parent.qualified}"
                    )
                if dry_run:
                    self.log.info("Dry run: would create %s.%s [%s, %s)", parent.schema, name, lower, upper)
                    summary["created"].append(f"{parent.schema}.{name}")
                    continue
                with conn.transaction():
                    _set_local(conn, "lock_timeout", lock_timeout)
                    conn.execute(
                        sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                            sql.Identifier(parent.schema, name),
                            parent.ident,
                            sql.Literal(_bound_literal(lower, key)),
                            sql.Literal(_bound_literal(upper, key)),
                        )
                    )
                summary["created"].append(f"{parent.schema}.{name}")
                self.log.info("Created %s.%s for [%s, %s)", parent.schema, name, lower.date(), upper.date())
            summary["seconds"] = round(time.monotonic() - started, 3)
            return summary
        finally:
            self._backend_pid = None
            conn.close()


def _add_months(value: datetime, months: int) -> datetime:
    index = value.year * 12 + value.month - 1 + months
    return value.replace(year=index // 12, month=index % 12 + 1, day=1)


def _overlaps(part: Partition, lower: datetime, upper: datetime) -> bool:
    if part.is_default:
        return False
    starts_before_upper = part.lower is None or part.lower < upper
    ends_after_lower = part.upper is None or part.upper > lower
    return starts_before_upper and ends_after_lower


def _bound_literal(value: datetime, key: Column) -> str:
    """A partition bound literal in the key column's own type (UTC for timestamptz)."""
    if key.type_name == "date":
        return value.date().isoformat()
    if key.type_name == "timestamp without time zone":
        return value.replace(tzinfo=None).isoformat(sep=" ")
    return value.isoformat(sep=" ")


class PostgresVacuumAnalyzeOperator(_PostgresLifecycleOperator):
    """``VACUUM (ANALYZE, SKIP_LOCKED)`` the tables whose dead tuples pass autovacuum's formula.

    Candidates are the tables of ``schemas`` with ``n_dead_tup > threshold + scale_factor *
    reltuples`` (``pg_stat_user_tables``), or every table in ``tables``. Tables an autovacuum worker is
    processing right now are skipped. Runs on an autocommit connection; adds ``BUFFER_USAGE_LIMIT`` on
    PostgreSQL 16+. ``VACUUM FULL`` (an exclusive lock for the whole rewrite) only with ``full=True``
    and ``allow_full=True``. Reports dead tuples and size before and after each table, and tables
    whose ``autovacuum_enabled`` is off.

    :param postgres_conn_id: the Airflow connection to PostgreSQL.
    :param tables: ``"schema.table"`` names vacuumed whatever their dead tuples. (templated)
    :param schemas: schemas whose tables are picked by the dead-tuple formula (default ``["public"]``
        when ``tables`` is not given). (templated)
    :param threshold: the formula's fixed part (autovacuum_vacuum_threshold).
    :param scale_factor: the formula's share of reltuples (autovacuum_vacuum_scale_factor).
    :param buffer_usage_limit: ring buffer size on PostgreSQL 16+, e.g. ``"256MB"``; None for the default.
    :param full: run VACUUM FULL (needs ``allow_full``).
    :param allow_full: the explicit permission for ``full``.
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
        # Shadows BaseOperator.dry_run(), a render-only helper Airflow 3 never calls: the flag is templated.
        self.dry_run = dry_run  # type: ignore[method-assign,assignment]
        if full and not allow_full:
            raise LifecycleConfigError(
                "full=True rewrites tables under an exclusive lock; also pass allow_full=True"
            )
        _as_positive_int(threshold, field="threshold", minimum=0)
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
                if version >= FORCE_FLUSH_MIN_VERSION:
                    conn.execute("SELECT pg_stat_force_next_flush()")
                conn.execute("SELECT pg_stat_clear_snapshot()")
                after = self._stats(conn, table)
                lock_skipped = any("skipping" in n.lower() for n in notices)
                report.update(
                    {
                        "dead_tuples_after": after[0],
                        "size_after": after[1],
                        "full": full,
                        "seconds": round(took, 3),
                        "skipped_locked": lock_skipped,
                    }
                )
                reports.append(report)
                self.log.info(
                    "Vacuumed %s in %.2fs: dead tuples %d -> %d, size %d -> %d bytes%s",
                    table.qualified,
                    took,
                    before[0],
                    after[0],
                    before[1],
                    after[1],
                    " (skipped: locked)" if lock_skipped else "",
                )
            return {
                "tables": reports,
                "vacuumed": 0 if dry_run else sum(1 for r in reports if not r.get("skipped_locked")),
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
    def _stats(conn: Any, table: TableRef) -> tuple[int, int]:
        """Dead tuples and table size, summed over leaf partitions for a partitioned table."""
        row = conn.execute(
            """
            SELECT coalesce(sum(s.n_dead_tup), 0), coalesce(sum(pg_table_size(c.oid)), 0)
            FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
            WHERE c.oid = %s OR c.oid IN (SELECT relid FROM pg_partition_tree(%s::oid::regclass) WHERE isleaf)
            """,
            (table.oid, table.oid),
        ).fetchone()
        return int(row[0]), int(row[1])


__all__ = [
    "PartitionRetentionMode",
    "PostgresBatchedDeleteOperator",
    "PostgresPartitionPremakeOperator",
    "PostgresPartitionRetentionOperator",
    "PostgresVacuumAnalyzeOperator",
]
