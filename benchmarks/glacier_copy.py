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
each request after a network round trip, so the comparison runs again behind a delaying proxy
(``benchmarks.delay_proxy``, its own process) that holds every request for a simulated round trip
on the server side, 10 ms and 20 ms (``RTT_MS``; 20 ms is what an in-region S3 request costs). Both
methods go through the same proxy: what overlaps the round trips is the client's concurrency.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
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
from benchmarks.delay_proxy import DelayProxy
from benchmarks.report import TIMES, Result, Row

PREFIX = "app/"
OBJECT_BYTES = 2048
KNOBS: dict[str, Any] = {"max_workers": 16, "checksum_algorithm": "SHA256"}
# Issue targets: 10x the naive loop at a 20 ms round trip (5x on loopback and at 10 ms, as before);
# at most 2 requests per object where S3 answers the copy with its checksum.
TARGET_SPEEDUP = {0: 5.0, 10: 5.0, 20: 10.0}
TARGET_REQUESTS_PER_OBJECT = 2.0
# A same-region round trip to S3 is typically 10-30 ms.
RTT_MS = (10, 20)
# Fewer objects with the round trip: the naive loop alone would otherwise take minutes.
RTT_OBJECTS = 1_000
DELAYED_CONN_ID = "lifecycle_aws_delayed"
# The local stack's S3 server process (its CPU time per request is the ceiling of any client here).
SERVER_PIDFILE = Path(__file__).resolve().parents[1] / ".local" / "run" / "moto.pid"


def _server_cpu_seconds() -> float | None:
    """CPU seconds the local S3 server has used (None when the endpoint is not the local stack's)."""
    try:
        pid = int(SERVER_PIDFILE.read_text())
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def _delayed_connection(rtt_ms: int) -> Iterator[str]:
    """An AWS connection (its id) whose endpoint is a proxy adding ``rtt_ms`` to every request."""
    if not rtt_ms:
        yield AWS_CONN_ID
        return
    env_name = f"AIRFLOW_CONN_{DELAYED_CONN_ID.upper()}"
    conn = json.loads(os.environ[f"AIRFLOW_CONN_{AWS_CONN_ID.upper()}"])
    upstream = conn["extra"]["endpoint_url"]
    with DelayProxy(upstream, rtt_ms) as endpoint:
        os.environ[env_name] = json.dumps({**conn, "extra": {**conn["extra"], "endpoint_url": endpoint}})
        try:
            yield DELAYED_CONN_ID
        finally:
            os.environ.pop(env_name, None)


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


def _naive(source: str, dest: str, conn_id: str) -> RequestCounter:
    counter = RequestCounter()
    client = counter.attach(s3_client(conn_id))
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


def _ours(source: str, dest: str, conn_id: str) -> tuple[RequestCounter, dict[str, Any]]:
    from data_lifecycle.operators.s3 import S3GlacierCopyThenDeleteOperator

    op = S3GlacierCopyThenDeleteOperator(
        task_id="bench_glacier_copy",
        source_bucket=source,
        source_prefix=PREFIX,
        dest_bucket=dest,
        storage_class="GLACIER",
        retention_days=1,
        aws_conn_id=conn_id,
        **KNOBS,
    )
    counter = RequestCounter()
    counter.attach(op.hook.get_conn())
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
        with _delayed_connection(rtt_ms) as conn_id:
            naive, naive_s = timed(_naive, buckets["naive-src"], buckets["naive-dst"], conn_id)
            cpu_before = _server_cpu_seconds()
            (ours, summary), ours_s = timed(_ours, buckets["ours-src"], buckets["ours-dst"], conn_id)
            cpu_after = _server_cpu_seconds()
        assert summary["objects"] == count and summary["failed"] == 0, summary
        for method in ("naive", "ours"):
            left, copied = _count(client, buckets[f"{method}-src"]), _count(client, buckets[f"{method}-dst"])
            assert (left, copied) == (0, count), f"{method}: {left} left, {copied} copied of {count}"
    finally:
        for bucket in buckets.values():
            remove_bucket(client, bucket)
    server_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return {
        "count": count,
        "rtt_ms": rtt_ms,
        "server_cpu_ms_per_request": None if server_cpu is None else 1000 * server_cpu / ours.total,
        "ours_s": ours_s,
        "naive_s": naive_s,
        "speedup": naive_s / ours_s,
        "ours": ours,
        "naive": naive,
        "summary": summary,
    }


