"""Archive mode and partition archiving: typed restorable objects, collision-free keys, sizes by bytes,
rewrites that replace, and a property over generated tables (real PostgreSQL, moto S3)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_lifecycle import archive as archive_mod
from data_lifecycle.exceptions import VerificationFailed
from data_lifecycle.operators.postgres import (
    PostgresBatchedDeleteOperator,
    PostgresPartitionRetentionOperator,
)
from tests.operators.test_postgres import (
    CUTOFF,
    RETENTION_DAYS,
    add_logs,
    add_progress,
    add_users,
    interval_context,
    make_monthly_partitions,
)
from tests.reliability.invariants import assert_deleted_rows_archived, table_rows, verified_archive

TYPED_TABLE = """
CREATE TABLE app.typed (
    id bigint PRIMARY KEY,
    at timestamp(3) with time zone NOT NULL,
    naive timestamp(0),
    blob bytea,
    span interval,
    amount numeric,
    ratio double precision,
    doc jsonb,
    raw json,
    tags text[],
    nums int[],
    note text,
    day date
)
"""
TYPED_VALUES = [
    ("'\\x00ff10'::bytea", "'1 mon 2 days 03:00:00.5'", "'NaN'", "'Infinity'", "'{\"a\": [1, 2.50]}'"),
    ("'\\x'::bytea", "'-1 year'", "'Infinity'", "'-Infinity'", "'[]'"),
    ("NULL", "NULL", "'-Infinity'", "'NaN'", "'null'"),
    ("'hello'::bytea", "'1 day'", "'12345678901234567890.000000000001'", "'0.1'", "'\"x\"'"),
]


def load_typed(pg: psycopg.Connection[Any], n: int, start: datetime, step: timedelta) -> None:
    pg.execute(TYPED_TABLE)
    for g in range(1, n + 1):
        blob, span, amount, ratio, doc = TYPED_VALUES[g % len(TYPED_VALUES)]
        pg.execute(
            f"INSERT INTO app.typed VALUES (%s, %s, '2020-02-29 12:00:01', {blob}, {span}, {amount}, {ratio},"
            f" {doc}, '{{ \"k\" :  1 }}', ARRAY['a b', NULL, 'x\"y'], ARRAY[1, NULL], %s, '2020-01-01')",
            (g, start + (g - 1) * step, f"note {g} \u00e9\n\ttab"),
        )


def archive_kwargs(bucket: str, **overrides: Any) -> dict[str, Any]:
    return {
        "task_id": "archive_typed",
        "table": "app.typed",
        "timestamp_column": "at",
        "retention_days": RETENTION_DAYS,
        "batch_size": 7,
        "min_batch_size": 3,
        "archive": {"bucket": bucket, "prefix": "db-archive"},
        "allow_large_delete": True,
        **overrides,
    }


def as_text(pg: psycopg.Connection[Any], table: str) -> list[str]:
    return [r[0] for r in pg.execute(f"SELECT t::text FROM {table} t ORDER BY id")]


def restore_all(pg: psycopg.Connection[Any], s3_client: Any, bucket: str, keys: list[str], table: str) -> int:
    return sum(archive_mod.restore_archive(pg, s3_client, bucket, k, table=table) for k in keys)


class TestArchiveMode:
    def test_restore_reproduces_every_type_exactly(
        self, pg: psycopg.Connection[Any], make_bucket: Any, s3_client: Any
    ) -> None:
        bucket = make_bucket("archive")
        load_typed(pg, 40, CUTOFF - timedelta(hours=20), timedelta(hours=1))  # 20 due
        pg.execute("CREATE TABLE app.typed_before AS SELECT * FROM app.typed WHERE at < %s", (CUTOFF,))
        summary = PostgresBatchedDeleteOperator(**archive_kwargs(bucket)).execute(interval_context())
        assert summary["deleted"] == summary["archived_rows"] == 20
        pg.execute("CREATE TABLE app.typed_restored (LIKE app.typed)")
        assert restore_all(pg, s3_client, bucket, summary["archived_files"], "app.typed_restored") == 20
        assert as_text(pg, "app.typed_restored") == as_text(pg, "app.typed_before")
        content = archive_mod.read_archive(s3_client, bucket, summary["archived_files"][0])
        assert content.table == "app.typed"
        assert ("at", "timestamp(3) with time zone") in content.columns
        assert ("blob", "bytea") in content.columns

    def test_keys_that_map_to_the_same_text_get_distinct_objects(
        self, pg: psycopg.Connection[Any], make_bucket: Any, s3_client: Any
    ) -> None:
        bucket = make_bucket("archive")
        pg.execute("CREATE TABLE app.tokens (token text PRIMARY KEY, seen timestamptz NOT NULL)")
        pg.execute(
            "INSERT INTO app.tokens VALUES ('a/b', %(t)s), ('a_b', %(t)s), ('a b', %(t)s), ('new', %(n)s)",
            {"t": CUTOFF - timedelta(days=1), "n": CUTOFF},
        )
        summary = PostgresBatchedDeleteOperator(
            task_id="tokens",
            table="app.tokens",
            timestamp_column="seen",
            retention_days=RETENTION_DAYS,
            batch_size=1,
            min_batch_size=1,
            max_batch_size=1,
            allow_large_delete=True,
            archive={"bucket": bucket, "prefix": "t"},
        ).execute(interval_context())
        assert summary["deleted"] == 3
        listed = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
        assert len(listed) == 3
        tokens = sorted(
            r["token"] for k in listed for r in archive_mod.read_archive_rows(s3_client, bucket, k)
        )
        assert tokens == ["a b", "a/b", "a_b"]

    @staticmethod
    def archive_30k_logs(pg: psycopg.Connection[Any], bucket: str, s3_client: Any) -> list[int]:
        """Archive-delete 30,000 due log rows; the sizes of the objects, in the order written."""
        add_logs(pg, 30_000, CUTOFF - timedelta(minutes=30_000), timedelta(minutes=1))
        summary = PostgresBatchedDeleteOperator(
            task_id="logs",
            table="app.app_logs",
            timestamp_column="created_at",
            retention_days=RETENTION_DAYS,
            min_batch_size=100,
            max_batch_size=20_000,
            allow_large_delete=True,
            archive={"bucket": bucket, "prefix": "db-archive"},
        ).execute(interval_context())
        assert summary["deleted"] == 30_000
        sizes = {
            o["Key"]: o["Size"]
            for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])
        }
        return [sizes[k] for k in summary["archived_files"]]

    def test_objects_are_sized_by_bytes_and_honour_max_batch_size(
        self, pg: psycopg.Connection[Any], make_bucket: Any, s3_client: Any
    ) -> None:
        ordered = self.archive_30k_logs(pg, make_bucket("archive"), s3_client)
        # Every object but the last reaches 128 KiB, and no more objects than that takes.
        assert all(size >= 128 * 1024 for size in ordered[:-1]), ordered
        assert len(ordered) <= sum(ordered) // (128 * 1024) + 1

    def test_slow_uploads_do_not_cut_objects_early(
        self, pg: psycopg.Connection[Any], make_bucket: Any, s3_client: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Uploads in flight fill the read budget; the open object must wait for them, not be cut
        # small at a row that depends on how long the network took.
        real_write = archive_mod.S3ArchiveWriter.write

        def slow_write(self: Any, key: str, encoder: Any) -> Any:
            time.sleep(0.5)
            return real_write(self, key, encoder)

        monkeypatch.setattr(archive_mod.S3ArchiveWriter, "write", slow_write)
        ordered = self.archive_30k_logs(pg, make_bucket("archive"), s3_client)
        assert all(size >= 128 * 1024 for size in ordered[:-1]), ordered

    def test_rewrite_after_a_crash_with_a_smaller_batch_replaces_the_upload(
        self, pg: psycopg.Connection[Any], make_bucket: Any, s3_client: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        bucket = make_bucket("archive")
        load_typed(pg, 40, CUTOFF - timedelta(hours=20), timedelta(hours=1))
        before = table_rows(pg, "app.typed")
        due = {k for k, r in before.items() if int(r["id"]) <= 20}
        real_verify = archive_mod.S3ArchiveWriter.verify

        def crash(self: Any, expected: Any) -> None:
            raise VerificationFailed("simulated: the worker died after the upload")

        monkeypatch.setattr(archive_mod.S3ArchiveWriter, "verify", crash)
        with pytest.raises(VerificationFailed):
            PostgresBatchedDeleteOperator(**archive_kwargs(bucket, max_batch_size=12)).execute(
                interval_context()
            )
        assert len(s3_client.list_objects_v2(Bucket=bucket)["Contents"]) == 1
        monkeypatch.setattr(archive_mod.S3ArchiveWriter, "verify", real_verify)
        # The retry cuts its objects smaller (max_batch_size changed in between): a different last key.
        summary = PostgresBatchedDeleteOperator(**archive_kwargs(bucket, max_batch_size=5)).execute(
            interval_context()
        )
        assert summary["deleted"] == 20 and summary["archive_objects_replaced"] == 1
        after = table_rows(pg, "app.typed")
        assert_deleted_rows_archived(before, after, verified_archive(s3_client, bucket, ""), due=due)


class TestPartitionArchive:
    def test_s3_mode_objects_restore_exactly(
        self, pg: psycopg.Connection[Any], make_bucket: Any, s3_client: Any
    ) -> None:
        make_monthly_partitions(pg, "app.student_progress", datetime(2026, 10, 1, tzinfo=UTC), 3)
        (uid,) = add_users(pg, 1)
        add_progress(pg, uid, datetime(2026, 10, 1, tzinfo=UTC), 3, 5)
        pg.execute(
            "CREATE TABLE app.progress_before AS SELECT * FROM app.student_progress"
            " WHERE recorded_at < '2026-12-01Z'"
        )
        bucket = make_bucket("parts")
        summary = PostgresPartitionRetentionOperator(
            task_id="retention",
            table="app.student_progress",
            retention_days=60,
            mode="s3",
            archive={"bucket": bucket, "prefix": "progress"},
            archive_chunk_rows=4,
        ).execute(interval_context(datetime(2027, 3, 1, tzinfo=UTC)))
        assert summary["archived_rows"] == 10
        pg.execute("CREATE TABLE app.progress_restored (LIKE app.student_progress)")
        assert restore_all(pg, s3_client, bucket, summary["archived_files"], "app.progress_restored") == 10
        assert as_text(pg, "app.progress_restored") == as_text(pg, "app.progress_before")


ROW = st.tuples(
    st.integers(min_value=-72, max_value=72),  # hours from the cutoff
    st.sampled_from(range(len(TYPED_VALUES))),
    st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=12),
)


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    rows=st.lists(ROW, min_size=1, max_size=40),
    batch=st.integers(min_value=1, max_value=9),
    min_bytes=st.sampled_from([1, 200, 1_000, 128 * 1024]),
    crash_at=st.none() | st.integers(min_value=1, max_value=4),
)
def test_property_every_deleted_row_restores_exactly_and_nothing_later_goes(
    pg: psycopg.Connection[Any],
    make_bucket: Any,
    s3_client: Any,
    *,
    rows: list[Any],
    batch: int,
    min_bytes: int,
    crash_at: int | None,
) -> None:
    """Generated tables, batch sizes, object sizes, a crash after an upload and a retry with a
    different batch size: exactly the due rows are deleted, each is in one verified object, and a
    restore of all objects reproduces them exactly (their text form, every type)."""
    pg.execute("DROP TABLE IF EXISTS app.typed, app.typed_restored")
    pg.execute(TYPED_TABLE)
    for i, (hours, kind, note) in enumerate(rows, start=1):
        blob, span, amount, ratio, doc = TYPED_VALUES[kind]
        pg.execute(
            f"INSERT INTO app.typed (id, at, blob, span, amount, ratio, doc, tags, note)"
            f" VALUES (%s, %s, {blob}, {span}, {amount}, {ratio}, {doc}, ARRAY[%s, NULL], %s)",
            (i * 7 % 101, CUTOFF + timedelta(hours=hours), note, note),
        )
    before = {r[0]: r[1] for r in pg.execute("SELECT id, t::text FROM app.typed t")}
    due = {r[0] for r in pg.execute("SELECT id FROM app.typed WHERE at < %s", (CUTOFF,))}
    bucket = make_bucket("prop")
    kwargs = archive_kwargs(bucket, batch_size=batch, min_batch_size=1)
    kwargs["archive"] = {**kwargs["archive"], "min_object_bytes": min_bytes}
    if crash_at is not None:
        calls = {"n": 0}
        real_verify = archive_mod.S3ArchiveWriter.verify

        def crash(self: Any, expected: Any) -> None:
            calls["n"] += 1
            if calls["n"] == crash_at:
                raise VerificationFailed("simulated crash after upload")
            real_verify(self, expected)

        archive_mod.S3ArchiveWriter.verify = crash  # type: ignore[method-assign]
        try:
            PostgresBatchedDeleteOperator(**kwargs).execute(interval_context())
        except VerificationFailed:
            pass
        finally:
            archive_mod.S3ArchiveWriter.verify = real_verify  # type: ignore[method-assign]
    PostgresBatchedDeleteOperator(**{**kwargs, "batch_size": batch + 1}).execute(interval_context())
    after = {r[0] for r in pg.execute("SELECT id FROM app.typed")}
    deleted = set(before) - after
    assert deleted == due, "exactly the due rows are gone; nothing at or after the cutoff"
    keys = [o.key for o in verified_archive(s3_client, bucket, "")]
    pg.execute("CREATE TABLE app.typed_restored (LIKE app.typed)")
    restore_all(pg, s3_client, bucket, keys, "app.typed_restored")
    restored = [r[0] for r in pg.execute("SELECT t::text FROM app.typed_restored t ORDER BY id")]
    assert restored == [before[k] for k in sorted(deleted)], "each deleted row once, exactly"
