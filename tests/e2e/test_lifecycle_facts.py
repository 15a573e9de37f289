"""What the runs record for the Data Lifecycle page: table sizes, S3 bytes per class, the inventory.

Figures are checked against the estate itself (catalog sizes, listings) and the operators' own
summaries in the audit table, never against constants.
"""

from __future__ import annotations

import gzip
import json
import time
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from data_lifecycle.facts import tables_sizes
from tests.conftest import admin_connect
from tests.e2e.conftest import ANCHOR, run_dag


def listing(s3_client, bucket):
    """(prefix, class) -> (objects, bytes) from a listing, as the inventory should record it."""
    out: dict[tuple[str, str], list[int]] = {}
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            prefix = obj["Key"].split("/")[0] + "/" if "/" in obj["Key"] else ""
            entry = out.setdefault((prefix, obj.get("StorageClass") or "STANDARD"), [0, 0])
            entry[0] += 1
            entry[1] += obj["Size"]
    return {k: tuple(v) for k, v in out.items()}


def inventory_rows(pg, bucket, day):
    rows = pg.execute(
        "SELECT prefix, storage_class, objects, bytes, age_histogram, source FROM app.s3_inventory "
        "WHERE bucket = %s AND snapshot_date = %s",
        (bucket, day),
    ).fetchall()
    return {(r[0], r[1]): r[2:] for r in rows}


