"""One archive-mode batch of :class:`PostgresBatchedDeleteOperator`: lock, encode, upload, verify, delete.

Rows are read as their PostgreSQL text form (``column::text``) so the archive restores them exactly
(see :mod:`data_lifecycle.archive`). A batch locks up to ``limit`` due rows after the last key and
cuts the object at the first row where its compressed size reaches ``min_object_bytes`` (measured
every 16 KiB of input, so the cut depends only on the rows: a rerun after a crash cuts at the same
row and writes the same key). Only the rows in the verified object are deleted; the rest of the
locked rows are released at commit and start the next batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from data_lifecycle.archive import ArchivedObject, S3ArchiveWriter, batch_key, batch_stem
from data_lifecycle.exceptions import VerificationFailed
from data_lifecycle.pg_catalog import Column

# Rows locked per batch: enough for the target size with this much room.
SIZE_HEADROOM = 1.25


@dataclass(frozen=True)
class ArchiveBatch:
    count: int
    first: tuple[str, ...]
    last: tuple[str, ...]
    archived: ArchivedObject
    replaced: list[str]


def archive_batch(
    conn: Any,
    plan: Any,  # DeletePlan
    writer: S3ArchiveWriter,
    columns: list[Column],
    *,
    limit: int,
    last_key: tuple[str, ...] | None,
) -> ArchiveBatch | None:
    """Archive and delete one batch inside the caller's transaction; None when nothing is due."""
    from psycopg import sql

    assert plan.archive is not None
    names = [c.name for c in columns]
    key_at = [names.index(k.name) for k in plan.keys]
    key_list = sql.SQL(", ").join(k.ident for k in plan.keys)
    params = dict(plan.params)
    where = plan.where
    if last_key is not None:
        placeholders = []
        for i, (column, value) in enumerate(zip(plan.keys, last_key, strict=True)):
            params[f"lc_last_{i}"] = value
            placeholders.append(
                sql.SQL("{}::text::{}").format(sql.Placeholder(f"lc_last_{i}"), sql.SQL(column.regtype))
            )
        where = sql.SQL("{} AND ({}) > ({})").format(where, key_list, sql.SQL(", ").join(placeholders))
    select = sql.SQL("SELECT {cols} FROM {t} WHERE {w} ORDER BY {k} LIMIT {n} FOR UPDATE").format(
        # Aliased: a bare ``id`` in ORDER BY would otherwise sort by the text output column.
        cols=sql.SQL(", ").join(
            sql.SQL("{}::text AS {}").format(c.ident, sql.Identifier(f"lc_{i}"))
            for i, c in enumerate(columns)
        ),
        t=plan.table.ident,
        w=where,
        k=key_list,
        n=sql.Literal(limit),
    )
    rows = conn.execute(select, params).fetchall()
    if not rows:
        return None
    encoder = writer.encoder(plan.table.qualified, [(c.name, c.type_name) for c in columns])
    taken = 0
    for row in rows:
        encoder.add(row)
        taken += 1
        size = encoder.compressed_size()
        if size is not None and size >= plan.archive.min_object_bytes:
            break
    keys = [tuple(row[i] for i in key_at) for row in rows[:taken]]
    config = plan.archive
    common = {"schema": plan.table.schema, "table": plan.table.name, "cutoff": plan.cutoff, "first": keys[0]}
    key = batch_key(config.prefix, last=keys[-1], **common)
    archived = writer.write(key, encoder)
    replaced = writer.replace_stale(batch_stem(config.prefix, **common), key)
    arrays = sql.SQL(", ").join(
        sql.SQL("{}::text[]::{}[]").format(sql.Placeholder(), sql.SQL(k.regtype)) for k in plan.keys
    )
    cur = conn.execute(
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
    return ArchiveBatch(len(keys), keys[0], keys[-1], archived, replaced)


def next_limit(batch: ArchiveBatch, min_object_bytes: int, *, low: int, high: int) -> int:
    """Rows to lock next time so one batch reaches ``min_object_bytes``, within ``[low, high]``."""
    per_row = max(batch.archived.size / max(batch.count, 1), 1.0)
    wanted = math.ceil(min_object_bytes / per_row * SIZE_HEADROOM)
    return min(high, max(low, wanted))
