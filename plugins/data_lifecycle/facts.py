"""Facts the runs record for the Data Lifecycle page: table sizes and S3 bytes per storage class.

Sizes are taken around the work, never by the page: a destructive PostgreSQL task records the
size of the tables it may change as it starts (``pre_execute``, pushed to XCom), and the run
summary records them again once every target has finished, together with the S3 bytes each S3
task reported per storage class. Sizes are ``pg_total_relation_size`` (heap, indexes, TOAST),
summed over the partitions of a partitioned table: cheap catalog reads, no scan.

A DELETE frees space for reuse inside the table; only VACUUM FULL, a dropped partition or a
truncated tail returns it to the file system. ``bytes_before - bytes_after`` is what left the disk.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

SIZES_TABLE = "app.cleanup_table_sizes"
S3_BYTES_TABLE = "app.cleanup_s3_bytes"
BYTES_BEFORE_XCOM = "pg_bytes_before"
# A size is a report: under a lock held by a migration or a long transaction, give up at once (the
# task goes on without it) instead of waiting before its own work, which has its own lock timeout.
MEASURE_LOCK_TIMEOUT = "1s"
MEASURE_STATEMENT_TIMEOUT = "10s"

_RELATION_BYTES = """
SELECT CASE WHEN c.relkind = 'p'
            THEN (SELECT coalesce(sum(pg_total_relation_size(t.relid)), 0) FROM pg_partition_tree(c.oid) t)
            ELSE pg_total_relation_size(c.oid) END
FROM pg_class c WHERE c.oid = to_regclass(%s)
"""


def relation_bytes(conn: Any, table: str) -> int | None:
    """Bytes on disk of ``table`` (all partitions of a partitioned one); None when it does not exist."""
    row = conn.execute(_RELATION_BYTES, (table,)).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def bound_waits(conn: Any) -> None:
    """Session timeouts for the measurements (``pg_total_relation_size`` waits for table locks)."""
    conn.execute("SELECT set_config('lock_timeout', %s, false)", (MEASURE_LOCK_TIMEOUT,))
    conn.execute("SELECT set_config('statement_timeout', %s, false)", (MEASURE_STATEMENT_TIMEOUT,))


def tables_sizes(conn_id: str, tables: Sequence[str]) -> dict[str, int | None]:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    with PostgresHook(postgres_conn_id=conn_id).get_conn() as conn:
        conn.autocommit = True
        bound_waits(conn)
        return {table: relation_bytes(conn, table) for table in tables}


def record_bytes_before(context: Mapping[str, Any], *, conn_id: str, tables: Sequence[str]) -> None:
    """Push the tables' sizes to XCom as the task starts; a failure to measure never stops it."""
    try:
        sizes = tables_sizes(conn_id, tables)
    except Exception:
        log.warning("Could not measure %s before the task", ", ".join(tables), exc_info=True)
        return
    context["ti"].xcom_push(key=BYTES_BEFORE_XCOM, value=sizes)


def s3_rows(task: Any, summary: Mapping[str, Any]) -> list[tuple[str, str, str, str, str | None, int]]:
    """(bucket, prefix, action, storage class, to class, bytes) of an S3 task's summary."""
    by_class = summary.get("bytes_by_class")
    if not isinstance(by_class, Mapping) or summary.get("dry_run"):
        return []
    to_class = getattr(task, "storage_class", None)
    if to_class is not None:  # copy then delete: moved to the archive class
        bucket, prefix, action = task.source_bucket, task.source_prefix, "moved"
    else:
        bucket, prefix, action = summary.get("bucket") or task.bucket, summary.get("prefix") or "", "removed"
    return [
        (str(bucket), str(prefix), action, str(cls), to_class, int(size))
        for cls, size in sorted(by_class.items())
        if int(size) > 0
    ]


def write_run_facts(
    conn: Any,
    *,
    dag_id: str,
    run_id: str,
    before: Mapping[str, Mapping[str, int | None]],
    s3: Mapping[str, list[tuple[str, str, str, str, str | None, int]]],
) -> None:
    """Insert the sizes (measured now, after the tasks) and the S3 bytes of one run."""
    size_rows = []
    for task_id, sizes in before.items():
        for table, bytes_before in sizes.items():
            after = relation_bytes(conn, table)
            if after is not None:
                size_rows.append((dag_id, run_id, task_id, table, bytes_before, after))
    s3_rows_ = [(dag_id, run_id, task_id, *row) for task_id, rows in s3.items() for row in rows]
    with conn.cursor() as cur:
        if size_rows:
            cur.executemany(
                f"INSERT INTO {SIZES_TABLE} (dag_id, run_id, task_id, table_name, bytes_before, bytes_after) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                size_rows,
            )
        if s3_rows_:
            cur.executemany(
                f"INSERT INTO {S3_BYTES_TABLE} (dag_id, run_id, task_id, bucket, prefix, action, "
                "storage_class, to_class, bytes) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                s3_rows_,
            )
