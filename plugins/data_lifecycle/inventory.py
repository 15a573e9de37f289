"""The daily S3 inventory: objects and bytes per bucket, prefix and storage class, with their ages.

At demo scale a bucket is listed. A bucket the policy gives an S3 Inventory report is read from
the newest manifest instead (``manifest.json`` and its gzip CSV or Parquet files), so a bucket of
100M objects costs a few GETs, not 100,000 LIST calls. Ages are counted at the run's anchor, never the
wall clock, so a rerun of a day records the same figures; it replaces that day's rows.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from data_lifecycle.exceptions import LifecycleConfigError
from data_lifecycle.policy import InventoryReport

log = logging.getLogger(__name__)

INVENTORY_TABLE = "app.s3_inventory"
# Age bands in days, aligned with the tier transitions (30, 90, 180, 365).
AGE_BANDS: tuple[tuple[int, str], ...] = (
    (0, "0-29"),
    (30, "30-89"),
    (90, "90-179"),
    (180, "180-364"),
    (365, "365+"),
)
# Columns S3 Inventory always writes in its CSV files, whatever the optional fields.
REQUIRED_FIELDS = ("Bucket", "Key", "Size", "LastModifiedDate", "StorageClass")
# Parquet reports name the same fields in snake case (and do not URL-encode the keys).
PARQUET_FIELDS = {
    "bucket": "Bucket",
    "key": "Key",
    "version_id": "VersionId",
    "is_latest": "IsLatest",
    "is_delete_marker": "IsDeleteMarker",
    "size": "Size",
    "last_modified_date": "LastModifiedDate",
    "e_tag": "ETag",
    "storage_class": "StorageClass",
}
FORMATS = ("CSV", "Parquet")


def age_band(age_days: int) -> str:
    label = AGE_BANDS[0][1]
    for start, name in AGE_BANDS:
        if age_days >= start:
            label = name
    return label


def prefix_of(key: str, depth: int) -> str:
    """The first ``depth`` path segments of ``key`` with a trailing slash; '' for a top-level key."""
    parts = key.split("/")
    return "/".join(parts[: min(depth, len(parts) - 1)]) + "/" if len(parts) > 1 else ""


@dataclass
class Group:
    objects: int = 0
    bytes: int = 0
    ages: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class Tally:
    """Objects counted by (prefix, storage class)."""

    as_of: datetime
    depth: int
    groups: dict[tuple[str, str], Group] = field(default_factory=dict)

    def add(self, key: str, size: int, last_modified: datetime, storage_class: str | None) -> None:
        group = self.groups.setdefault((prefix_of(key, self.depth), storage_class or "STANDARD"), Group())
        group.objects += 1
        group.bytes += size
        band = group.ages.setdefault(
            age_band(max((self.as_of - last_modified).days, 0)), {"objects": 0, "bytes": 0}
        )
        band["objects"] += 1
        band["bytes"] += size


def tally_listing(client: Any, bucket: str, as_of: datetime, depth: int) -> Tally:
    tally = Tally(as_of, depth)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            tally.add(obj["Key"], int(obj["Size"]), obj["LastModified"], obj.get("StorageClass"))
    return tally


def newest_manifest(client: Any, report: InventoryReport) -> str:
    """Key of the newest ``manifest.json`` under the report's prefix (dated folders sort by name)."""
    keys = [
        obj["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=report.manifest_bucket, Prefix=report.manifest_prefix
        )
        for obj in page.get("Contents", [])
        if obj["Key"].endswith("/manifest.json")
    ]
    if not keys:
        raise LifecycleConfigError(
            f"inventory report of {report.bucket}: no manifest.json under "
            f"s3://{report.manifest_bucket}/{report.manifest_prefix}"
        )
    return max(keys)


def report_rows(client: Any, report: InventoryReport, manifest_key: str) -> Iterator[dict[str, str]]:
    """The rows of every CSV file of a manifest, as dicts keyed by the manifest's field names."""
    body = client.get_object(Bucket=report.manifest_bucket, Key=manifest_key)["Body"].read()
    manifest = json.loads(body)
    where = f"s3://{report.manifest_bucket}/{manifest_key}"
    file_format = manifest.get("fileFormat")
    if file_format not in FORMATS:
        raise LifecycleConfigError(
            f"{where}: fileFormat {file_format!r} is not supported; use {' or '.join(FORMATS)}"
        )
    if manifest.get("sourceBucket") != report.bucket:
        raise LifecycleConfigError(
            f"{where}: describes bucket {manifest.get('sourceBucket')!r}, the policy expects {report.bucket!r}"
        )
    dest_bucket = (
        str(manifest.get("destinationBucket", "")).removeprefix("arn:aws:s3:::") or report.manifest_bucket
    )
    if file_format == "Parquet":
        for entry in manifest.get("files", []):
            yield from _parquet_rows(
                client.get_object(Bucket=dest_bucket, Key=entry["key"])["Body"].read(), where
            )
        return
    fields = [name.strip() for name in str(manifest.get("fileSchema", "")).split(",")]
    missing = [f for f in REQUIRED_FIELDS if f not in fields]
    if missing:
        raise LifecycleConfigError(f"{where}: fileSchema lacks {', '.join(missing)}")
    for entry in manifest.get("files", []):
        stream = client.get_object(Bucket=dest_bucket, Key=entry["key"])["Body"]
        with (
            gzip.GzipFile(fileobj=stream) as raw,
            io.TextIOWrapper(raw, encoding="utf-8", newline="") as text,
        ):
            for row in csv.reader(text):
                yield dict(zip(fields, row, strict=False))