class TestTableSizes:
    def test_measuring_a_locked_table_gives_up_at_once(self, pg_database):
        # A migration's lock must not hold a delete task in its pre_execute measurement: the task
        # goes on and meets the lock under its own lock timeout (and retries, with a notice).
        with admin_connect(pg_database) as lock:
            lock.autocommit = False
            lock.execute("LOCK TABLE app.sessions IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(psycopg.errors.LockNotAvailable):
                tables_sizes("lifecycle_postgres", ["app.sessions"])
            assert time.monotonic() - started < 5
            lock.rollback()

    def test_a_purge_records_every_changed_table_before_and_after(self, dagbag, dreamseed, pg):
        assert run_dag(dagbag, "purge_soft_deleted").state == "success"
        rows = pg.execute(
            "SELECT table_name, bytes_before, bytes_after FROM app.cleanup_table_sizes "
            "WHERE dag_id = 'purge_soft_deleted'"
        ).fetchall()
        assert {r[0] for r in rows} == {
            "app.users",
            "app.sessions",
            "app.user_uploads",
            "app.student_progress",
        }
        now = {
            r[0]: r[1]
            for r in pg.execute(
                "SELECT t, (SELECT coalesce(sum(pg_total_relation_size(relid)), 0) FROM pg_partition_tree(t::regclass)) "
                "FROM unnest(array['app.student_progress']) t UNION ALL "
                "SELECT t, pg_total_relation_size(t::regclass) FROM unnest(array['app.users', 'app.sessions', "
                "'app.user_uploads']) t"
            ).fetchall()
        }
        for table, before, after in rows:
            assert before is not None and before > 0
            assert after == now[table], table

    def test_dropped_partitions_show_as_bytes_freed(self, dagbag, dreamseed, pg):
        assert run_dag(dagbag, "maintain_partitions").state == "success"
        audit = pg.execute(
            "SELECT summary FROM app.cleanup_audit WHERE task_id LIKE 'retention_%%'"
        ).fetchone()[0]
        assert audit["dropped"], "the demo data has partitions past retention"
        before, after = pg.execute(
            "SELECT bytes_before, bytes_after FROM app.cleanup_table_sizes WHERE table_name = 'app.student_progress'"
        ).fetchone()
        assert before > after


class TestS3Bytes:
    def test_expiry_and_archive_record_bytes_per_class(self, dagbag, dreamseed, pg, s3_client, lifecycle_env):
        assert run_dag(dagbag, "cleanup_s3_objects").state == "success"
        assert run_dag(dagbag, "apply_storage_tiers").state == "success"
        rows = pg.execute(
            "SELECT task_id, bucket, prefix, action, storage_class, to_class, bytes FROM app.cleanup_s3_bytes"
        ).fetchall()
        summaries = dict(pg.execute("SELECT task_id, summary FROM app.cleanup_audit").fetchall())
        removed = [r for r in rows if r[3] == "removed"]
        moved = [r for r in rows if r[3] == "moved"]
        assert {r[0] for r in removed} == {"expire_upload_tmp", "expire_upload_exports"}
        for task_id in ("expire_upload_tmp", "expire_upload_exports"):
            assert sum(r[6] for r in removed if r[0] == task_id) == summaries[task_id]["bytes"] > 0
        assert {(r[1], r[2], r[4], r[5]) for r in moved} == {
            (lifecycle_env.bucket("dreamseed-logs"), "app/", "STANDARD", "GLACIER")
        }
        archived = sum(
            o["Size"]
            for p in s3_client.get_paginator("list_objects_v2").paginate(
                Bucket=lifecycle_env.bucket("dreamseed-log-archive")
            )
            for o in p.get("Contents", [])
        )
        assert sum(r[6] for r in moved) == archived == summaries["archive_logs_to_glacier"]["bytes"]


class TestInventory:
    def test_listing_inventory_matches_the_buckets_and_a_rerun_replaces_the_day(
        self, dagbag, dreamseed, pg, s3_client, lifecycle_env
    ):
        assert run_dag(dagbag, "lifecycle_inventory").state == "success"
        day = ANCHOR.date()
        for bucket in lifecycle_env.policy.buckets():
            expected = listing(s3_client, bucket)
            recorded = inventory_rows(pg, bucket, day)
            assert {k: v[:2] for k, v in recorded.items()} == expected, bucket
            for objects, size, ages, source in recorded.values():
                assert source == "listing"
                assert sum(a["objects"] for a in ages.values()) == objects
                assert sum(a["bytes"] for a in ages.values()) == size
        first = pg.execute("SELECT count(*), sum(bytes) FROM app.s3_inventory").fetchone()
        assert first[0] > 0
        assert run_dag(dagbag, "lifecycle_inventory").state == "success"
        assert pg.execute("SELECT count(*), sum(bytes) FROM app.s3_inventory").fetchone() == first

    def test_inventory_report_manifest_is_read_instead_of_a_listing(
        self, pg, s3_client, make_bucket, tmp_path, lifecycle_env
    ):
        source, reports = make_bucket("inv-src"), make_bucket("inv-dest")
        # A generated S3 Inventory delivery: two gzip CSV files and the manifest naming them, as S3
        # writes them under <prefix>/<source bucket>/<config id>/<date>/. The older one must be ignored.
        old = ANCHOR - timedelta(days=400)
        recent = ANCHOR - timedelta(days=10)
        stamp = lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.000Z")  # noqa: E731
        files = {
            "data/a.csv.gz": [
                (source, "logs/2025/a%20b.gz", "1000", stamp(old), "GLACIER"),
                (source, "logs/2026/c.gz", "300", stamp(recent), "STANDARD"),
            ],
            "data/b.csv.gz": [(source, "top.txt", "7", stamp(recent), "STANDARD_IA")],
        }
        base = f"inventory/{source}/daily"
        for key, rows in files.items():
            text = "".join(",".join(f'"{v}"' for v in row) + "\n" for row in rows)
            s3_client.put_object(Bucket=reports, Key=f"{base}/{key}", Body=gzip.compress(text.encode()))
        for folder, names in (("2026-01-01T01-00Z", ["data/b.csv.gz"]), ("2026-02-01T01-00Z", list(files))):
            manifest = {
                "sourceBucket": source,
                "destinationBucket": f"arn:aws:s3:::{reports}",
                "fileFormat": "CSV",
                "fileSchema": "Bucket, Key, Size, LastModifiedDate, StorageClass",
                "files": [{"key": f"{base}/{n}"} for n in names],
            }
            s3_client.put_object(
                Bucket=reports, Key=f"{base}/{folder}/manifest.json", Body=json.dumps(manifest)
            )
        policy_file = tmp_path / "policy.yaml"
        text = Path(lifecycle_env.policy.source).read_text()
        policy_file.write_text(
            text.replace(
                "  reports: []",
                f"  reports:\n    - {{bucket: {source}, manifest_bucket: {reports}, manifest_prefix: {base}/}}",
            )
        )
        from data_lifecycle.inventory import take_inventory
        from data_lifecycle.policy import load_policy

        policy = load_policy(policy_file)
        summary = take_inventory(
            bucket=source,
            report=policy.inventory.report_for(source),
            as_of=ANCHOR,
            depth=1,
            aws_conn_id=policy.aws_conn_id,
            postgres_conn_id=policy.postgres_conn_id,
            dry_run=False,
        )
        assert summary["source"] == "inventory_report" and summary["objects"] == 3
        recorded = inventory_rows(pg, source, ANCHOR.date())
        assert recorded == {
            ("logs/", "GLACIER"): (1, 1000, {"365+": {"objects": 1, "bytes": 1000}}, "inventory_report"),
            ("logs/", "STANDARD"): (1, 300, {"0-29": {"objects": 1, "bytes": 300}}, "inventory_report"),
            ("", "STANDARD_IA"): (1, 7, {"0-29": {"objects": 1, "bytes": 7}}, "inventory_report"),
        }
