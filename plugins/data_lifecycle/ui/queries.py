"""What the Data Lifecycle page shows, read from the facts the runs recorded.

Only the audit, size and inventory tables and the erasure ledger's request ids and times are read
(the ``lifecycle_report`` role of include/sql/cleanup_role.sql can read exactly these), plus task
states from Airflow's own metadata database. Nothing here lists S3 or scans an estate table.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

RUNS_PER_TARGET = 5
HISTORY_DAYS = 90

# What a target's rows_affected counts: S3 objects, dropped partitions or rows.
_UNIT = (
    "CASE WHEN summary ? 'objects' THEN 'objects' WHEN summary ? 'dropped' THEN 'partitions'"
    " WHEN summary ? 'deleted' THEN 'rows' ELSE 'none' END"
)
# How many: the audit's rows_affected, or the partitions a retention task dropped or moved.
_REMOVED = (
    "CASE WHEN jsonb_typeof(summary -> 'dropped') = 'array' THEN jsonb_array_length(summary -> 'dropped')"
    " + coalesce(jsonb_array_length(summary -> 'moved'), 0) ELSE rows_affected END"
)
# Targets from the audit: one per DAG and task; rows (PostgreSQL) or objects (S3).
_TARGETS = """
SELECT dag_id, task_id,
       (array_agg(target || coalesce('/' || nullif(summary ->> 'prefix', ''), '') ORDER BY recorded_at DESC))[1],
       (array_agg({unit} ORDER BY recorded_at DESC))[1]
FROM app.cleanup_audit GROUP BY dag_id, task_id ORDER BY dag_id, task_id
""".replace("{unit}", _UNIT)
# The newest audit row of each run of each target.
_AUDIT_RUNS = """
SELECT DISTINCT ON (dag_id, task_id, run_id) dag_id, task_id, run_id, action, {removed},
       (summary ->> 'seconds')::float, summary ->> 'stopped_by', recorded_at
FROM app.cleanup_audit WHERE recorded_at >= %s
ORDER BY dag_id, task_id, run_id, recorded_at DESC
""".replace("{removed}", _REMOVED)
_REMOVALS = """
SELECT day, kind, sum(n)::bigint FROM (
    SELECT DISTINCT ON (dag_id, task_id, run_id) recorded_at::date AS day, {removed} AS n,
           {unit} AS kind
    FROM app.cleanup_audit WHERE action <> 'dry_run' AND recorded_at >= %s
    ORDER BY dag_id, task_id, run_id, recorded_at DESC
) runs GROUP BY day, kind ORDER BY day
""".replace("{unit}", _UNIT).replace("{removed}", _REMOVED)
# A rerun of a run's summary records the same task again: the newest row per run and task counts.
_TABLE_BYTES = """
SELECT table_name, count(*), coalesce(sum(greatest(bytes_before - bytes_after, 0)), 0)::bigint,
       (array_agg(bytes_after ORDER BY recorded_at DESC))[1]
FROM (SELECT DISTINCT ON (dag_id, run_id, task_id, table_name) * FROM app.cleanup_table_sizes
      ORDER BY dag_id, run_id, task_id, table_name, recorded_at DESC) runs
GROUP BY table_name ORDER BY table_name
"""
_S3_RUNS = """(SELECT DISTINCT ON (dag_id, run_id, task_id, action, storage_class, to_class) *
      FROM app.cleanup_s3_bytes
      ORDER BY dag_id, run_id, task_id, action, storage_class, to_class, recorded_at DESC) runs"""
_S3_MOVED = f"""
SELECT action, storage_class, coalesce(to_class, ''), sum(bytes)::bigint
FROM {_S3_RUNS} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""
_INVENTORY = """
SELECT snapshot_date, storage_class, sum(objects)::bigint, sum(bytes)::bigint
FROM app.s3_inventory WHERE snapshot_date >= %s GROUP BY 1, 2 ORDER BY 1, 2
"""
_INVENTORY_GROUPS = """
SELECT snapshot_date, bucket, prefix, storage_class, age_histogram FROM app.s3_inventory
WHERE snapshot_date = (SELECT max(snapshot_date) FROM app.s3_inventory) ORDER BY 2, 3, 4
"""
_S3_CHANGES_BY_DAY = f"""
SELECT recorded_at::date, action, storage_class, to_class, sum(bytes)::bigint
FROM {_S3_RUNS} GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
"""
_INVENTORY_BUCKETS = """
SELECT bucket, storage_class, sum(objects)::bigint, sum(bytes)::bigint FROM app.s3_inventory
WHERE snapshot_date = (SELECT max(snapshot_date) FROM app.s3_inventory) GROUP BY 1, 2 ORDER BY 1, 2
"""
# Open requests: no real (not dry-run) completed or noop entry yet, and requests registered in the
# intake but never run. Ids and times only: the subject columns are never read.
_OPEN_REQUESTS = """
SELECT request_id,
       coalesce(min(requested_at), min(recorded_at) FILTER (WHERE status = 'started'), min(recorded_at)),
       (array_agg(status ORDER BY recorded_at DESC))[1]
FROM {table} GROUP BY request_id
HAVING NOT bool_or(status IN ('completed', 'noop') AND NOT dry_run)
UNION ALL
SELECT i.request_id, i.requested_at, 'registered' FROM {intake} i
WHERE NOT EXISTS (SELECT 1 FROM {table} l WHERE l.request_id = i.request_id)
ORDER BY 2
"""


