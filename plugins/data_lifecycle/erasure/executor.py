"""Erase one subject's rows: keyset batches, each a short transaction with lock and statement timeouts.

Deleted or masked rows stop matching the subject, so every batch takes the next rows that still
match after the last key seen; a rerun finds nothing and changes nothing. A table without a primary
key is erased in one statement (logged).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from psycopg import sql

from data_lifecycle.erasure.keys import SubjectKeys
from data_lifecycle.erasure.matching import ALIAS, PreparedTarget, match_condition
from data_lifecycle.erasure.subject_map import Action, BatchSettings, MaskStrategy

log = logging.getLogger(__name__)


def erase_target(
    conn: Any,
    prepared: PreparedTarget,
    user_id: int,
    keys: SubjectKeys,
    batch: BatchSettings,
    *,
    stop: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Delete or mask the subject's rows of one target; returns rows, batches and seconds.

    :param conn: an autocommit psycopg connection (each batch opens its own transaction).
    :param stop: called with the rows done so far before every batch after the first; it raises
        to stop between batches (the kill switch).
    """
    started = time.monotonic()
    pk = prepared.info.primary_key
    params: dict[str, Any] = {"subject": int(user_id), "limit": batch.size}
    action_sql, mask_params = _action(prepared, user_id, keys)
    params.update(mask_params)
    rows = batches = 0
    last: tuple[Any, ...] | None = None
    while True:
        if stop is not None and batches:
            stop(rows)
        query, query_params = _batch_statement(prepared, action_sql, pk, last)
        with conn.transaction():
            conn.execute(
                sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{batch.lock_timeout_ms}ms"))
            )
            conn.execute(
                sql.SQL("SET LOCAL statement_timeout = {}").format(
                    sql.Literal(f"{batch.statement_timeout_ms}ms")
                )
            )
            returned = conn.execute(query, {**params, **query_params}).fetchall()
        batches += 1
        rows += len(returned)
        if not pk or len(returned) < batch.size:
            break
        last = max(tuple(r) for r in returned)
    seconds = round(time.monotonic() - started, 3)
    log.info(
        "%s %s: %d row(s) in %d batch(es), %.3f s",
        prepared.target.action.value,
        prepared.name,
        rows,
        batches,
        seconds,
    )
    if not pk:
        log.warning("%s has no primary key: erased in one statement", prepared.info.qualified)
    return {"rows": rows, "batches": batches, "seconds": seconds}


def _action(
    prepared: PreparedTarget, user_id: int, keys: SubjectKeys
) -> tuple[sql.Composable, dict[str, Any]]:
    target = prepared.target
    if target.action is Action.DELETE:
        return sql.SQL("DELETE FROM {} AS {}").format(prepared.info.ident, sql.Identifier(ALIAS)), {}
    assignments = []
    params: dict[str, Any] = {}
    for i, m in enumerate(target.mask):
        if m.strategy is MaskStrategy.NULL:
            value: sql.Composable = sql.SQL("NULL")
        else:
            name = f"mask_{i}"
            params[name] = (
                m.value
                if m.strategy is MaskStrategy.FIXED
                else keys.label_hash(f"{target.table}.{m.column}:{int(user_id)}")
            )
            value = sql.Placeholder(name)
        assignments.append(sql.SQL("{} = {}").format(sql.Identifier(m.column), value))
    statement = sql.SQL("UPDATE {} AS {} SET {}").format(
        prepared.info.ident, sql.Identifier(ALIAS), sql.SQL(", ").join(assignments)
    )
    return statement, params


def _batch_statement(
    prepared: PreparedTarget, action_sql: sql.Composable, pk: tuple[str, ...], last: tuple[Any, ...] | None
) -> tuple[sql.Composable, dict[str, Any]]:
    match = match_condition(prepared.target)
    if not pk:
        return sql.SQL("{} WHERE {} RETURNING 1").format(action_sql, match), {}
    t_cols = sql.SQL(", ").join(sql.Identifier(ALIAS, c) for c in pk)
    b_cols = sql.SQL(", ").join(sql.Identifier("batch", c) for c in pk)
    params: dict[str, Any] = {}
    keyset: sql.Composable = sql.SQL("")
    if last is not None:
        names = [f"last_{i}" for i in range(len(pk))]
        params = dict(zip(names, last, strict=True))
        keyset = sql.SQL(" AND ({}) > ({})").format(
            t_cols, sql.SQL(", ").join(sql.Placeholder(n) for n in names)
        )
    using = sql.SQL("USING") if prepared.target.action is Action.DELETE else sql.SQL("FROM")
    query = sql.SQL(
        "WITH batch AS (SELECT {t_cols} FROM {table} AS {alias} WHERE {match}{keyset} "
        "ORDER BY {t_cols} LIMIT %(limit)s) "
        "{action} {using} batch WHERE ({t_cols}) = ({b_cols}) RETURNING {t_cols}"
    ).format(
        t_cols=t_cols,
        table=prepared.info.ident,
        alias=sql.Identifier(ALIAS),
        match=match,
        keyset=keyset,
        action=action_sql,
        using=using,
        b_cols=b_cols,
    )
    return query, params
