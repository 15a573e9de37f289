"""Objects of purged accounts: ``purge_soft_deleted`` removes them in the same run.

``app.user_uploads`` is the only index of a user's objects, and the purge deletes it; objects left
under ``user_{id}/`` then belong to nobody and no erasure can find them. So before the rows go, the
users the purge will delete (the same table, timestamp column and cutoff) have every object
version and delete marker under the subject map's prefixes removed. A version under legal hold or
retention fails the task before anything in that bucket is deleted, and the row purge waits for it
(it runs only after this task succeeded). Users are never named in logs or XCom: counts only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from psycopg import sql

from data_lifecycle.cutoff import compute_cutoff, parse_retention_days
from data_lifecycle.erasure.s3_purge import delete_scanned, scan_bucket
from data_lifecycle.erasure.subject_map import SubjectMap
from data_lifecycle.rendered import as_bool

log = logging.getLogger(__name__)


def due_subject_ids(conn: Any, smap: SubjectMap, rule: Any, cutoff: Any) -> list[int]:
    """Ids of the subject rows the purge rule deletes at ``cutoff`` (``timestamp_column < cutoff``)."""
    schema, name = rule.table.split(".", 1)
    rows = conn.execute(
        sql.SQL("SELECT {} FROM {} WHERE {} < %s ORDER BY 1").format(
            sql.Identifier(smap.subject.key),
            sql.Identifier(schema, name),
            sql.Identifier(rule.timestamp_column),
        ),
        (cutoff,),
    ).fetchall()
    return [int(r[0]) for r in rows]


def purge_objects_of_due_subjects(
    smap: SubjectMap,
    rule: Any,
    context: Mapping[str, Any],
    *,
    postgres_conn_id: str,
    aws_conn_id: str,
    retention_days: Any,
    dry_run: Any,
) -> dict[str, Any]:
    """Delete every version under the map's prefixes of each user the purge will delete.

    :param retention_days: the purge's (rendered) retention, so both tasks use one cutoff.
    :param dry_run: count only.
    """
    from data_lifecycle.erasure.steps import pg_connection, s3_client

    dry = as_bool(dry_run, field="dry_run")
    cutoff = compute_cutoff(context, parse_retention_days(retention_days))
    with pg_connection(postgres_conn_id) as conn:
        ids = due_subject_ids(conn, smap, rule, cutoff)
    s3 = s3_client(aws_conn_id)
    # Every user's prefixes are checked for locks before any object is deleted.
    scans = [scan_bucket(s3, b, uid) for uid in ids for b in smap.buckets]
    totals: dict[str, dict[str, int]] = {}
    for scan in scans:
        counts = scan.counts if dry else delete_scanned(s3, scan)
        for label, c in counts.items():
            t = totals.setdefault(label, {"versions": 0, "delete_markers": 0})
            t["versions"] += c["versions"]
            t["delete_markers"] += c["delete_markers"]
    log.info(
        "%s objects of %d purged user(s) of %s: %s",
        "Would delete" if dry else "Deleted",
        len(ids),
        rule.table,
        totals,
    )
    return {"users": len(ids), "objects": totals, "dry_run": dry, "cutoff": cutoff.isoformat()}
