"""The batch loop's ways through a table: stride or keyset batches, load-aware pauses, the archive
pipeline's race with writers. All against the real PostgreSQL (and the moto S3 server)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from data_lifecycle import archive as archive_mod
from data_lifecycle.exceptions import LifecycleConfigError
from data_lifecycle.operators.postgres import PostgresBatchedDeleteOperator
from data_lifecycle.operators.postgres.load_guard import (
    MAX_PAUSE_RATIO,
    MAX_PAUSE_SECONDS,
    MIN_BATCH_SCALE,
    LoadGovernor,
)
from tests.operators.test_postgres import CUTOFF, RETENTION_DAYS, add_logs, interval_context
from tests.reliability.harness import s3_faults
from tests.reliability.invariants import assert_deleted_rows_archived, table_rows, verified_archive


def scalar(pg: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = pg.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def logs_op(**overrides: Any) -> PostgresBatchedDeleteOperator:
    return PostgresBatchedDeleteOperator(
        **{
            "task_id": "logs",
            "table": "app.app_logs",
            "timestamp_column": "created_at",
            "retention_days": RETENTION_DAYS,
            "batch_size": 10,
            "min_batch_size": 5,
            "max_batch_size": 40,
            "max_delete_fraction": 1.0,
            **overrides,
        }
    )


def due_left(pg: psycopg.Connection[Any]) -> int:
    return int(scalar(pg, "SELECT count(*) FROM app.app_logs WHERE created_at < %s", (CUTOFF,)))


class TestStrideOrKeyset:
    def test_a_dense_integer_key_goes_by_stride_and_stops_at_the_last_due_key(
        self, pg: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
    ) -> None:
        add_logs(pg, 300, CUTOFF - timedelta(hours=200), timedelta(hours=1))  # ids 1..200 due
        kept = table_rows(pg, "app.app_logs")
        summary = logs_op().execute(interval_context())
        log = capsys.readouterr().out
        assert "stride batches over keys 1..200 (1.00 due rows per key)" in log
        assert "keyset batches from here" not in log
        assert summary["deleted"] == 200 and summary["remaining"] == 0
        # Stride batches never take more keys than max_batch_size: at least 200 / 40 batches.
        assert summary["batches"] >= 5
        after = table_rows(pg, "app.app_logs")
        assert set(after) == {k for k in kept if k > 200}
        assert all(after[k] == kept[k] for k in after)

    def test_a_sparse_integer_key_falls_back_to_keyset_batches(
        self, pg: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
    ) -> None:
        # Ids 1,000 apart: a stride sized in keys would find almost nothing per batch.
        pg.execute(
            "INSERT INTO app.app_logs (id, created_at, level, logger, message)"
            " SELECT g * 1000, %s + g * interval '1 hour', 'INFO', 'app.sparse', 'm' || g"
            " FROM generate_series(1, 120) g",
            (CUTOFF - timedelta(hours=100),),
        )
        summary = logs_op().execute(interval_context())
        log = capsys.readouterr().out
        assert "stride batches" not in log
        assert summary["deleted"] == 99 and summary["remaining"] == 0  # hours 1..99 are before the cutoff
        assert due_left(pg) == 0
        assert scalar(pg, "SELECT count(*) FROM app.app_logs") == 21

    def test_due_rows_thinning_out_hand_the_pass_to_keyset_batches(
        self, pg: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
    ) -> None:
        # Ids 1..60,000 dense, then 100 ids 1,000 apart: dense on average (0.38 due rows per key),
        # sparse at the end, where a stride of at most 5,000 keys finds at most 5 rows.
        pg.execute(
            "INSERT INTO app.app_logs (id, created_at, level, logger, message)"
            " SELECT g, %s, 'INFO', 'app.dense', 'd' FROM generate_series(1, 60000) g"
            " UNION ALL SELECT 60000 + g * 1000, %s, 'INFO', 'app.sparse', 's'"
            " FROM generate_series(1, 100) g",
            (CUTOFF - timedelta(hours=2), CUTOFF - timedelta(hours=1)),
        )
        summary = logs_op(max_batch_size=5000, batch_size=1000).execute(interval_context())
        log = capsys.readouterr().out
        assert "stride batches over keys 1..160000" in log
        assert "due rows thin out; keyset batches from here" in log
        assert summary["deleted"] == 60000 + 100 and summary["remaining"] == 0
        assert due_left(pg) == 0

    def test_a_composite_key_goes_by_keyset(
        self, pg: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
    ) -> None:
        pg.execute(
            "CREATE TABLE app.tenant_events (tenant int NOT NULL, seq int NOT NULL, at timestamptz NOT NULL,"
            " PRIMARY KEY (tenant, seq))"
        )
        pg.execute(
            "INSERT INTO app.tenant_events SELECT t, s, %s + (s - 30) * interval '1 hour'"
            " FROM generate_series(1, 4) t, generate_series(1, 50) s",
            (CUTOFF,),
        )
        summary = PostgresBatchedDeleteOperator(
            task_id="events",
            table="app.tenant_events",
            timestamp_column="at",
            retention_days=RETENTION_DAYS,
            batch_size=10,
            min_batch_size=5,
            max_batch_size=25,
            max_delete_fraction=1.0,
        ).execute(interval_context())
        assert "stride batches" not in capsys.readouterr().out
        assert summary["deleted"] == 4 * 29 and summary["remaining"] == 0
        assert scalar(pg, "SELECT count(*) FROM app.tenant_events WHERE at < %s", (CUTOFF,)) == 0
        assert scalar(pg, "SELECT min(seq) FROM app.tenant_events") == 30

    def test_a_key_at_its_type_s_smallest_value_goes_by_keyset(
        self, pg: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
    ) -> None:
        # A stride starts just below the smallest due key: not possible below -32768.
        pg.execute("CREATE TABLE app.small_keys (id smallint PRIMARY KEY, at timestamptz NOT NULL)")
        pg.execute(
            "INSERT INTO app.small_keys SELECT g, %s FROM generate_series(-32768, -32700) g", (CUTOFF,)
        )
        pg.execute("UPDATE app.small_keys SET at = at - interval '1 day' WHERE id < -32710")
        summary = PostgresBatchedDeleteOperator(
            task_id="small",
            table="app.small_keys",
            timestamp_column="at",
            retention_days=RETENTION_DAYS,
            batch_size=10,
            min_batch_size=5,
            max_delete_fraction=1.0,
        ).execute(interval_context())
        assert "stride batches" not in capsys.readouterr().out
        assert summary["deleted"] == 58 and summary["remaining"] == 0

    def test_max_rows_holds_in_stride_batches(self, pg: psycopg.Connection[Any]) -> None:
        add_logs(pg, 300, CUTOFF - timedelta(hours=200), timedelta(hours=1))
        summary = logs_op(max_rows=57).execute(interval_context())
        assert summary["deleted"] == 57 and summary["stopped_by"] == "max_rows"
        assert due_left(pg) == 200 - 57
        assert scalar(pg, "SELECT min(id) FROM app.app_logs") == 58


class TestLoadAwarePauses:
    def test_policy_bounds_are_checked_before_anything_runs(self) -> None:
        for bad in (1.0, 0.5, 101, True, "2"):
            with pytest.raises(LifecycleConfigError, match="max_load_p99_factor"):
                logs_op(max_load_p99_factor=bad)
        with pytest.raises(LifecycleConfigError, match="max_replica_lag_seconds"):
            logs_op(max_replica_lag_seconds=0)
        with pytest.raises(LifecycleConfigError, match="max_replica_lag_seconds"):
            logs_op(max_replica_lag_seconds=7200)

    def test_pauses_grow_under_load_within_bounds_and_decay_after(self, pg: psycopg.Connection[Any]) -> None:
        governor = LoadGovernor(pg, max_load_factor=1.5, max_replica_lag=5.0)
        assert governor.pause_after(0.01, 1000, 0) == 0.0  # the baseline: 10 us per row
        pauses = [governor.pause_after(0.1, 1000, 0) for _ in range(6)]  # 10x slower per row
        assert pauses[0] == pytest.approx(0.1 * 2.0)  # starts at 1 / (1.5 - 1) of the batch
        assert pauses == sorted(pauses) and pauses[-1] == pytest.approx(0.1 * MAX_PAUSE_RATIO)
        assert governor.batch_scale == MIN_BATCH_SCALE  # over budget the batches get shorter too
        assert governor.pause_after(10.0, 1_000_000, 0) == MAX_PAUSE_SECONDS  # never beyond 5 s
        within = [governor.pause_after(0.01, 1000, 0) for _ in range(12)]
        assert within == sorted(within, reverse=True) and within[-1] == 0.0
        assert governor.batch_scale == 1.0
        # A session that waited for our locks counts as over budget, however fast the batch.
        assert governor.pause_after(0.01, 1000, 1) > 0
        assert governor.summary()["sessions_blocked"] == 1

    def test_sessions_waiting_for_our_locks_are_counted(
        self, pg: psycopg.Connection[Any], pg_database: str
    ) -> None:
        add_logs(pg, 3, CUTOFF - timedelta(hours=10), timedelta(hours=1))
        from tests.operators.test_postgres import connect

        with connect(pg_database) as ours, connect(pg_database, autocommit=True) as other:
            governor = LoadGovernor(ours, max_load_factor=2.0, max_replica_lag=None)
            ours.execute("DELETE FROM app.app_logs WHERE id = 1")
            assert governor.blocked_by_us() == 0
            waiter = threading.Thread(
                target=lambda: other.execute("UPDATE app.app_logs SET level = 'X' WHERE id = 1")
            )
            waiter.start()
            deadline = time.monotonic() + 10
            while governor.blocked_by_us() == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert governor.blocked_by_us() == 1
            ours.rollback()
            waiter.join(10)

    def test_a_slowed_server_makes_the_loop_pause(
        self, pg: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
    ) -> None:
        add_logs(pg, 400, CUTOFF - timedelta(hours=300), timedelta(hours=1))  # ids 1..300 due
        # Simulated load: from id 150 on every deleted row costs 2 ms more (as on a busy server).
        pg.execute(
            """
            CREATE FUNCTION app.slow_delete() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF OLD.id >= 150 THEN PERFORM pg_sleep(0.002); END IF;
                RETURN OLD;
            END $$
            """
        )
        pg.execute(
            "CREATE TRIGGER slow_delete BEFORE DELETE ON app.app_logs FOR EACH ROW EXECUTE FUNCTION app.slow_delete()"
        )
        started = time.monotonic()
        summary = logs_op(max_load_p99_factor=1.5, target_batch_seconds=0.05).execute(interval_context())
        took = time.monotonic() - started
        assert summary["deleted"] == 300 and summary["remaining"] == 0
        pauses = summary["load_pauses"]
        assert pauses["pauses"] > 0 and pauses["batches_over_budget"] > 0
        # Bounded: never more than MAX_PAUSE_RATIO times the time the batches themselves took.
        assert pauses["paused_seconds"] <= MAX_PAUSE_RATIO * (took - pauses["paused_seconds"])

        add_logs(pg, 100, CUTOFF - timedelta(hours=500), timedelta(hours=1))
        pg.execute("DROP TRIGGER slow_delete ON app.app_logs")
        calm = logs_op(max_load_p99_factor=50).execute(interval_context())
        assert calm["deleted"] == 100 and calm["load_pauses"]["pauses"] == 0


class TestArchivePipelineRace:
    """A row changed after it was archived and before the delete is not deleted under that archive."""

    @staticmethod
    def _edit_after_first_upload(pg_database: str, statement: str) -> Any:
        from tests.operators.test_postgres import connect

        done = threading.Event()

        def edit(**_: Any) -> None:
            if not done.is_set():
                done.set()
                with connect(pg_database, autocommit=True) as conn:
                    # A writer does not wait long: a batch that held its row locks across the upload
                    # would block it until the upload returned, which waits for it.
                    conn.execute("SET lock_timeout = '3s'")
                    conn.execute(statement)

        return s3_faults(("after-call.s3.PutObject", edit))

    def _run(self, pg_database: str, bucket: str, statement: str) -> dict[str, Any]:
        with self._edit_after_first_upload(pg_database, statement):
            return logs_op(max_batch_size=20, archive={"bucket": bucket, "prefix": "race"}).execute(
                interval_context()
            )

    def test_a_row_updated_in_between_is_archived_again_then_deleted(
        self, pg: psycopg.Connection[Any], pg_database: str, make_bucket: Any, s3_client: Any
    ) -> None:
        add_logs(pg, 80, CUTOFF - timedelta(hours=60), timedelta(hours=1))  # ids 1..60 due
        before = table_rows(pg, "app.app_logs")
        bucket = make_bucket("race")
        summary = self._run(pg_database, bucket, "UPDATE app.app_logs SET message = 'edited' WHERE id = 5")
        assert summary["deleted"] == 60 and summary["remaining"] == 0
        assert summary["archived_rows_changed"] == 1 and summary["archived_rows"] == 60
        objects = verified_archive(s3_client, bucket, "")
        # The first object was rewritten without row 5 (it was not deleted under it); the edit was
        # archived again by the second pass and deleted under that object.
        copies = [r for o in objects for r in o.rows if r["id"] == "5"]
        assert [r["message"] for r in copies] == ["edited"]
        edited = {k: ({**row, "message": "edited"} if k == 5 else row) for k, row in before.items()}
        assert_deleted_rows_archived(edited, table_rows(pg, "app.app_logs"), objects, due=set(range(1, 61)))
        assert due_left(pg) == 0

    def test_a_row_made_recent_in_between_stays(
        self, pg: psycopg.Connection[Any], pg_database: str, make_bucket: Any, s3_client: Any
    ) -> None:
        add_logs(pg, 80, CUTOFF - timedelta(hours=60), timedelta(hours=1))
        bucket = make_bucket("race")
        summary = self._run(
            pg_database, bucket, f"UPDATE app.app_logs SET created_at = '{CUTOFF.isoformat()}' WHERE id = 7"
        )
        assert summary["deleted"] == 59 and summary["archived_rows_changed"] == 1
        assert scalar(pg, "SELECT message FROM app.app_logs WHERE id = 7") == "message 7"
        assert due_left(pg) == 0
        keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
        rows = [r for k in keys for r in archive_mod.read_archive_rows(s3_client, bucket, k)]
        # Row 7 stays in the table and in no archive: its object was rewritten without it.
        assert sorted(int(r["id"]) for r in rows) == [i for i in range(1, 61) if i != 7]
        assert summary["archived_rows"] == 59
