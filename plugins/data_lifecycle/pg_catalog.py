"""Catalog lookups and identifier checks shared by the PostgreSQL operators.

Every schema, table and column name an operator receives is first checked against a strict shape
(plain ASCII identifiers only), then looked up in the catalog. Only names that exist, with the
expected kind, are ever composed into SQL, and always through ``psycopg.sql.Identifier``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from data_lifecycle.exceptions import LifecycleConfigError

if TYPE_CHECKING:
    from psycopg import sql

# PostgreSQL's NAMEDATALEN is 64: identifiers are at most 63 bytes.
MAX_IDENTIFIER_LENGTH = 63

_IDENT = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
IDENTIFIER_RE = re.compile(_IDENT, re.ASCII)
TABLE_NAME_RE = re.compile(rf"(?:(?P<schema>{_IDENT})\.)?(?P<table>{_IDENT})", re.ASCII)

# pg_get_expr(relpartbound) of a range partition with a single key column.
RANGE_BOUND_RE = re.compile(
    r"FOR VALUES FROM \((?:'(?P<lower>(?:[^']|'')*)'|(?P<minvalue>MINVALUE))\)"
    r" TO \((?:'(?P<upper>(?:[^']|'')*)'|(?P<maxvalue>MAXVALUE))\)"
)

# Type oids (pg_type.oid; fixed for built-in types): compared by oid, so typmods such as
# timestamp(3) with time zone match.
TIMESTAMPTZ_OID = 1184
TIMESTAMP_OID = 1114
DATE_OID = 1082
TIMESTAMP_TYPES = frozenset({TIMESTAMPTZ_OID, TIMESTAMP_OID, DATE_OID})
TYPE_NAMES = {
    TIMESTAMPTZ_OID: "timestamp with time zone",
    TIMESTAMP_OID: "timestamp without time zone",
    DATE_OID: "date",
}
TABLE_KINDS = {"r": "table", "p": "partitioned table"}


@dataclass(frozen=True)
class TableRef:
    """A table that exists in the catalog."""

    oid: int
    schema: str
    name: str
    relkind: str

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Identifier:
        from psycopg import sql  # imported in tasks only: DAG files parse without the driver

        return sql.Identifier(self.schema, self.name)

    @property
    def is_partitioned(self) -> bool:
        return self.relkind == "p"


@dataclass(frozen=True)
class Column:
    name: str
    type_name: str  # format_type() output, e.g. "timestamp(3) with time zone"
    regtype: str  # a type name safe to use in a cast, from the catalog
    type_oid: int = 0  # pg_attribute.atttypid
    not_null: bool = False  # pg_attribute.attnotnull
    generated: bool = False  # a generated column (cannot be inserted)

    @property
    def is_naive_timestamp(self) -> bool:
        return self.type_oid == TIMESTAMP_OID

    @property
    def ident(self) -> sql.Identifier:
        from psycopg import sql

        return sql.Identifier(self.name)


@dataclass(frozen=True)
class ChildRef:
    """A table whose column references a column of the parent (a single-column foreign key)."""

    table: TableRef
    column: Column
    parent_column: str


@dataclass(frozen=True)
class Partition:
    table: TableRef
    lower: datetime | None  # None: MINVALUE
    upper: datetime | None  # None: MAXVALUE
    is_default: bool
    detach_pending: bool


def parse_table_name(value: Any, *, field: str = "table", default_schema: str = "public") -> tuple[str, str]:
    """Split ``"schema.table"`` (or ``"table"``) after checking its shape; no quotes, no SQL."""
    if not isinstance(value, str) or not TABLE_NAME_RE.fullmatch(value):
        raise LifecycleConfigError(
            f"{field}={value!r} is not a plain 'schema.table' name (ASCII letters, digits and _ only)"
        )
    match = TABLE_NAME_RE.fullmatch(value)
    assert match is not None
    return match.group("schema") or default_schema, match.group("table")


def check_identifier(value: Any, *, field: str) -> str:
    """Return ``value`` if it is a plain identifier, else raise LifecycleConfigError."""
    if not isinstance(value, str) or not IDENTIFIER_RE.fullmatch(value):
        raise LifecycleConfigError(
            f"{field}={value!r} is not a plain identifier (ASCII letters, digits and _ only)"
        )
    return value


def resolve_table(
    conn: Any, value: str, *, field: str = "table", kinds: str = "rp", default_schema: str = "public"
) -> TableRef:
    """Look a ``"schema.table"`` name up in the catalog and check its kind (relkind letters)."""
    schema, name = parse_table_name(value, field=field, default_schema=default_schema)
    row = conn.execute(
        "SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s",
        (schema, name),
    ).fetchone()
    if row is None:
        raise LifecycleConfigError(f"{field}={value!r}: no table {schema}.{name} in the database")
    oid, relkind = int(row[0]), str(row[1])
    if relkind not in kinds:
        wanted = " or ".join(TABLE_KINDS.get(k, k) for k in kinds)
        raise LifecycleConfigError(
            f"{field}={value!r}: {schema}.{name} is not a {wanted} (relkind {relkind!r})"
        )
    return TableRef(oid=oid, schema=schema, name=name, relkind=relkind)


def schema_exists(conn: Any, schema: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None


def columns(conn: Any, table: TableRef) -> dict[str, Column]:
    """Live columns of ``table`` in attnum order."""
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod), atttypid::regtype::text, atttypid::int,"
        " attnotnull, attgenerated <> '' FROM pg_attribute"
        " WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (table.oid,),
    ).fetchall()
    return {
        r[0]: Column(
            name=r[0],
            type_name=r[1],
            regtype=r[2],
            type_oid=int(r[3]),
            not_null=bool(r[4]),
            generated=bool(r[5]),
        )
        for r in rows
    }


def require_column(
    conn: Any, table: TableRef, name: Any, *, field: str, types: frozenset[int] | None = None
) -> Column:
    """The column ``name`` of ``table``; raises when it is missing or its type oid is not in ``types``."""
    check_identifier(name, field=field)
    column = columns(conn, table).get(name)
    if column is None:
        raise LifecycleConfigError(f"{field}={name!r}: {table.qualified} has no such column")
    if types is not None and column.type_oid not in types:
        expected = sorted(TYPE_NAMES.get(t, str(t)) for t in types)
        raise LifecycleConfigError(
            f"{field}={name!r}: {table.qualified}.{name} is {column.type_name}, expected one of {expected}"
        )
    return column


def _index_columns(conn: Any, table: TableRef, *, primary: bool) -> list[list[str]]:
    rows = conn.execute(
        """
        SELECT i.indexrelid,
               array_agg(a.attname ORDER BY k.ord) FILTER (WHERE k.ord <= i.indnkeyatts)
        FROM pg_index i
        CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
        LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
          AND (i.indisprimary OR NOT %s)
        GROUP BY i.indexrelid, i.indisprimary
        ORDER BY i.indisprimary DESC, i.indexrelid
        """,
        (table.oid, primary),
    ).fetchall()
    return [list(r[1]) for r in rows if r[1]]


def key_columns(conn: Any, table: TableRef, declared: list[str] | None = None) -> list[Column]:
    """The primary key, or ``declared`` columns when a unique index (no predicate) covers exactly them.

    Declared key columns must be NOT NULL: keyset batches compare ``(keys) > (last keys)`` and
    delete by ``(keys) IN (...)``, which never match a NULL, so rows with a NULL key would be left
    behind silently (a unique index allows any number of NULLs).
    """
    cols = columns(conn, table)
    if declared:
        for name in declared:
            check_identifier(name, field="key_columns")
        if not any(set(idx) == set(declared) for idx in _index_columns(conn, table, primary=False)):
            raise LifecycleConfigError(
                f"key_columns={declared!r}: {table.qualified} has no primary key or unique index on exactly"
                " these columns"
            )
        nullable = [name for name in declared if not cols[name].not_null]
        if nullable:
            raise LifecycleConfigError(
                f"key_columns={declared!r}: {table.qualified}.{', '.join(nullable)} may be NULL, and rows with"
                " a NULL key cannot be batched; add NOT NULL to the column(s) or use the primary key"
            )
        return [cols[name] for name in declared]
    primary = _index_columns(conn, table, primary=True)
    if not primary:
        raise LifecycleConfigError(
            f"{table.qualified} has no primary key; declare key_columns backed by a unique index"
        )
    return [cols[name] for name in primary[0]]


def foreign_key_children(conn: Any, parent: TableRef) -> list[ChildRef]:
    """Tables whose foreign keys reference ``parent`` (top-level constraints only, not per-partition clones)."""
    rows = conn.execute(
        """
        SELECT con.conname, con.conrelid, cardinality(con.conkey), ca.attname, pa.attname
        FROM pg_constraint con
        JOIN pg_attribute ca ON ca.attrelid = con.conrelid AND ca.attnum = con.conkey[1]
        JOIN pg_attribute pa ON pa.attrelid = con.confrelid AND pa.attnum = con.confkey[1]
        WHERE con.contype = 'f' AND con.confrelid = %s AND con.conparentid = 0
        ORDER BY con.conrelid, con.conname
        """,
        (parent.oid,),
    ).fetchall()
    children: list[ChildRef] = []
    for conname, conrelid, nkeys, child_col, parent_col in rows:
        if nkeys != 1:
            raise LifecycleConfigError(
                f"Foreign key {conname} on {parent.qualified} has {nkeys} columns; only single-column"
                " foreign keys can be discovered, list the children explicitly"
            )
        if conrelid == parent.oid:
            raise LifecycleConfigError(
                f"Foreign key {conname} references {parent.qualified} itself; self-references are not supported"
            )
        child = table_by_oid(conn, int(conrelid))
        children.append(
            ChildRef(table=child, column=columns(conn, child)[child_col], parent_column=parent_col)
        )
    return children


def table_by_oid(conn: Any, oid: int) -> TableRef:
    row = conn.execute(
        "SELECT n.nspname, c.relname, c.relkind FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s",
        (oid,),
    ).fetchone()
    if row is None:
        raise LifecycleConfigError(f"No relation with oid {oid}")
    return TableRef(oid=oid, schema=row[0], name=row[1], relkind=row[2])


def estimated_rows(conn: Any, table: TableRef) -> float:
    """reltuples summed over the leaf partitions (or the table itself); 0 when never analysed."""
    row = conn.execute(
        """
        SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)
        FROM pg_class c
        WHERE c.oid = %s
           OR c.oid IN (SELECT relid FROM pg_partition_tree(%s::oid::regclass) WHERE isleaf)
        """,
        (table.oid, table.oid),
    ).fetchone()
    return float(row[0]) if row else 0.0


def range_partition_key(conn: Any, table: TableRef) -> Column:
    """The single timestamp column a table is range-partitioned on; anything else is a config error."""
    if not table.is_partitioned:
        raise LifecycleConfigError(f"{table.qualified} is not a partitioned table")
    row = conn.execute(
        "SELECT partstrat, partnatts, partattrs::int2[] FROM pg_partitioned_table WHERE partrelid = %s",
        (table.oid,),
    ).fetchone()
    if row is None:
        raise LifecycleConfigError(f"{table.qualified} is not a partitioned table")
    strategy, natts, attrs = row
    if strategy != "r":
        raise LifecycleConfigError(f"{table.qualified} is not range-partitioned (strategy {strategy!r})")
    if natts != 1 or not attrs or attrs[0] == 0:
        raise LifecycleConfigError(f"{table.qualified} must be range-partitioned on one plain column")
    name = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum = %s", (table.oid, attrs[0])
    ).fetchone()[0]
    column = columns(conn, table)[name]
    if column.type_oid not in TIMESTAMP_TYPES:
        raise LifecycleConfigError(
            f"{table.qualified} is partitioned on {name} ({column.type_name}), not on a timestamp column"
        )
    return column


def _cast_bound(conn: Any, literal: str) -> datetime:
    # The literal comes from pg_get_expr; PostgreSQL itself parses it (session TimeZone is UTC).
    return conn.execute("SELECT %s::text::timestamptz", (literal.replace("''", "'"),)).fetchone()[0]


def partitions(conn: Any, parent: TableRef) -> list[Partition]:
    """Partitions of ``parent`` with bounds read from the catalog, oldest first (DEFAULT last)."""
    rows = conn.execute(
        """
        SELECT c.oid, n.nspname, c.relname, c.relkind, pg_get_expr(c.relpartbound, c.oid), i.inhdetachpending
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE i.inhparent = %s
        """,
        (parent.oid,),
    ).fetchall()
    result: list[Partition] = []
    for oid, schema, name, relkind, bound, pending in rows:
        ref = TableRef(oid=int(oid), schema=schema, name=name, relkind=relkind)
        if bound == "DEFAULT":
            result.append(Partition(ref, None, None, is_default=True, detach_pending=bool(pending)))
            continue
        match = RANGE_BOUND_RE.fullmatch(bound or "")
        if match is None:
            raise LifecycleConfigError(f"Cannot read the range bound of {ref.qualified}: {bound!r}")
        lower = None if match.group("minvalue") else _cast_bound(conn, match.group("lower"))
        upper = None if match.group("maxvalue") else _cast_bound(conn, match.group("upper"))
        result.append(Partition(ref, lower, upper, is_default=False, detach_pending=bool(pending)))
    return sorted(
        result, key=lambda p: (p.is_default, p.lower is not None, p.lower.timestamp() if p.lower else 0)
    )
