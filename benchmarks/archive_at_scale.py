"""Requests, dollars and hours to archive 100M objects to GLACIER, four ways (arithmetic, not a run).

``python -m benchmarks.archive_at_scale [--objects N] [--rtt-ms 20] [--workers 16]`` prints the
README's table. Prices are the dated us-east-1 table of ``data_lifecycle.pricing``; the requests
per object are the ones the operator makes (``benchmarks.glacier_copy`` counts them). Hours assume
every request costs one round trip and nothing else (S3's own request rates, 3,500 COPY and 5,500
HEAD per second per prefix, are far above 16 workers' 800 requests per second).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from benchmarks.report import TIMES
from data_lifecycle.pricing import region_prices

TARGET_CLASS = "GLACIER"
# Per 1,000 objects the operator lists a page of sources, the archive's range before copying and
# again to verify, the sources again before the delete, and sends one DeleteObjects.
OPERATOR_LISTS_PER_1000 = 4
OPERATOR_DELETES_PER_1000 = 1


@dataclass
class Plan:
    name: str
    requests: float
    dollars: float
    hours: float | None
    how: str


def plans(objects: int, rtt_ms: float, workers: int) -> list[Plan]:
    p = region_prices()
    copy, head, lists = (
        p.write_per_1000[TARGET_CLASS] / 1000,
        p.read_per_1000 / 1000,
        p.write_per_1000["STANDARD"] / 1000,
    )
    rtt = rtt_ms / 1000
    batches = objects / 1000
    serial_batch_s = (OPERATOR_LISTS_PER_1000 + OPERATOR_DELETES_PER_1000) * rtt  # the loop's own calls
    operator_s = objects * 2 * rtt / workers + batches * serial_batch_s
    inventory = objects / 1e6 * p.inventory_per_million
    return [
        Plan(
            "seed loop (copy_object, delete_object, one at a time)",
            requests=objects * 2,
            dollars=objects * copy,
            hours=objects * 2 * rtt / 3600,
            how=f"{objects:,} COPY {TIMES} ${copy * 1000:g}/1k; DELETE free; 2 {TIMES} {rtt_ms:g} ms per object in series",
        ),
        Plan(
            f"our operator, listing ({workers} workers)",
            requests=objects * 2 + batches * (OPERATOR_LISTS_PER_1000 + OPERATOR_DELETES_PER_1000),
            dollars=objects * (copy + head) + batches * OPERATOR_LISTS_PER_1000 * lists,
            hours=operator_s / 3600,
            how=(
                f"HEAD + COPY per object (${(copy + head) * 1000:g}/1k), {OPERATOR_LISTS_PER_1000} LIST + 1 "
                f"DeleteObjects per 1,000; 2 {TIMES} {rtt_ms:g} ms ÷ {workers} workers per object"
            ),
        ),
        Plan(
            f"our operator, inventory ({workers} workers)",
            requests=objects * 2 + batches * (OPERATOR_LISTS_PER_1000 - 1 + OPERATOR_DELETES_PER_1000),
            dollars=objects * (copy + head) + batches * (OPERATOR_LISTS_PER_1000 - 1) * lists + inventory,
            hours=(operator_s - batches * rtt) / 3600,
            how=f"as listing, one LIST per 1,000 replaced by the report (${p.inventory_per_million:g}/M objects)",
        ),
        Plan(
            "lifecycle transition (same key, S3 moves it)",
            requests=1,
            dollars=objects * p.transition(TARGET_CLASS),
            hours=None,
            how=f"{objects:,} transitions {TIMES} ${p.transition_per_1000[TARGET_CLASS]:g}/1k; one PutBucketLifecycleConfiguration",
        ),
        Plan(
            "Batch Operations copy, then our verify + delete run",
            requests=objects * 2 + batches * (OPERATOR_LISTS_PER_1000 + OPERATOR_DELETES_PER_1000) + 2,
            dollars=(
                p.batch_operations_per_job
                + objects / 1e6 * p.batch_operations_per_million
                + objects * copy
                + inventory
                + objects * 2 * head
                + batches * OPERATOR_LISTS_PER_1000 * lists
            ),
            hours=operator_s / 3600,
            how=(
                f"${p.batch_operations_per_job:g}/job + ${p.batch_operations_per_million:g}/M objects + the COPYs; "
                "then HEAD source + HEAD archive per object (our hours; S3's copy time is not published)"
            ),
        ),
    ]


def table(objects: int = 100_000_000, rtt_ms: float = 20, workers: int = 16) -> str:
    p = region_prices()
    lines = [
        f"Per {objects:,} objects to {TARGET_CLASS}, {p.region} prices of {p.as_of.isoformat()}, "
        f"{rtt_ms:g} ms per request:",
        "",
        "| method | requests | USD | hours (ours) | arithmetic |",
        "|---|---|---|---|---|",
    ]
    for plan in plans(objects, rtt_ms, workers):
        hours = "asynchronous (S3)" if plan.hours is None else f"{plan.hours:,.0f}"
        lines.append(f"| {plan.name} | {plan.requests:,.0f} | {plan.dollars:,.0f} | {hours} | {plan.how} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.archive_at_scale", description=__doc__)
    parser.add_argument("--objects", type=int, default=100_000_000)
    parser.add_argument("--rtt-ms", type=float, default=20)
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args()
    print(table(args.objects, args.rtt_ms, args.workers))


if __name__ == "__main__":
    main()
