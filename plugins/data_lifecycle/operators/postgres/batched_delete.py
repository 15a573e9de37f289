"""Batched deletes: keyset batches, each its own short transaction, optionally archived to S3 first."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from data_lifecycle import pg_catalog
from data_lifecycle.archive import (
    ArchiveConfig,
    RowTransform,
)
from data_lifecycle.config_fields import MAX_LOAD_FACTOR, MAX_REPLICA_LAG_SECONDS
from data_lifecycle.cutoff import compute_cutoff, parse_retention_days
from data_lifecycle.exceptions import (
    GuardrailTripped,
    LifecycleConfigError,
)
from data_lifecycle.operators.postgres.base import (
    DEFAULT_LOCK_TIMEOUT_SECONDS,
    DEFAULT_POSTGRES_CONN_ID,
    DEFAULT_STATEMENT_TIMEOUT_SECONDS,
    PostgresLifecycleBaseOperator,
    as_pg_ms,
    as_positive_int,
    as_seconds,
    jsonable,
    set_config,
)
from data_lifecycle.operators.postgres.batch_runner import BatchRunner, DeletePlan
from data_lifecycle.operators.postgres.keyset import stride_key
from data_lifecycle.pg_catalog import ChildRef, Column, TableRef
from data_lifecycle.rendered import as_bool

if TYPE_CHECKING:
    from airflow.sdk import Context

# Batch sizing for PostgresBatchedDeleteOperator.
DEFAULT_BATCH_SIZE = 1_000
DEFAULT_MIN_BATCH_SIZE = 100
DEFAULT_MAX_BATCH_SIZE = 50_000
DEFAULT_TARGET_BATCH_SECONDS = 0.5
DEFAULT_MAX_LOCK_RETRIES = 5
DEFAULT_MAX_DELETE_FRACTION = 0.5
DEFAULT_SAMPLE_SIZE = 10
# Placeholders in an extra predicate may not use this prefix: the operator's own parameters do.
RESERVED_PARAM_PREFIX = "lc_"
_FORBIDDEN_PREDICATE = re.compile(r";|--|/\*")


def check_timezone(zone: Any) -> str:
    """An IANA zone name (``Europe/Berlin``), else LifecycleConfigError."""
    from zoneinfo import ZoneInfo

    try:
        ZoneInfo(zone)
    except (ValueError, TypeError, OSError, KeyError):
        raise LifecycleConfigError(
            f"timezone={zone!r} is not an IANA time zone such as 'Europe/Berlin'"
        ) from None
    return str(zone)


def check_predicate_parentheses(predicate: str) -> None:
    """Refuse an ``extra_predicate`` whose parentheses close what they did not open.

    The predicate is composed as ``<timestamp predicate> AND (<extra>)``; ``x = 1) OR (true`` would
    turn that into ``... AND (x = 1) OR (true)`` and match every row. Parentheses are counted outside
    string literals and quoted identifiers; dollar quoting and escape strings are refused (they are
    never needed in a predicate and would make the count unreliable).
    """
    depth, i, n = 0, 0, len(predicate)
    while i < n:
        ch = predicate[i]
        if ch in "'\"":
            if ch == "'" and i > 0 and predicate[i - 1] in "eE" and (i < 2 or not predicate[i - 2].isalnum()):
                raise LifecycleConfigError(
                    f"extra_predicate {predicate!r}: escape strings (E'...') are not allowed"
                )
            end = i + 1
            while True:
                end = predicate.find(ch, end)
                if end < 0:
                    raise LifecycleConfigError(f"extra_predicate {predicate!r}: an unterminated {ch} quote")
                if predicate[end + 1 : end + 2] == ch:  # a doubled quote stands for itself
                    end += 2
                    continue
                break
            i = end + 1
            continue
        if ch == "$" and re.match(r"\$\w*\$", predicate[i:]):
            raise LifecycleConfigError(f"extra_predicate {predicate!r}: dollar quoting is not allowed")
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise LifecycleConfigError(
                    f"extra_predicate {predicate!r} closes a parenthesis it did not open: it could widen"
                    " the retention predicate instead of narrowing it"
                )
        i += 1
    if depth:
        raise LifecycleConfigError(f"extra_predicate {predicate!r}: {depth} unclosed parenthesis(es)")


class PostgresBatchedDeleteOperator(PostgresLifecycleBaseOperator):
    """Delete rows older than a cutoff in short keyset batches, children first, optionally archiving to S3.

    A row is due when ``timestamp_column < cutoff`` (strictly: a row exactly at the cutoff is kept)
    and the optional ``extra_predicate`` holds. ``cutoff = (data_interval_end or dag_run.run_after) -
    retention_days``. Rows go in batches ordered by the primary key (or ``key_columns``); each batch
    is one transaction with ``SET LOCAL lock_timeout``/``statement_timeout`` that locks the batch
    (``SELECT ... FOR UPDATE``; locked rows are waited for, never skipped), deletes the child rows that
    reference it, then exactly the locked keys. The batch size adapts toward
    ``target_batch_seconds``; a lock timeout halves it and retries up to ``max_lock_retries`` times in
    a row, then raises ``LockTimeoutExhausted`` (batches already committed stay deleted).

    Without children, a single integer key with densely spread due rows is deleted in key strides
    (``key > lo AND key <= lo + stride``, no keys read first); other keys delete up to an upper key
    read first (see :mod:`.batch_runner`).

    In archive mode rows are read without locks and written to S3 in the typed, restorable format
    of :mod:`data_lifecycle.archive` under ``{prefix}/{schema}.{table}/cutoff=.../batch_{sha(first
    row)}_{sha(last key)}.rows.gz``, each object verified (size, SHA-256, row count) on a worker
    thread while the next rows are read; then, in a short transaction, only the rows still
    identical to what was archived (same ``xmin``) are deleted (see :mod:`.archive_batch`). Objects
    are sized by bytes (``archive.min_object_bytes``, 128 KiB by default, so S3 lifecycle transitions
    apply), at most ``max_batch_size`` rows; a rerun after a crash cuts the same objects and replaces
    an earlier upload of the same batch. Archive mode cannot be combined with children: their rows
    would be deleted without an archive.

    A deadlock is retried like a lock timeout. A run that is not stopped by a budget and still
    finds due rows at the end (after a second pass from the first key) raises ``ResidueLeft``.

    ``max_runtime`` and ``max_rows`` stop cleanly between batches (``stopped_by`` in the summary,
    ``remaining > 0``); the next run resumes. A run that would delete more than
    ``max_delete_fraction`` of the table raises ``GuardrailTripped`` before deleting anything unless
    ``allow_large_delete``. With ``audit_table`` every real (non-dry) run writes one row, also when it
    deleted nothing, so the ledger shows that the rerun ran.

    :param table: ``"schema.table"`` (schema defaults to ``public``); a table or partitioned table.
    :param timestamp_column: the column compared with the cutoff (timestamptz of any precision, date, or
        timestamp without time zone with ``timezone`` or ``naive_is_utc``).
    :param timezone: the zone a ``timestamp without time zone`` column's values are in
        (``"Europe/Berlin"``); the cutoff is compared in that zone.
    :param naive_is_utc: a ``timestamp without time zone`` column holds UTC (instead of ``timezone``).
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
    :param archive_row_transform: applied to each row before it is archived, e.g. the erasure map's
        pseudonymisation of subject columns.
    :param audit_table: ``"schema.table"`` with the ``app.cleanup_audit`` columns.
    :param batch_size: rows in the first batch (kept within the min and max sizes).
    :param min_batch_size: the smallest batch.
    :param max_batch_size: the largest batch.
    :param target_batch_seconds: the batch duration the size adapts toward.
    :param sleep_between_batches: seconds to pause after each batch.
    :param max_load_p99_factor: pause between batches, adaptively, to keep the cost a batch imposes
        within this factor (our batch latency against the run's fastest, sessions waiting for our
        locks); see :mod:`.load_guard`. None: no load-aware pauses.
    :param max_replica_lag_seconds: wait between batches while a replica (``pg_stat_replication``)
        replays further behind than this; None: no check.
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
        timezone: str | None = None,
        naive_is_utc: bool = False,
        extra_predicate: str | None = None,
        extra_params: dict[str, Any] | None = None,
        key_columns: list[str] | None = None,
        children: list[dict[str, str]] | None = None,
        discover_children: bool = False,
        archive: dict[str, str] | None = None,
        archive_row_transform: RowTransform | None = None,
        audit_table: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        min_batch_size: int = DEFAULT_MIN_BATCH_SIZE,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        target_batch_seconds: float = DEFAULT_TARGET_BATCH_SECONDS,
        sleep_between_batches: float = 0.0,
        max_load_p99_factor: float | None = None,
        max_replica_lag_seconds: float | None = None,
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
        self.timezone = timezone
        self.naive_is_utc = naive_is_utc
        self.retention_days = retention_days
        self.extra_predicate = extra_predicate
        self.extra_params = extra_params
        self.key_columns = key_columns
        self.children = children
        self.discover_children = discover_children
        self.archive = archive
        self.archive_row_transform = archive_row_transform
        self.audit_table = audit_table
        self.batch_size = batch_size
        self.min_batch_size = min_batch_size
        self.max_batch_size = max_batch_size
        self.target_batch_seconds = target_batch_seconds
        self.sleep_between_batches = sleep_between_batches
        self.max_load_p99_factor = max_load_p99_factor
        self.max_replica_lag_seconds = max_replica_lag_seconds
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
            due, total, key_bounds = self._count_due_and_total(conn, plan)
            self.log.info(
                "%s: %d of %s%d rows have %s < %s%s",
                plan.table.qualified,
                due,
                "" if total < math.ceil(due / self.max_delete_fraction) + 1 else "at least ",
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
            summary = BatchRunner(self, conn, plan, due, started=started, key_bounds=key_bounds).run()
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
        if self.timezone is not None:
            check_timezone(self.timezone)
            if self.naive_is_utc:
                raise LifecycleConfigError(f"{self.table}: give timezone or naive_is_utc, not both")
        if self.audit_table is not None:
            pg_catalog.parse_table_name(self.audit_table, field="audit_table")
        if self.extra_predicate is not None:
            if not isinstance(self.extra_predicate, str) or not self.extra_predicate.strip():
                raise LifecycleConfigError("extra_predicate must be a non-empty SQL fragment")
            if _FORBIDDEN_PREDICATE.search(self.extra_predicate):
                raise LifecycleConfigError(
                    f"extra_predicate {self.extra_predicate!r} must be one boolean expression (no ;, --, /*)"
                )
            check_predicate_parentheses(self.extra_predicate)
        for name in ("batch_size", "min_batch_size", "max_batch_size", "sample_size"):
            as_positive_int(getattr(self, name), field=name)
        as_positive_int(self.max_lock_retries, field="max_lock_retries", minimum=0)
        as_positive_int(self.max_rows, field="max_rows", allow_none=True)
        if self.min_batch_size > self.max_batch_size:
            raise LifecycleConfigError("min_batch_size must not exceed max_batch_size")
        as_seconds(self.target_batch_seconds, field="target_batch_seconds")
        as_seconds(self.lock_timeout, field="lock_timeout")
        as_seconds(self.statement_timeout, field="statement_timeout")
        as_seconds(self.max_runtime, field="max_runtime", allow_none=True)
        if self.sleep_between_batches < 0:
            raise LifecycleConfigError("sleep_between_batches must be >= 0")
        factor = self.max_load_p99_factor
        if factor is not None and (
            isinstance(factor, bool)
            or not isinstance(factor, int | float)
            or not 1 < factor <= MAX_LOAD_FACTOR
        ):
            raise LifecycleConfigError(
                f"max_load_p99_factor must be a number in (1, {MAX_LOAD_FACTOR:g}], got {factor!r}"
            )
        lag = as_seconds(self.max_replica_lag_seconds, field="max_replica_lag_seconds", allow_none=True)
        if lag is not None and lag > MAX_REPLICA_LAG_SECONDS:
            raise LifecycleConfigError(
                f"max_replica_lag_seconds must be at most {MAX_REPLICA_LAG_SECONDS:g}, got {lag:g}"
            )
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

    def _plan(self, conn: Any, cutoff: datetime, extra_params: dict[str, Any]) -> DeletePlan:
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
        if ts.is_naive_timestamp:
            zone = self.timezone or ("UTC" if self.naive_is_utc else None)
            if zone is None:
                raise LifecycleConfigError(
                    f"timestamp_column={ts.name!r}: {table.qualified}.{ts.name} is {ts.type_name}, a time"
                    " without a zone; declare the zone its values are in (timezone: Europe/Berlin) or"
                    " naive_is_utc: true"
                )
            # The cutoff as a wall-clock time in the column's zone: the index on the column is used.
            where = sql.SQL("{} < (%(lc_cutoff)s::timestamptz AT TIME ZONE %(lc_zone)s::text)").format(
                ts.ident
            )
            extra_params = {**extra_params, "lc_zone": zone}
        else:
            where = sql.SQL("{} < %(lc_cutoff)s").format(ts.ident)
        if self.extra_predicate:
            where = sql.SQL("{} AND ({})").format(where, sql.SQL(self.extra_predicate))
        plan = DeletePlan(
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

    def _count_due_and_total(self, conn: Any, plan: DeletePlan) -> tuple[int, int, tuple[int, int] | None]:
        """The due rows, exactly, the table's rows, exactly wherever the guardrail decides, and, for a
        single integer key, the smallest and largest due key (the range stride batches step through).

        The guardrail trips when ``due > fraction * total``, i.e. when the table has fewer than
        ``due / fraction`` rows, so the total is counted over at most ``ceil(due / fraction) + 1``
        rows: exact whenever it could trip, bounded in cost (about ``due / fraction`` rows) otherwise.
        Statistics (``reltuples``) only fill in the reported total once that bound is passed.
        """
        from psycopg import sql

        stride = stride_key(plan) if plan.archive is None and not plan.children else None
        bounds = sql.SQL(", min({k}), max({k})").format(k=stride.ident) if stride is not None else sql.SQL("")
        with conn.transaction():
            set_config(conn, "statement_timeout", as_pg_ms(self.statement_timeout_seconds))
            row = conn.execute(
                sql.SQL("SELECT count(*){b} FROM {t} WHERE {w}").format(
                    b=bounds, t=plan.table.ident, w=plan.where
                ),
                plan.params,
            ).fetchone()
            due = int(row[0])
            bound = math.ceil(due / self.max_delete_fraction) + 1
            counted = int(
                conn.execute(
                    sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT {}) AS bounded").format(
                        plan.table.ident, sql.Literal(bound)
                    )
                ).fetchone()[0]
            )
            total = (
                counted if counted < bound else max(counted, int(pg_catalog.estimated_rows(conn, plan.table)))
            )
        key_bounds = (int(row[1]), int(row[2])) if stride is not None and due else None
        return due, max(total, due), key_bounds

    def _dry_run_summary(
        self, *, conn: Any, plan: DeletePlan, due: int, total: int, too_large: bool, started: float
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
        sample_keys = jsonable([list(row) for row in sample])
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

    def _write_audit(self, conn: Any, plan: DeletePlan, context: Context, summary: dict[str, Any]) -> None:
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
    def statement_timeout_seconds(self) -> float:
        return (
            as_seconds(self.statement_timeout, field="statement_timeout") or DEFAULT_STATEMENT_TIMEOUT_SECONDS
        )
