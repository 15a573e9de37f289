"""SIGKILL a task's process at a random point, rerun, and check that nothing was lost or removed early.

Each scenario runs the operator in a child process and kills it after a random delay (seeded)
within its runtime; the rerun happens in the test process, like a retry on another worker. The
invariants are checked on the real state, after the kill and after the rerun, and a second rerun
must change nothing.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from data_lifecycle.operators.postgres import DETACH_MARKER
from tests.reliability.data import ANCHOR, load_monthly_progress, month
from tests.reliability.harness import ChildSpec, connect, run_child, run_context, wait_backends_gone
from tests.reliability.invariants import (
    assert_deleted_rows_archived,
    assert_sources_have_verified_copies,
    object_listing,
    table_rows,
    verified_archive,
)

SEEDS = [11, 23, 37]
PG_OPERATORS = "data_lifecycle.operators.postgres"
S3_OPERATORS = "data_lifecycle.operators.s3"

pytestmark = pytest.mark.slow


def _conn_env() -> dict[str, str]:
    return {"AIRFLOW_CONN_LIFECYCLE_POSTGRES": os.environ["AIRFLOW_CONN_LIFECYCLE_POSTGRES"]}


class TestKillBatchedDeleteInArchiveMode:
    """Rows go to S3 (verified) and are deleted batch by batch; the kill lands anywhere in that."""

    LOG_DAYS = 7
    DUE = 200
    KEPT = 40
    BATCH = 20

    def _load(self, pg: psycopg.Connection[Any]) -> set[int]:
        cutoff = ANCHOR - timedelta(days=self.LOG_DAYS)
        pg.execute(
            "INSERT INTO app.app_logs (created_at, level, logger, message, user_id, context)"
            " SELECT %s - g * interval '7 minutes', 'INFO', 'app.kill', 'due ' || g, g,"
            "        jsonb_build_object('n', g, 'tags', jsonb_build_array('a', g))"
            " FROM generate_series(1, %s) g",
            (cutoff, self.DUE),
        )
        pg.execute(
            "INSERT INTO app.app_logs (created_at, level, logger, message, context)"
            " SELECT %s + g * interval '1 minute', 'WARN', 'app.kill', 'kept ' || g, '{}'::jsonb"
            " FROM generate_series(0, %s - 1) g",
            (cutoff, self.KEPT),
        )
        rows = pg.execute("SELECT id FROM app.app_logs WHERE created_at < %s", (cutoff,)).fetchall()
        return {r[0] for r in rows}

    @pytest.mark.parametrize("seed", SEEDS)
    def test_rerun_after_kill_archives_every_deleted_row(
        self, seed: int, pg: psycopg.Connection[Any], pg_database: str, s3_client: Any, make_bucket: Any
    ) -> None:
        due = self._load(pg)
        before = table_rows(pg, "app.app_logs")
        bucket = make_bucket("kill-archive")
        task_id = f"archive_logs_{seed}"
        kwargs = {
            "task_id": task_id,
            "table": "app.app_logs",
            "timestamp_column": "created_at",
            "retention_days": self.LOG_DAYS,
            "archive": {"bucket": bucket, "prefix": "db-archive"},
            "batch_size": self.BATCH,
            "min_batch_size": self.BATCH,
            "max_batch_size": self.BATCH,
            "sleep_between_batches": 0.05,
            "max_delete_fraction": 1.0,
        }
        delay = random.Random(seed).uniform(0.1, 0.8)
        outcome = run_child(
            ChildSpec(
                operator=f"{PG_OPERATORS}:PostgresBatchedDeleteOperator",
                kwargs=kwargs,
                anchor=ANCHOR,
                env=_conn_env(),
                s3_delays={"PutObject": 0.03, "HeadObject": 0.02},
            ),
            kill_after=delay,
        )
        assert outcome.killed, f"the task finished before the kill at {delay:.2f}s: {outcome.result()}"
        wait_backends_gone(pg_database, f"data_lifecycle:{task_id}")

        after_kill = table_rows(pg, "app.app_logs")
        assert_deleted_rows_archived(before, after_kill, verified_archive(s3_client, bucket, ""), due=due)

        from data_lifecycle.operators.postgres import PostgresBatchedDeleteOperator

        summary = PostgresBatchedDeleteOperator(**kwargs).execute(run_context(ANCHOR))
        assert summary["remaining"] == 0
        after_rerun = table_rows(pg, "app.app_logs")
        deleted = assert_deleted_rows_archived(
            before, after_rerun, verified_archive(s3_client, bucket, ""), due=due
        )
        assert deleted == due
        assert summary["deleted"] == len(due) - (len(before) - len(after_kill))

        listing = object_listing(s3_client, bucket)
        again = PostgresBatchedDeleteOperator(**kwargs).execute(run_context(ANCHOR))
        assert (again["deleted"], again["batches"]) == (0, 0)
        assert table_rows(pg, "app.app_logs") == after_rerun
        assert object_listing(s3_client, bucket) == listing


class TestKillPartitionRetentionDuringConcurrentDetach:
    """Expired partitions are archived to S3 and dropped while a reader makes the detach wait."""

    FIRST = 2026 * 12 + 6  # July 2026
    MONTHS = 9  # July 2026 .. March 2027
    RETENTION_MONTHS = 3  # cutoff 2026-12-01 05:00: July .. November are expired
    PER_MONTH = 20

    def _load(self, pg: psycopg.Connection[Any]) -> None:
        load_monthly_progress(pg, first=self.FIRST, months=self.MONTHS, per_month=self.PER_MONTH)

    @staticmethod
    def _reader(dbname: str, hold: float, ready: threading.Event) -> None:
        """A report query that keeps its transaction (and snapshot) open for ``hold`` seconds."""
        with connect(dbname, autocommit=False) as conn:
            conn.execute("SELECT count(*) FROM app.student_progress").fetchone()
            ready.set()
            time.sleep(hold)
            conn.rollback()

    @pytest.mark.parametrize("seed", SEEDS)
    def test_rerun_after_kill_drops_only_archived_expired_partitions(
        self, seed: int, pg: psycopg.Connection[Any], pg_database: str, s3_client: Any, make_bucket: Any
    ) -> None:
        self._load(pg)
        before = table_rows(pg, "app.student_progress")
        # The cutoff is 2026-12-01 05:00; whole partitions go, so only months ending by then are due.
        first_kept = datetime(2026, 12, 1, tzinfo=UTC)
        due = {k for k, row in before.items() if datetime.fromisoformat(row["recorded_at"]) < first_kept}
        expired_months = {f"student_progress_{month(self.FIRST + i):%Y_%m}" for i in range(5)}
        bucket = make_bucket("kill-parts")
        task_id = f"retention_progress_{seed}"
        kwargs = {
            "task_id": task_id,
            "table": "app.student_progress",
            "retention_months": self.RETENTION_MONTHS,
            "mode": "s3",
            "archive": {"bucket": bucket, "prefix": "partitions"},
            "archive_chunk_rows": 10,
        }
        rng = random.Random(seed)
        hold = rng.uniform(0.4, 0.8)
        delay = rng.uniform(0.05, hold + 0.4)
        ready = threading.Event()
        reader = threading.Thread(target=self._reader, args=(pg_database, hold, ready), daemon=True)
        reader.start()
        assert ready.wait(10)
        outcome = run_child(
            ChildSpec(
                operator=f"{PG_OPERATORS}:PostgresPartitionRetentionOperator",
                kwargs=kwargs,
                anchor=ANCHOR,
                env=_conn_env(),
                s3_delays={"PutObject": 0.1},
            ),
            kill_after=delay,
        )
        reader.join(10)
        assert outcome.killed, f"the task finished before the kill at {delay:.2f}s: {outcome.result()}"
        wait_backends_gone(pg_database, f"data_lifecycle:{task_id}")

        after_kill = self._rows(pg)
        archive = verified_archive(s3_client, bucket, "")
        assert_deleted_rows_archived(before, after_kill, archive, due=due)

        from data_lifecycle.operators.postgres import PostgresPartitionRetentionOperator

        summary = PostgresPartitionRetentionOperator(**kwargs).execute(run_context(ANCHOR))
        after_rerun = self._rows(pg)
        deleted = assert_deleted_rows_archived(
            before, after_rerun, verified_archive(s3_client, bucket, ""), due=due
        )
        assert deleted == due, summary
        assert not expired_months & set(self._tables(pg)), "an expired partition (or its leftover) remains"
        assert self._partitions(pg) == sorted(
            f"student_progress_{month(self.FIRST + i):%Y_%m}" for i in range(5, self.MONTHS)
        )
        marker = DETACH_MARKER.format(parent="app.student_progress")
        assert pg.execute(
            "SELECT count(*) FROM pg_description WHERE description = %s", (marker,)
        ).fetchone() == (0,)

        listing = object_listing(s3_client, bucket)
        again = PostgresPartitionRetentionOperator(**kwargs).execute(run_context(ANCHOR))
        assert again["expired"] == again["detached"] == again["dropped"] == []
        assert self._rows(pg) == after_rerun
        assert object_listing(s3_client, bucket) == listing

    def _rows(self, pg: psycopg.Connection[Any]) -> dict[Any, dict[str, Any]]:
        """Rows of the parent and of any partition left detached (rows there are not lost)."""
        rows = table_rows(pg, "app.student_progress")
        detached = pg.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'app'::regnamespace AND relkind = 'r'"
            " AND relname LIKE 'student\\_progress\\_%' AND NOT relispartition"
        ).fetchall()
        for (name,) in detached:
            rows.update(table_rows(pg, f"app.{name}"))
        return rows

    @staticmethod
    def _tables(pg: psycopg.Connection[Any]) -> list[str]:
        rows = pg.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'app'::regnamespace AND relkind IN ('r', 'p')"
        ).fetchall()
        return [r[0] for r in rows]

    @staticmethod
    def _partitions(pg: psycopg.Connection[Any]) -> list[str]:
        rows = pg.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'app.student_progress'::regclass AND NOT i.inhdetachpending ORDER BY 1"
        ).fetchall()
        return [r[0] for r in rows]


class _Buckets:
    """Source and archive buckets for one seed: old objects due, recent ones inside retention."""

    def __init__(self, source: str, dest: str, originals: dict[str, bytes], due: set[str]) -> None:
        self.source = source
        self.dest = dest
        self.originals = originals
        self.due = due


OLD_OBJECTS = 24
RECENT_OBJECTS = 4
S3_RETENTION_DAYS = 30


@pytest.fixture(scope="module")
def copy_delete_buckets(s3_client: Any) -> Iterator[tuple[datetime, dict[str, _Buckets]]]:
    """Buckets for every copy-then-delete scenario, filled at once; the cutoff falls between the
    old and the recent objects (LastModified has one-second resolution)."""
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    names = [*(f"seed{s}" for s in SEEDS), "between", "mid_delete"]
    sets: dict[str, _Buckets] = {}
    puts: list[tuple[str, str, bytes]] = []
    for name in names:
        rng = random.Random(name)
        source = f"kill-src-{uuid.uuid4().hex[:10]}"
        dest = f"kill-arch-{uuid.uuid4().hex[:10]}"
        s3_client.create_bucket(Bucket=source)
        s3_client.create_bucket(Bucket=dest)
        originals = {f"logs/{i:03d}.log": rng.randbytes(rng.randint(10, 40_000)) for i in range(OLD_OBJECTS)}
        sets[name] = _Buckets(source, dest, originals, set(originals))
        puts += [(source, k, v) for k, v in originals.items()]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda p: s3_client.put_object(Bucket=p[0], Key=p[1], Body=p[2]), puts))
    now = datetime.now(UTC)
    boundary = now.replace(microsecond=0) + timedelta(seconds=1)
    time.sleep((boundary - now).total_seconds() + 0.05)
    recent = []
    for b in sets.values():
        for i in range(RECENT_OBJECTS):
            key, body = f"logs/recent_{i}.log", f"recent {i} of {b.source}".encode()
            b.originals[key] = body
            recent.append((b.source, key, body))
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda p: s3_client.put_object(Bucket=p[0], Key=p[1], Body=p[2]), recent))
    yield boundary + timedelta(days=S3_RETENTION_DAYS), sets


def _dest_key(key: str) -> str:
    return "archive/" + key


class TestKillGlacierCopyThenDelete:
    """Copies are verified, then sources deleted in DeleteObjects batches made slow in the child."""

    def _kwargs(self, b: _Buckets, task_id: str) -> dict[str, Any]:
        return {
            "task_id": task_id,
            "source_bucket": b.source,
            "source_prefix": "logs/",
            "dest_bucket": b.dest,
            "dest_prefix": "archive/logs/",
            "storage_class": "GLACIER",
            "retention_days": S3_RETENTION_DAYS,
            "max_workers": 4,
        }

    def _spec(self, b: _Buckets, anchor: datetime) -> ChildSpec:
        return ChildSpec(
            operator=f"{S3_OPERATORS}:S3GlacierCopyThenDeleteOperator",
            kwargs=self._kwargs(b, "archive_logs"),
            anchor=anchor,
            patches={f"{S3_OPERATORS}.copy_then_delete:DELETE_OBJECTS_MAX_KEYS": 4},
            s3_delays={"CopyObject": 0.02, "DeleteObjects": 0.2},
        )

    def _check_and_rerun(self, s3_client: Any, b: _Buckets, anchor: datetime) -> None:
        def check() -> set[str]:
            return assert_sources_have_verified_copies(
                s3_client,
                originals=b.originals,
                due=b.due,
                source_bucket=b.source,
                dest_bucket=b.dest,
                dest_key=_dest_key,
            )

        check()
        from data_lifecycle.operators.s3 import S3GlacierCopyThenDeleteOperator

        summary = S3GlacierCopyThenDeleteOperator(**self._kwargs(b, "rerun")).execute(run_context(anchor))
        assert summary["failed"] == 0
        assert check() == b.due
        source, dest = object_listing(s3_client, b.source), object_listing(s3_client, b.dest)
        assert sorted(source) == [f"logs/recent_{i}.log" for i in range(RECENT_OBJECTS)]
        again = S3GlacierCopyThenDeleteOperator(**self._kwargs(b, "again")).execute(run_context(anchor))
        assert (again["objects"], again["failed"], again["copies_reused"]) == (0, 0, 0)
        assert object_listing(s3_client, b.source) == source
        assert object_listing(s3_client, b.dest) == dest

    @pytest.mark.parametrize("seed", SEEDS)
    def test_rerun_after_kill_at_a_random_point(
        self, seed: int, s3_client: Any, copy_delete_buckets: tuple[datetime, dict[str, _Buckets]]
    ) -> None:
        anchor, sets = copy_delete_buckets
        b = sets[f"seed{seed}"]
        delay = random.Random(seed).uniform(0.2, 1.0)
        outcome = run_child(self._spec(b, anchor), kill_after=delay)
        assert outcome.killed, f"the task finished before the kill at {delay:.2f}s: {outcome.result()}"
        self._check_and_rerun(s3_client, b, anchor)

    def test_rerun_after_kill_between_copy_and_delete(
        self, s3_client: Any, copy_delete_buckets: tuple[datetime, dict[str, _Buckets]]
    ) -> None:
        anchor, sets = copy_delete_buckets
        b = sets["between"]
        outcome = run_child(
            self._spec(b, anchor), kill_on=lambda e: e[:2] == ("call", "DeleteObjects"), kill_delay=0.05
        )
        assert outcome.killed
        copies = object_listing(s3_client, b.dest)
        assert copies, "the kill landed before any copy"
        assert len(object_listing(s3_client, b.source)) == OLD_OBJECTS + RECENT_OBJECTS
        self._check_and_rerun(s3_client, b, anchor)

    def test_rerun_after_kill_in_the_middle_of_delete_batches(
        self, s3_client: Any, copy_delete_buckets: tuple[datetime, dict[str, _Buckets]]
    ) -> None:
        anchor, sets = copy_delete_buckets
        b = sets["mid_delete"]
        calls = []

        def third_delete(event: tuple[Any, ...]) -> bool:
            if event[:2] == ("call", "DeleteObjects"):
                calls.append(event)
            return len(calls) == 3

        outcome = run_child(self._spec(b, anchor), kill_on=third_delete, kill_delay=0.1)
        assert outcome.killed
        left = len([k for k in object_listing(s3_client, b.source) if "recent" not in k])
        assert 0 < left < OLD_OBJECTS, "the kill should land after some delete batches and before the last"
        self._check_and_rerun(s3_client, b, anchor)
