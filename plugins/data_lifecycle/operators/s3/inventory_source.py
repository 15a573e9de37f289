"""Due objects from an S3 Inventory report instead of a listing: at 100M objects, a few GETs.

The report is read with the Data Lifecycle page's own reader (``data_lifecycle.inventory``): the
newest ``manifest.json`` under the report's prefix, its gzip CSV files, the same refusals of a
manifest that describes another bucket or lacks a required field. An inventory is a day old at
best, so nothing is taken from it on trust: each object is HEADed before it is copied, and one
whose ETag or size is not the inventory's is skipped (it changed since), one that is gone is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from data_lifecycle.exceptions import LifecycleConfigError
from data_lifecycle.policy import InventoryReport

# Inventory objects are handed on in pages like a listing's (and DeleteObjects' batch size).
PAGE_OBJECTS = 1_000


def inventory_report(source_bucket: str, spec: Mapping[str, Any], where: str) -> InventoryReport:
    """The report of ``source_bucket`` an operator's ``inventory`` argument names."""
    unknown = set(spec) - {"manifest_bucket", "manifest_prefix"}
    missing = [k for k in ("manifest_bucket", "manifest_prefix") if not spec.get(k)]
    if unknown or missing:
        raise LifecycleConfigError(
            f"{where}: inventory needs manifest_bucket and manifest_prefix"
            + (f"; unknown {sorted(unknown)}" if unknown else "")
        )
    return InventoryReport(
        bucket=source_bucket,
        manifest_bucket=str(spec["manifest_bucket"]),
        manifest_prefix=str(spec["manifest_prefix"]),
    )


def bare_etag(etag: str | None) -> str:
    """An ETag without its quotes: inventory reports write it bare, HEAD answers it quoted."""
    return (etag or "").strip().strip('"')


def inventory_objects(client: Any, report: InventoryReport, prefix: str) -> Iterator[dict[str, Any]]:
    """Current objects under ``prefix`` as the newest inventory saw them, shaped like listing entries."""
    from data_lifecycle.inventory import newest_manifest, report_rows

    for row in report_rows(client, report, newest_manifest(client, report)):
        if row.get("IsDeleteMarker", "").lower() == "true" or row.get("IsLatest", "true").lower() == "false":
            continue
        key = unquote_plus(row["Key"])
        if not key.startswith(prefix) or not row.get("Size"):
            continue
        obj: dict[str, Any] = {
            "Key": key,
            "Size": int(row["Size"]),
            "LastModified": datetime.fromisoformat(row["LastModifiedDate"].replace("Z", "+00:00")),
            "StorageClass": row.get("StorageClass") or "STANDARD",
            "FromInventory": True,
        }
        if row.get("ETag"):
            obj["ETag"] = bare_etag(row["ETag"])
        yield obj


def inventory_pages(client: Any, report: InventoryReport, prefix: str) -> Iterator[list[dict[str, Any]]]:
    """``inventory_objects`` in pages of up to 1,000, each sorted by key like a listing page."""
    page: list[dict[str, Any]] = []
    for obj in inventory_objects(client, report, prefix):
        page.append(obj)
        if len(page) >= PAGE_OBJECTS:
            yield sorted(page, key=lambda o: o["Key"])
            page = []
    if page:
        yield sorted(page, key=lambda o: o["Key"])


def changed_since_inventory(listed: Mapping[str, Any], head: Mapping[str, Any]) -> str | None:
    """Why an object no longer is what the inventory described (None when it still is)."""
    if not listed.get("FromInventory"):
        return None
    if int(head["ContentLength"]) != int(listed["Size"]):
        return f"changed since the inventory (size {head['ContentLength']} != {listed['Size']})"
    if listed.get("ETag") and bare_etag(head.get("ETag")) != listed["ETag"]:
        return "changed since the inventory (ETag)"
    return None
