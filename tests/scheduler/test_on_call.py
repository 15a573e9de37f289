"""What an on-call engineer does, against the real scheduler, triggerer, api-server and executor.

One scenario per executor, in order (each step needs the state the previous one left): unpause,
a failed run that then misses its deadline, a backwards backfill one run at a time whose run ahead
of the queue refuses, a backfill of three intervals (each interval records exactly the rows due at
its cutoff), a clear of its middle run (0 rows), a refused trigger, a backfill of three later
intervals backwards (exact again), a backfill whose second run waits while the first one retries,
the kill switch, a task that fails twice and then succeeds, and the clear of the failed runs. The
last step checks that the README runbook's commands are the ones the scenario ran.

The first interval of each backfill carries a backlog deleted in small batches with pauses (seconds
of work), so runs that acted at the same time would credit its rows to the later intervals.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import SlackSink
from tests.scheduler.conftest import Airflow

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SESSIONS = "cleanup_expired_sessions"
PURGE = "purge_soft_deleted"
GRACE = timedelta(days=1)  # the shipped retention of app.sessions
# The runbook's query: what each run did.
AUDIT_QUERY = (
    "SELECT run_id, task_id, action, cutoff, rows_affected FROM app.cleanup_audit "
    "WHERE dag_id = %s ORDER BY id"
)
TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
# Daily 02:00 runs: three intervals forward, three later ones backwards, two that wait in order.
FORWARD = [TODAY - timedelta(days=d) + timedelta(hours=2) for d in (10, 9, 8)]
BACKWARD = [TODAY - timedelta(days=d) + timedelta(hours=2) for d in (6, 5, 4)]
WAITING = [TODAY - timedelta(days=d) + timedelta(hours=2) for d in (3, 2)]
# Sessions per span between consecutive cutoffs (the first span is the backlog before any cutoff,
# the last one is due only for manual runs). Each backfill's first interval is a backlog.
SPANS = [2000, 7, 11, 1000, 5, 9, 12, 8, 6]
NEVER_DUE = 400  # sessions expiring in a month: keeps every delete under the 90% guardrail


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d")


def _cutoffs() -> list[datetime]:
    return [run - GRACE for run in FORWARD + BACKWARD + WAITING]


def _load_sessions(af: Airflow) -> None:
    """Active users' sessions: SPANS[i] expiring just before cutoff i, plus some never due."""
    cutoffs = _cutoffs()
    with af.data() as conn:
        user = conn.execute(
            "INSERT INTO app.users (email, display_name, created_at) VALUES ('s@example.test', 's', %s) RETURNING id",
            (TODAY - timedelta(days=400),),
        ).fetchone()[0]
        rows = []
        for i, n in enumerate(SPANS):
            upper = cutoffs[i] if i < len(cutoffs) else TODAY - timedelta(days=2)  # due for manual runs
            rows += [upper - timedelta(seconds=5 + k) for k in range(n)]
        rows += [TODAY + timedelta(days=30, minutes=k) for k in range(NEVER_DUE)]
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO app.sessions (user_id, token, created_at, expires_at) VALUES (%s, md5(random()::text), %s, %s)",
                [(user, exp - timedelta(days=1), exp) for exp in rows],
            )


def _load_soft_deleted_users(af: Airflow) -> None:
    """Four of ten users soft-deleted 40 days ago: more than the purge's 10% guardrail allows."""
    with af.data() as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO app.users (email, display_name, created_at, deleted_at) VALUES (%s, 'u', %s, %s)",
            [
                (
                    f"u{k}@example.test",
                    TODAY - timedelta(days=300),
                    TODAY - timedelta(days=40) if k < 4 else None,
                )
                for k in range(10)
            ],
        )


def _audit(af: Airflow, dag_id: str) -> list[dict[str, Any]]:
    with af.data() as conn:
        rows = conn.execute(AUDIT_QUERY, (dag_id,)).fetchall()
    return [
        dict(zip(("run_id", "task_id", "action", "cutoff", "rows_affected"), row, strict=True))
        for row in rows
    ]


def _deleted_per_run(af: Airflow, runs: list[dict[str, Any]]) -> dict[datetime, tuple[int, datetime]]:
    """logical date -> (rows, cutoff) of the last audit row of delete_sessions for each run."""
    by_run = {r["run_id"]: r for r in _audit(af, SESSIONS) if r["task_id"] == "delete_sessions"}
    out = {}
    for run in runs:
        row = by_run[run["dag_run_id"]]
        out[datetime.fromisoformat(run["logical_date"].replace("Z", "+00:00"))] = (
            row["rows_affected"],
            row["cutoff"],
        )
    return out


