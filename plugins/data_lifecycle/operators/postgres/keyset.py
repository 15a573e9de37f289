"""The keyset cursor every batch loop shares: "due rows after the last key, in key order".

Key values travel as bound parameters cast to the column's type; archive mode holds them as their
text form (``column::text``), so it casts through text.
"""

from __future__ import annotations

from typing import Any

# Passes over the key range: a row can become due behind the keyset cursor while a run is going
# (a session row extended, then expired again, or changed after it was archived); a second pass
# from the start picks it up.
MAX_PASSES = 2
# Integer types a key stride can step through (one row per key value at most), with their
# smallest value: a stride starts just below the smallest due key, so not at that value.
STRIDE_TYPES = {"smallint": -(2**15), "integer": -(2**31), "bigint": -(2**63)}


def after_key(
    plan: Any, last_key: tuple[Any, ...] | None, *, as_text: bool = False
) -> tuple[Any, dict[str, Any]]:
    """``plan.where`` narrowed to keys after ``last_key`` (unchanged for None), and its parameters."""
    from psycopg import sql

    params = dict(plan.params)
    if last_key is None:
        return plan.where, params
    cast = "{}::text::{}" if as_text else "{}::{}"
    placeholders = []
    for i, (column, value) in enumerate(zip(plan.keys, last_key, strict=True)):
        params[f"lc_last_{i}"] = value
        placeholders.append(sql.SQL(cast).format(sql.Placeholder(f"lc_last_{i}"), sql.SQL(column.regtype)))
    where = sql.SQL("{} AND ({}) > ({})").format(plan.where, key_list(plan), sql.SQL(", ").join(placeholders))
    return where, params


def key_list(plan: Any) -> Any:
    """``k1, k2, ...``: the plan's key columns, quoted."""
    from psycopg import sql

    return sql.SQL(", ").join(k.ident for k in plan.keys)


def select_batch(plan: Any, columns: Any, where: Any, limit: int, *, lock: bool) -> Any:
    """``SELECT columns FROM table WHERE where ORDER BY keys LIMIT n [FOR UPDATE]``."""
    from psycopg import sql

    return sql.SQL("SELECT {c} FROM {t} WHERE {w} ORDER BY {k} LIMIT {n}{lock}").format(
        c=columns,
        t=plan.table.ident,
        w=where,
        k=key_list(plan),
        n=sql.Literal(limit),
        lock=sql.SQL(" FOR UPDATE" if lock else ""),
    )


def stride_key(plan: Any) -> Any | None:
    """The single integer key column a stride can step through, else None (composite or other type)."""
    if len(plan.keys) != 1 or plan.keys[0].regtype not in STRIDE_TYPES:
        return None
    return plan.keys[0]
