"""maintain_partitions and vacuum_analyze, end to end on the DreamSeed database."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import psycopg

from data_lifecycle.cutoff import subtract_months
from include.dreamseed.generate import add_months, month_start
from tests.e2e.conftest import ANCHOR, count, run_dag

DEAD_TUPLES = "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'app.sessions'::regclass"
LAST_VACUUMED = "SELECT count(*) FROM pg_stat_user_tables WHERE relid = 'app.sessions'::regclass AND last_vacuum IS NOT NULL"
PARTITIONS = """
    SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'app.student_progress'::regclass ORDER BY 1
"""


def _partitions(pg) -> list[str]:
    return [r[0] for r in pg.execute(PARTITIONS)]


def _month_name(month: datetime) -> str:
    return f"student_progress_{month:%Y_%m}"


class TestMaintainPartitions:
    def test_premakes_ahead_and_drops_only_expired_months(self, dagbag, dreamseed, pg, lifecycle_env):
        rule = lifecycle_env.policy.partitions[0]
        cutoff = subtract_months(ANCHOR.astimezone(UTC), rule.retention_months)
        before = _partitions(pg)
        rows_kept = count(
            pg, "SELECT count(*) FROM app.student_progress WHERE recorded_at >= %s", month_start(cutoff)
        )

        assert run_dag(dagbag, "maintain_partitions").state == "success"
        after = _partitions(pg)

        anchor_month = month_start(ANCHOR.astimezone(UTC))
        future = [_month_name(add_months(anchor_month, i)) for i in range(1, rule.premake_months + 1)]
        assert set(future) <= set(after)
        expired = {p for p in before if p < _month_name(month_start(cutoff))}
        assert expired, "the data set must have months past retention"
        assert set(after) == (set(before) - expired) | set(future)
        # Every row of a kept month is still there.
        assert count(pg, "SELECT count(*) FROM app.student_progress") == rows_kept

        assert run_dag(dagbag, "maintain_partitions").state == "success"
        assert _partitions(pg) == after


class TestVacuumAnalyze:
    def test_vacuums_tables_the_deletes_left_dead_tuples_in(self, dagbag, dreamseed, pg):
        pg.execute("ALTER TABLE app.sessions SET (autovacuum_enabled = false)")
        # The data load ended with ANALYZE; its statistics report (0 dead tuples) must reach the
        # server now, not after the deletes' report, which it would overwrite.
        pg.execute("SELECT pg_stat_force_next_flush()")
        pg.execute("SELECT 1")
        # An open snapshot keeps the deleted rows from being pruned on the next read of their
        # pages, so they stay dead tuples for VACUUM (and for the dead-tuple formula) to find.
        with psycopg.connect(pg.info.dsn) as reader:
            reader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            reader.execute("SELECT count(*) FROM app.sessions")
            assert run_dag(dagbag, "cleanup_expired_sessions").state == "success"
            # Backends report to the statistics within seconds, not at once.
            _wait_for(lambda: count(pg, DEAD_TUPLES) > 1000, "the deleted rows as dead tuples")
            reader.rollback()

        assert run_dag(dagbag, "vacuum_analyze").state == "success"
        _wait_for(lambda: count(pg, LAST_VACUUMED) == 1, "a vacuum of app.sessions")
        assert count(pg, DEAD_TUPLES) == 0


def _wait_for(condition, what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"statistics never showed {what}"
        time.sleep(0.2)


def test_vacuum_is_scheduled_on_every_table_a_delete_task_changes(dagbag):
    from airflow.sdk import Asset

    emitted = {
        outlet.name
        for dag in dagbag.dags.values()
        for task in dag.tasks
        for outlet in (task.outlets or [])
        if isinstance(outlet, Asset)
    }
    assert emitted, "delete tasks emit their tables' assets"
    watched = set(_asset_names(dagbag.dags["vacuum_analyze"].timetable.asset_condition))
    assert emitted <= watched


def _asset_names(condition):
    if hasattr(condition, "objects"):
        for inner in condition.objects:
            yield from _asset_names(inner)
    else:
        yield condition.name