def _due_between(af: Airflow, lower: datetime | None, upper: datetime) -> int:
    """Our own count of sessions that expire in [lower, upper) (SPANS, read back from the table)."""
    with af.data() as conn:
        return int(
            conn.execute(
                "SELECT count(*) FROM app.sessions WHERE expires_at < %s AND (%s::timestamptz IS NULL OR expires_at >= %s)",
                (upper, lower, lower),
            ).fetchone()[0]
        )


def _remaining(af: Airflow) -> int:
    with af.data() as conn:
        return int(conn.execute("SELECT count(*) FROM app.sessions").fetchone()[0])


def _wait_for_backfills_complete(af: Airflow, dag_id: str) -> None:
    """One backfill per DAG at a time: the scheduler marks one complete within 30 s of its last run."""
    deadline = time.monotonic() + 90
    while True:
        status, doc = af.api("GET", f"/backfills?dag_id={dag_id}")
        assert status == 200, doc
        if all(b["completed_at"] for b in doc["backfills"]):
            return
        assert time.monotonic() < deadline, doc
        time.sleep(1)


def _backfill(af: Airflow, runs: list[datetime], *extra: str) -> list[dict[str, Any]]:
    return af.wait_for_runs(SESSIONS, [r["dag_run_id"] for r in _create_backfill(af, runs, *extra)])


