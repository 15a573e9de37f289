"""The PostgreSQL operators against the real local PostgreSQL (and moto S3 for archive mode).

Each test gets its own database with the DreamSeed schema (``pg`` fixture). Operators run through
``op.execute(context)`` with a hand-built context; assertions are on the rows, partitions and S3
objects left behind.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest

from data_lifecycle import archive as archive_mod
from data_lifecycle.exceptions import (
    GuardrailTripped,
    LifecycleConfigError,
    LockTimeoutExhausted,
    VerificationFailed,
)
from data_lifecycle.operators.postgres import (
    PostgresBatchedDeleteOperator,
    PostgresPartitionPremakeOperator,
    PostgresPartitionRetentionOperator,
    PostgresVacuumAnalyzeOperator,
)
from devstack.settings import HOST, POSTGRES_PORT, POSTGRES_USER

ANCHOR = datetime(2027, 3, 1, 5, 0, tzinfo=UTC)
RETENTION_DAYS = 30
CUTOFF = ANCHOR - timedelta(days=RETENTION_DAYS)  # 2027-01-30T05:00Z


def interval_context(anchor: datetime = ANCHOR) -> dict[str, Any]:
    return {
        "data_interval_end": anchor,
        "dag_run": SimpleNamespace(run_after=anchor, dag_id="test_dag", run_id="scheduled__x"),
        "run_id": "scheduled__x",
    }


def manual_context(anchor: datetime = ANCHOR) -> dict[str, Any]:
    """A manual run without a logical date: only dag_run.run_after."""
    return {
        "dag_run": SimpleNamespace(run_after=anchor, dag_id="test_dag", run_id="manual__y"),
        "run_id": "manual__y",
    }


def connect(dbname: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=HOST, port=POSTGRES_PORT, user=POSTGRES_USER, dbname=dbname, autocommit=autocommit
    )


def scalar(pg: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = pg.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def add_users(
    pg: psycopg.Connection[Any], n: int, *, deleted_at: datetime | None = None, tag: str = "u"
) -> list[int]:
    rows = pg.execute(
        "INSERT INTO app.users (email, display_name, created_at, deleted_at)"
        " SELECT %s || g || '@example.com', 'User ' || g, %s, %s FROM generate_series(1, %s) g RETURNING id",
        (tag, ANCHOR - timedelta(days=400), deleted_at, n),
    ).fetchall()
    return [r[0] for r in rows]


def add_sessions(pg: psycopg.Connection[Any], user_id: int, expires: list[datetime]) -> None:
    with pg.cursor() as cur:
        cur.executemany(
            "INSERT INTO app.sessions (user_id, token, created_at, expires_at) VALUES (%s, md5(random()::text), %s, %s)",
            [(user_id, e - timedelta(days=1), e) for e in expires],
        )


def add_logs(pg: psycopg.Connection[Any], n: int, start: datetime, step: timedelta) -> None:
    pg.execute(
        "INSERT INTO app.app_logs (created_at, level, logger, message, user_id, context)"
        " SELECT %s + (g - 1) * %s, 'INFO', 'app.test', 'message ' || g, g, jsonb_build_object('n', g, 'ok', true)"
        " FROM generate_series(1, %s) g",
        (start, step, n),
    )


def make_monthly_partitions(pg: psycopg.Connection[Any], table: str, first: datetime, months: int) -> None:
    schema, name = table.split(".")
    for i in range(months):
        idx = first.year * 12 + first.month - 1 + i
        lower = datetime(idx // 12, idx % 12 + 1, 1, tzinfo=UTC)
        upper = datetime((idx + 1) // 12, (idx + 1) % 12 + 1, 1, tzinfo=UTC)
        pg.execute(
            psycopg.sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                psycopg.sql.Identifier(schema, f"{name}_{lower:%Y_%m}"),
                psycopg.sql.Identifier(schema, name),
                psycopg.sql.Literal(lower),
                psycopg.sql.Literal(upper),
            )
        )


def partition_names(pg: psycopg.Connection[Any], parent: str) -> list[str]:
    rows = pg.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = %s::regclass ORDER BY 1",
        (parent,),
    ).fetchall()
    return [r[0] for r in rows]


def add_progress(
    pg: psycopg.Connection[Any], user_id: int, first: datetime, months: int, per_month: int
) -> None:
    for i in range(months):
        idx = first.year * 12 + first.month - 1 + i
        start = datetime(idx // 12, idx % 12 + 1, 1, tzinfo=UTC)
        pg.execute(
            "INSERT INTO app.student_progress (user_id, lesson_id, score, recorded_at)"
            " SELECT %s, g, 50, %s + g * interval '1 hour' FROM generate_series(0, %s - 1) g",
            (user_id, start, per_month),
        )


class TestPostgresBatchedDeleteOperator:
    def _sessions_fixture(self, pg: psycopg.Connection[Any]) -> int:
        """30 expired sessions, one exactly at the cutoff, 69 still valid."""
        (uid,) = add_users(pg, 1)
        expired = [CUTOFF - timedelta(hours=i + 1) for i in range(30)]
        valid = [CUTOFF + timedelta(hours=i + 1) for i in range(69)]
        add_sessions(pg, uid, [*expired, CUTOFF, *valid])
        return uid

    def test_deletes_rows_strictly_before_cutoff_and_rerun_deletes_nothing(
        self, pg: psycopg.Connection[Any]
    ) -> None:
        self._sessions_fixture(pg)
        kwargs = {
            "task_id": "delete_sessions",
            "table": "app.sessions",
            "timestamp_column": "expires_at",
            "retention_days": RETENTION_DAYS,
            "batch_size": 7,
            "min_batch_size": 5,
            "audit_table": "app.cleanup_audit",
        }
        first = PostgresBatchedDeleteOperator(**kwargs).execute(interval_context())
        assert first["deleted"] == 30
        assert first["remaining"] == 0
        assert first["batches"] >= 2
        assert first["stopped_by"] is None
        assert first["cutoff"] == CUTOFF.isoformat()
        assert scalar(pg, "SELECT count(*) FROM app.sessions") == 70
        assert scalar(pg, "SELECT count(*) FROM app.sessions WHERE expires_at = %s", (CUTOFF,)) == 1
        assert scalar(pg, "SELECT min(expires_at) FROM app.sessions") == CUTOFF

        # Same run as a manual trigger (only run_after), retention rendered as a string: nothing left.
        second = PostgresBatchedDeleteOperator(**{**kwargs, "retention_days": "30"}).execute(manual_context())
        assert second["deleted"] == 0
        assert scalar(pg, "SELECT count(*) FROM app.sessions") == 70
        audit = pg.execute(
            "SELECT run_id, target, action, rows_affected, summary->>'deleted' FROM app.cleanup_audit ORDER BY id"
        ).fetchall()
        assert audit == [
            ("scheduled__x", "app.sessions", "delete", 30, "30"),
            ("manual__y", "app.sessions", "delete", 0, "0"),
        ]

    def test_dry_run_counts_and_changes_nothing(self, pg: psycopg.Connection[Any]) -> None:
        self._sessions_fixture(pg)
        summary = PostgresBatchedDeleteOperator(
            task_id="dry",
            table="app.sessions",
            timestamp_column="expires_at",
            retention_days=RETENTION_DAYS,
            dry_run="True",
            audit_table="app.cleanup_audit",
        ).execute(manual_context())
        assert summary["dry_run"] is True
        assert summary["would_delete"] == 30
        assert summary["deleted"] == 0
        assert len(summary["sample_keys"]) == 10
        assert scalar(pg, "SELECT count(*) FROM app.sessions") == 100
        assert scalar(pg, "SELECT count(*) FROM app.cleanup_audit") == 0

    def test_children_are_deleted_first_in_the_same_batch(self, pg: psycopg.Connection[Any]) -> None:
        make_monthly_partitions(pg, "app.student_progress", datetime(2026, 12, 1, tzinfo=UTC), 2)
        gone = add_users(pg, 6, deleted_at=CUTOFF - timedelta(days=5), tag="gone")
        keep_recent = add_users(pg, 1, deleted_at=CUTOFF + timedelta(days=1), tag="recent")
        keep_active = add_users(pg, 7, tag="active")
        for uid in gone + keep_recent + keep_active:
            add_sessions(pg, uid, [ANCHOR + timedelta(days=1)] * 2)
            pg.execute(
                "INSERT INTO app.user_uploads (user_id, s3_key, size_bytes, uploaded_at) VALUES (%s, 'k', 1, %s)",
                (uid, ANCHOR),
            )
            add_progress(pg, uid, datetime(2026, 12, 1, tzinfo=UTC), 2, 3)

        summary = PostgresBatchedDeleteOperator(
            task_id="purge_users",
            table="app.users",
            timestamp_column="deleted_at",
            retention_days=RETENTION_DAYS,
            extra_predicate="email LIKE %(pattern)s",
            extra_params={"pattern": "gone%%"},
            discover_children=True,
            batch_size=4,
            min_batch_size=2,
        ).execute(interval_context())

        assert summary["deleted"] == 6
        assert summary["children"] == {"app.sessions": 12, "app.user_uploads": 6, "app.student_progress": 36}
        assert scalar(pg, "SELECT count(*) FROM app.users") == 8
        for table in ("app.sessions", "app.user_uploads", "app.student_progress"):
            orphans = scalar(
                pg,
                f"SELECT count(*) FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM app.users u WHERE u.id = t.user_id)",
            )
            assert orphans == 0
        assert scalar(pg, "SELECT count(*) FROM app.sessions") == 16

    def test_composite_key_on_partitioned_table(self, pg: psycopg.Connection[Any]) -> None:
        make_monthly_partitions(pg, "app.student_progress", datetime(2026, 12, 1, tzinfo=UTC), 3)
        (uid,) = add_users(pg, 1)
        add_progress(pg, uid, datetime(2026, 12, 1, tzinfo=UTC), 3, 40)  # 40 rows per month
        expected_due = scalar(
            pg, "SELECT count(*) FROM app.student_progress WHERE recorded_at < %s", (CUTOFF,)
        )
        summary = PostgresBatchedDeleteOperator(
            task_id="progress",
            table="app.student_progress",
            timestamp_column="recorded_at",
            retention_days=RETENTION_DAYS,
            batch_size=15,
            min_batch_size=5,
            allow_large_delete=True,
        ).execute(interval_context())
        assert summary["deleted"] == expected_due == 80
        assert scalar(pg, "SELECT count(*) FROM app.student_progress WHERE recorded_at < %s", (CUTOFF,)) == 0
        assert scalar(pg, "SELECT count(*) FROM app.student_progress") == 40

    def test_guardrail_refuses_large_share_before_deleting(self, pg: psycopg.Connection[Any]) -> None:
        (uid,) = add_users(pg, 1)
        add_sessions(pg, uid, [CUTOFF - timedelta(hours=i + 1) for i in range(8)] + [ANCHOR] * 2)
        op = PostgresBatchedDeleteOperator(
            task_id="too_much",
            table="app.sessions",
            timestamp_column="expires_at",
            retention_days=RETENTION_DAYS,
        )
        with pytest.raises(GuardrailTripped, match="80%"):
            op.execute(interval_context())
        assert scalar(pg, "SELECT count(*) FROM app.sessions") == 10

    def test_max_runtime_stops_cleanly_and_next_run_finishes(self, pg: psycopg.Connection[Any]) -> None:
        add_logs(pg, 2000, CUTOFF - timedelta(hours=1000), timedelta(hours=1))  # 1000 due, 1000 kept
        kwargs = {
            "task_id": "logs",
            "table": "app.app_logs",
            "timestamp_column": "created_at",
            "retention_days": RETENTION_DAYS,
            "batch_size": 50,
            "min_batch_size": 50,
            "max_batch_size": 50,
            "sleep_between_batches": 0.05,
        }
        started = time.monotonic()
        first = PostgresBatchedDeleteOperator(**kwargs, max_runtime=timedelta(seconds=0.3)).execute(
            interval_context()
        )
        assert time.monotonic() - started < 3
        assert first["stopped_by"] == "max_runtime"
        assert 0 < first["deleted"] < 1000
        assert first["remaining"] == 1000 - first["deleted"]

        limited = PostgresBatchedDeleteOperator(**kwargs, max_rows=120).execute(interval_context())
        assert limited["deleted"] == 120
        assert limited["stopped_by"] == "max_rows"

        rest = PostgresBatchedDeleteOperator(**{**kwargs, "sleep_between_batches": 0}).execute(
            manual_context()
        )
        assert first["deleted"] + limited["deleted"] + rest["deleted"] == 1000
        assert rest["remaining"] == 0 and rest["stopped_by"] is None
        assert scalar(pg, "SELECT count(*) FROM app.app_logs") == 1000

    def test_lock_timeout_shrinks_and_retries_until_the_lock_is_released(
        self, pg: psycopg.Connection[Any], pg_database: str
    ) -> None:
        add_logs(pg, 200, CUTOFF - timedelta(hours=100), timedelta(hours=1))  # 100 due
        holder = connect(pg_database)
        holder.execute("SELECT id FROM app.app_logs WHERE id BETWEEN 40 AND 45 FOR UPDATE").fetchall()
        release = threading.Timer(1.0, holder.rollback)
        release.start()
        try:
            started = time.monotonic()
            summary = PostgresBatchedDeleteOperator(
                task_id="logs",
                table="app.app_logs",
                timestamp_column="created_at",
                retention_days=RETENTION_DAYS,
                batch_size=20,
                min_batch_size=5,
                lock_timeout=0.2,
                max_lock_retries=20,
            ).execute(interval_context())
            elapsed = time.monotonic() - started
        finally:
            release.join()
            holder.close()
        assert summary["deleted"] == 100
        assert summary["remaining"] == 0
        assert elapsed < 6

    def test_lock_held_past_retries_fails_clearly_within_budget(
        self, pg: psycopg.Connection[Any], pg_database: str
    ) -> None:
        add_logs(pg, 200, CUTOFF - timedelta(hours=100), timedelta(hours=1))
        holder = connect(pg_database)
        holder.execute("SELECT id FROM app.app_logs WHERE id = 50 FOR UPDATE").fetchall()
        try:
            started = time.monotonic()
            with pytest.raises(LockTimeoutExhausted, match="lock_timeout"):
                PostgresBatchedDeleteOperator(
                    task_id="logs",
                    table="app.app_logs",
                    timestamp_column="created_at",
                    retention_days=RETENTION_DAYS,
                    batch_size=10,
                    min_batch_size=5,
                    lock_timeout=0.2,
                    max_lock_retries=3,
                ).execute(interval_context())
            assert time.monotonic() - started < 4
        finally:
            holder.rollback()
            holder.close()
        # Batches before the locked row were committed; the locked row and everything after it stay.
        assert scalar(pg, "SELECT min(id) FROM app.app_logs") <= 50
        assert scalar(pg, "SELECT count(*) FROM app.app_logs WHERE id >= 50") == 151

    def test_on_kill_cancels_the_running_statement(
        self, pg: psycopg.Connection[Any], pg_database: str
    ) -> None:
        add_logs(pg, 20, CUTOFF - timedelta(hours=10), timedelta(hours=1))
        holder = connect(pg_database)
        holder.execute("SELECT id FROM app.app_logs WHERE id = 1 FOR UPDATE").fetchall()
        op = PostgresBatchedDeleteOperator(
            task_id="logs",
            table="app.app_logs",
            timestamp_column="created_at",
            retention_days=RETENTION_DAYS,
            lock_timeout=30,
            allow_large_delete=True,
        )
        errors: list[BaseException] = []

        def run() -> None:
            try:
                op.execute(interval_context())
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=run)
        started = time.monotonic()
        worker.start()
        try:
            deadline = time.monotonic() + 5
            while (
                scalar(
                    pg,
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
                )
                == 0
            ):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            op.on_kill()
            worker.join(5)
        finally:
            holder.rollback()
            holder.close()
        assert not worker.is_alive()
        assert time.monotonic() - started < 6
        assert errors and isinstance(errors[0], psycopg.errors.QueryCanceled)
        assert scalar(pg, "SELECT count(*) FROM app.app_logs") == 20

    def test_archive_mode_writes_exactly_the_deleted_rows(
        self, pg: psycopg.Connection[Any], make_bucket: Any, s3_client: Any
    ) -> None:
        bucket = make_bucket("archive")
        add_logs(pg, 90, CUTOFF - timedelta(hours=45), timedelta(hours=1))  # 45 due
        before = {
            r[0]: r
            for r in pg.execute(
                "SELECT id, created_at, message, context FROM app.app_logs WHERE created_at < %s", (CUTOFF,)
            )
        }
        kwargs = {
            "task_id": "archive_logs",
            "table": "app.app_logs",
            "timestamp_column": "created_at",
            "retention_days": RETENTION_DAYS,
            "batch_size": 20,
            "min_batch_size": 5,
            "max_batch_size": 20,  # objects of at most 20 rows: 20, 20, 5
            "archive": {"bucket": bucket, "prefix": "app-logs", "aws_conn_id": "lifecycle_aws"},
        }
        summary = PostgresBatchedDeleteOperator(**kwargs).execute(interval_context())
        assert summary["deleted"] == summary["archived_rows"] == 45
        assert summary["archived_files"][0].startswith(
            "app-logs/app.app_logs/cutoff=2027-01-30T050000Z/batch_"
        )
        keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"])
        assert keys == sorted(summary["archived_files"]) and len(keys) == summary["batches"] == 3
        archived = [row for key in keys for row in archive_mod.read_archive_rows(s3_client, bucket, key)]
        assert sorted(int(r["id"]) for r in archived) == sorted(before)
        for row in archived:
            _, created_at, message, context = before[int(row["id"])]
            assert datetime.fromisoformat(row["created_at"]) == created_at
            assert row["message"] == message and json.loads(row["context"]) == context
        assert scalar(pg, "SELECT count(*) FROM app.app_logs WHERE created_at < %s", (CUTOFF,)) == 0

        rerun = PostgresBatchedDeleteOperator(**kwargs).execute(manual_context())
        assert rerun["deleted"] == 0 and rerun["archived_files"] == []
        assert len(s3_client.list_objects_v2(Bucket=bucket)["Contents"]) == 3

    def test_archive_failure_after_upload_deletes_nothing_and_rerun_overwrites(
        self, pg: psycopg.Connection[Any], make_bucket: Any, s3_client: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        bucket = make_bucket("archive")
        add_logs(pg, 60, CUTOFF - timedelta(hours=30), timedelta(hours=1))  # 30 due
        kwargs = {
            "task_id": "archive_logs",
            "table": "app.app_logs",
            "timestamp_column": "created_at",
            "retention_days": RETENTION_DAYS,
            "batch_size": 20,
            "min_batch_size": 5,
            "max_batch_size": 20,  # objects of 20 and 10 rows
            "archive": {"bucket": bucket, "prefix": "logs"},
        }
        calls = {"n": 0}
        real_verify = archive_mod.S3ArchiveWriter.verify

        def verify_fails_second_time(self: Any, expected: Any) -> None:
            calls["n"] += 1
            if calls["n"] == 2:
                raise VerificationFailed("simulated: checksum mismatch")
            real_verify(self, expected)

        monkeypatch.setattr(archive_mod.S3ArchiveWriter, "verify", verify_fails_second_time)
        with pytest.raises(VerificationFailed):
            PostgresBatchedDeleteOperator(**kwargs).execute(interval_context())
        # The first batch (verified) is gone; the second batch was uploaded but not verified: kept.
        assert scalar(pg, "SELECT count(*) FROM app.app_logs WHERE created_at < %s", (CUTOFF,)) == 10
        assert len(s3_client.list_objects_v2(Bucket=bucket)["Contents"]) == 2

        monkeypatch.setattr(archive_mod.S3ArchiveWriter, "verify", real_verify)
        summary = PostgresBatchedDeleteOperator(**kwargs).execute(interval_context())
        assert summary["deleted"] == 10
        keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
        assert len(keys) == 2  # the rerun overwrote the unverified object under the same key
        rows = [int(r["id"]) for k in keys for r in archive_mod.read_archive_rows(s3_client, bucket, k)]
        assert sorted(rows) == list(range(1, 31))

    @pytest.mark.parametrize(
        ("overrides", "match"),
        [
            pytest.param({"table": "app.nope"}, "no table app.nope", id="unknown-table"),
            pytest.param({"table": "app.sessions; DROP TABLE app.users"}, "not a plain", id="sql-in-name"),
            pytest.param({"table": 'app."sessions"'}, "not a plain", id="quoted-name"),
            pytest.param({"table": "app.sessi\u043ens"}, "not a plain", id="unicode-lookalike"),
            pytest.param({"table": "app.sessions\n"}, "not a plain", id="trailing-newline"),
            pytest.param({"retention_days": 0}, "below the floor", id="zero-retention"),
            pytest.param({"retention_days": -5}, "whole number|floor", id="negative-retention"),
            pytest.param({"timestamp_column": "token"}, "expected one of", id="not-a-timestamp"),
            pytest.param({"timestamp_column": ""}, "needs a timestamp_column", id="no-time-predicate"),
            pytest.param({"timestamp_column": "nope"}, "no such column", id="unknown-column"),
            pytest.param({"extra_predicate": "true; DELETE FROM app.users"}, "one boolean", id="stacked-sql"),
            pytest.param({"extra_predicate": "no_such_col = 1"}, "predicate is invalid", id="bad-predicate"),
            pytest.param({"extra_predicate": "token = %(t)s"}, "parameter", id="missing-param"),
            pytest.param(
                {"children": [{"table": "app.nope", "column": "user_id"}]}, "no table", id="bad-child"
            ),
            pytest.param({"key_columns": ["token"]}, "no primary key or unique index", id="non-unique-key"),
            pytest.param({"archive": {"bucket": "Bad_Bucket"}}, "bucket", id="bad-bucket"),
        ],
    )
    def test_bad_inputs_are_rejected_before_any_write(
        self, pg: psycopg.Connection[Any], overrides: dict[str, Any], match: str
    ) -> None:
        self._sessions_fixture(pg)
        kwargs = {
            "task_id": "bad",
            "table": "app.sessions",
            "timestamp_column": "expires_at",
            "retention_days": RETENTION_DAYS,
            **overrides,
        }
        with pytest.raises(LifecycleConfigError, match=match):
            PostgresBatchedDeleteOperator(**kwargs).execute(interval_context())
        assert scalar(pg, "SELECT count(*) FROM app.sessions") == 100
        assert scalar(pg, "SELECT count(*) FROM app.users") == 1


class TestPostgresPartitionRetentionOperator:
    # Jan 1 to Mar 1 2027 is 59 days: the cutoff falls exactly on a partition bound.
    BOUNDARY_RETENTION = 59

    def _progress(self, pg: psycopg.Connection[Any], *, months: int = 6) -> None:
        make_monthly_partitions(pg, "app.student_progress", datetime(2026, 10, 1, tzinfo=UTC), months)
        (uid,) = add_users(pg, 1)
        add_progress(pg, uid, datetime(2026, 10, 1, tzinfo=UTC), months, 5)

    def test_drops_only_expired_partitions_and_rerun_does_nothing(self, pg: psycopg.Connection[Any]) -> None:
        self._progress(pg)
        kwargs = {
            "task_id": "retention",
            "table": "app.student_progress",
            "retention_days": self.BOUNDARY_RETENTION,
        }
        summary = PostgresPartitionRetentionOperator(**kwargs).execute(
            interval_context(datetime(2027, 3, 1, tzinfo=UTC))
        )
        # The December partition ends exactly at the cutoff (2027-01-01): all its rows are older, it goes.
        assert summary["dropped"] == [
            "app.student_progress_2026_10",
            "app.student_progress_2026_11",
            "app.student_progress_2026_12",
        ]
        assert partition_names(pg, "app.student_progress") == [
            "student_progress_2027_01",
            "student_progress_2027_02",
            "student_progress_2027_03",
        ]
        assert scalar(pg, "SELECT to_regclass('app.student_progress_2026_10')") is None
        assert scalar(pg, "SELECT count(*) FROM app.student_progress") == 15
        again = PostgresPartitionRetentionOperator(**kwargs).execute(
            manual_context(datetime(2027, 3, 1, tzinfo=UTC))
        )
        assert again["dropped"] == [] and again["detached"] == []
        assert len(partition_names(pg, "app.student_progress")) == 3

    def test_archive_schema_mode_with_default_partition(self, pg: psycopg.Connection[Any]) -> None:
        self._progress(pg, months=3)
        pg.execute("CREATE TABLE app.student_progress_default PARTITION OF app.student_progress DEFAULT")
        pg.execute("CREATE SCHEMA archive")
        summary = PostgresPartitionRetentionOperator(
            task_id="retention",
            table="app.student_progress",
            retention_days=self.BOUNDARY_RETENTION,
            mode="archive_schema",
            archive_schema="archive",
        ).execute(manual_context(datetime(2027, 3, 1, tzinfo=UTC)))
        assert summary["moved"] == [
            "archive.student_progress_2026_10",
            "archive.student_progress_2026_11",
            "archive.student_progress_2026_12",
        ]
        assert partition_names(pg, "app.student_progress") == ["student_progress_default"]
        assert scalar(pg, "SELECT count(*) FROM archive.student_progress_2026_11") == 5

    def test_s3_mode_archives_rows_before_dropping(
        self, pg: psycopg.Connection[Any], make_bucket: Any, s3_client: Any
    ) -> None:
        self._progress(pg, months=3)
        bucket = make_bucket("parts")
        summary = PostgresPartitionRetentionOperator(
            task_id="retention",
            table="app.student_progress",
            retention_days=60,  # cutoff 2026-12-31: only October and November have ended
            mode="s3",
            archive={"bucket": bucket, "prefix": "progress"},
            archive_chunk_rows=3,
        ).execute(interval_context(datetime(2027, 3, 1, tzinfo=UTC)))
        assert summary["dropped"] == ["app.student_progress_2026_10", "app.student_progress_2026_11"]
        assert summary["archived_rows"] == 10
        keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"])
        assert keys == sorted(summary["archived_files"])
        assert "progress/app.student_progress/partition=student_progress_2026_10/part_00000.rows.gz" in keys
        rows = [r for k in keys for r in archive_mod.read_archive_rows(s3_client, bucket, k)]
        assert len(rows) == 10
        assert all(datetime.fromisoformat(r["recorded_at"]) < datetime(2026, 12, 1, tzinfo=UTC) for r in rows)
        assert partition_names(pg, "app.student_progress") == ["student_progress_2026_12"]

    def test_refuses_partition_holding_rows_inside_retention(self, pg: psycopg.Connection[Any]) -> None:
        pg.execute(
            "CREATE TABLE app.events (id bigint, created_at timestamptz NOT NULL, received_at timestamptz)"
            " PARTITION BY RANGE (created_at)"
        )
        make_monthly_partitions(pg, "app.events", datetime(2026, 10, 1, tzinfo=UTC), 6)
        pg.execute(
            "INSERT INTO app.events VALUES (1, '2026-10-05', '2026-10-05'), (2, '2026-11-05', '2027-02-20')"
        )
        op = PostgresPartitionRetentionOperator(
            task_id="retention", table="app.events", retention_days=30, guard_column="received_at"
        )
        with pytest.raises(GuardrailTripped, match="events_2026_11"):
            op.execute(interval_context())
        assert len(partition_names(pg, "app.events")) == 6

    def test_never_drops_the_last_partition(self, pg: psycopg.Connection[Any]) -> None:
        make_monthly_partitions(pg, "app.student_progress", datetime(2026, 1, 1, tzinfo=UTC), 2)
        summary = PostgresPartitionRetentionOperator(
            task_id="retention", table="app.student_progress", retention_days=RETENTION_DAYS
        ).execute(interval_context())
        assert summary["dropped"] == ["app.student_progress_2026_01"]
        assert summary["kept_last"] == "app.student_progress_2026_02"
        assert partition_names(pg, "app.student_progress") == ["student_progress_2026_02"]

    def test_finalizes_a_detach_left_pending(self, pg: psycopg.Connection[Any], pg_database: str) -> None:
        self._progress(pg, months=3)
        reader = connect(pg_database)
        reader.execute("SELECT count(*) FROM app.student_progress").fetchone()  # holds a snapshot and a lock
        detacher = connect(pg_database, autocommit=True)
        detacher_pid = detacher.info.backend_pid
        errors: list[BaseException] = []

        def detach() -> None:
            try:
                detacher.execute(
                    "ALTER TABLE app.student_progress DETACH PARTITION app.student_progress_2026_10 CONCURRENTLY"
                )
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=detach)
        worker.start()
        try:
            deadline = time.monotonic() + 5
            while (
                scalar(pg, "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (detacher_pid,))
                != "Lock"
            ):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            pg.execute("SELECT pg_cancel_backend(%s)", (detacher_pid,))
            worker.join(5)
        finally:
            reader.rollback()
            reader.close()
            detacher.close()
        assert errors and isinstance(errors[0], psycopg.errors.QueryCanceled)
        assert (
            scalar(
                pg,
                "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = 'app.student_progress_2026_10'::regclass",
            )
            is True
        )

        summary = PostgresPartitionRetentionOperator(
            task_id="retention", table="app.student_progress", retention_days=60
        ).execute(interval_context(datetime(2027, 3, 1, tzinfo=UTC)))
        assert summary["finalized"] == ["app.student_progress_2026_10"]
        assert summary["dropped"] == ["app.student_progress_2026_10", "app.student_progress_2026_11"]
        assert partition_names(pg, "app.student_progress") == ["student_progress_2026_12"]

    def test_rerun_finishes_a_partition_detached_before_a_crash(
        self, pg: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A run that stops between detach and drop leaves a marked table; the next run drops it."""
        self._progress(pg, months=3)
        kwargs = {"task_id": "retention", "table": "app.student_progress", "retention_days": 60}

        def crash(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("simulated worker crash after the detach")

        with monkeypatch.context() as patched, pytest.raises(RuntimeError):
            patched.setattr(PostgresPartitionRetentionOperator, "_dispose", crash)
            PostgresPartitionRetentionOperator(**kwargs).execute(interval_context())
        assert "student_progress_2026_10" not in partition_names(pg, "app.student_progress")
        assert scalar(pg, "SELECT to_regclass('app.student_progress_2026_10')") is not None

        summary = PostgresPartitionRetentionOperator(**kwargs).execute(interval_context())
        assert summary["dropped"] == ["app.student_progress_2026_10", "app.student_progress_2026_11"]
        assert scalar(pg, "SELECT to_regclass('app.student_progress_2026_10')") is None

    @pytest.mark.parametrize(
        ("table", "retention", "match"),
        [
            pytest.param("app.users", 30, "not a partitioned table", id="not-partitioned"),
            pytest.param("app.nope", 30, "no table", id="unknown-table"),
            pytest.param("app.lists", 30, "not range-partitioned", id="list-partitioned"),
            pytest.param("app.student_progress'--", 30, "not a plain", id="sql-in-name"),
            pytest.param("app.student_progress", 0, "floor", id="zero-retention"),
        ],
    )
    def test_bad_inputs_are_rejected(
        self, pg: psycopg.Connection[Any], table: str, retention: int, match: str
    ) -> None:
        self._progress(pg, months=2)
        pg.execute("CREATE TABLE app.lists (kind text) PARTITION BY LIST (kind)")
        with pytest.raises(LifecycleConfigError, match=match):
            PostgresPartitionRetentionOperator(task_id="bad", table=table, retention_days=retention).execute(
                interval_context()
            )
        assert len(partition_names(pg, "app.student_progress")) == 2


class TestPostgresPartitionPremakeOperator:
    def test_creates_missing_months_and_rerun_creates_nothing(self, pg: psycopg.Connection[Any]) -> None:
        make_monthly_partitions(pg, "app.student_progress", datetime(2027, 3, 1, tzinfo=UTC), 1)
        anchor = datetime(2027, 3, 15, 2, tzinfo=UTC)
        summary = PostgresPartitionPremakeOperator(task_id="premake", table="app.student_progress").execute(
            interval_context(anchor)
        )
        assert summary["existing"] == ["2027-03"]
        assert summary["created"] == [
            "app.student_progress_2027_04",
            "app.student_progress_2027_05",
            "app.student_progress_2027_06",
        ]
        bound = scalar(
            pg,
            "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = 'app.student_progress_2027_05'::regclass",
        )
        assert bound == "FOR VALUES FROM ('2027-05-01 00:00:00+00') TO ('2027-06-01 00:00:00+00')"
        again = PostgresPartitionPremakeOperator(
            task_id="premake", table="app.student_progress", months_ahead="3"
        ).execute(manual_context(anchor))
        assert again["created"] == []
        assert len(partition_names(pg, "app.student_progress")) == 4

    def test_reports_default_partition_rows_that_block_a_month(self, pg: psycopg.Connection[Any]) -> None:
        pg.execute("CREATE TABLE app.student_progress_default PARTITION OF app.student_progress DEFAULT")
        (uid,) = add_users(pg, 1)
        pg.execute(
            "INSERT INTO app.student_progress (user_id, lesson_id, score, recorded_at) VALUES (%s, 1, 1, '2027-05-10')",
            (uid,),
        )
        summary = PostgresPartitionPremakeOperator(
            task_id="premake", table="app.student_progress", months_ahead=2
        ).execute(interval_context())
        assert summary["default_partition_rows"] == 1
        assert summary["blocked_by_default"] == ["2027-05"]
        assert summary["created"] == ["app.student_progress_2027_03", "app.student_progress_2027_04"]
        assert scalar(pg, "SELECT count(*) FROM app.student_progress_default") == 1

    def test_non_partitioned_table_is_rejected(self, pg: psycopg.Connection[Any]) -> None:
        with pytest.raises(LifecycleConfigError, match="not a partitioned table"):
            PostgresPartitionPremakeOperator(task_id="premake", table="app.sessions").execute(
                interval_context()
            )


class TestPostgresVacuumAnalyzeOperator:
    @staticmethod
    def _dead_tuples(pg: psycopg.Connection[Any], table: str) -> int:
        pg.execute("SELECT pg_stat_clear_snapshot()")
        return int(
            scalar(pg, "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = %s::regclass", (table,))
        )

    def _make_dead_tuples(self, pg: psycopg.Connection[Any]) -> None:
        add_logs(pg, 3000, CUTOFF, timedelta(minutes=1))
        pg.execute("DELETE FROM app.app_logs WHERE id % 3 <> 0")
        pg.execute("SELECT pg_stat_force_next_flush()")
        deadline = time.monotonic() + 10
        while self._dead_tuples(pg, "app.app_logs") < 2000:
            assert time.monotonic() < deadline, "statistics never showed the dead tuples"
            time.sleep(0.1)

    def test_vacuums_tables_past_threshold_and_rerun_finds_none(self, pg: psycopg.Connection[Any]) -> None:
        # Autovacuum off on the measured table too, so it cannot take the table first (SKIP_LOCKED).
        pg.execute("ALTER TABLE app.app_logs SET (autovacuum_enabled = false)")
        self._make_dead_tuples(pg)
        pg.execute("ALTER TABLE app.sessions SET (autovacuum_enabled = false)")
        summary = PostgresVacuumAnalyzeOperator(task_id="vacuum", schemas=["app"], threshold=100).execute(
            interval_context()
        )
        reports = {r["table"]: r for r in summary["tables"]}
        assert "app.app_logs" in reports
        assert reports["app.app_logs"]["dead_tuples_before"] >= 2000
        assert reports["app.app_logs"]["dead_tuples_after"] == 0
        assert sorted(summary["autovacuum_disabled"]) == ["app.app_logs", "app.sessions"]
        assert scalar(
            pg,
            "SELECT last_vacuum IS NOT NULL FROM pg_stat_user_tables WHERE relid = 'app.app_logs'::regclass",
        )
        assert self._dead_tuples(pg, "app.app_logs") == 0

        again = PostgresVacuumAnalyzeOperator(task_id="vacuum", schemas=["app"], threshold=100).execute(
            manual_context()
        )
        assert "app.app_logs" not in {r["table"] for r in again["tables"]}

    def test_explicit_tables_and_dry_run(self, pg: psycopg.Connection[Any]) -> None:
        self._make_dead_tuples(pg)
        dry = PostgresVacuumAnalyzeOperator(
            task_id="vacuum", tables=["app.app_logs", "app.student_progress"], dry_run=True
        ).execute(interval_context())
        assert dry["vacuumed"] == 0
        assert self._dead_tuples(pg, "app.app_logs") >= 2000
        done = PostgresVacuumAnalyzeOperator(task_id="vacuum", tables=["app.app_logs"]).execute(
            interval_context()
        )
        assert done["vacuumed"] == 1
        assert done["tables"][0]["size_after"] > 0
        assert self._dead_tuples(pg, "app.app_logs") == 0

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            pytest.param({"full": True}, "allow_full", id="full-without-permission"),
            pytest.param({"tables": ["app.nope"]}, "no table", id="unknown-table"),
            pytest.param({"schemas": ["nope"]}, "does not exist", id="unknown-schema"),
            pytest.param({"schemas": ["app; VACUUM FULL"]}, "not a plain identifier", id="sql-in-schema"),
            pytest.param({"buffer_usage_limit": "1 TB; x"}, "256MB", id="bad-buffer-limit"),
        ],
    )
    def test_bad_inputs_are_rejected(
        self, pg: psycopg.Connection[Any], kwargs: dict[str, Any], match: str
    ) -> None:
        with pytest.raises(LifecycleConfigError, match=match):
            PostgresVacuumAnalyzeOperator(task_id="vacuum", **kwargs).execute(interval_context())
