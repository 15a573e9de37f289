"""Copy-then-delete to GLACIER vs the naive loop, over the same objects on the same S3 endpoint.

The naive loop is the seed's ``auto_archive``: for each listed object, ``copy_object(...,
StorageClass='GLACIER')`` then ``delete_object``, one after the other, nothing verified. The
operator copies in a thread pool, verifies each copy by HEAD (size, checksum, storage class) and
deletes the sources in DeleteObjects batches. Requests are counted on each client with botocore's
``before-send`` event (the operator's client is ``op.hook.get_conn()``, cached by the hook).

The objects are uploaded the way current AWS SDKs upload by default, with a CRC32 checksum, and
the operator verifies with that algorithm (``checksum_algorithm="CRC32"``), so it can compare with
the stored checksum instead of reading each source back.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks.common import (
    AWS_CONN_ID,
    RequestCounter,
    Scale,
    new_bucket,
    remove_bucket,
    run_context,
    s3_client,
    s3_run_anchor,
    timed,
)
from benchmarks.report import TIMES, Result, Row

PREFIX = "app/"
OBJECT_BYTES = 2048
KNOBS: dict[str, Any] = {"max_workers": 16, "checksum_algorithm": "CRC32"}
TARGET_SPEEDUP = 5.0


def _upload(client: Any, bucket: str, count: int) -> None:
    def put(i: int) -> None:
        body = (f"line {i} " * (OBJECT_BYTES // 8)).encode()[: OBJECT_BYTES + i % 512]
        client.put_object(Bucket=bucket, Key=f"{PREFIX}2026/{i % 12 + 1:02d}/log-{i:06d}.gz", Body=body)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))


def _naive(source: str, dest: str) -> RequestCounter:
    counter = RequestCounter()
    client = counter.attach(s3_client())
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=source, Prefix=PREFIX):
        for obj in page.get("Contents", []):
            client.copy_object(
                Bucket=dest,
                Key=obj["Key"],
                CopySource={"Bucket": source, "Key": obj["Key"]},
                StorageClass="GLACIER",
            )
            client.delete_object(Bucket=source, Key=obj["Key"])
    return counter


def _ours(source: str, dest: str) -> tuple[RequestCounter, dict[str, Any]]:
    from data_lifecycle.operators.s3 import S3GlacierCopyThenDeleteOperator

    op = S3GlacierCopyThenDeleteOperator(
        task_id="bench_glacier_copy",
        source_bucket=source,
        source_prefix=PREFIX,
        dest_bucket=dest,
        storage_class="GLACIER",
        retention_days=1,
        aws_conn_id=AWS_CONN_ID,
        **KNOBS,
    )
    counter = RequestCounter()
    counter.attach(op.hook.get_conn())
    summary = op.execute(run_context(s3_run_anchor()))
    return counter, summary


def _count(client: Any, bucket: str) -> int:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sum(page.get("KeyCount", 0) for page in pages)


def run(scale: Scale, template: str) -> Result:
    count = scale.n(5_000, minimum=50)
    client = s3_client()
    buckets = {name: new_bucket(client, name) for name in ("naive-src", "naive-dst", "ours-src", "ours-dst")}
    try:
        _upload(client, buckets["naive-src"], count)
        _upload(client, buckets["ours-src"], count)
        naive, naive_s = timed(_naive, buckets["naive-src"], buckets["naive-dst"])
        (ours, summary), ours_s = timed(_ours, buckets["ours-src"], buckets["ours-dst"])
        assert summary["objects"] == count and summary["failed"] == 0, summary
        for method in ("naive", "ours"):
            left, copied = _count(client, buckets[f"{method}-src"]), _count(client, buckets[f"{method}-dst"])
            assert (left, copied) == (0, count), f"{method}: {left} left, {copied} copied of {count}"
    finally:
        for bucket in buckets.values():
            remove_bucket(client, bucket)
    speedup = (count / ours_s) / (count / naive_s)
    per_object = {"ours": ours.total / count, "naive": naive.total / count}
    return Result(
        name="glacier_copy",
        title=f"Copy-then-delete vs naive loop ({count:,} objects)",
        settings={**KNOBS, "objects": count, "object_bytes": f"{OBJECT_BYTES}-{OBJECT_BYTES + 511}"},
        figures={
            "ours_objects_per_s": count / ours_s,
            "naive_objects_per_s": count / naive_s,
            "speedup": speedup,
            "ours_requests_per_object": per_object["ours"],
            "naive_requests_per_object": per_object["naive"],
        },
        rows=[
            Row(
                "objects/s",
                count / ours_s,
                count / naive_s,
                "naive loop",
                "",
                speedup,
                f"≥ {TARGET_SPEEDUP:g}{TIMES}",
                speedup >= TARGET_SPEEDUP,
            ),
            Row(
                "requests per object",
                per_object["ours"],
                per_object["naive"],
                "naive loop",
                "",
                per_object["ours"] / per_object["naive"],
            ),
        ],
        details={
            "ours_requests": dict(ours.by_operation),
            "naive_requests": dict(naive.by_operation),
            "ours_seconds": ours_s,
            "naive_seconds": naive_s,
            "operator_summary": summary,
        },
    )