def _create_backfill(
    af: Airflow, runs: list[datetime], *extra: str, dag_id: str = SESSIONS
) -> list[dict[str, Any]]:
    """The runbook's ``airflow backfill create``; returns the new runs by logical date."""
    _wait_for_backfills_complete(af, dag_id)
    before = {r["dag_run_id"] for r in af.runs(dag_id)}
    # Dates are inclusive at 00:00: the day after the last run ends the window before its run.
    af.cli(
        "backfill", "create", "--dag-id", dag_id,
        "--from-date", _day(runs[0]), "--to-date", _day(runs[-1] + timedelta(days=1)), *extra,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while len(new := [r for r in af.runs(dag_id) if r["dag_run_id"] not in before]) < len(runs):
        assert time.monotonic() < deadline, new
        time.sleep(0.3)
    assert len(new) == len(runs), new
    return sorted(new, key=lambda r: r["logical_date"])


def _task_instance(af: Airflow, run_id: str, task_id: str) -> dict[str, Any]:
    status, doc = af.api("GET", f"/dags/{SESSIONS}/dagRuns/{run_id}/taskInstances/{task_id}")
    assert status == 200, doc
    return dict(doc)


def _moment(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _trigger(af: Airflow, dag_id: str, conf: dict[str, Any]) -> tuple[int, Any]:
    return af.api("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})


def _notices(sink: SlackSink, run_id: str, marker: str) -> list[str]:
    texts = [str(m["body"].get("text", "")) for m in sink.messages() if isinstance(m.get("body"), dict)]
    return [t for t in texts if run_id in t and marker in t]


class Scenario:
    """State carried from one step to the next within one executor's scenario."""

    deadline_run: str = ""
    deadline_queued: float = 0.0
    refused_run: str = ""


@pytest.fixture(scope="package")
def scenario(airflow: Airflow) -> Scenario:
    return Scenario()


@pytest.fixture(scope="package")
def sink(airflow: Airflow, local_stack: Any) -> SlackSink:
    return SlackSink(local_stack.slack_messages)


def test_unpause_runs_the_latest_interval(airflow: Airflow, sink: SlackSink) -> None:
    for dag_id in (SESSIONS, PURGE):  # the dag-processor parses the DAG files first
        deadline = time.monotonic() + 180
        while airflow.api("GET", f"/dags/{dag_id}")[0] != 200:
            airflow.services.check_alive()
            assert time.monotonic() < deadline, f"{dag_id} not parsed"
            time.sleep(0.5)
        airflow.cli("dags", "unpause", dag_id)
    # catchup=False: at most the latest interval runs (on empty tables); wait until it is done and
    # the next run lies in the future, so that it cannot delete what the backfills are due.
    for dag_id in (SESSIONS, PURGE):
        deadline = time.monotonic() + 120
        while True:
            status, dag = airflow.api("GET", f"/dags/{dag_id}")
            assert status == 200, dag
            runs = airflow.runs(dag_id)
            upcoming = dag.get("next_dagrun_run_after")
            if upcoming and datetime.fromisoformat(upcoming.replace("Z", "+00:00")) > datetime.now(UTC):
                if all(r["state"] in {"success", "failed"} for r in runs):
                    break
            assert time.monotonic() < deadline, (dag, runs)
            time.sleep(0.5)
        assert all(r["state"] == "success" for r in runs), runs
    _load_sessions(airflow)
    _load_soft_deleted_users(airflow)


def test_failed_target_is_audited_and_noticed_once(
    airflow: Airflow, sink: SlackSink, scenario: Scenario
) -> None:
    # The guardrail refuses the purge (no retry): one notice saying so, and an audit row for it.
    status, run = _trigger(airflow, PURGE, {"dry_run": False})
    assert status == 200, run
    scenario.deadline_run, scenario.deadline_queued = run["dag_run_id"], time.monotonic()
    (done,) = airflow.wait_for_runs(PURGE, [run["dag_run_id"]])
    assert done["state"] == "failed"
    audit = [r for r in _audit(airflow, PURGE) if r["run_id"] == run["dag_run_id"]]
    assert [(r["task_id"], r["action"]) for r in audit] == [("delete_users", "failed")]
    notices = _notices(sink, run["dag_run_id"], ":red_circle:")
    assert len(notices) == 1, notices
    assert "`delete_users`" in notices[0] and "(try 1)" in notices[0]
    assert "No retry follows" in notices[0]


def test_a_backwards_backfill_one_run_at_a_time_refuses_the_run_ahead(
    airflow: Airflow, scenario: Scenario
) -> None:
    # Monthly purge runs of Oct 1 and Nov 1, newest first, one at a time: the Nov run starts while
    # the Oct run is still queued, so its gate refuses at once and its delete never starts. It is
    # cleared at the end, after its deadline (a pending one makes Airflow 3.3.2's clear fail).
    newest = (TODAY.replace(day=1) - timedelta(days=1)).replace(day=1, hour=4)
    months = [(newest - timedelta(days=1)).replace(day=1), newest]
    older, newer = _create_backfill(
        airflow, months, "--run-backwards", "--max-active-runs", "1", dag_id=PURGE
    )
    runs = airflow.wait_for_runs(PURGE, [older["dag_run_id"], newer["dag_run_id"]])
    assert {r["dag_run_id"]: r["state"] for r in runs} == {
        older["dag_run_id"]: "success",
        newer["dag_run_id"]: "failed",
    }
    states = airflow.task_states(PURGE, newer["dag_run_id"])
    assert states["wait_for_earlier_runs"] == "failed", states
    assert {states[t] for t in states if t.startswith("delete_")} == {"upstream_failed"}, states
    scenario.refused_run = newer["dag_run_id"]


def test_backfill_forward_records_each_intervals_rows(airflow: Airflow, sink: SlackSink) -> None:
    cutoffs = _cutoffs()
    expected = [
        _due_between(airflow, None, cutoffs[0]),
        *(_due_between(airflow, a, b) for a, b in pairwise(cutoffs[:3])),
    ]
    assert expected == SPANS[:3]
    runs = _backfill(airflow, FORWARD)
    assert {r["state"] for r in runs} == {"success"}, runs
    recorded = _deleted_per_run(airflow, runs)
    assert recorded == {run: (n, run - GRACE) for run, n in zip(FORWARD, expected, strict=True)}
    assert _due_between(airflow, None, cutoffs[2]) == 0
    assert _remaining(airflow) == sum(SPANS[3:]) + NEVER_DUE
    for run in runs:  # the Slack summary of each run says the same
        (summary,) = _notices(sink, run["dag_run_id"], ":white_check_mark:")
        rows = recorded[datetime.fromisoformat(run["logical_date"].replace("Z", "+00:00"))][0]
        assert f"`delete_sessions`: success, {rows} removed" in summary


def test_clear_of_the_middle_run_deletes_nothing(airflow: Airflow) -> None:
    middle = FORWARD[1]
    (run,) = [
        r for r in airflow.runs(SESSIONS) if r["logical_date"].startswith(middle.strftime("%Y-%m-%dT%H:%M"))
    ]
    stamp = middle.strftime("%Y-%m-%dT%H:%M:%S")
    # -t is a regular expression matched anywhere in the task id; -d clears run_summary too.
    airflow.cli("tasks", "clear", SESSIONS, "-t", "delete_sessions", "-d", "-s", stamp, "-e", stamp, "-y")
    deadline = time.monotonic() + 60
    while airflow.task_states(SESSIONS, run["dag_run_id"]).get("run_summary") == "success":
        assert time.monotonic() < deadline
        time.sleep(1)
    airflow.wait_for_runs(SESSIONS, [run["dag_run_id"]])
    rows = [
        r
        for r in _audit(airflow, SESSIONS)
        if r["run_id"] == run["dag_run_id"] and r["task_id"] == "delete_sessions"
    ]
    assert [r["rows_affected"] for r in rows] == [SPANS[1], 0]
    assert _remaining(airflow) == sum(SPANS[3:]) + NEVER_DUE


def test_trigger_with_bad_params_is_refused(airflow: Airflow) -> None:
    before = airflow.runs(SESSIONS)
    status, doc = _trigger(airflow, SESSIONS, {"dry_run": "sometimes"})
    assert status == 400, doc
    assert "dry_run" in json.dumps(doc)
    assert airflow.runs(SESSIONS) == before


def test_backfill_backwards_records_each_intervals_rows(airflow: Airflow) -> None:
    cutoffs = _cutoffs()
    expected = [_due_between(airflow, a, b) for a, b in pairwise(cutoffs[2:6])]
    assert expected == SPANS[3:6]
    runs = _backfill(airflow, BACKWARD, "--run-backwards")
    assert {r["state"] for r in runs} == {"success"}, runs
    assert _deleted_per_run(airflow, runs) == {
        run: (n, run - GRACE) for run, n in zip(BACKWARD, expected, strict=True)
    }
    assert _remaining(airflow) == sum(SPANS[6:]) + NEVER_DUE


def test_a_backfill_run_waits_while_the_previous_interval_retries(airflow: Airflow, sink: SlackSink) -> None:
    cutoffs = _cutoffs()
    expected = [_due_between(airflow, a, b) for a, b in pairwise(cutoffs[5:8])]
    assert expected == SPANS[6:8]
    # The first run's delete meets a lock, fails and is retried: its run is still running, so the
    # second run's gate waits (rescheduled) and its delete does not start until the first succeeded.
    with airflow.data() as lock:
        lock.autocommit = False
        lock.execute("LOCK TABLE app.sessions IN ACCESS EXCLUSIVE MODE")
        first, second = _create_backfill(airflow, WAITING)
        deadline = time.monotonic() + 90
        while True:
            airflow.services.check_alive()
            states = airflow.task_states(SESSIONS, second["dag_run_id"])
            assert states.get("delete_sessions") is None, states
            waited = states.get("wait_for_earlier_runs") == "up_for_reschedule"
            if waited and _notices(sink, first["dag_run_id"], ":red_circle:"):
                break
            assert time.monotonic() < deadline, (states, sink.messages())
            time.sleep(0.3)
        lock.rollback()
    runs = airflow.wait_for_runs(SESSIONS, [first["dag_run_id"], second["dag_run_id"]])
    assert {r["state"] for r in runs} == {"success"}, runs
    assert _deleted_per_run(airflow, runs) == {
        run: (n, run - GRACE) for run, n in zip(WAITING, expected, strict=True)
    }
    ended = _task_instance(airflow, first["dag_run_id"], "delete_sessions")["end_date"]
    started = _task_instance(airflow, second["dag_run_id"], "delete_sessions")["start_date"]
    assert _moment(ended) <= _moment(started)
    assert _remaining(airflow) == SPANS[-1] + NEVER_DUE


def test_kill_switch_skips_deletes(airflow: Airflow) -> None:
    airflow.cli("variables", "set", "lifecycle_destructive_enabled", "false")
    try:
        status, run = _trigger(airflow, SESSIONS, {"dry_run": False})
        assert status == 200, run
        (done,) = airflow.wait_for_runs(SESSIONS, [run["dag_run_id"]])
    finally:
        airflow.cli("variables", "set", "lifecycle_destructive_enabled", "true")
    assert done["state"] == "success"
    assert airflow.task_states(SESSIONS, run["dag_run_id"])["delete_sessions"] == "skipped"
    assert _remaining(airflow) == SPANS[-1] + NEVER_DUE


def test_failing_twice_then_succeeding_posts_one_notice_per_failed_try(
    airflow: Airflow, sink: SlackSink
) -> None:
    # An exclusive lock on the table makes the delete fail at its lock timeout until released.
    with airflow.data() as lock:
        lock.autocommit = False
        lock.execute("LOCK TABLE app.sessions IN ACCESS EXCLUSIVE MODE")
        status, run = _trigger(airflow, SESSIONS, {"dry_run": False})
        assert status == 200, run
        run_id = run["dag_run_id"]
        deadline = time.monotonic() + 90
        while len(_notices(sink, run_id, ":red_circle:")) < 2:
            airflow.services.check_alive()
            assert time.monotonic() < deadline, sink.messages()
            time.sleep(0.3)
        lock.rollback()
    (done,) = airflow.wait_for_runs(SESSIONS, [run_id])
    assert done["state"] == "success"
    notices = _notices(sink, run_id, ":red_circle:")
    assert len(notices) == 2, notices
    for try_number, text in enumerate(notices, start=1):
        assert f"*{SESSIONS}* task `delete_sessions` failed (try {try_number})" in text
        assert f"Retry follows: try {try_number + 1} of 4 not before " in text
    assert _remaining(airflow) == NEVER_DUE


def test_missed_deadline_posts_one_notice(airflow: Airflow, sink: SlackSink, scenario: Scenario) -> None:
    # The purge run failed minutes ago; its one-minute deadline passes without a success.
    deadline = scenario.deadline_queued + 150
    while not (notices := _notices(sink, scenario.deadline_run, ":hourglass:")):
        assert time.monotonic() < deadline, sink.messages()
        time.sleep(1)
    time.sleep(3)
    notices = _notices(sink, scenario.deadline_run, ":hourglass:")
    assert len(notices) == 1, notices
    assert f"*{PURGE}*" in notices[0] and "1 minute after it was queued" in notices[0]


def test_clear_of_a_failed_run_after_the_fix(airflow: Airflow, scenario: Scenario) -> None:
    # The fix: three of the four users were soft-deleted by mistake. One purge is now due.
    with airflow.data() as conn:
        conn.execute(
            "UPDATE app.users SET deleted_at = NULL WHERE id IN "
            "(SELECT id FROM app.users WHERE deleted_at IS NOT NULL ORDER BY id LIMIT 3)"
        )
    failed = sorted(r["dag_run_id"] for r in airflow.runs(PURGE) if r["state"] == "failed")
    assert failed == sorted([scenario.deadline_run, scenario.refused_run])
    _wait_for_backfills_complete(airflow, PURGE)
    airflow.cli("tasks", "clear", PURGE, "--only-failed", "-y")
    deadline = time.monotonic() + 60
    while any(r["state"] == "failed" for r in airflow.runs(PURGE)):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    runs = airflow.wait_for_runs(PURGE, failed)
    assert {r["state"] for r in runs} == {"success"}, runs

    def deletes(run_id: str) -> list[tuple[str, int]]:
        rows = [r for r in _audit(airflow, PURGE) if r["run_id"] == run_id and r["task_id"] == "delete_users"]
        return [(r["action"], r["rows_affected"]) for r in rows]

    assert deletes(scenario.deadline_run) == [("failed", 0), ("delete", 1)]
    # The refused run deleted nothing; its rerun deletes what its own (earlier) cutoff makes due.
    assert deletes(scenario.refused_run) == [("failed", 0), ("delete", 0)]


def test_every_runbook_command_was_run(airflow: Airflow) -> None:
    """The README's On call commands are ones this scenario ran (dates aside), request for request."""
    commands, requests, queries = _runbook()
    assert commands and requests and queries
    ran = {_undated(args) for args in airflow.commands}
    assert [c for c in commands if c not in ran] == [], sorted(ran)
    sent = {(method, path, json.dumps(body, sort_keys=True)) for method, path, body in airflow.requests}
    assert [r for r in requests if r not in sent] == []
    assert set(queries) <= {AUDIT_QUERY.replace("%s", f"'{dag_id}'") for dag_id in (SESSIONS, PURGE)}


def _runbook() -> tuple[list[tuple[str, ...]], list[tuple[str, str, str]], list[str]]:
    """``airflow`` commands, REST requests and SQL of the README's On call section."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## On call\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    lines = [" ".join(line.split()) for line in "\n".join(blocks).replace("\\\n", " ").splitlines()]
    commands, requests, queries = [], [], []
    for line in filter(None, lines):
        words = shlex.split(line.split("$(", 1)[-1].rstrip(")"))
        if words[0] == "airflow":
            commands.append(_undated(tuple(words[1:])))
        elif words[0] == "curl":
            url = next(w for w in words if w.startswith("http"))
            path = urlsplit(url).path
            body = words[words.index("-d") + 1] if "-d" in words else "null"
            method = words[words.index("-X") + 1] if "-X" in words else "GET"
            requests.append((method, path, json.dumps(json.loads(body), sort_keys=True)))
        elif words[0] == "psql":
            queries.append(words[words.index("-c") + 1])
        else:
            raise AssertionError(f"README On call: a command the scenario does not know: {line}")
    return commands, requests, queries


def _undated(args: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(re.sub(r"^\d{4}-\d\d-\d\d(T[\d:]+)?$", "<date>", a) for a in args)
