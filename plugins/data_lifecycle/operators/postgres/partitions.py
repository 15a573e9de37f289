"""Range partitions: retention (detach, then drop, keep or archive) and premake of future partitions."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from data_lifecycle import pg_catalog
from data_lifecycle.archive import (
    ArchiveConfig,
    RowTransform,
    S3ArchiveWriter,
    partition_key,
)
from data_lifecycle.cutoff import compute_cutoff, compute_cutoff_months, parse_retention_days, run_anchor
from data_lifecycle.exceptions import (
    GuardrailTripped,
    LifecycleConfigError,
)
from data_lifecycle.kill_switch import STOPPED_BY as KILL_SWITCH_STOP
from data_lifecycle.kill_switch import KillSwitch
from data_lifecycle.operators.postgres.base import (
    DEFAULT_POSTGRES_CONN_ID,
    PostgresLifecycleBaseOperator,
    as_pg_ms,
    as_positive_int,
    as_seconds,
    scalar,
    set_config,
)
from data_lifecycle.operators.postgres.intervals import (
    INTERVALS,
    LABEL_FORMATS,
    MAX_SUFFIX_LENGTH,
    SUFFIX_FORMATS,
    add_months,
    bounded,
    infer_interval,
    next_period,
    period_start,
    uncovered,
)
from data_lifecycle.pg_catalog import Column, Partition, TableRef
from data_lifecycle.rendered import as_bool

if TYPE_CHECKING:
    from airflow.sdk import Context

# Partition maintenance.
DEFAULT_MONTHS_AHEAD = 3
MAX_MONTHS_AHEAD = 36
DEFAULT_DDL_LOCK_TIMEOUT_SECONDS = 5.0
DEFAULT_ARCHIVE_CHUNK_ROWS = 50_000
# Rows per transaction when old rows are deleted from a DEFAULT partition.
DEFAULT_PARTITION_DELETE_BATCH = 5_000
# COMMENT put on a partition before it is detached, so a run interrupted between detach and drop is
# finished by the next one (a detached table is no longer listed in pg_inherits).
DETACH_MARKER = "data_lifecycle: detached by partition retention from {parent}"


class PartitionRetentionMode(StrEnum):
    """What happens to an expired partition once detached."""

    DROP = "drop"
    ARCHIVE_SCHEMA = "archive_schema"
    S3 = "s3"


class PostgresPartitionRetentionOperator(PostgresLifecycleBaseOperator):
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
    :param archive_row_transform: applied to each row before it is archived (mode ``s3``), e.g. the
        erasure map's pseudonymisation of subject columns.
    :param delete_default_rows: delete the DEFAULT partition's rows older than the cutoff, in short
        batches (they can never go by dropping a partition); otherwise they are only counted
        (``default_partition_old_rows`` in the summary, and a warning).
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
        archive_row_transform: RowTransform | None = None,
        delete_default_rows: bool = False,
        dry_run: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(postgres_conn_id=postgres_conn_id, **kwargs)
        self.table = table
        self.delete_default_rows = delete_default_rows
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
        self.archive_row_transform = archive_row_transform
        # Shadows BaseOperator.dry_run(), a render-only helper Airflow 3 never calls: the flag is templated.
        self.dry_run = dry_run  # type: ignore[method-assign,assignment]
        pg_catalog.parse_table_name(table)
        as_seconds(lock_timeout, field="lock_timeout")
        as_positive_int(archive_chunk_rows, field="archive_chunk_rows")
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
                "default_partition": None,
                "default_partition_old_rows": 0,
                "default_partition_deleted": 0,
                "seconds": 0.0,
                "dry_run": dry_run,
                "stopped_by": None,
            }
            switch = KillSwitch(parent.qualified)

            def stop() -> bool:  # asked before each partition: the one in hand is finished first
                if not switch.tripped():
                    return False
                summary["stopped_by"] = KILL_SWITCH_STOP
                return True

            if dry_run:
                self.log.info("Dry run: would detach %s from %s", summary["expired"], parent.qualified)
            else:
                for part in pending_live:
                    if stop():
                        break
                    self._detach(conn, parent, part, has_default, summary, mark=False)
                    self.log.warning(
                        "%s: finalized a pending detach of %s, which is not expired; left it detached",
                        parent.qualified,
                        part.table.qualified,
                    )
                for table in leftovers:
                    if stop():
                        break
                    self.log.info(
                        "%s: finishing %s, detached by an earlier run", parent.qualified, table.qualified
                    )
                    self._dispose(conn, parent, table, cutoff, summary)
                for part in expired:
                    if stop():
                        break
                    self._detach(conn, parent, part, has_default, summary, mark=True)
                    self._dispose(conn, parent, part.table, cutoff, summary)
            default = next((p for p in parts if p.is_default), None)
            if default is not None:
                self._default_rows(conn, default.table, guard, cutoff, summary, delete=not dry_run, stop=stop)
            if summary["stopped_by"]:
                self.log.warning(
                    "%s: stopped by the kill switch; %d of %d expired partition(s) removed, the next run"
                    " resumes",
                    parent.qualified,
                    len(summary["dropped"]) + len(summary["moved"]),
                    len(expired),
                )
            if not summary["expired"] and not leftovers:
                self.log.info(
                    "%s: no partition ends at or before %s; nothing to do", parent.qualified, cutoff
                )
            summary["seconds"] = round(time.monotonic() - started, 3)
            return summary
        finally:
            self._backend_pid = None
            conn.close()

    def _default_rows(
        self,
        conn: Any,
        default: TableRef,
        guard: Column,
        cutoff: datetime,
        summary: dict[str, Any],
        *,
        delete: bool,
        stop: Callable[[], bool],
    ) -> None:
        """Count (and with ``delete_default_rows`` delete) the DEFAULT partition's rows older than the cutoff."""
        from psycopg import sql

        due = sql.SQL("{} < %(cutoff)s").format(guard.ident)
        old = int(
            scalar(
                conn,
                sql.SQL("SELECT count(*) FROM {} WHERE {}").format(default.ident, due),
                {"cutoff": cutoff},
            )
        )
        summary["default_partition"] = default.qualified
        summary["default_partition_old_rows"] = old
        if not old:
            return
        if not (self.delete_default_rows and delete):
            self.log.warning(
                "%s: the DEFAULT partition holds %d rows older than %s; dropping partitions never removes"
                " them (set default_partition_rows: delete in the policy to delete them)",
                default.qualified,
                old,
                cutoff.isoformat(),
            )
            return
        lock_timeout = as_pg_ms(
            as_seconds(self.lock_timeout, field="lock_timeout") or DEFAULT_DDL_LOCK_TIMEOUT_SECONDS
        )
        batch = sql.SQL(
            "DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE {w} LIMIT {n} FOR UPDATE)) AND {w}"
        ).format(t=default.ident, w=due, n=sql.Literal(DEFAULT_PARTITION_DELETE_BATCH))
        while not stop():
            with conn.transaction():
                set_config(conn, "lock_timeout", lock_timeout)
                deleted = conn.execute(batch, {"cutoff": cutoff}).rowcount
            summary["default_partition_deleted"] += deleted
            if deleted == 0:
                break
        self.log.info(
            "%s: deleted %d rows older than %s from the DEFAULT partition",
            default.qualified,
            summary["default_partition_deleted"],
            cutoff.isoformat(),
        )

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

        lock_timeout = as_pg_ms(
            as_seconds(self.lock_timeout, field="lock_timeout") or DEFAULT_DDL_LOCK_TIMEOUT_SECONDS
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
                set_config(conn, "lock_timeout", lock_timeout)
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

        lock_timeout = as_pg_ms(
            as_seconds(self.lock_timeout, field="lock_timeout") or DEFAULT_DDL_LOCK_TIMEOUT_SECONDS
        )
        if self.mode is PartitionRetentionMode.S3:
            self._archive_partition(conn, parent, table, summary)
        with conn.transaction():
            set_config(conn, "lock_timeout", lock_timeout)
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

        config = ArchiveConfig.from_value(self.archive or {})
        writer = S3ArchiveWriter(
            S3Hook(aws_conn_id=config.aws_conn_id).get_conn(), config.bucket, self.archive_row_transform
        )
        try:
            order = [k.ident for k in pg_catalog.key_columns(conn, table)]
        except LifecycleConfigError:
            order = [sql.Identifier(name) for name in pg_catalog.columns(conn, table)]
        columns = list(pg_catalog.columns(conn, table).values())
        chunk = int(self.archive_chunk_rows)
        part_no = 0
        # Rows as their text form (the typed archive format); restore_archive loads them back exactly.
        with conn.transaction(), conn.cursor(name=f"lc_archive_{table.oid}") as cur:
            cur.execute(
                sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
                    # Aliased: a bare key name in ORDER BY would otherwise sort by the text column.
                    sql.SQL(", ").join(
                        sql.SQL("{}::text AS {}").format(c.ident, sql.Identifier(f"lc_{i}"))
                        for i, c in enumerate(columns)
                    ),
                    table.ident,
                    sql.SQL(", ").join(order),
                )
            )
            while True:
                rows = cur.fetchmany(chunk)
                if not rows and part_no > 0:
                    break
                encoder = writer.encoder(parent.qualified, [(c.name, c.type_name) for c in columns])
                for row in rows:
                    encoder.add(row)
                key = partition_key(config.prefix, parent.schema, parent.name, table.name, part_no)
                archived = writer.write(key, encoder)
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


