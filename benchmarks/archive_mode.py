"""The cost of the archive guarantee: batched delete of app logs with archive-to-S3 on vs off.

Same rows (the logs older than 19 of their 21 days), same batch settings, each on a fresh copy. In
archive mode the rows are read without locks, written to S3 as gzip JSON lines of at least 128 KiB
and verified (size, SHA-256, row count) on worker threads while the next rows are read, and then
deleted where unchanged.
"""

from __future__ import annotations

from typing import Any

from benchmarks.batched_delete import _uptime
from benchmarks.common import (
    ANCHOR,
    AWS_CONN_ID,
    Scale,
    fresh_database,
    new_bucket,
    operators_use,
    remove_bucket,
    run_context,
    s3_client,
    timed,
)
from benchmarks.report import TIMES, Result, Row

RETENTION_DAYS = 19
KNOBS: dict[str, Any] = {"batch_size": 10_000, "max_batch_size": 20_000, "target_batch_seconds": 0.5}
TARGET_RATIO = 0.5


def _run(template: str, archive: dict[str, str] | None) -> dict[str, Any]:
    from data_lifecycle.operators.postgres import PostgresBatchedDeleteOperator

    op = PostgresBatchedDeleteOperator(
        task_id="bench_archive_mode",
        table="app.app_logs",
        timestamp_column="created_at",
        retention_days=RETENTION_DAYS,
        archive=archive,
        **KNOBS,
    )
    with fresh_database(template, "archive") as db, operators_use(db):
        summary, seconds = timed(op.execute, run_context(ANCHOR))
    assert summary["remaining"] == 0, summary
    return {
        "rows": summary["deleted"],
        "seconds": seconds,
        "rows_per_s": summary["deleted"] / seconds,
        "batches": summary["batches"],
        "archived_rows": summary["archived_rows"],
    }


def run(scale: Scale, template: str) -> Result:
    client = s3_client()
    bucket = new_bucket(client, "archive")
    try:
        on = _run(template, {"bucket": bucket, "prefix": "db-archive", "aws_conn_id": AWS_CONN_ID})
    finally:
        remove_bucket(client, bucket)
    off = _run(template, None)
    assert on["archived_rows"] == on["rows"] == off["rows"], (on, off)
    ratio = on["rows_per_s"] / off["rows_per_s"]
    return Result(
        name="archive_mode",
        title=f"Archive to S3 on vs off ({on['rows']:,} log rows)",
        settings={**KNOBS, "retention_days": RETENTION_DAYS},
        figures={"on_rows_per_s": on["rows_per_s"], "off_rows_per_s": off["rows_per_s"], "ratio": ratio},
        rows=[
            Row(
                "rows/s",
                on["rows_per_s"],
                off["rows_per_s"],
                "archive off",
                "",
                ratio,
                f"≥ {TARGET_RATIO:g}{TIMES}",
                ratio >= TARGET_RATIO,
            )
        ],
        details={"on": on, "off": off, "load": _uptime()},
    )
