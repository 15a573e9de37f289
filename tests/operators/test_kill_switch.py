"""The kill switch read again while a destructive loop runs (real PostgreSQL, moto S3).

The switch is the Airflow Variable ``lifecycle_destructive_enabled``, set here the way Airflow reads
it outside the metadata database (``AIRFLOW_VAR_*``), and flipped mid-run from a botocore event
handler or from a thread watching the table through a second connection. Each loop must finish the
batch in hand, do nothing more, and say ``stopped_by: kill_switch``; turned back on, a rerun resumes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from data_lifecycle import kill_switch
from data_lifecycle.kill_switch import KILL_SWITCH_VARIABLE, KillSwitch
from data_lifecycle.operators.postgres import (
    PostgresBatchedDeleteOperator,
    PostgresPartitionRetentionOperator,
)
from data_lifecycle.operators.s3 import common as s3_common
from data_lifecycle.operators.s3 import copy_then_delete as s3_copy
from tests.operators.test_postgres import (
    CUTOFF,
    RETENTION_DAYS,
    add_logs,
    add_progress,
    add_users,
    connect,
    interval_context,
    make_monthly_partitions,
    partition_names,
    scalar,
)
from tests.operators.test_s3 import all_keys, archive_op, body_of, everything_old, expire_op, put_many
from tests.reliability.harness import s3_faults

SWITCH_ENV = f"AIRFLOW_VAR_{KILL_SWITCH_VARIABLE.upper()}"


class Switch:
    """The kill switch Variable of this test; ``off()`` is what an on-call engineer does."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        monkeypatch.setenv(SWITCH_ENV, "true")
        monkeypatch.setenv(kill_switch.RECHECK_ENV, "0")  # read before every batch

    def off(self, *_: Any, **__: Any) -> None:
        os.environ[SWITCH_ENV] = "false"

    def on(self) -> None:
        os.environ[SWITCH_ENV] = "true"

    @property
    def is_off(self) -> bool:
        return os.environ[SWITCH_ENV] == "false"


@pytest.fixture
def switch(monkeypatch: pytest.MonkeyPatch) -> Switch:
    return Switch(monkeypatch)


@pytest.fixture
def off_when_rows_go(switch: Switch, pg_database: str) -> Iterator[Any]:
    """Start a watcher: turns the switch off as soon as ``table`` has fewer than ``rows`` rows."""
    threads: list[threading.Thread] = []
    done = threading.Event()

    def start(table: str, rows: int) -> None:
        def watch() -> None:
            with connect(pg_database, autocommit=True) as conn:
                while not done.is_set():
                    if scalar(conn, f"SELECT count(*) FROM {table}") < rows:
                        switch.off()
                        return
                    time.sleep(0.002)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        threads.append(thread)

    yield start
    done.set()
    for thread in threads:
        thread.join(5)