def _speed_row(label: str, run: dict[str, Any]) -> Row:
    count, target = run["count"], TARGET_SPEEDUP[run["rtt_ms"]]
    return Row(
        label,
        count / run["ours_s"],
        count / run["naive_s"],
        "naive loop",
        "",
        run["speedup"],
        f"≥ {target:g}{TIMES}",
        run["speedup"] >= target,
    )


def run(scale: Scale, template: str) -> Result:
    loopback = _compare(scale.n(5_000, minimum=50), rtt_ms=0)
    remote = {rtt: _compare(scale.n(RTT_OBJECTS, minimum=20), rtt_ms=rtt) for rtt in RTT_MS}
    count = loopback["count"]
    per_object = {m: loopback[m].total / count for m in ("ours", "naive")}
    # The requests made for each object; the rest are per listing page or delete batch of 1,000.
    ops = loopback["ours"].by_operation
    per_object_own = (ops["HeadObject"] + ops["CopyObject"] + ops["GetObject"]) / count
    rtt_figures: dict[str, float] = {}
    for rtt, r in remote.items():
        rtt_figures[f"rtt{rtt}_ours_objects_per_s"] = r["count"] / r["ours_s"]
        rtt_figures[f"rtt{rtt}_naive_objects_per_s"] = r["count"] / r["naive_s"]
        rtt_figures[f"rtt{rtt}_speedup"] = r["speedup"]
        rtt_figures[f"rtt{rtt}_ours_requests_per_object"] = r["ours"].total / r["count"]
    rtt_counts = ", ".join(f"{r['count']:,} with {rtt} ms RTT" for rtt, r in remote.items())
    return Result(
        name="glacier_copy",
        title=f"Copy-then-delete vs naive loop ({count:,} objects on loopback, {rtt_counts})",
        settings={
            **KNOBS,
            "objects": count,
            "objects_with_rtt": scale.n(RTT_OBJECTS, minimum=20),
            "rtt_ms": list(RTT_MS),
            "rtt_where": "server side: a delaying proxy process in front of the moto server",
            "object_bytes": f"{OBJECT_BYTES}-{OBJECT_BYTES + 511}",
        },
        figures={
            "ours_objects_per_s": count / loopback["ours_s"],
            "naive_objects_per_s": count / loopback["naive_s"],
            "speedup": loopback["speedup"],
            **rtt_figures,
            "ours_requests_per_object": per_object["ours"],
            "ours_per_object_requests": per_object_own,
            **{
                f"rtt{rtt}_server_cpu_ms_per_request": r["server_cpu_ms_per_request"]
                for rtt, r in {0: loopback, **remote}.items()
                if r["server_cpu_ms_per_request"] is not None
            },
            "naive_requests_per_object": per_object["naive"],
        },
        rows=[
            _speed_row("objects/s, loopback", loopback),
            *(_speed_row(f"objects/s, {rtt} ms RTT (server side)", r) for rtt, r in remote.items()),
            *(
                [
                    Row(
                        "S3 server CPU per request (moto, one process): objects/s ceiling",
                        1000 / (per_object["ours"] * loopback["server_cpu_ms_per_request"]),
                        None,
                        f"{loopback['server_cpu_ms_per_request']:.2f} ms CPU per request",
                    )
                ]
                if loopback["server_cpu_ms_per_request"]
                else []
            ),
            Row(
                "requests per object (HEAD + CopyObject)",
                per_object_own,
                None,
                "",
                "",
                None,
                f"≤ {TARGET_REQUESTS_PER_OBJECT:g}",
                per_object_own <= TARGET_REQUESTS_PER_OBJECT,
            ),
            Row(
                "requests per object, all (listings, deletes, bucket checks too)",
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
            **{f"rtt{rtt}_ours_requests": dict(r["ours"].by_operation) for rtt, r in remote.items()},
            **{
                f"rtt{rtt}_seconds": {"ours": r["ours_s"], "naive": r["naive_s"]} for rtt, r in remote.items()
            },
            "operator_summary": loopback["summary"],
        },
    )
