"""The PostgreSQL operators on tables unlike the demo schema: locks, nullable keys, deadlocks, typmods,
naive timestamps, non-monthly partitions, DEFAULT partitions (against the real local PostgreSQL)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from data_lifecycle.exceptions import LifecycleConfigError, ResidueLeft
from data_lifecycle.operators.postgres import (
    PostgresBatchedDeleteOperator,
    PostgresPartitionPremakeOperator,
    PostgresPartitionRetentionOperator,
    PostgresVacuumAnalyzeOperator,
)
from tests.operators.test_postgres import (
    CUTOFF,
    RETENTION_DAYS,
    add_logs,
    connect,
    interval_context,
    scalar,
)
from tests.reliability.harness import postgres_conn_json
from tests.reliability.test_least_privilege import LOGIN, ROLE_SQL


class TestLocksAndPermissions:
    def test_vacuum_skips_a_table_locked_by_another_session(
        self, pg: psycopg.Connection[Any], pg_database: str
    ) -> None:
        add_logs(pg, 50, CUTOFF, timedelta(minutes=1))
        holder = connect(pg_database)
        holder.execute("LOCK TABLE app.app_logs IN ACCESS EXCLUSIVE MODE")
        result: dict[str, Any] = {}

        def run() -> None:
            result["summary"] = PostgresVacuumAnalyzeOperator(
                task_id="vacuum", tables=["app.app_logs", "app.sessions"], lock_timeout=0.3
            ).execute(interval_context())

        worker = threading.Thread(target=run, daemon=True)
        started = time.monotonic()
        worker.start()
        worker.join(timeout=15)
        elapsed = time.monotonic() - started
        holder.rollback()
        holder.close()
        worker.join(timeout=30)
        assert elapsed < 5, f"vacuum waited {elapsed:.1f}s behind the lock"
        summary = result["summary"]
        assert summary["skipped_locked"] == ["app.app_logs"]
        assert summary["vacuumed"] == 1  # app.sessions
        assert summary["skipped_permission_denied"] == []

    def test_vacuum_reports_a_table_it_may_not_vacuum_as_permission_denied(
        self, pg: psycopg.Connection[Any], pg_database: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        if pg.info.server_version >= 160_000:
            pytest.skip("the cleanup role holds MAINTAIN on PostgreSQL 16+")
        pg.execute(ROLE_SQL.read_text())  # type: ignore[arg-type]
        monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_POSTGRES", postgres_conn_json(pg_database, LOGIN))
        summary = PostgresVacuumAnalyzeOperator(task_id="vacuum", tables=["app.app_logs"]).execute(
            interval_context()
        )
        assert summary["skipped_permission_denied"] == ["app.app_logs"]
        assert summary["skipped_locked"] == []
        assert summary["vacuumed"] == 0

    def test_deadlock_is_retried_with_a_smaller_batch(
        self, pg: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
    ) -> None:
        add_logs(pg, 100, CUTOFF - timedelta(hours=50), timedelta(hours=1))  # 50 due
        # The server reports a deadlock on the first delete (a sequence survives the rollback).
        pg.execute("CREATE SEQUENCE app.deadlock_once")
        pg.execute(
            """
            CREATE FUNCTION app.deadlock_once() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF nextval('app.deadlock_once') = 1 THEN
                    RAISE EXCEPTION 'deadlock detected (simulated)' USING ERRCODE = 'deadlock_detected';
                END IF;
                RETURN OLD;
            END $$
            """
        )
        pg.execute(
            "CREATE TRIGGER deadlock_once BEFORE DELETE ON app.app_logs"
            " FOR EACH ROW EXECUTE FUNCTION app.deadlock_once()"
        )
        summary = PostgresBatchedDeleteOperator(
            task_id="logs",
            table="app.app_logs",
            timestamp_column="created_at",
            retention_days=RETENTION_DAYS,
            batch_size=20,
            min_batch_size=5,
        ).execute(interval_context())
        assert summary["deleted"] == 50 and summary["remaining"] == 0
        log = capsys.readouterr().out
        assert "Deadlock on app.app_logs (attempt 1 of 5); retrying with batch size 10" in log

    def test_rows_left_behind_fail_the_run_and_eta_is_never_nan(
        self, pg: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
    ) -> None:
        add_logs(pg, 100, CUTOFF - timedelta(hours=50), timedelta(hours=1))  # 50 due
        # A trigger silently keeps the first ten rows (as a rule or a policy might): the first
        # batch deletes 0 rows and those rows can never go.
        pg.execute(
            """
            CREATE FUNCTION app.keep_first_ten() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF OLD.id <= 10 THEN RETURN NULL; END IF;
                RETURN OLD;
            END $$
            """
        )
        pg.execute(
            "CREATE TRIGGER keep_first_ten BEFORE DELETE ON app.app_logs"
            " FOR EACH ROW EXECUTE FUNCTION app.keep_first_ten()"
        )
        with pytest.raises(ResidueLeft, match="10 due rows are still there"):
            PostgresBatchedDeleteOperator(
                task_id="logs",
                table="app.app_logs",
                timestamp_column="created_at",
                retention_days=RETENTION_DAYS,
                batch_size=10,
                min_batch_size=5,
            ).execute(interval_context())
        assert scalar(pg, "SELECT count(*) FROM app.app_logs WHERE created_at < %s", (CUTOFF,)) == 10
        log = capsys.readouterr().out
        assert "Batch 1: 0 rows" in log
        assert "ETA nan" not in log


class TestKeysAndResidue:
    def _nullable_key_table(self, pg: psycopg.Connection[Any]) -> None:
        pg.execute("CREATE TABLE app.events (ref text, at timestamptz NOT NULL)")
        pg.execute("CREATE UNIQUE INDEX events_ref ON app.events (ref)")
        pg.execute(
            "INSERT INTO app.events SELECT CASE WHEN g <= 20 THEN NULL ELSE 'r' || g END, %s"
            " FROM generate_series(1, 520) g",
            (CUTOFF - timedelta(days=1),),
        )

    def test_nullable_key_columns_are_refused_before_any_delete(self, pg: psycopg.Connection[Any]) -> None:
        self._nullable_key_table(pg)
        with pytest.raises(LifecycleConfigError, match="may be NULL"):
            PostgresBatchedDeleteOperator(
                task_id="events",
                table="app.events",
                timestamp_column="at",
                retention_days=RETENTION_DAYS,
                key_columns=["ref"],
                allow_large_delete=True,
            ).execute(interval_context())
        assert scalar(pg, "SELECT count(*) FROM app.events") == 520

    def test_not_null_unique_key_deletes_every_due_row(self, pg: psycopg.Connection[Any]) -> None:
        self._nullable_key_table(pg)
        pg.execute("UPDATE app.events SET ref = 'null' || ctid::text WHERE ref IS NULL")
        pg.execute("ALTER TABLE app.events ALTER COLUMN ref SET NOT NULL")
        summary = PostgresBatchedDeleteOperator(
            task_id="events",
            table="app.events",
            timestamp_column="at",
            retention_days=RETENTION_DAYS,
            key_columns=["ref"],
            batch_size=100,
            allow_large_delete=True,
        ).execute(interval_context())
        assert summary["deleted"] == 520 and summary["remaining"] == 0 and summary["remaining_exact"]
        assert scalar(pg, "SELECT count(*) FROM app.events") == 0


class TestTimestampTypes:
    def _events(self, pg: psycopg.Connection[Any], column_type: str) -> None:
        pg.execute(f"CREATE TABLE app.events (id bigint PRIMARY KEY, at {column_type} NOT NULL)")

    def _run(self, **kwargs: Any) -> dict[str, Any]:
        return PostgresBatchedDeleteOperator(
            task_id="events",
            table="app.events",
            timestamp_column="at",
            retention_days=RETENTION_DAYS,
            allow_large_delete=True,
            **kwargs,
        ).execute(interval_context())

    def test_timestamptz_with_a_precision_is_accepted(self, pg: psycopg.Connection[Any]) -> None:
        self._events(pg, "timestamp(3) with time zone")
        pg.execute("INSERT INTO app.events VALUES (1, %s), (2, %s)", (CUTOFF - timedelta(seconds=1), CUTOFF))
        assert self._run()["deleted"] == 1
        assert scalar(pg, "SELECT id FROM app.events") == 2

    def test_naive_timestamps_are_refused_without_a_declared_zone(self, pg: psycopg.Connection[Any]) -> None:
        self._events(pg, "timestamp without time zone")
        pg.execute("INSERT INTO app.events VALUES (1, '2020-01-01')")
        with pytest.raises(LifecycleConfigError, match="naive_is_utc"):
            self._run()
        assert scalar(pg, "SELECT count(*) FROM app.events") == 1

    def test_naive_timestamps_are_compared_in_the_declared_zone(self, pg: psycopg.Connection[Any]) -> None:
        # CUTOFF is 2027-01-30 05:00 UTC = 06:00 in Berlin (CET, UTC+1).
        self._events(pg, "timestamp(0) without time zone")
        pg.execute(
            "INSERT INTO app.events VALUES (1, '2027-01-30 05:30'), (2, '2027-01-30 05:59:59'),"
            " (3, '2027-01-30 06:00'), (4, '2027-01-30 04:59')"
        )
        assert self._run(timezone="Europe/Berlin")["deleted"] == 3
        assert scalar(pg, "SELECT array_agg(id) FROM app.events") == [3]

    def test_naive_is_utc(self, pg: psycopg.Connection[Any]) -> None:
        self._events(pg, "timestamp without time zone")
        pg.execute("INSERT INTO app.events VALUES (1, '2027-01-30 04:59'), (2, '2027-01-30 05:00')")
        assert self._run(naive_is_utc=True)["deleted"] == 1

    def test_unknown_zone_is_refused(self) -> None:
        with pytest.raises(LifecycleConfigError, match="IANA"):
            self._run(timezone="Mars/Olympus")


def make_range_partitions(
    pg: psycopg.Connection[Any], table: str, bounds: list[tuple[datetime, datetime]]
) -> None:
    for lower, upper in bounds:
        pg.execute(
            psycopg.sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                psycopg.sql.Identifier("app", f"{table}_{lower:%Y%m%d}"),
                psycopg.sql.Identifier("app", table),
                psycopg.sql.Literal(lower),
                psycopg.sql.Literal(upper),
            )
        )


class TestPremakeIntervals:
    ANCHOR = datetime(2027, 3, 1, 5, 0, tzinfo=UTC)

    def _premake(self, **kwargs: Any) -> dict[str, Any]:
        return PostgresPartitionPremakeOperator(task_id="premake", table="app.metrics", **kwargs).execute(
            interval_context(self.ANCHOR)
        )

    def test_daily_partitions_get_exactly_the_missing_days_and_past_gaps_are_reported(
        self, pg: psycopg.Connection[Any]
    ) -> None:
        pg.execute("CREATE TABLE app.metrics (at timestamptz NOT NULL, v int) PARTITION BY RANGE (at)")
        day = timedelta(days=1)
        start = datetime(2027, 2, 25, tzinfo=UTC)
        days = [start + i * day for i in range(14) if i != 2]  # 2027-02-25 .. 03-10, without 02-27
        make_range_partitions(pg, "metrics", [(d, d + day) for d in days])
        summary = self._premake(months_ahead=0)
        assert summary["interval"] == "daily" and not summary["interval_declared"]
        assert summary["created"] == [f"app.metrics_2027_03_{d:02d}" for d in range(11, 32)]
        assert summary["past_gaps"] == [["2027-02-27T00:00:00+00:00", "2027-02-28T00:00:00+00:00"]]
        bounds = pg.execute(
            "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = 'metrics_2027_03_31'"
        ).fetchone()
        assert bounds is not None and "2027-03-31" in bounds[0] and "2027-04-01" in bounds[0]
        assert self._premake(months_ahead=0)["created"] == []

    def test_weekly_partitions_keep_their_weekday(self, pg: psycopg.Connection[Any]) -> None:
        pg.execute("CREATE TABLE app.metrics (at timestamptz NOT NULL) PARTITION BY RANGE (at)")
        week = timedelta(days=7)
        monday = datetime(2027, 2, 15, tzinfo=UTC)  # a Monday
        make_range_partitions(pg, "metrics", [(monday, monday + week), (monday + week, monday + 2 * week)])
        summary = self._premake(months_ahead=0)
        assert summary["interval"] == "weekly"
        # 2027-03-01 is a Monday; weeks until the end of March.
        assert summary["created"] == [
            "app.metrics_2027_03_01",
            "app.metrics_2027_03_08",
            "app.metrics_2027_03_15",
            "app.metrics_2027_03_22",
            "app.metrics_2027_03_29",
        ]

    def test_yearly_partitions_and_a_declared_interval(self, pg: psycopg.Connection[Any]) -> None:
        pg.execute("CREATE TABLE app.metrics (at date NOT NULL) PARTITION BY RANGE (at)")
        make_range_partitions(
            pg, "metrics", [(datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))]
        )
        summary = self._premake(months_ahead=12)
        assert summary["interval"] == "yearly"
        assert summary["created"] == ["app.metrics_2027", "app.metrics_2028"]
        declared = self._premake(months_ahead=0, interval="monthly", dry_run=True)
        assert declared["interval_declared"] and declared["created"] == []  # March 2027 is covered


class TestDefaultPartitionRows:
    def _table(self, pg: psycopg.Connection[Any]) -> None:
        pg.execute("CREATE TABLE app.metrics (at timestamptz NOT NULL, v int) PARTITION BY RANGE (at)")
        make_range_partitions(
            pg, "metrics", [(datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))]
        )
        pg.execute("CREATE TABLE app.metrics_default PARTITION OF app.metrics DEFAULT")
        pg.execute(
            "INSERT INTO app.metrics SELECT %s - g * interval '1 hour', g FROM generate_series(1, 30) g",
            (CUTOFF,),
        )
        pg.execute("INSERT INTO app.metrics VALUES (%s, 0), (%s, 0)", (CUTOFF, CUTOFF + timedelta(days=3)))

    def _retention(self, **kwargs: Any) -> dict[str, Any]:
        return PostgresPartitionRetentionOperator(
            task_id="retention", table="app.metrics", retention_days=RETENTION_DAYS, **kwargs
        ).execute(interval_context())

    def test_old_rows_in_the_default_partition_are_reported(
        self, pg: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
    ) -> None:
        self._table(pg)
        old = scalar(pg, "SELECT count(*) FROM app.metrics_default WHERE at < %s", (CUTOFF,))
        assert old > 0
        summary = self._retention()
        assert summary["default_partition"] == "app.metrics_default"
        assert summary["default_partition_old_rows"] == old
        assert summary["default_partition_deleted"] == 0
        assert f"holds {old} rows older than" in capsys.readouterr().out
        assert scalar(pg, "SELECT count(*) FROM app.metrics_default WHERE at < %s", (CUTOFF,)) == old

    def test_policy_can_delete_them_and_keeps_rows_at_or_after_the_cutoff(
        self, pg: psycopg.Connection[Any]
    ) -> None:
        self._table(pg)
        old = scalar(pg, "SELECT count(*) FROM app.metrics_default WHERE at < %s", (CUTOFF,))
        summary = self._retention(delete_default_rows=True)
        assert summary["default_partition_deleted"] == old
        assert scalar(pg, "SELECT count(*) FROM app.metrics_default WHERE at < %s", (CUTOFF,)) == 0
        assert scalar(pg, "SELECT count(*) FROM app.metrics_default") == 2
        assert self._retention(delete_default_rows=True)["default_partition_deleted"] == 0
        dry = self._retention(delete_default_rows=True, dry_run=True)
        assert dry["default_partition_deleted"] == 0
