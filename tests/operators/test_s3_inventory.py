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


def write_parquet_inventory(client: Any, source: str, reports: str) -> str:
    """The same report as ``write_inventory``, in Parquet (snake-case columns, keys not encoded)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    listed = [
        o
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=source)
        for o in page["Contents"]
    ]
    table = pa.table(
        {
            "bucket": [source] * len(listed),
            "key": [o["Key"] for o in listed],
            "size": pa.array([o["Size"] for o in listed], pa.int64()),
            "last_modified_date": pa.array([o["LastModified"] for o in listed], pa.timestamp("ms", tz="UTC")),
            "e_tag": [o["ETag"].strip('"') for o in listed],
            "storage_class": [o.get("StorageClass", "STANDARD") for o in listed],
        }
    )
    out = io.BytesIO()
    pq.write_table(table, out)
    data_key = f"{source}/daily/data/part-0.parquet"
    client.put_object(Bucket=reports, Key=data_key, Body=out.getvalue())
    manifest = {
        "sourceBucket": source,
        "destinationBucket": f"arn:aws:s3:::{reports}",
        "fileFormat": "Parquet",
        "fileSchema": "message s3.inventory { required binary bucket (UTF8); ... }",
        "files": [{"key": data_key, "size": len(out.getvalue()), "MD5checksum": ""}],
    }
    key = f"{source}/daily/2026-03-01T01-00Z/manifest.json"
    client.put_object(Bucket=reports, Key=key, Body=json.dumps(manifest).encode())
    return key


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

    def test_a_parquet_report_is_read_the_same_way(self, s3_client: Any, make_bucket: Any) -> None:
        source, dest, reports = make_bucket("src"), make_bucket("arch"), make_bucket("inv")
        keys = [f"logs/{i:02d} a+b.log" for i in range(30)]
        put_many(s3_client, source, keys, body=body_of, ChecksumAlgorithm="SHA256")
        write_parquet_inventory(s3_client, source, reports)
        s3_client.put_object(Bucket=source, Key=keys[5], Body=body_of(keys[5])[::-1])  # changed since
        s3_client.delete_object(Bucket=source, Key=keys[6])  # gone since
        op = archive_op(source, dest, inventory={"manifest_bucket": reports, "manifest_prefix": f"{source}/"})

        summary = op.execute(everything_old())

        assert (summary["objects"], summary["skipped"], summary["failed"]) == (28, 2, 0)
        assert all_keys(s3_client, source) == [keys[5]]
        assert sorted(all_keys(s3_client, dest)) == sorted("archive/" + k for k in keys if k not in keys[5:7])

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


ROLE = "arn:aws:iam::123456789012:role/lifecycle-batch"


def batch_spec(reports: str, **extra: Any) -> dict[str, Any]:
    return {
        "threshold": 50,
        "manifest_bucket": reports,
        "manifest_prefix": "batch-jobs/",
        "report_bucket": reports,
        "report_prefix": "batch-reports/",
        "role_arn": ROLE,
        **extra,
    }


class TestBatchOperationsPlan:
    def test_over_the_threshold_the_job_is_written_and_validated_not_copied(
        self, s3_client: Any, make_bucket: Any
    ) -> None:
        source, dest, reports = make_bucket("src"), make_bucket("arch"), make_bucket("inv")
        keys = [f"logs/{i:03d} x.log" for i in range(120)]
        put_many(s3_client, source, keys, body=body_of, ChecksumAlgorithm="SHA256")
        write_inventory(s3_client, source, reports)
        op = archive_op(
            source,
            dest,
            inventory={"manifest_bucket": reports, "manifest_prefix": f"{source}/daily/"},
            batch_operations=batch_spec(reports, submit=True),
        )

        summary = op.execute(everything_old())

        plan = summary["batch_operations"]
        assert plan["objects"] == 120 and summary["objects"] == 0
        # The moto server has no s3control:CreateJob: the plan is written and validated only.
        assert plan["submitted"] is False and "s3control" in plan["reason"]
        manifest_key = plan["manifest"].removeprefix(f"s3://{reports}/")
        body = s3_client.get_object(Bucket=reports, Key=manifest_key)["Body"].read().decode()
        rows = list(csv.reader(io.StringIO(body)))
        assert rows == [[source, k.replace(" ", "%20")] for k in sorted(keys)]
        assert plan["manifest_etag"] == s3_client.head_object(Bucket=reports, Key=manifest_key)["ETag"]
        # Nothing was copied or deleted: Batch Operations copies, a later run verifies and deletes.
        assert all_keys(s3_client, source) == sorted(keys) and all_keys(s3_client, dest) == []

        # A rerun of the same run reuses its manifest (written once, never replaced).
        again = archive_op(
            source,
            dest,
            inventory={"manifest_bucket": reports, "manifest_prefix": f"{source}/daily/"},
            batch_operations=batch_spec(reports),
        ).execute(everything_old())
        assert again["batch_operations"]["manifest_etag"] == plan["manifest_etag"]

    def test_within_the_threshold_objects_are_copied_as_usual(self, s3_client: Any, make_bucket: Any) -> None:
        source, dest, reports = make_bucket("src"), make_bucket("arch"), make_bucket("inv")
        keys = [f"logs/{i:02d}.log" for i in range(20)]
        put_many(s3_client, source, keys, body=body_of, ChecksumAlgorithm="SHA256")
        write_inventory(s3_client, source, reports)
        summary = archive_op(
            source,
            dest,
            inventory={"manifest_bucket": reports, "manifest_prefix": f"{source}/daily/"},
            batch_operations=batch_spec(reports),
        ).execute(everything_old())
        assert summary["objects"] == 20 and "batch_operations" not in summary
        assert all_keys(s3_client, source) == []

    def test_a_request_that_does_not_hold_is_refused_naming_each_problem(
        self, s3_client: Any, make_bucket: Any
    ) -> None:
        from data_lifecycle.operators.s3.batch_operations import (
            create_job_request,
            validate_job_request,
            write_manifest,
        )

        reports, dest = make_bucket("inv"), make_bucket("arch")
        etag = write_manifest(s3_client, reports, "jobs/m.csv", "src", ["logs/a.log"])
        good = create_job_request(
            account_id="123456789012",
            role_arn=ROLE,
            manifest_bucket=reports,
            manifest_key="jobs/m.csv",
            manifest_etag=etag,
            dest_bucket=dest,
            storage_class="GLACIER",
            report_bucket=reports,
            report_prefix="reports/",
            description="test",
        )
        assert validate_job_request(good, s3_client=s3_client, dest_bucket=dest) == []

        bad = json.loads(json.dumps(good))
        bad["Manifest"]["Location"]["ETag"] = '"0123"'
        bad["Operation"] = {"S3DeleteObjectTagging": {}}
        bad["RoleArn"] = "arn:aws:iam::999999999999:role/other"
        bad["Report"]["Enabled"] = False
        problems = " | ".join(validate_job_request(bad, s3_client=s3_client, dest_bucket=dest))
        assert "operation must be S3PutObjectCopy" in problems
        assert "manifest ETag" in problems
        assert "role account 999999999999" in problems
        assert "completion report must be enabled" in problems

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            pytest.param({"batch_operations": {"threshold": 5}}, "needs inventory", id="no-inventory"),
            pytest.param(
                {
                    "inventory": {"manifest_bucket": "i", "manifest_prefix": "p/"},
                    "batch_operations": {"threshold": 5},
                },
                "missing",
                id="missing-settings",
            ),
            pytest.param(
                {
                    "inventory": {"manifest_bucket": "i", "manifest_prefix": "p/"},
                    "batch_operations": {**batch_spec("i"), "role_arn": "admin"},
                },
                "not an IAM role ARN",
                id="bad-role",
            ),
        ],
    )
    def test_bad_batch_settings_are_refused_at_construction(
        self, kwargs: dict[str, Any], message: str
    ) -> None:
        with pytest.raises(LifecycleConfigError, match=message):
            archive_op("src", "arch", **kwargs)
