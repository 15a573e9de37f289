"""Copy-then-delete driven by an S3 Inventory report, on the moto server, with a generated manifest.

The manifest is written the way S3 Inventory writes one (``manifest.json`` and gzip CSV files in a
dated folder); then the bucket moves on (objects deleted, rewritten) as it does in the day before
the next report, and only what is still what the report says is archived.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from typing import Any
from urllib.parse import quote_plus

import pytest

from data_lifecycle.exceptions import LifecycleConfigError
from tests.operators.test_s3 import all_keys, archive_op, body_of, everything_old, put_many

FIELDS = ("Bucket", "Key", "Size", "LastModifiedDate", "ETag", "StorageClass")


def write_inventory(client: Any, source: str, reports: str, *, rows_per_file: int = 400) -> str:
    """An inventory report of ``source`` as it is now; returns the manifest key."""
    folder = f"{source}/daily/2026-03-01T01-00Z"
    rows = [
        [
            source,
            quote_plus(o["Key"]),
            str(o["Size"]),
            o["LastModified"].strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            o["ETag"].strip('"'),
            o.get("StorageClass", "STANDARD"),
        ]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=source)
        for o in page.get("Contents", [])
    ]
    files = []
    for n, start in enumerate(range(0, len(rows), rows_per_file)):
        text = io.StringIO()
        csv.writer(text).writerows(rows[start : start + rows_per_file])
        key = f"{source}/daily/data/part-{n}.csv.gz"
        client.put_object(Bucket=reports, Key=key, Body=gzip.compress(text.getvalue().encode()))
        files.append({"key": key, "size": 0, "MD5checksum": ""})
    manifest = {
        "sourceBucket": source,
        "destinationBucket": f"arn:aws:s3:::{reports}",
        "version": "2016-11-30",
        "fileFormat": "CSV",
        "fileSchema": ", ".join(FIELDS),
        "files": files,
    }
    client.put_object(Bucket=reports, Key=f"{folder}/manifest.json", Body=json.dumps(manifest).encode())
    return f"{folder}/manifest.json"


class TestInventoryDrivenCopyThenDelete:
    def test_keys_come_from_the_report_and_changed_or_gone_ones_are_kept(
        self, s3_client: Any, make_bucket: Any
    ) -> None:
        source, dest, reports = make_bucket("src"), make_bucket("arch"), make_bucket("inv")
        keys = [f"logs/{i:04d} a+b.log" for i in range(1_100)]  # spaces and '+' are URL-encoded
        put_many(s3_client, source, keys, body=body_of, ChecksumAlgorithm="SHA256")
        write_inventory(s3_client, source, reports)
        # After the report: one object gone, one rewritten in place (same size, other bytes), one
        # grown, and one new object the report does not know.
        gone, same_size, grown = keys[10], keys[20], keys[30]
        s3_client.delete_object(Bucket=source, Key=gone)
        rewritten = body_of(same_size)[::-1]
        assert len(rewritten) == len(body_of(same_size))
        s3_client.put_object(Bucket=source, Key=same_size, Body=rewritten, ChecksumAlgorithm="SHA256")
        s3_client.put_object(Bucket=source, Key=grown, Body=body_of(grown) * 2, ChecksumAlgorithm="SHA256")
        s3_client.put_object(Bucket=source, Key="logs/not-in-report.log", Body=b"new")
        op = archive_op(
            source, dest, inventory={"manifest_bucket": reports, "manifest_prefix": f"{source}/daily/"}
        )

        summary = op.execute(everything_old())

        assert (summary["objects"], summary["failed"]) == (1_097, 0)
        assert summary["skipped"] == 3  # gone, rewritten, grown
        assert all_keys(s3_client, source) == sorted([same_size, grown, "logs/not-in-report.log"])
        assert s3_client.get_object(Bucket=source, Key=same_size)["Body"].read() == rewritten
        archived = all_keys(s3_client, dest)
        assert len(archived) == 1_097
        assert "archive/" + same_size not in archived and "archive/" + gone not in archived

        # A rerun on the same (now older) report finds nothing left to do.
        again = archive_op(
            source, dest, inventory={"manifest_bucket": reports, "manifest_prefix": f"{source}/daily/"}
        ).execute(everything_old())
        assert again["objects"] == 0 and again["failed"] == 0
        assert all_keys(s3_client, source) == sorted([same_size, grown, "logs/not-in-report.log"])

    def test_a_report_of_another_bucket_is_refused_before_anything_is_copied(
        self, s3_client: Any, make_bucket: Any
    ) -> None:
        source, other, dest, reports = (make_bucket(s) for s in ("src", "other", "arch", "inv"))
        put_many(s3_client, other, ["logs/a.log"], body=body_of)
        put_many(s3_client, source, ["logs/a.log"], body=body_of)
        write_inventory(s3_client, other, reports)
        op = archive_op(source, dest, inventory={"manifest_bucket": reports, "manifest_prefix": f"{other}/"})

        with pytest.raises(LifecycleConfigError, match="describes bucket"):
            op.execute(everything_old())
        assert all_keys(s3_client, source) == ["logs/a.log"] and all_keys(s3_client, dest) == []

    @pytest.mark.parametrize(
        "inventory",
        [
            pytest.param({"manifest_bucket": "b"}, id="no-prefix"),
            pytest.param({"manifest_bucket": "b", "manifest_prefix": "p/", "format": "x"}, id="unknown-key"),
        ],
    )
    def test_a_bad_inventory_argument_is_refused_at_construction(self, inventory: dict[str, str]) -> None:
        with pytest.raises(LifecycleConfigError, match="inventory needs manifest_bucket and manifest_prefix"):
            archive_op("src", "arch", inventory=inventory)
