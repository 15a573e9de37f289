"""How a run is created decides what it may do (issue 12, defects 2 and 3).

- A manual run is a dry run unless its conf unticks ``dry_run``; scheduled and backfill runs (no
  conf) do the real work although they get the ticked Param default too.
- A retention override may keep data longer, never shorter than the rule's own floor: refused when
  the run is created, and again when the task renders it, before anything is written.
"""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest

from data_lifecycle.alerts import effective_dry_run
from data_lifecycle.dag_common import override_retention_days
from data_lifecycle.exceptions import LifecycleConfigError
from tests.e2e.conftest import ANCHOR, count, run_dag

DUE_SESSIONS = "SELECT count(*) FROM app.sessions WHERE expires_at < %s"


def _summary(run, task_id):
    (ti,) = [ti for ti in run.get_task_instances() if ti.task_id == task_id]
    return ti.state, ti.xcom_pull(task_ids=task_id)


def test_manual_run_without_conf_is_a_dry_run(dagbag, dreamseed, pg):
    total = count(pg, "SELECT count(*) FROM app.sessions")
    assert count(pg, DUE_SESSIONS, ANCHOR - timedelta(days=1)) > 0

    run = run_dag(dagbag, "cleanup_expired_sessions", run_type="manual")

    assert run.state == "success"
    assert count(pg, "SELECT count(*) FROM app.sessions") == total
    state, summary = _summary(run, "delete_sessions")
    assert state == "success" and summary["dry_run"] is True


def test_manual_run_with_the_box_unticked_deletes(dagbag, dreamseed, pg):
    due = count(pg, DUE_SESSIONS, ANCHOR - timedelta(days=1))
    total = count(pg, "SELECT count(*) FROM app.sessions")

    run = run_dag(dagbag, "cleanup_expired_sessions", conf={"dry_run": False}, run_type="manual")

    assert run.state == "success"
    assert count(pg, "SELECT count(*) FROM app.sessions") == total - due


@pytest.mark.parametrize("run_type", ["scheduled", "backfill"])
def test_scheduled_and_backfill_runs_do_the_real_work(dagbag, dreamseed, pg, run_type):
    due = count(pg, DUE_SESSIONS, ANCHOR - timedelta(days=1))
    total = count(pg, "SELECT count(*) FROM app.sessions")
    assert due > 0

    run = run_dag(dagbag, "cleanup_expired_sessions", run_type=run_type)

    assert run.state == "success" and str(run.run_type) == run_type
    assert count(pg, "SELECT count(*) FROM app.sessions") == total - due
    assert _summary(run, "delete_sessions")[1]["dry_run"] is False


def test_s3_expiry_manual_run_is_dry_by_default(dagbag, dreamseed, s3_client, lifecycle_env):
    bucket = lifecycle_env.bucket("dreamseed-uploads")
    before = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))

    run = run_dag(dagbag, "cleanup_s3_objects", run_type="manual")

    assert run.state == "success"
    after = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))
    assert after == before


def test_override_below_the_rules_own_retention_is_refused_at_run_creation(dagbag, dreamseed, pg):
    """The global floor is 1 day; the users rule keeps 30, so 1 day must be refused."""
    from airflow.sdk.exceptions import ParamValidationError

    users = count(pg, "SELECT count(*) FROM app.users")
    with pytest.raises(ParamValidationError, match="30"):
        run_dag(dagbag, "purge_soft_deleted", conf={"retention_days": 1, "dry_run": False})
    assert count(pg, "SELECT count(*) FROM app.users") == users


def test_override_above_the_rule_is_allowed(dagbag, dreamseed, pg):
    run = run_dag(dagbag, "purge_soft_deleted", conf={"retention_days": 3650})
    assert run.state == "success"
    assert _summary(run, "delete_users")[1]["deleted"] == 0


def test_form_shows_each_rules_bound(dagbag):
    schema = dagbag.dags["cleanup_s3_objects"].params.get_param("retention_days").schema
    assert schema["minimum"] == 90 and schema["maximum"] == 36_500
    description = dagbag.dags["cleanup_s3_objects"].params.get_param("retention_days").description
    assert "`upload_tmp`: policy 90, at least 90" in description
    assert "`upload_exports`: policy 90, at least 90" in description
    dry = dagbag.dags["cleanup_s3_objects"].params.get_param("dry_run")
    assert dry.value is True


def test_rendered_override_below_the_floor_fails_before_the_task_runs(dagbag):
    """Whatever bypasses the form (an edited conf, a TriggerDagRunOperator) meets the task's check."""
    task = dagbag.dags["purge_soft_deleted"].get_task("delete_users")
    context = {
        "params": {"retention_days": 7, "dry_run": False},
        "dag_run": SimpleNamespace(run_type="manual", conf={"retention_days": 7}),
    }
    with pytest.raises(LifecycleConfigError, match="below the floor of rule 'users' \\(30 days"):
        task.render_template_fields(context, jinja_env=dagbag.dags["purge_soft_deleted"].get_template_env())


@pytest.mark.parametrize(
    ("override", "policy", "floor", "expected"),
    [
        pytest.param(None, 30, 30, 30, id="no-override"),
        pytest.param(45, 30, 30, 45, id="longer"),
        pytest.param(7, 30, 7, 7, id="down-to-declared-floor"),
    ],
)
def test_override_within_the_floor(override, policy, floor, expected):
    assert override_retention_days(override, policy, floor, "users") == expected


@pytest.mark.parametrize(
    ("override", "message"),
    [
        pytest.param(6, "below the floor of rule 'users' \\(7 days", id="below-declared-floor"),
        pytest.param(True, "whole number", id="bool"),
        pytest.param(40_000, "above 36500", id="too-long"),
    ],
)
def test_override_outside_the_floor_is_refused(override, message):
    with pytest.raises(LifecycleConfigError, match=message):
        override_retention_days(override, 30, 7, "users")


@pytest.mark.parametrize(
    ("run_type", "conf", "params", "dry"),
    [
        pytest.param("manual", {}, {"dry_run": True}, True, id="manual-default"),
        pytest.param("manual", {"dry_run": False}, {"dry_run": False}, False, id="manual-unticked"),
        pytest.param("scheduled", {}, {"dry_run": True}, False, id="scheduled-gets-default"),
        pytest.param("backfill", {}, {"dry_run": True}, False, id="backfill-gets-default"),
        pytest.param("asset_triggered", None, {"dry_run": True}, False, id="asset-triggered"),
        pytest.param("backfill", {"dry_run": True}, {"dry_run": True}, True, id="backfill-asks-dry"),
    ],
)
def test_effective_dry_run(run_type, conf, params, dry):
    assert effective_dry_run(SimpleNamespace(run_type=run_type, conf=conf), params) is dry
