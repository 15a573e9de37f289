"""A run may not act for a date after it started (issue 12, defect 1).

A manual run's logical date and data interval are free input in the trigger form and the REST API;
a date 400 days ahead used to move every cutoff forward and drop partitions of the last months.
The anchor is now refused, before any write, when it is later than the run's ``run_after`` plus a
small skew; past anchors (reruns, backfills) and runs at a chosen date keep working.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from data_lifecycle.cutoff import ANCHOR_SKEW_ENV, compute_cutoff, run_anchor
from data_lifecycle.exceptions import LifecycleConfigError
from data_lifecycle.operators.postgres import PostgresBatchedDeleteOperator
from tests.e2e.conftest import ANCHOR, count, run_dag
from tests.e2e.test_maintenance_dags import _partitions
from tests.reliability.data import load_sessions


def _task_states(run):
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


def test_partition_run_dated_400_days_ahead_drops_nothing(dagbag, dreamseed, pg):
    before = _partitions(pg)
    rows = count(pg, "SELECT count(*) FROM app.student_progress")

    run = run_dag(
        dagbag,
        "maintain_partitions",
        logical_date=ANCHOR + timedelta(days=400),
        run_after=ANCHOR,
        run_type="manual",
        conf={"dry_run": False},
    )

    assert run.state == "failed"
    assert _task_states(run)["premake_student_progress"] == "failed"  # the retention never starts
    assert _partitions(pg) == before
    assert count(pg, "SELECT count(*) FROM app.student_progress") == rows


def test_delete_run_dated_ahead_deletes_nothing(dagbag, dreamseed, pg):
    total = count(pg, "SELECT count(*) FROM app.users")

    run = run_dag(
        dagbag,
        "purge_soft_deleted",
        logical_date=ANCHOR + timedelta(days=60),
        run_after=ANCHOR,
        run_type="manual",
        conf={"dry_run": False},
    )

    assert run.state == "failed"
    assert count(pg, "SELECT count(*) FROM app.users") == total


def test_backfill_of_a_past_date_still_runs(dagbag, dreamseed, pg):
    # Run after the date it processes, as a backfill does: allowed, and it does that date's work.
    run = run_dag(
        dagbag, "cleanup_expired_sessions", logical_date=ANCHOR - timedelta(days=3), run_type="backfill"
    )
    assert run.state == "success"


def _context(anchor: datetime, run_after: datetime) -> dict:
    return {
        "data_interval_end": anchor,
        "dag_run": SimpleNamespace(run_after=run_after),
        "run_id": "manual__x",
    }


@pytest.mark.parametrize(
    ("ahead", "allowed"),
    [
        pytest.param(timedelta(days=-400), True, id="past"),
        pytest.param(timedelta(0), True, id="present"),
        pytest.param(timedelta(minutes=5), True, id="within-skew"),
        pytest.param(timedelta(minutes=5, seconds=1), False, id="just-past-skew"),
        pytest.param(timedelta(days=400), False, id="far-future"),
    ],
)
def test_anchor_against_run_after(ahead, allowed):
    run_after = datetime(2027, 3, 1, 5, tzinfo=UTC)
    context = _context(run_after + ahead, run_after)
    if allowed:
        assert run_anchor(context) == run_after + ahead
    else:
        with pytest.raises(LifecycleConfigError, match="is after the run's run_after 2027-03-01T05:00:00"):
            compute_cutoff(context, timedelta(days=30))


def test_skew_is_configurable(monkeypatch):
    run_after = datetime(2027, 3, 1, 5, tzinfo=UTC)
    monkeypatch.setenv(ANCHOR_SKEW_ENV, "3600")
    assert run_anchor(_context(run_after + timedelta(minutes=59), run_after))
    monkeypatch.setenv(ANCHOR_SKEW_ENV, "0")
    with pytest.raises(LifecycleConfigError, match="allowed skew 0 s"):
        run_anchor(_context(run_after + timedelta(seconds=1), run_after))
    monkeypatch.setenv(ANCHOR_SKEW_ENV, "-5")
    with pytest.raises(LifecycleConfigError, match=ANCHOR_SKEW_ENV):
        run_anchor(_context(run_after, run_after))


def test_operator_refuses_before_connecting(pg):
    """The refusal comes from the cutoff, the first thing execute does: not a row is touched."""
    now = datetime.now(UTC)
    load_sessions(pg, cutoff=now - timedelta(days=30), due=5, kept=5)
    op = PostgresBatchedDeleteOperator(
        task_id="delete_sessions", table="app.sessions", timestamp_column="expires_at", retention_days=30
    )
    with pytest.raises(LifecycleConfigError, match="run_after"):
        op.execute(_context(now + timedelta(days=400), now))
    assert count(pg, "SELECT count(*) FROM app.sessions") == 10


def test_partition_retention_refuses_before_any_change(pg):
    """The retention operator itself (in the DAG the premake task fails first)."""
    from data_lifecycle.operators.postgres import PostgresPartitionRetentionOperator
    from tests.operators.test_postgres import make_monthly_partitions, partition_names

    now = datetime.now(UTC)
    make_monthly_partitions(pg, "app.student_progress", datetime(now.year - 1, 1, 1, tzinfo=UTC), 14)
    before = partition_names(pg, "app.student_progress")
    op = PostgresPartitionRetentionOperator(
        task_id="retention", table="app.student_progress", retention_days=60
    )
    with pytest.raises(LifecycleConfigError, match="run_after"):
        op.execute(_context(now + timedelta(days=400), now))
    assert partition_names(pg, "app.student_progress") == before


@pytest.mark.parametrize("kind", ["expire", "copy_then_delete"])
def test_s3_operators_refuse_before_any_change(kind, s3_client, make_bucket):
    from data_lifecycle.operators.s3 import S3ExpireObjectsOperator, S3GlacierCopyThenDeleteOperator

    bucket, dest = make_bucket("future"), make_bucket("future-arch")
    s3_client.put_object(Bucket=bucket, Key="tmp/a", Body=b"a")
    op = (
        S3ExpireObjectsOperator(task_id="t", bucket=bucket, prefix="tmp/", retention_days=1)
        if kind == "expire"
        else S3GlacierCopyThenDeleteOperator(
            task_id="t", source_bucket=bucket, source_prefix="tmp/", dest_bucket=dest, retention_days=1
        )
    )
    now = datetime.now(UTC)
    with pytest.raises(LifecycleConfigError, match="run_after"):
        op.execute(_context(now + timedelta(days=400), now))
    assert [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]] == ["tmp/a"]
    assert "Contents" not in s3_client.list_objects_v2(Bucket=dest)
