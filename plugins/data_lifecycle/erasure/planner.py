"""The erasure plan: targets checked against the catalog, put in foreign-key order, and counted."""

from __future__ import annotations

from typing import Any

from data_lifecycle.erasure.catalog import TableInfo, foreign_key_edges, table_info
from data_lifecycle.erasure.matching import PreparedTarget, count_matches
from data_lifecycle.erasure.subject_map import MaskStrategy, SubjectMap, TableTarget
from data_lifecycle.exceptions import LifecycleConfigError


def erase_order(smap: SubjectMap, edges: set[tuple[str, str]]) -> list[TableTarget]:
    """Targets with every referencing (child) table before the table it references.

    Ties keep the map's order; the subject row itself always goes last.
    """
    tables = list(dict.fromkeys(t.table for t in smap.tables))
    mapped = set(tables)
    before: dict[str, set[str]] = {t: set() for t in tables}
    for child, parent in edges:
        if child in mapped and parent in mapped and child != parent:
            before[parent].add(child)
    for target in smap.tables:
        for hop in target.via:
            if hop.table in mapped and hop.table != target.table:
                before[hop.table].add(target.table)
    for table in tables:
        if table != smap.subject.table:
            before[smap.subject.table].add(table)
    ordered: list[str] = []
    while len(ordered) < len(tables):
        ready = [t for t in tables if t not in ordered and before[t] <= set(ordered)]
        if not ready:
            stuck = sorted(t for t in tables if t not in ordered)
            raise LifecycleConfigError(
                f"Erasure subject map {smap.source}: foreign keys form a cycle between {', '.join(stuck)}; "
                "map one of the referencing columns with action 'mask' (strategy null)"
            )
        ordered.append(ready[0])
    subject_row = next(
        t for t in smap.tables if t.table == smap.subject.table and t.column == smap.subject.key
    )
    out = [t for table in ordered for t in smap.tables if t.table == table and t is not subject_row]
    return [*out, subject_row]


def prepare_targets(conn: Any, smap: SubjectMap) -> list[PreparedTarget]:
    """Every table target in erase order, checked against the catalog (names, types, keys)."""
    infos: dict[str, TableInfo] = {}

    def info(table: str) -> TableInfo:
        if table not in infos:
            infos[table] = table_info(conn, table)
        return infos[table]

    prepared = []
    for target in erase_order(smap, foreign_key_edges(conn)):
        ti = info(target.table)
        _require_column(smap, target, ti, target.column)
        for hop in target.via:
            hi = info(hop.table)
            _require_column(smap, target, hi, hop.key)
            _require_column(smap, target, hi, hop.column)
        for m in target.mask:
            column = _require_column(smap, target, ti, m.column)
            if m.column in ti.primary_key:
                _fail(smap, target, f"masks primary key column '{m.column}'; delete the rows instead")
            if m.strategy is MaskStrategy.NULL and column.not_null:
                _fail(smap, target, f"masks '{m.column}' with null but the column is NOT NULL")
            if m.strategy is not MaskStrategy.NULL and not column.is_text:
                _fail(
                    smap,
                    target,
                    f"masks '{m.column}' ({column.type_name}) with {m.strategy.value}; only text columns take a string",
                )
        prepared.append(PreparedTarget(target=target, info=ti))
    return prepared


def plan_tables(conn: Any, prepared: list[PreparedTarget], user_id: int) -> list[dict[str, Any]]:
    """Rows per target that belong to the subject, in erase order."""
    return [
        {
            "target": p.name,
            "table": p.target.table,
            "action": p.target.action.value,
            "rows": count_matches(conn, p, user_id),
            "batched": bool(p.info.primary_key),
        }
        for p in prepared
    ]


def _require_column(smap: SubjectMap, target: TableTarget, info: TableInfo, column: str) -> Any:
    if column not in info.columns:
        _fail(smap, target, f"column '{column}' does not exist in {info.qualified}")
    return info.columns[column]


def _fail(smap: SubjectMap, target: TableTarget, problem: str) -> None:
    raise LifecycleConfigError(f"Erasure subject map {smap.source}: target '{target.name}': {problem}")
