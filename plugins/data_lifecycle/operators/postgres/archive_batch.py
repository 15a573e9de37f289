"""Archive mode of :class:`PostgresBatchedDeleteOperator`: read without locks, upload while reading on,
delete only what is unchanged.

1. **Read** up to ``max_batch_size`` due rows after the read cursor, in key order, as their
   PostgreSQL text form (``column::text``, see :mod:`data_lifecycle.archive`) with each row's
   ``xmin``, in a short read-only transaction: no row locks, nothing held across a network call.
2. **Encode** them into the open object, cut at the first row where its compressed size reaches
   ``min_object_bytes`` (measured every 16 KiB of input) or at ``max_batch_size`` rows. The cut
   depends only on the rows from the object's first row on, so a rerun after a crash cuts the same
   objects and writes the same keys.
3. **Upload and verify** each cut object on a worker thread (size, SHA-256, row count), with up to
   ``PIPELINE_DEPTH`` objects in flight while the main thread reads on.
4. **Delete**, oldest object first and only once it is verified, in one short transaction: the rows
   whose key *and* ``xmin`` are still those archived. A row updated since has a new ``xmin``; it
   stays in the table (not counted as deleted) and a later batch or pass archives it again. The
   object is then rewritten with exactly the deleted rows (a new key, verified, before the old
   object goes), so no archive holds a row that is still in the table.

Every deleted row is therefore in a verified object. An object's key holds digests of its first row
(key and ``xmin``) and last key: a rerun that reads the same first row unchanged knows that row's
earlier upload was never deleted from (a committed delete would have removed that row), so it may
replace an earlier upload of the same first row with a different cut (``replace_stale``). A
session-level advisory lock on the archive location keeps a second run (a retry while a lost
worker still runs) from doing so while the first is between upload and delete.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from data_lifecycle.archive import (
    ArchivedObject,
    ArchiveEncoder,
    S3ArchiveWriter,
    batch_key,
    batch_stem,
    parse_archive,
)
from data_lifecycle.exceptions import LockTimeoutExhausted
from data_lifecycle.operators.postgres.keyset import MAX_PASSES, after_key, select_batch
from data_lifecycle.pg_catalog import Column

# Verified-or-uploading objects at most, beyond the one being filled.
PIPELINE_DEPTH = 3


@dataclass
class PendingObject:
    """One cut object: its rows' keys and xmins, then its upload."""

    encoder: ArchiveEncoder
    keys: list[tuple[str, ...]] = field(default_factory=list)
    xmins: list[str] = field(default_factory=list)
    key: str = ""
    stem: str = ""
    upload: Future[tuple[ArchivedObject, list[str]]] | None = None