def _parquet_rows(data: bytes, where: str) -> Iterator[dict[str, str]]:
    """A Parquet file's rows as the CSV reader gives them (strings, URL-encoded keys)."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(io.BytesIO(data))
    names = {PARQUET_FIELDS.get(name, name) for name in parquet.schema_arrow.names}
    missing = [f for f in REQUIRED_FIELDS if f not in names]
    if missing:
        raise LifecycleConfigError(f"{where}: Parquet schema lacks {', '.join(missing)}")
    for batch in parquet.iter_batches(batch_size=10_000):
        for row in batch.to_pylist():
            yield {PARQUET_FIELDS.get(name, name): _as_text(name, value) for name, value in row.items()}


def _as_text(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name == "key":
        return quote_plus(str(value), safe="/")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):  # S3 writes UTC timestamps; pyarrow may return them naive
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.isoformat().replace("+00:00", "Z")
    return str(value)


def tally_report(client: Any, report: InventoryReport, as_of: datetime, depth: int) -> Tally:
    tally = Tally(as_of, depth)
    for row in report_rows(client, report, newest_manifest(client, report)):
        if row.get("IsDeleteMarker", "").lower() == "true" or not row.get("Size"):
            continue
        modified = datetime.fromisoformat(row["LastModifiedDate"].replace("Z", "+00:00"))
        tally.add(unquote_plus(row["Key"]), int(row["Size"]), modified, row.get("StorageClass"))
    return tally


def snapshot_rows(tally: Tally) -> list[dict[str, Any]]:
    return [
        {
            "prefix": prefix,
            "storage_class": cls,
            "objects": g.objects,
            "bytes": g.bytes,
            "age_histogram": g.ages,
        }
        for (prefix, cls), g in sorted(tally.groups.items())
    ]


def write_snapshot(conn: Any, *, day: date, bucket: str, source: str, rows: Iterable[dict[str, Any]]) -> int:
    """Replace the day's rows of ``bucket`` in one short transaction; returns the rows written."""
    values = [
        (
            day,
            bucket,
            r["prefix"],
            r["storage_class"],
            r["objects"],
            r["bytes"],
            json.dumps(r["age_histogram"]),
            source,
        )
        for r in rows
    ]
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(f"DELETE FROM {INVENTORY_TABLE} WHERE snapshot_date = %s AND bucket = %s", (day, bucket))
        cur.executemany(
            f"INSERT INTO {INVENTORY_TABLE} (snapshot_date, bucket, prefix, storage_class, objects, bytes, "
            "age_histogram, source) VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s)",
            values,
        )
    return len(values)


def take_inventory(
    *,
    bucket: str,
    report: InventoryReport | None,
    as_of: datetime,
    depth: int,
    aws_conn_id: str,
    postgres_conn_id: str,
    dry_run: bool,
) -> dict[str, Any]:
    """Count one bucket (from its report when it has one) and record the day's snapshot."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    client = S3Hook(aws_conn_id=aws_conn_id).get_conn()
    if report is not None:
        tally, source = tally_report(client, report, as_of, depth), "inventory_report"
    else:
        tally, source = tally_listing(client, bucket, as_of, depth), "listing"
    rows = snapshot_rows(tally)
    summary = {
        "bucket": bucket,
        "snapshot_date": as_of.date().isoformat(),
        "source": source,
        "objects": sum(r["objects"] for r in rows),
        "bytes": sum(r["bytes"] for r in rows),
        "groups": len(rows),
        "dry_run": dry_run,
    }
    if not dry_run:
        with PostgresHook(postgres_conn_id=postgres_conn_id).get_conn() as conn:
            write_snapshot(conn, day=as_of.date(), bucket=bucket, source=source, rows=rows)
    log.info("Inventory of s3://%s: %s", bucket, summary)
    return summary
