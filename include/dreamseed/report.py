"""Before/after snapshots of the DreamSeed estate, and the report ``make demo`` prints.

A snapshot counts rows per table, the partitions of partitioned tables, objects and bytes per
storage class in each demo bucket (and keeps the listing, for the cost forecast), the estimated
monthly storage cost, and the Slack messages received so far. The report ends with the 12-month
S3 cost forecast of the demo's buckets under the policy's rules, and of the seed's scenario.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from data_lifecycle.forecast import ObjectGroup, Rules, compare, month_table, rules_by_bucket, seed_report
from data_lifecycle.pricing import DEFAULT_REGION, MIN_TRANSITION_BYTES, PRICES
from include.dreamseed.generate import BUCKETS

TABLES = (
    "app.users",
    "app.sessions",
    "app.user_uploads",
    "app.app_logs",
    "app.student_progress",
    "app.cleanup_audit",
)


@dataclass
class Snapshot:
    rows: dict[str, int] = field(default_factory=dict)
    partitions: dict[str, list[str]] = field(default_factory=dict)
    objects: dict[str, dict[str, int]] = field(default_factory=dict)  # bucket -> class -> count
    bytes: dict[str, dict[str, int]] = field(default_factory=dict)  # bucket -> class -> bytes
    lifecycle_rules: dict[str, list[str]] = field(default_factory=dict)
    listing: list[ObjectGroup] = field(default_factory=list)  # one group per object, aged at `taken`
    slack_messages: int = 0

    @property
    def bytes_by_class(self) -> dict[str, int]:
        total: dict[str, int] = defaultdict(int)
        for per_class in self.bytes.values():
            for cls, size in per_class.items():
                total[cls] += size
        return dict(total)


def take_snapshot(
    conn: Any, s3: Any, slack_file: Path | None = None, now: datetime | None = None
) -> Snapshot:
    snap = Snapshot()
    # S3 ages objects by its own clock (LastModified), not by the DAG runs' logical date.
    now = now or datetime.now(UTC)
    for table in TABLES:
        schema, name = table.split(".")
        row = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s",
            (schema, name),
        ).fetchone()
        if row and row[0]:
            from psycopg import sql

            count = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(name))
            ).fetchone()
            snap.rows[table] = int(count[0]) if count else 0
    parts = conn.execute(
        """
        SELECT pn.nspname || '.' || p.relname, cn.nspname || '.' || c.relname
        FROM pg_inherits i
        JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = p.relnamespace
        JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
        WHERE p.relkind = 'p' ORDER BY 2
        """
    ).fetchall()
    for parent, child in parts:
        snap.partitions.setdefault(parent, []).append(child)
    for bucket in BUCKETS:
        counts: dict[str, int] = defaultdict(int)
        sizes: dict[str, int] = defaultdict(int)
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for obj in page.get("Contents", []):
                    cls = obj.get("StorageClass") or "STANDARD"
                    counts[cls] += 1
                    sizes[cls] += int(obj["Size"])
                    age = max(0, (now - obj["LastModified"]).days)
                    snap.listing.append(ObjectGroup(bucket, obj["Key"], 1, int(obj["Size"]), age, cls))
            rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
            snap.lifecycle_rules[bucket] = sorted(r["ID"] for r in rules)
        except s3.exceptions.NoSuchBucket:
            continue
        except Exception as exc:  # NoSuchLifecycleConfiguration is a ClientError
            if "NoSuchLifecycleConfiguration" not in str(exc):
                raise
            snap.lifecycle_rules[bucket] = []
        snap.objects[bucket] = dict(counts)
        snap.bytes[bucket] = dict(sizes)
    if slack_file and slack_file.exists():
        snap.slack_messages = sum(1 for line in slack_file.read_text().splitlines() if line.strip())
    return snap


def _mib(size: int) -> str:
    return f"{size / 1024 / 1024:,.2f} MiB"


def forecast_lines(snap: Snapshot, rules: Mapping[str, Rules] | None = None) -> list[str]:
    """The next 12 months of the demo's buckets as the run left them (no rules vs the policy's
    lifecycle and expiry rules), then the seed's scenario: 10 GiB of new data a day."""
    if rules is None:
        from data_lifecycle.policy import load_policy

        rules = rules_by_bucket(load_policy())
    prices = PRICES[DEFAULT_REGION]
    small = sum(1 for g in snap.listing if g.size_bytes < MIN_TRANSITION_BYTES)
    comparison = compare(snap.listing, rules, months=12, prices=prices)
    return [
        f"== S3 cost forecast, next 12 months ({prices.region} prices of {prices.as_of}, USD) ==",
        f"  the demo's buckets after the run: {len(snap.listing)} objects, "
        f"{_mib(sum(g.size_bytes for g in snap.listing))}, under the policy's storage_tiers and s3_expiry rules;",
        f"  {small} of them are under 128 KiB, which S3 does not transition (they stay in their class)"
        + ("; the seed's scenario below shows the rules at scale" if small == len(snap.listing) else ""),
        *month_table(comparison, unit="MiB"),
        f"  12-month saving of the rules: ${comparison.saving_usd:,.6f}",
        "",
        *seed_report(daily_gb=10, object_size=16 * 1024**2, prices=prices),
    ]


