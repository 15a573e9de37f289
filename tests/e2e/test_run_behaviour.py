"""Shared run behaviour through real DAG runs: Slack failure notices, dry runs, the kill switch."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.e2e.conftest import ANCHOR, count, run_dag


def test_forced_failure_posts_one_slack_message_naming_dag_task_and_try(dagbag, dreamseed, pg, slack_sink):
    # A child table the policy names has gone: the purge must fail before deleting anything.
    pg.execute("DROP TABLE app.user_uploads")
    users = count(pg, "SELECT count(*) FROM app.users")

    run = run_dag(dagbag, "purge_soft_deleted")

    assert run.state == "failed"
    assert count(pg, "SELECT count(*) FROM app.users") == users
    texts = [m["body"].get("text", "") for m in slack_sink.messages()]
    failures = [t for t in texts if "purge_soft_deleted" in t]
    assert len(failures) == 1, texts
    assert "purge_soft_deleted" in failures[0]
    assert "delete_users" in failures[0]
    assert "try 1" in failures[0]
    assert "app.user_uploads" in failures[0]


def test_dry_run_param_changes_nothing(dagbag, dreamseed, pg):
    total = count(pg, "SELECT count(*) FROM app.sessions")
    run = run_dag(dagbag, "cleanup_expired_sessions", conf={"dry_run": True})
    assert run.state == "success"
    assert count(pg, "SELECT count(*) FROM app.sessions") == total


def test_retention_override_param_is_applied(dagbag, dreamseed, pg):
    cutoff = ANCHOR - timedelta(days=20)
    kept = count(pg, "SELECT count(*) FROM app.sessions WHERE expires_at >= %s", cutoff)
    assert count(pg, "SELECT count(*) FROM app.sessions WHERE expires_at < %s", cutoff) > 0
    run = run_dag(dagbag, "cleanup_expired_sessions", conf={"retention_days": 20})
    assert run.state == "success"
    assert count(pg, "SELECT count(*) FROM app.sessions") == kept


def test_retention_override_below_the_floor_is_rejected_before_any_task(dagbag, dreamseed, pg):
    from airflow.sdk.exceptions import ParamValidationError

    total = count(pg, "SELECT count(*) FROM app.sessions")
    with pytest.raises(ParamValidationError):
        run_dag(dagbag, "cleanup_expired_sessions", conf={"retention_days": 0})
    assert count(pg, "SELECT count(*) FROM app.sessions") == total


def test_kill_switch_skips_destructive_tasks(dagbag, dreamseed, pg, monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_LIFECYCLE_DESTRUCTIVE_ENABLED", "false")
    total = count(pg, "SELECT count(*) FROM app.sessions")
    run = run_dag(dagbag, "cleanup_expired_sessions")
    assert run.state == "success"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["delete_sessions"] == "skipped"
    assert count(pg, "SELECT count(*) FROM app.sessions") == total


def test_failure_notice_works_in_a_manual_run_without_logical_date(dagbag, dreamseed, pg, slack_sink):
    # Manual runs triggered from the CLI or REST have no logical date: no ds, no data interval.
    pg.execute("DROP TABLE app.sessions CASCADE")
    run = run_dag(dagbag, "cleanup_expired_sessions", logical_date=None)
    assert run.state == "failed"
    assert run.logical_date is None
    texts = [m["body"].get("text", "") for m in slack_sink.messages()]
    notices = [t for t in texts if "cleanup_expired_sessions" in t]
    assert len(notices) == 1, texts
    assert "delete_sessions" in notices[0] and "try 1" in notices[0]
    assert run.run_id in notices[0]


def test_kill_switch_in_the_metadata_database_skips_lifecycle_rules(
    dagbag, dreamseed, s3_client, lifecycle_env
):
    # Applying lifecycle rules is destructive: an Expiration rule deletes, a removed rule stops protecting.
    from airflow.models import Variable

    from data_lifecycle.kill_switch import KILL_SWITCH_VARIABLE

    def rules(bucket: str) -> list[dict]:
        try:
            return s3_client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        except s3_client.exceptions.ClientError:
            return []

    buckets = [entry.bucket for entry in lifecycle_env.policy.storage_tiers]
    before = {b: rules(b) for b in buckets}
    Variable.set(KILL_SWITCH_VARIABLE, "false")  # noqa: AIR311
    try:
        run = run_dag(dagbag, "apply_storage_tiers")
    finally:
        Variable.delete(KILL_SWITCH_VARIABLE)  # noqa: AIR311
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert {states[f"tiers_{entry.id}"] for entry in lifecycle_env.policy.storage_tiers} == {"skipped"}
    assert {b: rules(b) for b in buckets} == before


def test_kill_switch_set_in_the_metadata_database_stops_a_running_archive(
    dagbag, dreamseed, lifecycle_env, monkeypatch
):
    # Turned off while the archive task runs (at its first copy): it starts no other copy, deletes
    # no source, and says so; the Variable is read through Airflow's own API, as in production.
    from airflow.models import Variable

    from data_lifecycle.kill_switch import KILL_SWITCH_VARIABLE, RECHECK_ENV
    from tests.reliability.harness import s3_faults

    monkeypatch.setenv(RECHECK_ENV, "0")
    logs_before = dreamseed.keys("dreamseed-logs", prefix="app/")
    assert len(logs_before) > 1

    def off(**_):
        Variable.set(KILL_SWITCH_VARIABLE, "false")  # noqa: AIR311

    try:
        with s3_faults(("after-call.s3.CopyObject", off)):
            run = run_dag(dagbag, "apply_storage_tiers")
    finally:
        Variable.delete(KILL_SWITCH_VARIABLE)  # noqa: AIR311
    (ti,) = [ti for ti in run.get_task_instances() if ti.task_id.startswith("archive_")]
    summary = ti.xcom_pull(task_ids=ti.task_id)
    assert ti.state == "success" and summary["stopped_by"] == "kill_switch", summary
    assert summary["objects"] == 0
    assert dreamseed.keys("dreamseed-logs", prefix="app/") == logs_before