class TestPostgres:
    def test_batched_delete_stops_between_batches(
        self, pg: psycopg.Connection[Any], switch: Switch, off_when_rows_go: Any
    ) -> None:
        add_logs(pg, 2000, CUTOFF - timedelta(hours=1000), timedelta(hours=1))  # 1000 due
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
        off_when_rows_go("app.app_logs", 2000)

        summary = PostgresBatchedDeleteOperator(**kwargs).execute(interval_context())

        assert switch.is_off
        assert summary["stopped_by"] == "kill_switch"
        assert 50 <= summary["deleted"] < 1000 and summary["deleted"] % 50 == 0
        assert summary["remaining"] == 1000 - summary["deleted"]
        assert scalar(pg, "SELECT count(*) FROM app.app_logs") == 2000 - summary["deleted"]

        switch.on()
        rest = PostgresBatchedDeleteOperator(**{**kwargs, "sleep_between_batches": 0}).execute(
            interval_context()
        )
        assert rest["stopped_by"] is None and rest["deleted"] == 1000 - summary["deleted"]

    def test_archive_mode_stops_after_the_verified_batch(
        self, pg: psycopg.Connection[Any], switch: Switch, make_bucket: Any, s3_client: Any
    ) -> None:
        bucket = make_bucket("archive")
        add_logs(pg, 60, CUTOFF - timedelta(hours=40), timedelta(hours=1))  # 40 due
        kwargs = {
            "task_id": "logs",
            "table": "app.app_logs",
            "timestamp_column": "created_at",
            "retention_days": RETENTION_DAYS,
            "batch_size": 10,
            "min_batch_size": 10,
            "max_batch_size": 10,
            "archive": {"bucket": bucket, "prefix": "db"},
            "allow_large_delete": True,
        }
        # Turned off while the first batch's object is uploaded: that batch still completes.
        with s3_faults(("before-call.s3.PutObject", switch.off)):
            summary = PostgresBatchedDeleteOperator(**kwargs).execute(interval_context())

        assert summary["stopped_by"] == "kill_switch"
        assert summary["deleted"] == summary["archived_rows"] == 10
        assert summary["remaining"] == 30
        assert len(summary["archived_files"]) == 1
        assert scalar(pg, "SELECT count(*) FROM app.app_logs") == 50

        switch.on()
        rest = PostgresBatchedDeleteOperator(**kwargs).execute(interval_context())
        assert rest["deleted"] == 30 and rest["stopped_by"] is None

    def test_batched_delete_with_children_stops_too(
        self, pg: psycopg.Connection[Any], switch: Switch, off_when_rows_go: Any
    ) -> None:
        add_users(pg, 300, deleted_at=CUTOFF - timedelta(days=5))
        add_users(pg, 300, tag="live")
        off_when_rows_go("app.users", 600)
        summary = PostgresBatchedDeleteOperator(
            task_id="users",
            table="app.users",
            timestamp_column="deleted_at",
            retention_days=RETENTION_DAYS,
            discover_children=True,
            batch_size=20,
            min_batch_size=20,
            max_batch_size=20,
            sleep_between_batches=0.05,
        ).execute(interval_context())
        assert summary["stopped_by"] == "kill_switch"
        assert 20 <= summary["deleted"] < 300
        assert scalar(pg, "SELECT count(*) FROM app.users") == 600 - summary["deleted"]

    def test_partition_retention_stops_between_partitions(
        self, pg: psycopg.Connection[Any], switch: Switch, make_bucket: Any, s3_client: Any
    ) -> None:
        first = datetime(2026, 6, 1, tzinfo=UTC)
        make_monthly_partitions(pg, "app.student_progress", first, 6)  # June to November
        user = add_users(pg, 1)[0]
        add_progress(pg, user, first, 6, 4)
        bucket = make_bucket("parts")
        op_kwargs = {
            "task_id": "retention",
            "table": "app.student_progress",
            "retention_days": 60,  # anchor 2027-03-01: every one of the six has ended
            "mode": "s3",
            "archive": {"bucket": bucket, "prefix": "progress"},
        }
        # Turned off while the first partition is archived: it is still dropped, no other is touched.
        with s3_faults(("before-call.s3.PutObject", switch.off)):
            summary = PostgresPartitionRetentionOperator(**op_kwargs).execute(interval_context())

        assert summary["stopped_by"] == "kill_switch"
        assert summary["dropped"] == ["app.student_progress_2026_06"]
        assert summary["archived_rows"] == 4
        assert len(partition_names(pg, "app.student_progress")) == 5

        switch.on()
        rest = PostgresPartitionRetentionOperator(**op_kwargs).execute(interval_context())
        assert rest["stopped_by"] is None and len(rest["dropped"]) == 4  # the newest is kept
        assert partition_names(pg, "app.student_progress") == ["student_progress_2026_11"]


