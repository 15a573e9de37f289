"""How a subject's rows are found: a map target with its catalog entry, and its match condition.

The planner counts with it and the executor erases with it; both import it from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import sql

from data_lifecycle.erasure.catalog import TableInfo
from data_lifecycle.erasure.subject_map import TableTarget

# The alias of the erased table in every statement.
ALIAS = "t"


@dataclass(frozen=True)
class PreparedTarget:
    """A map target together with its table's catalog description."""

    target: TableTarget
    info: TableInfo

    @property
    def name(self) -> str:
        return self.target.name


def match_condition(target: TableTarget) -> sql.Composable:
    """``t.<column> = %(subject)s``, or the nested ``IN (SELECT ...)`` of a join path."""
    if not target.via:
        return sql.SQL("{}.{} = %(subject)s").format(sql.Identifier(ALIAS), sql.Identifier(target.column))
    inner: sql.Composable = sql.SQL("{} = %(subject)s").format(sql.Identifier(target.via[-1].column))
    for i in range(len(target.via) - 1, 0, -1):
        hop, nxt = target.via[i - 1], target.via[i]
        inner = sql.SQL("{} IN (SELECT {} FROM {} WHERE {})").format(
            sql.Identifier(hop.column), sql.Identifier(nxt.key), table_ident(nxt.table), inner
        )
    first = target.via[0]
    return sql.SQL("{}.{} IN (SELECT {} FROM {} WHERE {})").format(
        sql.Identifier(ALIAS),
        sql.Identifier(target.column),
        sql.Identifier(first.key),
        table_ident(first.table),
        inner,
    )


def count_matches(conn: Any, prepared: PreparedTarget, user_id: int) -> int:
    query = sql.SQL("SELECT count(*) FROM {} AS {} WHERE {}").format(
        prepared.info.ident, sql.Identifier(ALIAS), match_condition(prepared.target)
    )
    return int(conn.execute(query, {"subject": int(user_id)}).fetchone()[0])


def table_ident(qualified: str) -> sql.Identifier:
    schema, name = qualified.split(".", 1)
    return sql.Identifier(schema, name)