class ArchivePipeline:
    """The archive-mode loop of a :class:`~.batch_runner.BatchRunner` (``runner``)."""

    def __init__(self, runner: Any, writer: S3ArchiveWriter, columns: list[Column]) -> None:
        self.runner = runner
        self.plan = runner.plan
        self.conn = runner.conn
        self.writer = writer
        self.columns = columns
        names = [c.name for c in columns]
        self.key_at = [names.index(k.name) for k in self.plan.keys]
        self.max_rows_per_object = runner.op.max_batch_size
        self.open: PendingObject | None = None
        self.in_flight: deque[PendingObject] = deque()
        self.read_key: tuple[str, ...] | None = None
        self.exhausted = False

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, progress: Any) -> tuple[int, bool] | None:
        self._fence()
        pool = ThreadPoolExecutor(max_workers=PIPELINE_DEPTH, thread_name_prefix="archive-upload")
        try:
            while True:
                if (reason := self.runner.stop_reason(progress)) is not None:
                    self._stop(progress, reason)
                    return None
                budget = self.runner.rows_allowed(progress, self.max_rows_per_object) - self._pending_rows()
                if budget <= 0 and self.in_flight and not self._max_rows_pending(progress):
                    # Uploads in flight hold the batch's rows: wait for the oldest rather than cut the
                    # open object early (its cut would then depend on upload timing, not on the rows).
                    if (stop := self._drain(progress, until=len(self.in_flight) - 1)) is not None:
                        self._stop(progress, stop)
                        return None
                    continue
                got = self._read(budget, pool) if budget > 0 and not self.exhausted else 0
                if got == 0:
                    self._cut(pool)
                stop = self._drain(progress, until=0 if got == 0 else PIPELINE_DEPTH)
                if stop is not None:
                    self._stop(progress, stop)
                    return None
                if got or not self.exhausted:
                    continue
                remaining = self.runner._remaining()
                if remaining[0] and progress.passes < MAX_PASSES:
                    progress.passes += 1
                    self.read_key, self.exhausted = None, False
                    self.runner.log.info(
                        "%s: due rows left behind the cursor (changed after they were archived, or made"
                        " due); one more pass",
                        self.plan.table.qualified,
                    )
                    continue
                return remaining
        finally:
            for pending in self.in_flight:
                if pending.upload is not None:
                    pending.upload.cancel()
            pool.shutdown(wait=True)
            self._unfence()

    def _stop(self, progress: Any, reason: str) -> None:
        """Stop for ``reason``: finish the verified objects in flight; the open object's rows were
        never uploaded, so the next run reads them again."""
        progress.stopped_by = reason
        self.open = None
        self._drain(progress, until=0)

    def _max_rows_pending(self, progress: Any) -> bool:
        """Every row ``max_rows`` still allows is read already (in flight or in the open object)."""
        max_rows = self.runner.op.max_rows
        return max_rows is not None and max_rows - progress.deleted - self._pending_rows() <= 0

    def _pending_rows(self) -> int:
        return sum(len(p.keys) for p in self.in_flight) + (len(self.open.keys) if self.open else 0)

    # -- read and encode --------------------------------------------------------------------------

    def _read(self, limit: int, pool: ThreadPoolExecutor) -> int:
        """Read up to ``limit`` due rows after the cursor into objects; cut and submit full ones."""
        from psycopg import sql

        plan = self.plan
        where, params = after_key(plan, self.read_key, as_text=True)
        # Aliased: a bare ``id`` in ORDER BY would otherwise sort by the text output column.
        cols = sql.SQL(", ").join(
            [
                sql.SQL("xmin::text AS lc_xmin"),
                *(
                    sql.SQL("{}::text AS {}").format(c.ident, sql.Identifier(f"lc_{i}"))
                    for i, c in enumerate(self.columns)
                ),
            ]
        )
        with self.conn.transaction():
            self.runner.transaction_settings()
            rows = self.conn.execute(select_batch(plan, cols, where, limit, lock=False), params).fetchall()
        if len(rows) < limit:
            self.exhausted = True
        min_bytes = plan.archive.min_object_bytes
        for row in rows:
            values = row[1:]
            if self.open is None:
                self.open = PendingObject(
                    self.writer.encoder(plan.table.qualified, [(c.name, c.type_name) for c in self.columns])
                )
            obj = self.open
            obj.encoder.add(values)
            obj.keys.append(tuple(values[i] for i in self.key_at))
            obj.xmins.append(row[0])
            size = obj.encoder.compressed_size()
            if (size is not None and size >= min_bytes) or len(obj.keys) >= self.max_rows_per_object:
                self._cut(pool)
        if rows:
            self.read_key = tuple(rows[-1][1:][i] for i in self.key_at)
        return len(rows)

    def _cut(self, pool: ThreadPoolExecutor) -> None:
        """Close the open object and start its upload."""
        obj, self.open = self.open, None
        if obj is None or not obj.keys:
            return
        config, plan = self.plan.archive, self.plan
        first = (*obj.keys[0], f"xmin={obj.xmins[0]}")
        common = {
            "schema": plan.table.schema,
            "table": plan.table.name,
            "cutoff": plan.cutoff,
            "first": first,
        }
        obj.key = batch_key(config.prefix, last=obj.keys[-1], **common)
        obj.stem = batch_stem(config.prefix, **common)
        obj.upload = pool.submit(self._upload, obj)
        self.in_flight.append(obj)

    def _upload(self, obj: PendingObject) -> tuple[ArchivedObject, list[str]]:
        """Upload and verify (worker thread); then remove earlier uploads of the same first row."""
        archived = self.writer.write(obj.key, obj.encoder)
        return archived, self.writer.replace_stale(obj.stem, obj.key)

    # -- delete -----------------------------------------------------------------------------------

    def _drain(self, progress: Any, *, until: int) -> str | None:
        """Delete verified objects, oldest first, until at most ``until`` are in flight.

        Objects whose upload already finished are taken too. Returns a reason to stop, else None.
        """
        while self.in_flight:
            head = self.in_flight[0]
            assert head.upload is not None
            if len(self.in_flight) <= until and not head.upload.done():
                return None
            started = time.monotonic()
            uploaded, replaced = head.upload.result()  # VerificationFailed: nothing of it is deleted
            self.in_flight.popleft()
            deleted, blocked = self._delete(head, progress)
            count = len(deleted)
            archived: ArchivedObject | None = uploaded
            if count < len(head.keys):
                archived = self._narrow(head, uploaded, deleted)
            took = time.monotonic() - started
            progress.batches += 1
            progress.batch_seconds += took
            progress.deleted += count
            progress.changed += len(head.keys) - count
            if archived is not None:
                progress.archived_rows += archived.rows
                progress.files.append(archived.key)
            progress.replaced += len(replaced)
            self.runner.log.info(
                "Archived %d rows to %s (%d bytes, verified); deleted %d%s%s",
                archived.rows if archived else 0,
                f"s3://{archived.bucket}/{archived.key}" if archived else "no object",
                archived.size if archived else 0,
                count,
                f" ({len(head.keys) - count} changed since, left for a later batch)"
                if count < len(head.keys)
                else "",
                f"; replaced an earlier upload of this batch: {replaced}" if replaced else "",
            )
            self.runner._log_progress(progress.batches, count, progress.deleted, took)
            if (reason := self.runner.between_batches(took, count, blocked)) is not None:
                return str(reason)
        return None

    def _delete(self, obj: PendingObject, progress: Any) -> tuple[set[tuple[str, ...]], int]:
        """Delete the object's rows still as archived (same key and xmin) in one short transaction.

        Returns the deleted rows' keys (text forms) and the sessions the delete blocked.
        """
        from psycopg import sql
        from psycopg.errors import DeadlockDetected, LockNotAvailable

        plan = self.plan
        names = [sql.Identifier(f"lc_key_{i}") for i in range(len(plan.keys))]
        # Named placeholders: the plan's predicate uses them too (psycopg does not mix both kinds).
        arrays = sql.SQL(", ").join(
            sql.SQL("{}::text[]::{}[]").format(sql.Placeholder(f"lc_keys_{i}"), sql.SQL(k.regtype))
            for i, k in enumerate(plan.keys)
        )
        statement = sql.SQL(
            "DELETE FROM {t} AS lc_t USING unnest({a}, %(lc_xmins)s::text[]::xid[]) AS lc_a({n}, lc_xmin)"
            " WHERE ({tk}) = ({ak}) AND lc_t.xmin = lc_a.lc_xmin AND {w} RETURNING {r}"
        ).format(
            t=plan.table.ident,
            a=arrays,
            n=sql.SQL(", ").join(names),
            tk=sql.SQL(", ").join(sql.SQL("lc_t.{}").format(k.ident) for k in plan.keys),
            ak=sql.SQL(", ").join(sql.SQL("lc_a.{}").format(n) for n in names),
            w=plan.where,
            r=sql.SQL(", ").join(sql.SQL("lc_t.{}::text").format(k.ident) for k in plan.keys),
        )
        params = dict(plan.params)
        for i, column in enumerate(zip(*obj.keys, strict=True)):
            params[f"lc_keys_{i}"] = list(column)
        params["lc_xmins"] = obj.xmins
        failures = 0
        while True:
            try:
                with self.conn.transaction():
                    self.runner.transaction_settings()
                    deleted = {tuple(row) for row in self.conn.execute(statement, params).fetchall()}
                    blocked = self.runner._blocked_sessions()
                return deleted, blocked
            except (LockNotAvailable, DeadlockDetected) as exc:
                failures += 1
                self.runner.lock_failed(exc, failures, progress)

    def _narrow(
        self, obj: PendingObject, archived: ArchivedObject, deleted: set[tuple[str, ...]]
    ) -> ArchivedObject | None:
        """After a delete that left changed rows: an object of exactly the deleted rows replaces it.

        The new object is written and verified under its own key before the old one is removed, so
        every deleted row is in a verified object throughout; the rows left are archived again by
        a later batch (or stay, if no longer due). A crash in between leaves the old object too.
        """
        content = parse_archive(obj.encoder.finish())  # rows as archived (already transformed)
        kept = [i for i, key in enumerate(obj.keys) if key in deleted]
        narrowed: ArchivedObject | None = None
        if kept:
            encoder = ArchiveEncoder(content.table or self.plan.table.qualified, content.columns_typed())
            for i in kept:
                encoder.add(content.rows[i])
            first, last = kept[0], kept[-1]
            plan, config = self.plan, self.plan.archive
            key = batch_key(
                config.prefix,
                schema=plan.table.schema,
                table=plan.table.name,
                cutoff=plan.cutoff,
                first=(*obj.keys[first], f"xmin={obj.xmins[first]}"),
                last=(*obj.keys[last], f"deleted={len(kept)}"),  # never an object's own last key
            )
            narrowed = self.writer.write(key, encoder)
        self.writer.remove(archived.key)
        return narrowed

    # -- one run per archive location -------------------------------------------------------------

    def _lock_name(self) -> str:
        config = self.plan.archive
        return f"data_lifecycle archive s3://{config.bucket}/{config.prefix}/{self.plan.table.qualified}"

    def _fence(self) -> None:
        row = self.conn.execute(
            "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (self._lock_name(),)
        ).fetchone()
        if not row or not row[0]:
            raise LockTimeoutExhausted(
                f"{self.plan.table.qualified}: another run is archiving to"
                f" s3://{self.plan.archive.bucket}/{self.plan.archive.prefix}; nothing was deleted (retry later)"
            )

    def _unfence(self) -> None:
        # After a failed statement the connection may be unusable; closing it releases the lock too.
        with contextlib.suppress(Exception):
            self.conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (self._lock_name(),))