class TestS3:
    def test_copy_then_delete_stops_before_the_next_delete_batch(
        self, s3_client: Any, make_bucket: Any, switch: Switch, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(s3_copy, "DELETE_OBJECTS_MAX_KEYS", 10)
        source, dest = make_bucket("src"), make_bucket("arch")
        keys = [f"logs/{i:03d}.log" for i in range(30)]
        put_many(s3_client, source, keys, body=body_of, ChecksumAlgorithm="SHA256")
        op = archive_op(source, dest)
        op.hook.get_conn().meta.events.register("after-call.s3.DeleteObjects", switch.off)

        summary = op.execute(everything_old())

        assert summary["stopped_by"] == "kill_switch"
        assert summary["objects"] == 10 and summary["verified_sources_kept"] == 20
        left = all_keys(s3_client, source)
        assert len(left) == 20
        archived = {k.removeprefix("archive/") for k in all_keys(s3_client, dest)}
        assert set(keys) - set(left) <= archived  # every deleted source has its copy

        switch.on()
        rest = archive_op(source, dest).execute(everything_old())
        assert rest["stopped_by"] is None and rest["objects"] == 20
        assert all_keys(s3_client, source) == []

    def test_copy_then_delete_starts_no_copy_once_off(
        self, s3_client: Any, make_bucket: Any, switch: Switch
    ) -> None:
        source, dest = make_bucket("src"), make_bucket("arch")
        keys = [f"logs/{i:03d}.log" for i in range(40)]
        put_many(s3_client, source, keys, body=lambda k: b"x", ChecksumAlgorithm="SHA256")
        op = archive_op(source, dest, max_workers=2)
        # Off as soon as the first copy is made: the copies already queued (at most 4 per worker)
        # finish, no other starts.
        op.hook.get_conn().meta.events.register("after-call.s3.CopyObject", switch.off)

        summary = op.execute(everything_old())

        assert summary["stopped_by"] == "kill_switch"
        assert summary["objects"] == 0
        assert len(all_keys(s3_client, source)) == 40
        assert 1 <= len(all_keys(s3_client, dest)) <= 8

    def test_expiry_stops_before_the_next_delete_batch(
        self, s3_client: Any, make_bucket: Any, switch: Switch, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(s3_common, "DELETE_OBJECTS_MAX_KEYS", 10)
        bucket = make_bucket("exp")
        put_many(s3_client, bucket, [f"tmp/{i:02d}" for i in range(25)], body=lambda k: b"x")
        op = expire_op(bucket)
        op.hook.get_conn().meta.events.register("after-call.s3.DeleteObjects", switch.off)

        summary = op.execute(everything_old())

        assert summary["stopped_by"] == "kill_switch"
        assert summary["objects"] == 10
        assert len(all_keys(s3_client, bucket)) == 15

        switch.on()
        assert expire_op(bucket).execute(everything_old())["objects"] == 15


class TestKillSwitch:
    def test_reads_are_rate_limited(self, switch: Switch) -> None:
        now = [0.0]
        checker = KillSwitch("t", interval=5.0, clock=lambda: now[0])
        assert not checker.tripped()
        switch.off()
        for step in (1.0, 2.0, 4.9):
            now[0] = step
            assert not checker.tripped()  # not read again inside the interval
        assert checker.reads == 1
        now[0] = 5.0
        assert checker.tripped() and checker.reads == 2
        switch.on()
        now[0] = 100.0
        assert checker.tripped()  # once tripped, it stays tripped for the run

    def test_a_missing_variable_means_enabled(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv(SWITCH_ENV, raising=False)
        assert not KillSwitch("t", interval=0).tripped()

    def test_the_recheck_interval_is_bounded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from data_lifecycle.exceptions import LifecycleConfigError

        monkeypatch.setenv(kill_switch.RECHECK_ENV, "2.5")
        assert KillSwitch("t").interval == 2.5
        monkeypatch.setenv(kill_switch.RECHECK_ENV, "1e9")
        with pytest.raises(LifecycleConfigError, match=kill_switch.RECHECK_ENV):
            KillSwitch("t")