def render_report(
    before: Snapshot,
    after: Snapshot,
    slack_texts: list[str],
    results: dict[str, str],
    policy_rules: Mapping[str, Rules] | None = None,
) -> str:
    out: list[str] = []
    out.append("== DAG runs ==")
    for dag_id, state in results.items():
        out.append(f"  {dag_id:28} {state}")
    out.append("")
    out.append("== PostgreSQL rows ==")
    out.append(f"  {'table':26} {'before':>10} {'after':>10} {'change':>10}")
    for table in TABLES:
        b, a = before.rows.get(table, 0), after.rows.get(table, 0)
        out.append(f"  {table:26} {b:>10,} {a:>10,} {a - b:>+10,}")
    out.append("")
    out.append("== Partitions ==")
    for parent in sorted(set(before.partitions) | set(after.partitions)):
        b, a = set(before.partitions.get(parent, [])), set(after.partitions.get(parent, []))
        out.append(f"  {parent}: {len(b)} -> {len(a)}")
        if b - a:
            out.append(f"    dropped: {', '.join(sorted(p.split('.')[-1] for p in b - a))}")
        if a - b:
            out.append(f"    created: {', '.join(sorted(p.split('.')[-1] for p in a - b))}")
    out.append("")
    out.append("== S3 objects per storage class ==")
    for bucket in BUCKETS:
        for label, snap in (("before", before), ("after", after)):
            counts = snap.objects.get(bucket, {})
            sizes = snap.bytes.get(bucket, {})
            desc = (
                ", ".join(f"{cls}: {counts[cls]} ({_mib(sizes[cls])})" for cls in sorted(counts)) or "empty"
            )
            out.append(f"  {bucket:24} {label:6} {desc}")
        rules = after.lifecycle_rules.get(bucket)
        if rules is not None:
            out.append(f"  {bucket:24} lifecycle rules: {', '.join(rules) or 'none'}")
    out.append("")
    out.append("== S3 storage per class ==")
    for label, snap in (("before", before), ("after", after)):
        parts = ", ".join(f"{cls} {_mib(size)}" for cls, size in sorted(snap.bytes_by_class.items()))
        out.append(f"  {label}: {parts}")
    out.append("")
    out.extend(forecast_lines(after, policy_rules))
    out.append("")
    out.append(f"== Slack messages received during the demo: {len(slack_texts)} ==")
    for text in slack_texts:
        out.append("  - " + text.replace("\n", " | ")[:220])
    return "\n".join(out)


def slack_texts_since(path: Path, offset: int) -> list[str]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as fh:
        fh.seek(offset)
        texts = []
        for line in fh:
            if line.strip():
                body = json.loads(line).get("body", {})
                texts.append(str(body.get("text") or body))
        return texts


def slack_file() -> Path:
    return Path(os.environ.get("LIFECYCLE_SLACK_MESSAGES", ".local/slack/messages.jsonl"))
