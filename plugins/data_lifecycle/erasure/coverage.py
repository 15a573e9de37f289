"""Coverage check: every column that references the subject must be in the map (or ignored), and
every archive destination of a mapped table or prefix must be covered (see ``archives.py``).

An unmapped table or archive is personal data an erasure would silently keep, so the check runs
first in every erasure and replay run, and again in each erase step before its first write; it
fails naming each gap.
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
            f"{smap.subject.table}: {listed}. Add them under 'tables' (delete or mask) or 'ignore' "
            "(with a reason), or change 'reference_columns'; nothing was erased."
        )
    refs = subject_references(conn, smap.subject.table, smap.subject.reference_columns)
    log.info("Coverage: %d reference column(s) to %s, all mapped", len(refs), smap.subject.table)
    return {"references": [f"{r.table}.{r.column}" for r in refs], "gaps": []}


def check_full_coverage(conn: Any, smap: SubjectMap, policy: Any | None = None) -> dict[str, Any]:
    """Reference columns (catalog) and archive destinations (policy): raise on any gap."""
    from data_lifecycle.erasure.archives import check_archive_coverage
    from data_lifecycle.policy import load_policy

    archives = check_archive_coverage(policy or load_policy(), smap)
    return {**check_coverage(conn, smap), "archives": archives}
