"""Lifecycle apply on a bucket already up to date: the requests a no-change run makes.

The policy's rules for the logs bucket are applied to a new bucket once (that run writes them), then
again with nothing to change; the second run should read the configuration and write nothing.
"""

from __future__ import annotations

from typing import Any

from benchmarks.common import AWS_CONN_ID, RequestCounter, Scale, new_bucket, remove_bucket, s3_client, timed
from benchmarks.report import Result, Row

WRITES = ("PutBucketLifecycleConfiguration", "DeleteBucketLifecycle")


def _apply(bucket: str, rules: list[dict[str, Any]]) -> tuple[RequestCounter, dict[str, Any], float]:
    from benchmarks.common import run_context, s3_run_anchor
    from data_lifecycle.operators.s3 import S3ApplyLifecycleOperator

    op = S3ApplyLifecycleOperator(
        task_id="bench_lifecycle", bucket=bucket, rules=rules, aws_conn_id=AWS_CONN_ID
    )
    counter = RequestCounter()
    counter.attach(op.hook.get_conn())
    summary, seconds = timed(op.execute, run_context(s3_run_anchor()))
    return counter, summary, seconds


def run(scale: Scale, template: str) -> Result:
    from data_lifecycle.policy import load_policy

    tiers = load_policy().storage_tiers[0]
    rules = [dict(rule) for rule in tiers.rules]
    client = s3_client()
    bucket = new_bucket(client, "lifecycle")
    try:
        first, first_summary, _ = _apply(bucket, rules)
        again, summary, seconds = _apply(bucket, rules)
    finally:
        remove_bucket(client, bucket)
    gets = again.by_operation["GetBucketLifecycleConfiguration"]
    puts = sum(again.by_operation[w] for w in WRITES)
    return Result(
        name="lifecycle_apply",
        title=f"Lifecycle apply, no-change run ({len(rules)} rules of `{tiers.id}`)",
        settings={"rules": [r["id"] for r in rules]},
        figures={"requests": again.total, "gets": gets, "seconds": seconds},
        rows=[
            Row("GET requests", gets, None, "", "", None, "1", gets == 1),
            Row("PUT requests", puts, None, "", "", None, "0", puts == 0),
        ],
        details={
            "no_change_run": dict(again.by_operation),
            "first_run": dict(first.by_operation),
            "first_summary": first_summary,
            "summary": summary,
        },
    )
