"""Partition retention (detach + drop) vs a batched delete of the same month of rows.

``app.student_progress`` is range-partitioned by month. On one fresh copy the retention operator
drops the oldest partition; on another the batched delete removes exactly the rows of that month
(its cutoff is the partition's upper bound). Time and WAL of each, after a CHECKPOINT.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from benchmarks.batched_delete import KNOBS
from benchmarks.common import (
    ANCHOR,
    Scale,
    checkpoint,
    connect,
    fresh_database,
    operators_use,
    run_context,
    timed,
    wal_bytes_since,
    wal_lsn,
)
from benchmarks.report import Result, Row
from include.dreamseed.generate import PROGRESS_HISTORY_MONTHS, add_months, month_start

# Keeping 15 of the 16 months of history before the anchor's month expires exactly the oldest one.
RETENTION_MONTHS = PROGRESS_HISTORY_MONTHS - 1
OLDEST_MONTH_END = add_months(month_start(ANCHOR), -RETENTION_MONTHS)


def _retention() -> Any:
    from data_lifecycle.operators.postgres import PostgresPartitionRetentionOperator

    return PostgresPartitionRetentionOperator(
        task_id="bench_partition_retention", table="app.student_progress", retention_months=RETENTION_MONTHS
    )


def _batched() -> Any:
    from data_lifecycle.operators.postgres import PostgresBatchedDeleteOperator

    return PostgresBatchedDeleteOperator(
        task_id="bench_partition_batched",
        table="app.student_progress",
        timestamp_column="recorded_at",
        retention_days=1,
        **KNOBS,
    )


def _measure(template: str, op: Any, anchor: Any) -> dict[str, Any]:
    with fresh_database(template, "partition") as db, connect(db) as conn:
        rows = int(
            conn.execute(
                "SELECT count(*) FROM app.student_progress WHERE recorded_at < %s", (OLDEST_MONTH_END,)
            ).fetchone()[0]
        )
        checkpoint(conn)
        start = wal_lsn(conn)
        with operators_use(db):
            summary, seconds = timed(op.execute, run_context(anchor))
        wal = wal_bytes_since(conn, start)
        left = conn.execute(
            "SELECT count(*) FROM app.student_progress WHERE recorded_at < %s", (OLDEST_MONTH_END,)
        ).fetchone()[0]
        assert left == 0, f"{left} rows of the oldest month are left"
    return {"rows": rows, "seconds": seconds, "wal_bytes": wal, "summary": summary}


def run(scale: Scale, template: str) -> Result:
    drop = _measure(template, _retention(), ANCHOR)
    assert len(drop["summary"]["dropped"]) == 1, drop["summary"]
    batched = _measure(template, _batched(), OLDEST_MONTH_END + timedelta(days=1))
    time_ratio = drop["seconds"] / batched["seconds"]
    wal_ratio = drop["wal_bytes"] / batched["wal_bytes"]
    return Result(
        name="partition_retention",
        title=f"Partition retention vs batched delete (one month, {drop['rows']:,} rows)",
        settings={"retention_months": RETENTION_MONTHS, "batched": KNOBS},
        figures={
            "retention_seconds": drop["seconds"],
            "batched_seconds": batched["seconds"],
            "time_ratio": time_ratio,
            "retention_wal_bytes": drop["wal_bytes"],
            "batched_wal_bytes": batched["wal_bytes"],
            "wal_ratio": wal_ratio,
        },
        rows=[
            Row("seconds", drop["seconds"], batched["seconds"], "batched delete", "s", time_ratio),
            Row(
                "WAL",
                drop["wal_bytes"] / 1024,
                batched["wal_bytes"] / 1024,
                "batched delete",
                "KiB",
                wal_ratio,
            ),
        ],
        details={"partition_retention": drop, "batched_delete": batched},
    )
