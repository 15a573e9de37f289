"""The batch loop of :class:`PostgresBatchedDeleteOperator`: adaptive size, lock retries, budgets.

Three ways to cut a batch, chosen per table:

* **stride** (a single integer key, due rows densely spread over it): ``DELETE ... WHERE due AND
  key > lo AND key <= lo + stride``; the stride adapts to the previous batch's time, so no batch
  reads its keys first. It runs from the smallest to the largest due key counted at the start and
  falls back to keyset batches where the due rows thin out (fewer than ``STRIDE_MIN_DENSITY`` per key).
* **keyset** (composite or non-integer keys, sparse keys): read the batch's upper key, then delete
  the due rows up to it.
* **locked** (children): lock the batch's rows, delete the children that reference them, then the rows.

Archive mode has its own pipeline (:mod:`.archive_batch`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
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
from data_lifecycle.operators.postgres.archive_batch import ArchivePipeline
from data_lifecycle.operators.postgres.base import (
    DEFAULT_LOCK_TIMEOUT_SECONDS,
    as_pg_ms,
    as_seconds,
    set_config,
)
from data_lifecycle.operators.postgres.keyset import (
    MAX_PASSES,
    STRIDE_TYPES,
    after_key,
    key_list,
    select_batch,
    stride_key,
)
from data_lifecycle.operators.postgres.load_guard import LoadGovernor, ReplicaLagging
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
# Stride batches need at least this many due rows per key value (counted at the start); a stride
# batch that finds fewer than half of it hands the rest of the pass to keyset batches.
STRIDE_MIN_DENSITY = 0.25


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
    max_load_p99_factor: float | None
    max_replica_lag_seconds: float | None

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


# A committed batch: rows deleted, child rows deleted by table, (first, last) key, sessions it blocked.
BatchResult = tuple[int, dict[str, int], tuple[tuple[Any, ...], tuple[Any, ...]], int]


@dataclass
class Progress:
    """What a run has done so far (the summary's counters)."""

    deleted: int = 0
    batches: int = 0
    passes: int = 1
    archived_rows: int = 0
    replaced: int = 0
    changed: int = 0  # archive mode: rows changed after they were archived, left for a later batch
    files: list[str] = field(default_factory=list)
    children: dict[str, int] = field(default_factory=dict)
    stopped_by: str | None = None
    batch_seconds: float = 0.0  # inside the batches themselves (no planning, pauses or final count)


class BatchRunner:
    """The batch loop of PostgresBatchedDeleteOperator: adaptive size, lock retries, budgets."""

    def __init__(
        self,
        op: BatchSettings,
        conn: Any,
        plan: DeletePlan,
        due: int,
        *,
        started: float,
        key_bounds: tuple[int, int] | None = None,
    ) -> None:
        self.op = op
        self.started = started
        self.log = op.log
        self.conn = conn
        self.plan = plan
        self.due = due
        self.key_bounds = key_bounds
        self.lock_timeout = as_seconds(op.lock_timeout, field="lock_timeout") or DEFAULT_LOCK_TIMEOUT_SECONDS
        self.statement_timeout = op.statement_timeout_seconds
        self.max_runtime = as_seconds(op.max_runtime, field="max_runtime", allow_none=True)
        self.kill_switch = KillSwitch(plan.table.qualified)
        self.governor = LoadGovernor.from_settings(op, conn)
        self.writer: S3ArchiveWriter | None = None
        self.columns: list[Column] = []
        if plan.archive is not None:
            self.columns = list(pg_catalog.columns(conn, plan.table).values())
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            client = S3Hook(aws_conn_id=plan.archive.aws_conn_id).get_conn()
            self.writer = S3ArchiveWriter(client, plan.archive.bucket, op.archive_row_transform)

    # -- shared by every loop ---------------------------------------------------------------------

    def stop_reason(self, progress: Progress) -> str | None:
        """The budget (or the kill switch) that ends the run before the next batch, if any."""
        if self.max_runtime is not None and time.monotonic() - self.started >= self.max_runtime:
            return "max_runtime"
        if self.kill_switch.tripped():  # between batches: the last one is committed
            return KILL_SWITCH_STOP
        if self.op.max_rows is not None and progress.deleted >= self.op.max_rows:
            return "max_rows"
        return None

    def rows_allowed(self, progress: Progress, size: int) -> int:
        """Rows the next batch may take: ``size`` within what ``max_rows`` leaves."""
        if self.op.max_rows is None:
            return size
        return max(0, min(size, self.op.max_rows - progress.deleted))

    def between_batches(self, took: float, rows: int, blocked: int = 0) -> str | None:
        """After each committed batch: the load-aware pause, then ``sleep_between_batches``.

        Returns a reason to stop the run (a replica that stays too far behind), else None.
        """
        pause = 0.0
        if self.governor is not None:
            try:
                pause = self.governor.pause_after(took, rows, blocked)
            except ReplicaLagging as exc:
                self.log.warning("%s: %s; stopping for the next run", self.plan.table.qualified, exc)
                return "max_replica_lag_seconds"
        pause += self.op.sleep_between_batches
        if pause > 0:
            time.sleep(pause)
        return None

    def lock_failed(self, exc: Exception, failures: int, progress: Progress, retry: str = "retrying") -> None:
        """Log a lock timeout or deadlock (the batch rolled back), or raise after too many in a row."""
        from psycopg.errors import DeadlockDetected

        reason = "Deadlock" if isinstance(exc, DeadlockDetected) else "Lock timeout"
        if failures > self.op.max_lock_retries:
            raise LockTimeoutExhausted(
                f"{self.plan.table.qualified}: {failures} batches in a row waited longer than"
                f" lock_timeout={self.lock_timeout}s for rows or tables locked by other sessions"
                " (or deadlocked with them);"
                f" stopped after deleting {progress.deleted} rows in {progress.batches} batches (committed;"
                " the next run resumes)."
            ) from None
        self.log.warning(
            "%s on %s (attempt %d of %d); %s",
            reason,
            self.plan.table.qualified,
            failures,
            self.op.max_lock_retries,
            retry,
        )
        time.sleep(LOCK_RETRY_BACKOFF_SECONDS * failures)

    def transaction_settings(self) -> None:
        set_config(self.conn, "lock_timeout", as_pg_ms(self.lock_timeout))
        set_config(self.conn, "statement_timeout", as_pg_ms(self.statement_timeout))

    # -- the run ----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        progress = Progress(children={c.table.qualified: 0 for c in self.plan.children})
        if self.writer is not None:
            remaining = ArchivePipeline(self, self.writer, self.columns).run(progress)
        else:
            remaining = self._delete_loop(progress)
        return self._finish(progress, remaining)

    def _delete_loop(self, progress: Progress) -> tuple[int, bool] | None:
        """Stride, keyset or locked batches until nothing is due or a budget stops the run.

        Returns the due rows left when the loop counted them at the end of its last pass.
        """
        from psycopg.errors import DeadlockDetected, LockNotAvailable

        op, plan = self.op, self.plan
        size = min(op.max_batch_size, max(op.min_batch_size, op.batch_size))
        stride_end: int | None = None
        stride = 0
        last_key: tuple[Any, ...] | None = None
        stride_column = stride_key(plan)
        if (
            self.key_bounds is not None
            and not plan.children
            and stride_column is not None
            and self.key_bounds[0] > STRIDE_TYPES[stride_column.regtype]
        ):
            low, high = self.key_bounds
            density = self.due / max(high - low + 1, 1)
            if density >= STRIDE_MIN_DENSITY:
                stride_end, last_key = high, (low - 1,)
                stride = self._clamp_stride(size / density)
                self.log.info(
                    "%s: stride batches over keys %d..%d (%.2f due rows per key)",
                    plan.table.qualified,
                    low,
                    high,
                    density,
                )
        lock_failures = 0
        while True:
            if (reason := self.stop_reason(progress)) is not None:
                progress.stopped_by = reason
                return None
            limit = self.rows_allowed(progress, size)
            batch_started = time.monotonic()
            result: BatchResult | None
            striding = stride_end is not None and last_key is not None and last_key[0] < stride_end
            try:
                if striding:
                    assert stride_end is not None and last_key is not None
                    # Unique integer keys hold at most one row per value: the stride bounds the rows.
                    upper = min(last_key[0] + self.rows_allowed(progress, stride), stride_end)
                    result = self._stride_batch(last_key[0], upper)
                else:
                    result = self._one_batch(limit, last_key)
            except (LockNotAvailable, DeadlockDetected) as exc:
                # A deadlock (another cleanup or an erasure touching the same rows) rolled this
                # batch back like a lock timeout does: retry it, smaller.
                lock_failures += 1
                size = max(op.min_batch_size, int(size * MIN_BATCH_SHRINK))
                stride = self._clamp_stride(stride * MIN_BATCH_SHRINK)
                retry = f"retrying with batch size {stride if striding else size}{' (key stride)' if striding else ''}"
                self.lock_failed(exc, lock_failures, progress, retry)
                continue
            lock_failures = 0
            took = time.monotonic() - batch_started
            if result is None:
                # The pass is over: the keyset found nothing more, or the stride reached the last due key.
                stride_end = None
                remaining = self._remaining()
                if remaining[0] and progress.passes < MAX_PASSES:
                    progress.passes += 1
                    last_key = None
                    self.log.info(
                        "%s: due rows appeared behind the cursor; one more pass", plan.table.qualified
                    )
                    continue
                return remaining
            count, child_counts, key_range, blocked = result
            progress.batches += 1
            progress.batch_seconds += took
            progress.deleted += count
            last_key = key_range[1]
            for name, n in child_counts.items():
                progress.children[name] += n
            target = op.target_batch_seconds * (self.governor.batch_scale if self.governor else 1.0)
            factor = min(MAX_BATCH_GROWTH, max(MIN_BATCH_SHRINK, target / max(took, 1e-3)))
            if striding:
                span = key_range[1][0] - key_range[0][0]
                if count < span * STRIDE_MIN_DENSITY / 2:
                    self.log.info("%s: due rows thin out; keyset batches from here", plan.table.qualified)
                    stride_end = None
                stride = self._clamp_stride(stride * factor)
            else:
                size = min(op.max_batch_size, max(op.min_batch_size, int(size * factor)))
            self._log_progress(progress.batches, count, progress.deleted, took)
            if (reason := self.between_batches(took, count, blocked)) is not None:
                progress.stopped_by = reason
                return None
            if striding and stride_end is not None and last_key[0] >= stride_end:
                # The stride reached the largest due key: end the pass without walking the keys after it.
                stride_end = None
                remaining = self._remaining()
                if not remaining[0]:
                    return remaining
                if progress.passes >= MAX_PASSES:
                    return remaining
                progress.passes += 1
                last_key = None
                self.log.info("%s: due rows left outside the stride; one more pass", plan.table.qualified)

    def _clamp_stride(self, stride: float) -> int:
        return int(min(self.op.max_batch_size, max(self.op.min_batch_size, stride)))

    def _finish(self, progress: Progress, remaining_counted: tuple[int, bool] | None) -> dict[str, Any]:
        plan = self.plan
        remaining, remaining_exact = remaining_counted or self._remaining()
        stopped_by = progress.stopped_by
        if stopped_by is not None and remaining == 0:
            stopped_by = None
        if stopped_by is None and remaining:
            # A green run never leaves due rows behind without saying why.
            raise ResidueLeft(
                f"{plan.table.qualified}: {remaining}{'' if remaining_exact else '+'} due rows are still there"
                f" after deleting {progress.deleted} rows in {progress.batches} batches and"
                f" {progress.passes} passes (rows made due behind the cursor, rows changed after they were"
                " archived, or keys the batches cannot reach); the next run retries them."
            )
        if stopped_by:
            self.log.warning(
                "%s: stopped by %s after %d rows; %d due rows remain for the next run",
                plan.table.qualified,
                stopped_by,
                progress.deleted,
                remaining,
            )
        self.log.info(
            "%s: deleted %d rows in %d batches", plan.table.qualified, progress.deleted, progress.batches
        )
        summary = {
            "table": plan.table.qualified,
            "cutoff": plan.cutoff.isoformat(),
            "deleted": progress.deleted,
            "batches": progress.batches,
            "remaining": remaining,
            "remaining_exact": remaining_exact,
            "seconds": round(time.monotonic() - self.started, 3),
            "children": progress.children,
            "archived_files": progress.files[:MAX_SUMMARY_FILES],
            "archived_files_total": len(progress.files),
            "archived_rows": progress.archived_rows,
            "archive_objects_replaced": progress.replaced,
            "dry_run": False,
            "stopped_by": stopped_by,
            "batch_seconds": round(progress.batch_seconds, 3),
        }
        if plan.archive is not None:
            summary["archived_rows_changed"] = progress.changed
        if self.governor is not None:
            summary["load_pauses"] = self.governor.summary()
        return summary

    # -- one batch --------------------------------------------------------------------------------

    def _stride_batch(self, low: int, high: int) -> BatchResult:
        """Delete the due rows with ``low < key <= high``: one statement, no keys read first.

        Like the keyset batch, the DELETE re-checks the predicate on each row it locks.
        """
        from psycopg import sql

        plan = self.plan
        key = plan.keys[0]
        cast = sql.SQL(key.regtype)
        with self.conn.transaction():
            self.transaction_settings()
            cur = self.conn.execute(
                sql.SQL(
                    "DELETE FROM {t} WHERE {w} AND {k} > %(lc_low)s::{c} AND {k} <= %(lc_high)s::{c}"
                ).format(t=plan.table.ident, w=plan.where, k=key.ident, c=cast),
                {**plan.params, "lc_low": low, "lc_high": high},
            )
            count = cur.rowcount
            blocked = self._blocked_sessions()
        return count, {}, ((low,), (high,)), blocked

    def _one_batch(self, limit: int, last_key: tuple[Any, ...] | None) -> BatchResult | None:
        """Lock, delete children, delete one batch; None when nothing is due past ``last_key``."""
        from psycopg import sql
        from psycopg.rows import dict_row

        plan = self.plan
        key_names = [k.name for k in plan.keys]
        where, params = after_key(plan, last_key)
        if not plan.children:
            return self._range_batch(limit, where, params)
        wanted = list(dict.fromkeys(key_names + [c.parent_column for c in plan.children]))
        select_list = sql.SQL(", ").join(sql.Identifier(n) for n in wanted)
        with self.conn.transaction():
            self.transaction_settings()
            with self.conn.cursor(row_factory=dict_row) as cur:
                rows = cur.execute(
                    select_batch(plan, select_list, where, limit, lock=True), params
                ).fetchall()
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
                    t=plan.table.ident, k=key_list(plan), a=arrays
                ),
                [list(col) for col in zip(*keys, strict=True)],
            )
            if cur.rowcount != len(keys):
                raise VerificationFailed(
                    f"{plan.table.qualified}: locked {len(keys)} rows but the delete matched {cur.rowcount};"
                    " the batch was rolled back"
                )
            blocked = self._blocked_sessions()
        return len(keys), child_counts, (keys[0], keys[-1]), blocked

    def _range_batch(self, limit: int, where: Any, params: dict[str, Any]) -> BatchResult | None:
        """One batch by key range: find the batch's upper key, then delete the due rows up to it.

        Used when no key has to leave the database first (no archive, no children): the keys never
        travel to Python and back, and rows are locked only by the DELETE itself, which re-checks
        the predicate, so a row changed since the upper key was read is kept if no longer due.
        """
        from psycopg import sql

        plan = self.plan
        keys = key_list(plan)
        descending = sql.SQL(", ").join(sql.SQL("{} DESC").format(k.ident) for k in plan.keys)
        upper_sql = sql.SQL("SELECT {k} FROM ({b}) AS batch ORDER BY {d} LIMIT 1").format(
            k=keys, b=select_batch(plan, keys, where, limit, lock=False), d=descending
        )
        with self.conn.transaction():
            self.transaction_settings()
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
                    t=plan.table.ident, w=where, k=keys, u=sql.SQL(", ").join(placeholders)
                ),
                bounds,
            )
            blocked = self._blocked_sessions()
        return cur.rowcount, {}, (upper_key, upper_key), blocked

    def _blocked_sessions(self) -> int:
        """Sessions waiting for a lock this batch holds, counted just before it commits (load-aware only)."""
        if self.governor is None:
            return 0
        return self.governor.blocked_by_us()

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

    def _log_progress(self, batches: int, count: int, deleted: int, took: float) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
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
