"""Coverage check: every column that references the subject must be in the map (or exempt).

An unmapped table is personal data an erasure would silently keep, so the check runs first in every
erasure and replay run and fails naming each gap.
"""

from __future__ import annotations

import logging
from typing import Any

from data_lifecycle.erasure.catalog import Reference, subject_references
from data_lifecycle.erasure.subject_map import SubjectMap
from data_lifecycle.exceptions import LifecycleConfigError

log = logging.getLogger(__name__)


def coverage_gaps(conn: Any, smap: SubjectMap) -> list[Reference]:
    """References to the subject that no target and no exemption covers."""
    covered = smap.covered_columns()
    refs = subject_references(conn, smap.subject.table, smap.subject.reference_columns)
    return [r for r in refs if (r.table, r.column) not in covered]


def check_coverage(conn: Any, smap: SubjectMap) -> dict[str, Any]:
    """Raise ``LifecycleConfigError`` naming every unmapped reference; else summarise what is covered."""
    gaps = coverage_gaps(conn, smap)
    if gaps:
        listed = "; ".join(f"{g.table}.{g.column} ({', '.join(g.reasons)})" for g in gaps)
        raise LifecycleConfigError(
            f"Erasure subject map {smap.source} misses {len(gaps)} column(s) that reference "
            f"{smap.subject.table}: {listed}. Add them under 'tables' (delete or mask) or 'exempt' "
            "(with a reason); nothing was erased."
        )
    refs = subject_references(conn, smap.subject.table, smap.subject.reference_columns)
    log.info("Coverage: %d reference column(s) to %s, all mapped", len(refs), smap.subject.table)
    return {"references": [f"{r.table}.{r.column}" for r in refs], "gaps": []}