def targets(conn: Any) -> list[dict[str, Any]]:
    return [
        {"dag_id": r[0], "task_id": r[1], "target": r[2], "unit": r[3]}
        for r in conn.execute(_TARGETS).fetchall()
    ]


def audit_runs(conn: Any, since: datetime) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {
        (r[0], r[1], r[2]): {
            "action": r[3],
            "removed": int(r[4]),
            "seconds": r[5],
            "stopped_by": r[6],
            "recorded_at": r[7].isoformat(),
        }
        for r in conn.execute(_AUDIT_RUNS, (since,)).fetchall()
    }


def task_states(pairs: Iterable[tuple[str, str]], since: datetime) -> list[dict[str, Any]]:
    """Recent tries of the given tasks from Airflow's metadata database, newest first."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select, tuple_

    wanted = list(pairs)
    if not wanted:
        return []
    ti = TaskInstance
    query = (
        select(ti.dag_id, ti.task_id, ti.run_id, ti.state, ti.start_date, ti.end_date)
        .where(tuple_(ti.dag_id, ti.task_id).in_(wanted), ti.start_date >= since)
        .order_by(ti.start_date.desc())
    )
    with create_session() as session:
        rows = session.execute(query).all()
    return [
        {
            "dag_id": r[0],
            "task_id": r[1],
            "run_id": r[2],
            "state": str(r[3]) if r[3] is not None else "none",
            "start_date": r[4].isoformat() if r[4] else None,
            "duration": (r[5] - r[4]).total_seconds() if r[4] and r[5] else None,
        }
        for r in rows
    ]


def last_runs(conn: Any, now: datetime) -> list[dict[str, Any]]:
    """Per DAG and target, its last runs: state, removed, seconds, stopped_by."""
    since = now - timedelta(days=HISTORY_DAYS)
    found = targets(conn)
    audits = audit_runs(conn, since)
    tries = task_states([(t["dag_id"], t["task_id"]) for t in found], since)
    out = []
    for target in found:
        runs = []
        for t in tries:
            if (t["dag_id"], t["task_id"]) != (target["dag_id"], target["task_id"]):
                continue
            audit = audits.get((t["dag_id"], t["task_id"], t["run_id"]), {})
            runs.append(
                {
                    "run_id": t["run_id"],
                    "state": t["state"],
                    "started": t["start_date"],
                    "action": audit.get("action"),
                    "removed": audit.get("removed"),
                    "seconds": audit.get("seconds") if audit.get("seconds") is not None else t["duration"],
                    "stopped_by": audit.get("stopped_by"),
                }
            )
            if len(runs) == RUNS_PER_TARGET:
                break
        out.append({**target, "runs": runs})
    return out


def removals_per_day(conn: Any, now: datetime) -> dict[str, Any]:
    start = (now - timedelta(days=HISTORY_DAYS - 1)).date()
    days = [(start + timedelta(days=i)).isoformat() for i in range(HISTORY_DAYS)]
    series: dict[str, dict[str, int]] = {"rows": {}, "objects": {}, "partitions": {}, "none": {}}
    for day, kind, n in conn.execute(_REMOVALS, (start,)).fetchall():
        series[kind][day.isoformat()] = int(n)
    return {
        "days": days,
        "rows": [series["rows"].get(d, 0) for d in days],
        "objects": [series["objects"].get(d, 0) for d in days],
        "partitions": [series["partitions"].get(d, 0) for d in days],
    }


def postgres_bytes(conn: Any) -> dict[str, Any]:
    tables = [
        {"table": r[0], "measurements": int(r[1]), "freed": int(r[2]), "size_now": int(r[3])}
        for r in conn.execute(_TABLE_BYTES).fetchall()
    ]
    return {"tables": tables, "freed_total": sum(t["freed"] for t in tables)}


def s3_bytes(conn: Any, now: datetime) -> dict[str, Any]:
    since = (now - timedelta(days=HISTORY_DAYS)).date()
    history: dict[str, dict[str, int]] = {}
    objects: dict[str, int] = {}
    for day, cls, n, size in conn.execute(_INVENTORY, (since,)).fetchall():
        history.setdefault(day.isoformat(), {})[cls] = int(size)
        objects[day.isoformat()] = objects.get(day.isoformat(), 0) + int(n)
    latest = max(history) if history else None
    buckets: dict[str, dict[str, Any]] = {}
    for bucket, cls, n, size in conn.execute(_INVENTORY_BUCKETS).fetchall():
        entry = buckets.setdefault(bucket, {"bucket": bucket, "objects": 0, "bytes": 0, "by_class": {}})
        entry["objects"] += int(n)
        entry["bytes"] += int(size)
        entry["by_class"][cls] = int(size)
    changes = [
        {"action": r[0], "storage_class": r[1], "to_class": r[2] or None, "bytes": int(r[3])}
        for r in conn.execute(_S3_MOVED).fetchall()
    ]
    return {
        "dates": sorted(history),
        "by_date": history,
        "objects_by_date": objects,
        "latest_date": latest,
        "latest_by_class": history.get(latest, {}) if latest else {},
        "buckets": list(buckets.values()),
        "changes": changes,
        "removed_total": sum(c["bytes"] for c in changes if c["action"] == "removed"),
        "moved_total": sum(c["bytes"] for c in changes if c["action"] == "moved"),
    }


def latest_inventory(conn: Any) -> list[dict[str, Any]]:
    """The newest inventory day, per bucket, prefix and class, with its age histogram."""
    return [
        {"date": r[0], "bucket": r[1], "prefix": r[2], "storage_class": r[3], "age_histogram": r[4]}
        for r in conn.execute(_INVENTORY_GROUPS).fetchall()
    ]


def s3_changes_by_day(conn: Any) -> list[dict[str, Any]]:
    """Bytes removed or moved per day, action and class, for what the cleanups saved."""
    return [
        {"day": r[0], "action": r[1], "storage_class": r[2], "to_class": r[3], "bytes": int(r[4])}
        for r in conn.execute(_S3_CHANGES_BY_DAY).fetchall()
    ]


def erasure_requests(conn: Any, table: str, deadline_days: int, now: datetime) -> dict[str, Any]:
    from psycopg import sql

    schema, name = table.split(".")
    intake = f"{schema}.erasure_requests"  # data_lifecycle.erasure.intake.intake_table
    query = (
        _OPEN_REQUESTS
        if _exists(conn, intake)
        else _OPEN_REQUESTS.split("UNION ALL", maxsplit=1)[0] + "ORDER BY 2"
    )
    composed = sql.SQL(query).format(
        table=sql.Identifier(schema, name), intake=sql.Identifier(schema, "erasure_requests")
    )
    items = []
    for request_id, requested, last_status in conn.execute(composed).fetchall():
        deadline = requested + timedelta(days=deadline_days)
        items.append(
            {
                "request_id": request_id,
                "requested_at": requested.isoformat(),
                "deadline": deadline.isoformat(),
                "days_left": (deadline - now).days,
                "overdue": now > deadline,
                "last_status": last_status,
            }
        )
    items.sort(key=lambda r: r["deadline"])
    return {
        "deadline_days": deadline_days,
        "open": len(items),
        "overdue": sum(r["overdue"] for r in items),
        "due_within_7_days": sum(not r["overdue"] and r["days_left"] < 7 for r in items),
        "requests": items,
    }


def _exists(conn: Any, table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])


def utcnow() -> datetime:
    return datetime.now(UTC)
