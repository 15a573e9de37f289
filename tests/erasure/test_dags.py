"""End to end through Airflow: the erasure DAGs loaded from dags/ and run with ``dag.test()``."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from data_lifecycle.erasure.ledger import Status
from tests.erasure.conftest import OTHER_IDS, SUBJECT_EMAIL, SUBJECT_ID, object_versions, seed_users

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
GOOD_CONF = {"request_id": "DSR-2026-0001", "dry_run": False}


def good_conf(world: Any) -> dict[str, Any]:
    """A real erasure of the subject: the request registered first, the conf names it only."""
    return {"request_id": world.register(), "dry_run": False}


@pytest.fixture(scope="module")
def dagbag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER), safe_mode=False)
    for dag_id in ("erase_user_data", "replay_erasures", "erasure_deadline_check"):
        assert dag_id in bag.dags, bag.import_errors
    return bag


def _logical_date() -> datetime:
    # A distinct logical date per run keeps the runs apart in the metadata DB.
    return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=_logical_date.n)  # type: ignore[attr-defined]


_logical_date.n = 0  # type: ignore[attr-defined]


def run_dag(dag: Any, conf: dict[str, Any]) -> Any:
    """``dag.test()`` without the deadline alert.

    In Airflow 3.3.2 ``dag.test()`` of a DAG with a deadline raises once the run succeeds: the
    in-memory copy keeps encoded alerts where ``DagRun.update_state`` expects alert ids ("cannot
    adapt type 'dict'"). The deadline itself is covered by the DAG integrity test.
    """
    _logical_date.n += 1  # type: ignore[attr-defined]
    with mock.patch.object(dag, "deadline", None):
        return dag.test(run_conf=conf, logical_date=_logical_date())


def states(dr: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}


def test_erase_then_rerun_is_noop(dagbag, world, slack_sink):
    dag = dagbag.dags["erase_user_data"]
    before = world.snapshot()

    conf = good_conf(world)
    dr = run_dag(dag, conf)

    assert str(dr.state) == "success", states(dr)
    after = world.snapshot()
    for table in ("app.sessions", "app.user_uploads", "app.student_progress", "app.users"):
        assert after[f"{table}:{SUBJECT_ID}"] == 0
        assert after[table] == before[table] - before[f"{table}:{SUBJECT_ID}"]
        for uid in OTHER_IDS:
            assert after[f"{table}:{uid}"] == before[f"{table}:{uid}"]
    # Logs are masked, not deleted: same number of rows, the subject's now anonymous.
    assert after["app.app_logs"] == before["app.app_logs"]
    assert after[f"app.app_logs:{SUBJECT_ID}"] == 0
    assert after["app_logs_null_user"] == before["app_logs_null_user"] + before[f"app.app_logs:{SUBJECT_ID}"]
    subject_prefix = f"user_{SUBJECT_ID}/"
    assert [v for v in after["s3"] if v[0].startswith(subject_prefix)] == []
    assert after["s3"] == [v for v in before["s3"] if not v[0].startswith(subject_prefix)]
    assert any(v[0].startswith(f"user_{SUBJECT_ID}0/") for v in after["s3"])

    ledger = world.ledger()
    assert [(e["status"], e["dry_run"]) for e in ledger] == [("started", False), ("completed", False)]
    counts = ledger[-1]["counts"]
    assert counts["tables"]["app.sessions"] == before[f"app.sessions:{SUBJECT_ID}"]
    assert counts["tables"]["app.app_logs"] == before[f"app.app_logs:{SUBJECT_ID}"]
    assert counts["s3"] == {f"s3://{world.bucket}/user_{{user_id}}/": {"versions": 3, "delete_markers": 1}}
    assert ledger[-1]["subject_hash"] == world.keys.subject_hash(SUBJECT_ID)

    # The same request again: nothing left, nothing changed, one `noop` entry.
    dr2 = run_dag(dag, conf)
    assert str(dr2.state) == "success", states(dr2)
    assert world.snapshot() == after
    ledger2 = world.ledger()
    assert [e["status"] for e in ledger2[len(ledger) :]] == ["noop"]
    assert ledger2[-1]["counts"]["tables"] == dict.fromkeys(counts["tables"], 0)

    text = world.ledger_text()
    assert str(SUBJECT_ID) not in text and SUBJECT_EMAIL not in text
    slack = "\n".join(slack_sink.texts())
    assert conf["request_id"] in slack and "completed" in slack and "noop" in slack
    assert str(SUBJECT_ID) not in slack and SUBJECT_EMAIL not in slack


def test_legal_hold_fails_the_run_before_anything_is_erased(dagbag, world):
    held = next(v for v in object_versions(world.s3, world.bucket, f"user_{SUBJECT_ID}/") if not v[2])
    world.s3.put_object_legal_hold(
        Bucket=world.bucket, Key=held[0], VersionId=held[1], LegalHold={"Status": "ON"}
    )
    before = world.snapshot()

    dr = run_dag(dagbag.dags["erase_user_data"], good_conf(world))

    assert str(dr.state) == "failed"
    assert states(dr)["plan_erasure"] == "failed"
    assert world.snapshot() == before
    ledger = world.ledger()
    assert [e["status"] for e in ledger] == ["failed"]
    assert "legal hold" in ledger[0]["reason"] and "Nothing in this bucket was deleted" in ledger[0]["reason"]
    assert str(SUBJECT_ID) not in world.ledger_text()


BAD_CONFS = [
    pytest.param({k: v for k, v in GOOD_CONF.items() if k != "request_id"}, id="missing-request-id"),
    pytest.param({**GOOD_CONF, "request_id": 42}, id="request-id-not-string"),
    pytest.param({**GOOD_CONF, "dry_run": "no"}, id="dry-run-not-boolean"),
    pytest.param({**GOOD_CONF, "request_id": "x; drop"}, id="request-id-bad-pattern"),
]


@pytest.mark.parametrize("conf", BAD_CONFS)
def test_bad_params_fail_validation(dagbag, conf):
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dagbag.dags["erase_user_data"].params)
    with pytest.raises(ParamValidationError):
        params.update(conf)
        params.validate()


def test_bad_params_create_no_run_and_change_nothing(dagbag, world):
    from airflow.exceptions import ParamValidationError as CoreParamValidationError
    from airflow.models.dagrun import DagRun
    from airflow.sdk.exceptions import ParamValidationError as SdkParamValidationError

    dag = dagbag.dags["erase_user_data"]
    before = world.snapshot()
    runs_before = len(DagRun.find(dag_id="erase_user_data"))
    for conf in (BAD_CONFS[0].values[0], BAD_CONFS[1].values[0], BAD_CONFS[3].values[0]):
        with pytest.raises((SdkParamValidationError, CoreParamValidationError)):
            run_dag(dag, conf)
    assert len(DagRun.find(dag_id="erase_user_data")) == runs_before
    assert world.snapshot() == before
    assert world.ledger() == []


def test_replay_after_restore_erases_again(dagbag, world):
    since = datetime.now(UTC) - timedelta(minutes=1)
    run = world.run(GOOD_CONF["request_id"])
    run.erase_tables()
    run.purge_objects()
    run.verify()
    run.record(Status.COMPLETED, counts={"tables": {}, "s3": {}})
    erased = world.snapshot()
    # The "restore": the subject's rows come back (objects too, e.g. from a replicated bucket).
    seed_users(world.pg, (SUBJECT_ID,), anonymous_log=False)
    world.s3.put_object(Bucket=world.bucket, Key=f"user_{SUBJECT_ID}/a.bin", Body=b"restored")
    assert world.snapshot()[f"app.users:{SUBJECT_ID}"] == 1

    replay = dagbag.dags["replay_erasures"]
    dr = run_dag(replay, {"since": since.isoformat(), "dry_run": False})

    assert str(dr.state) == "success", states(dr)
    after = world.snapshot()
    restored_logs = 3  # masked again, so they stay as anonymous rows
    assert after["app.app_logs"] == erased["app.app_logs"] + restored_logs
    assert after["app_logs_null_user"] == erased["app_logs_null_user"] + restored_logs
    assert {k: v for k, v in after.items() if "app_logs" not in k} == {
        k: v for k, v in erased.items() if "app_logs" not in k
    }
    entries = world.ledger()
    assert entries[-1]["status"] == "replayed" and entries[-1]["request_id"] == GOOD_CONF["request_id"]
    assert entries[-1]["counts"]["tables"]["app.users"] == 1
    assert entries[-1]["counts"]["s3"][f"s3://{world.bucket}/user_{{user_id}}/"]["versions"] == 1

    # Idempotent: a second replay finds nothing and records a noop.
    dr = run_dag(replay, {"since": since.isoformat(), "dry_run": False})
    assert str(dr.state) == "success", states(dr)
    assert world.ledger()[-1]["status"] == "noop"
    assert str(SUBJECT_ID) not in world.ledger_text()


def test_deadline_check_alerts_on_open_requests(dagbag, world, slack_sink):
    now = datetime.now(UTC)
    rows = [
        ("DSR-OLD-1", SUBJECT_ID, "started", now - timedelta(days=40), None),
        ("DSR-NEAR-2", 1, "started", now - timedelta(days=26), None),
        ("DSR-FRESH-3", 2, "started", now - timedelta(days=2), None),
        ("DSR-DONE-4", 3, "started", now - timedelta(days=35), None),
        ("DSR-DONE-4", 3, "completed", now - timedelta(days=34), None),
        ("DSR-PARAM-5", 73_402_190, "failed", now - timedelta(days=1), now - timedelta(days=29)),
    ]
    for request_id, uid, status, recorded_at, requested_at in rows:
        world.ledger_pg.execute(
            "INSERT INTO app.erasure_ledger (request_id, subject_hash, status, dry_run, dag_id, run_id, "
            "recorded_at, requested_at) VALUES (%s, %s, %s, false, 'erase_user_data', 'r', %s, %s)",
            (request_id, world.keys.subject_hash(uid), status, recorded_at, requested_at),
        )

    # Registered but never run: the deadline runs from the registration's request time.
    from data_lifecycle.erasure.intake import register

    never_run = register(
        world.ledger_pg, "app.erasure_requests", world.keys, 2, requested_at=now - timedelta(days=27)
    )
    fresh = register(world.ledger_pg, "app.erasure_requests", world.keys, 3, requested_at=now)

    dr = run_dag(dagbag.dags["erasure_deadline_check"], {})

    assert str(dr.state) == "success", states(dr)
    texts = "\n".join(slack_sink.texts())
    assert "DSR-OLD-1" in texts and "OVERDUE" in texts
    assert "DSR-NEAR-2" in texts and "DSR-PARAM-5" in texts
    assert "DSR-FRESH-3" not in texts and "DSR-DONE-4" not in texts
    assert f"`{never_run}`" in texts and "last status registered" in texts and fresh not in texts
    assert str(SUBJECT_ID) not in texts


def test_the_subject_id_is_nowhere_in_airflow(dagbag, world, slack_sink, caplog, capfd):
    """README: the user id and email never appear in dag_run.conf, XCom, task logs or Slack."""
    import json
    import logging

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    # Airflow's default task log level. (At DEBUG, botocore logs request parameters such as the
    # prefix it lists; the README says so.)
    caplog.set_level(logging.INFO)
    conf = good_conf(world)
    dr = run_dag(dagbag.dags["erase_user_data"], conf)
    assert str(dr.state) == "success", states(dr)
    assert world.snapshot()[f"app.users:{SUBJECT_ID}"] == 0

    with create_session() as session:
        xcoms = session.query(XComModel).filter_by(dag_id="erase_user_data", run_id=dr.run_id).all()
        stored_conf = dr.conf
    xcom_text = json.dumps([x.value for x in xcoms], default=str)
    logs = "\n".join(r.getMessage() for r in caplog.records) + capfd.readouterr().out
    slack = "\n".join(slack_sink.texts())
    # The checks look at real content: the request id is in each of them.
    assert conf["request_id"] in json.dumps(stored_conf) and conf["request_id"] in xcom_text
    assert conf["request_id"] in logs and conf["request_id"] in slack
    for where, text in (
        ("conf", json.dumps(stored_conf)),
        ("xcom", xcom_text),
        ("logs", logs),
        ("slack", slack),
    ):
        assert str(SUBJECT_ID) not in text, where
        assert SUBJECT_EMAIL not in text, where


def test_a_conf_carrying_a_user_id_is_refused(dagbag, world):
    before = world.snapshot()
    dr = run_dag(dagbag.dags["erase_user_data"], {**good_conf(world), "user_id": SUBJECT_ID})
    assert str(dr.state) == "failed"
    assert world.snapshot() == before


def test_an_unregistered_request_is_refused(dagbag, world):
    before = world.snapshot()
    dr = run_dag(dagbag.dags["erase_user_data"], {"request_id": "DSR-unknown-1", "dry_run": False})
    assert str(dr.state) == "failed"
    assert world.snapshot() == before