class PostgresPartitionPremakeOperator(PostgresLifecycleBaseOperator):
    """Create the missing range partitions from the run's period through ``months_ahead`` months later.

    The interval (daily, weekly, monthly or yearly) is ``interval`` if given, else inferred from the
    existing partitions' bounds (monthly when there are none). Daily and weekly partitions follow
    the existing grid. Exactly the ranges no partition covers, from the start of the run's period
    up to the end of the month ``months_ahead`` months after the run's month, are created, named
    ``{table}_YYYY_MM_DD`` (daily, weekly), ``{table}_YYYY_MM`` (monthly) or ``{table}_YYYY``
    (yearly). Ranges missing in the past (between the oldest partition and the run's period) are
    not created but reported as ``past_gaps``: inserts of rows for them fail (or land in DEFAULT).

    A range for which the DEFAULT partition already holds rows cannot be created (PostgreSQL would
    refuse): it is skipped, reported in the summary and logged as a warning; so is a DEFAULT
    partition holding any rows.

    :param table: the partitioned parent, ``"schema.table"``.
    :param postgres_conn_id: the Airflow connection to PostgreSQL.
    :param months_ahead: future months kept ready after the current one. (templated)
    :param interval: ``"daily"``, ``"weekly"``, ``"monthly"`` or ``"yearly"``; None to infer it.
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
        interval: str | None = None,
        lock_timeout: timedelta | float = DEFAULT_DDL_LOCK_TIMEOUT_SECONDS,
        dry_run: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(postgres_conn_id=postgres_conn_id, **kwargs)
        self.table = table
        self.months_ahead = months_ahead
        self.interval = interval
        self.lock_timeout = lock_timeout
        # Shadows BaseOperator.dry_run(), a render-only helper Airflow 3 never calls: the flag is templated.
        self.dry_run = dry_run  # type: ignore[method-assign,assignment]
        _, name = pg_catalog.parse_table_name(table)
        if interval is not None and interval not in INTERVALS:
            raise LifecycleConfigError(f"interval={interval!r} is not one of {list(INTERVALS)}")
        if len(name) + MAX_SUFFIX_LENGTH > pg_catalog.MAX_IDENTIFIER_LENGTH:
            raise LifecycleConfigError(f"{table}: the name is too long to add a _YYYY_MM_DD suffix")
        as_seconds(lock_timeout, field="lock_timeout")

    def execute(self, context: Context) -> dict[str, Any]:
        started = time.monotonic()
        months = as_positive_int(self.months_ahead, field="months_ahead", minimum=0)
        assert months is not None
        if months > MAX_MONTHS_AHEAD:
            raise LifecycleConfigError(f"months_ahead={months} is above the limit of {MAX_MONTHS_AHEAD}")
        dry_run = as_bool(self.dry_run, field="dry_run")
        anchor = run_anchor(context)
        conn = self._connect()
        try:
            parent = pg_catalog.resolve_table(conn, self.table)
            key = pg_catalog.range_partition_key(conn, parent)
            parts = pg_catalog.partitions(conn, parent)
            interval = self.interval or infer_interval(parts, table=parent.qualified) or "monthly"
            grid = bounded(parts)
            origin = grid[-1].lower if grid else None
            default = next((p for p in parts if p.is_default), None)
            default_rows = self._default_rows(conn, parent, default)
            first = period_start(anchor, interval, origin)
            horizon = add_months(datetime(anchor.year, anchor.month, 1, tzinfo=UTC), months + 1)
            summary: dict[str, Any] = {
                "table": parent.qualified,
                "anchor": anchor.isoformat(),
                "months_ahead": months,
                "interval": interval,
                "interval_declared": self.interval is not None,
                "created": [],
                "existing": [],
                "blocked_by_default": [],
                "past_gaps": [],
                "default_partition": default.table.qualified if default else None,
                "default_partition_rows": int(default_rows),
                "seconds": 0.0,
                "dry_run": dry_run,
            }
            if grid and grid[0].lower is not None and grid[0].lower < first:
                gaps = uncovered(grid[0].lower, first, parts)
                summary["past_gaps"] = [[lo.isoformat(), hi.isoformat()] for lo, hi in gaps]
                if gaps:
                    self.log.warning(
                        "%s: no partition covers %d past range(s); rows for them cannot be inserted: %s",
                        parent.qualified,
                        len(gaps),
                        summary["past_gaps"][:10],
                    )
            lower = first
            while lower < horizon:
                upper = next_period(lower, interval)
                missing = uncovered(lower, upper, parts)
                if not missing:
                    summary["existing"].append(f"{lower:{LABEL_FORMATS[interval]}}")
                for lo, hi in missing:
                    # A piece of a period (next to a partition of another width) is named by its day.
                    fmt = SUFFIX_FORMATS["daily" if (lo, hi) != (lower, upper) else interval]
                    self._create(
                        conn, parent, key, default, default_rows, f"{parent.name}_{lo:{fmt}}", lo, hi, summary
                    )
                lower = upper
            summary["seconds"] = round(time.monotonic() - started, 3)
            return summary
        finally:
            self._backend_pid = None
            conn.close()

    def _default_rows(self, conn: Any, parent: TableRef, default: Partition | None) -> int:
        from psycopg import sql

        if default is None:
            return 0
        rows = int(scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(default.table.ident)))
        if rows:
            self.log.warning(
                "%s: the DEFAULT partition %s holds %d rows; move them into real partitions",
                parent.qualified,
                default.table.qualified,
                rows,
            )
        return rows

    def _create(  # noqa: PLR0917
        self,
        conn: Any,
        parent: TableRef,
        key: Column,
        default: Partition | None,
        default_rows: int,
        name: str,
        lower: datetime,
        upper: datetime,
        summary: dict[str, Any],
    ) -> None:
        from psycopg import sql

        if default is not None and default_rows:
            blocking = scalar(
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
                    lower,
                    upper,
                )
                summary["blocked_by_default"].append(f"{lower:{LABEL_FORMATS[summary['interval']]}}")
                return
        clash = conn.execute(
            "SELECT 1 FROM pg_class WHERE relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = %s)"
            " AND relname = %s",
            (parent.oid, name),
        ).fetchone()
        if clash:
            raise LifecycleConfigError(
                f"{parent.schema}.{name} exists but is not a partition of {parent.qualified}"
            )
        if summary["dry_run"]:
            self.log.info("Dry run: would create %s.%s [%s, %s)", parent.schema, name, lower, upper)
            summary["created"].append(f"{parent.schema}.{name}")
            return
        lock_timeout = as_pg_ms(
            as_seconds(self.lock_timeout, field="lock_timeout") or DEFAULT_DDL_LOCK_TIMEOUT_SECONDS
        )
        with conn.transaction():
            set_config(conn, "lock_timeout", lock_timeout)
            conn.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(parent.schema, name),
                    parent.ident,
                    sql.Literal(_bound_literal(lower, key)),
                    sql.Literal(_bound_literal(upper, key)),
                )
            )
        summary["created"].append(f"{parent.schema}.{name}")
        self.log.info("Created %s.%s for [%s, %s)", parent.schema, name, lower, upper)


def _bound_literal(value: datetime, key: Column) -> str:
    """A partition bound literal in the key column's own type (UTC for timestamptz)."""
    if key.type_oid == pg_catalog.DATE_OID:
        return value.date().isoformat()
    if key.type_oid == pg_catalog.TIMESTAMP_OID:
        return value.replace(tzinfo=None).isoformat(sep=" ")
    return value.isoformat(sep=" ")
