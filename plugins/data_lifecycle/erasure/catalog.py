"""Catalog lookups for erasure: table shapes, foreign keys, and every column that references the subject."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from data_lifecycle.exceptions import LifecycleConfigError

TEXT_TYPES = ("text", "character varying", "character", "citext")


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type_name: str
    not_null: bool

    @property
    def is_text(self) -> bool:
        return self.type_name.startswith(TEXT_TYPES)


@dataclass(frozen=True)
class TableInfo:
    """A table (plain or partitioned) as the catalog describes it."""

    schema: str
    name: str
    relkind: str
    columns: dict[str, ColumnInfo]
    primary_key: tuple[str, ...]

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


@dataclass(frozen=True)
class Reference:
    """A column that points at the subject: a foreign key to it, or a subject-key-like name."""

    table: str
    column: str
    reasons: tuple[str, ...]


def table_info(conn: Any, table: str) -> TableInfo:
    """Describe ``schema.table``; a missing table is a configuration error."""
    schema, name = table.split(".", 1)
    row = conn.execute(
        "SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        (schema, name),
    ).fetchone()
    if row is None:
        raise LifecycleConfigError(f"Table {table} named in the erasure subject map does not exist")
    oid, relkind = row
    columns = {
        r[0]: ColumnInfo(name=r[0], type_name=r[1], not_null=r[2])
        for r in conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
            "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (oid,),
        )
    }
    pk = tuple(
        r[0]
        for r in conn.execute(
            "SELECT a.attname FROM pg_index i "
            "CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.ord",
            (oid,),
        )
    )
    return TableInfo(schema=schema, name=name, relkind=str(relkind), columns=columns, primary_key=pk)


def foreign_key_edges(conn: Any) -> set[tuple[str, str]]:
    """``(child, parent)`` pairs of every top-level foreign key (partition clones excluded)."""
    rows = conn.execute(
        "SELECT cn.nspname || '.' || c.relname, fn.nspname || '.' || f.relname "
        "FROM pg_constraint con "
        "JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace "
        "JOIN pg_class f ON f.oid = con.confrelid JOIN pg_namespace fn ON fn.oid = f.relnamespace "
        "WHERE con.contype = 'f' AND con.conparentid = 0 AND NOT c.relispartition"
    ).fetchall()
    return {(r[0], r[1]) for r in rows}


def name_regex(pattern: str) -> str:
    """A ``reference_columns`` entry (a name, ``*`` for any characters) as an anchored regex."""
    return "^" + pattern.replace("*", ".*") + "$"


def subject_references(conn: Any, subject_table: str, reference_columns: tuple[str, ...]) -> list[Reference]:
    """Every column of every user table that references the subject table or whose name matches one
    of ``reference_columns`` (names, or patterns with ``*``)."""
    schema, name = subject_table.split(".", 1)
    rows = conn.execute(
        """
        SELECT cn.nspname || '.' || c.relname, a.attname, 'foreign key ' || con.conname
        FROM pg_constraint con
        JOIN pg_class c ON c.oid = con.conrelid
        JOIN pg_namespace cn ON cn.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (con.conkey)
        JOIN pg_class f ON f.oid = con.confrelid
        JOIN pg_namespace fn ON fn.oid = f.relnamespace
        WHERE con.contype = 'f' AND con.conparentid = 0 AND NOT c.relispartition
          AND fn.nspname = %(schema)s AND f.relname = %(name)s
        UNION ALL
        SELECT n.nspname || '.' || c.relname, a.attname, 'column named ' || a.attname
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND a.attnum > 0 AND NOT a.attisdropped AND a.attname ~ ANY (%(patterns)s)
          AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%%'
        ORDER BY 1, 2, 3
        """,
        {"schema": schema, "name": name, "patterns": [name_regex(p) for p in reference_columns]},
    ).fetchall()
    reasons: dict[tuple[str, str], list[str]] = defaultdict(list)
    for table, column, why in rows:
        reasons[(table, column)].append(why)
    return [Reference(table=t, column=c, reasons=tuple(w)) for (t, c), w in sorted(reasons.items())]
