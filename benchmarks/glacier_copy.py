"""Copy-then-delete to GLACIER vs the naive loop, over the same objects on the same S3 endpoint.

The naive loop is the seed's ``auto_archive``: for each listed object, ``copy_object(...,
StorageClass='GLACIER')`` then ``delete_object``, one after the other, nothing verified. The
operator copies in a thread pool, verifies each copy by HEAD (size, checksum, storage class) and
deletes the sources in DeleteObjects batches. Requests are counted on each client with botocore's
``before-send`` event (the operator's client is ``op.hook.get_conn()``, cached by the hook).

The objects are uploaded with a SHA-256 checksum, the strong checksum the operator verifies with
(a CRC32 match does not prove equal bytes), so it compares with the stored checksum instead of
reading each source back.

On loopback a moto request costs only the server's CPU, which both methods share on the same two
cores: that measures request overhead, not what concurrency buys. S3 seen from a worker answers
each request after a network round trip, so the comparison runs a second time with a simulated
round trip (``RTT_MS``, a sleep before each request is sent, on both methods' clients alike).
"""

from __future__ import annotations

import time
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
KNOBS: dict[str, Any] = {"max_workers": 16, "checksum_algorithm": "SHA256"}
TARGET_SPEEDUP = 5.0
# A same-region round trip to S3 is typically 10-30 ms; the simulated one stays at the low end.
RTT_MS = 10
# Fewer objects with the round trip: the naive loop alone would otherwise take minutes.
RTT_OBJECTS = 1_000


def _with_rtt(client: Any, rtt_ms: int) -> Any:
    if rtt_ms:
        client.meta.events.register("before-send.s3.*", lambda **_: time.sleep(rtt_ms / 1000))
    return client


def _upload(client: Any, bucket: str, count: int) -> None:
    def put(i: int) -> None:
        body = (f"line {i} " * (OBJECT_BYTES // 8)).encode()[: OBJECT_BYTES + i % 512]
        client.put_object(
            Bucket=bucket,
            Key=f"{PREFIX}2026/{i % 12 + 1:02d}/log-{i:06d}.gz",
            Body=body,
            ChecksumAlgorithm="SHA256",
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))


def _naive(source: str, dest: str, rtt_ms: int = 0) -> RequestCounter:
    counter = RequestCounter()
    client = _with_rtt(counter.attach(s3_client()), rtt_ms)
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


def _ours(source: str, dest: str, rtt_ms: int = 0) -> tuple[RequestCounter, dict[str, Any]]:
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
    _with_rtt(counter.attach(op.hook.get_conn()), rtt_ms)
    summary = op.execute(run_context(s3_run_anchor()))
    return counter, summary


def _count(client: Any, bucket: str) -> int:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sum(page.get("KeyCount", 0) for page in pages)


def _compare(count: int, rtt_ms: int) -> dict[str, Any]:
    """Both methods over ``count`` fresh objects each; returns their timings and request counts."""
    client = s3_client()
    buckets = {name: new_bucket(client, name) for name in ("naive-src", "naive-dst", "ours-src", "ours-dst")}
    try:
        _upload(client, buckets["naive-src"], count)
        _upload(client, buckets["ours-src"], count)
        naive, naive_s = timed(_naive, buckets["naive-src"], buckets["naive-dst"], rtt_ms)
        (ours, summary), ours_s = timed(_ours, buckets["ours-src"], buckets["ours-dst"], rtt_ms)
        assert summary["objects"] == count and summary["failed"] == 0, summary
        for method in ("naive", "ours"):
            left, copied = _count(client, buckets[f"{method}-src"]), _count(client, buckets[f"{method}-dst"])
            assert (left, copied) == (0, count), f"{method}: {left} left, {copied} copied of {count}"
    finally:
        for bucket in buckets.values():
            remove_bucket(client, bucket)
    return {
        "count": count,
        "ours_s": ours_s,
        "naive_s": naive_s,
        "speedup": naive_s / ours_s,
        "ours": ours,
        "naive": naive,
        "summary": summary,
    }


def _speed_row(label: str, run: dict[str, Any]) -> Row:
    count = run["count"]
    return Row(
        label,
        count / run["ours_s"],
        count / run["naive_s"],
        "naive loop",
        "",
        run["speedup"],
        f"≥ {TARGET_SPEEDUP:g}{TIMES}",
        run["speedup"] >= TARGET_SPEEDUP,
    )


def run(scale: Scale, template: str) -> Result:
    loopback = _compare(scale.n(5_000, minimum=50), rtt_ms=0)
    remote = _compare(scale.n(RTT_OBJECTS, minimum=20), rtt_ms=RTT_MS)
    count = loopback["count"]
    per_object = {m: loopback[m].total / count for m in ("ours", "naive")}
    return Result(
        name="glacier_copy",
        title=f"Copy-then-delete vs naive loop ({count:,} objects on loopback, {remote['count']:,} with {RTT_MS} ms RTT)",
        settings={
            **KNOBS,
            "objects": count,
            "objects_with_rtt": remote["count"],
            "rtt_ms": RTT_MS,
            "object_bytes": f"{OBJECT_BYTES}-{OBJECT_BYTES + 511}",
        },
        figures={
            "ours_objects_per_s": count / loopback["ours_s"],
            "naive_objects_per_s": count / loopback["naive_s"],
            "speedup": loopback["speedup"],
            "rtt_ours_objects_per_s": remote["count"] / remote["ours_s"],
            "rtt_naive_objects_per_s": remote["count"] / remote["naive_s"],
            "rtt_speedup": remote["speedup"],
            "ours_requests_per_object": per_object["ours"],
            "naive_requests_per_object": per_object["naive"],
        },
        rows=[
            _speed_row("objects/s, loopback", loopback),
            _speed_row(f"objects/s, {RTT_MS} ms RTT", remote),
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
            "ours_requests": dict(loopback["ours"].by_operation),
            "naive_requests": dict(loopback["naive"].by_operation),
            "ours_seconds": loopback["ours_s"],
            "naive_seconds": loopback["naive_s"],
            "rtt_ours_seconds": remote["ours_s"],
            "rtt_naive_seconds": remote["naive_s"],
            "operator_summary": loopback["summary"],
        },
    )
