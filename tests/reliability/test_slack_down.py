"""Slack is down (the webhook answers 500) or gone (nothing listens): failure notices and run summaries
are logged as not sent, and the cleanup's own outcome does not change.

Each test runs its own Slack sink (the stack's sink code, on a free port) so that telling it to fail
does not touch what other tests post to the shared one.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest

from data_lifecycle.alerts import SlackFailureNotice
from data_lifecycle.exceptions import GuardrailTripped
from data_lifecycle.operators.postgres import PostgresBatchedDeleteOperator
from data_lifecycle.slack import SLACK_TIMEOUT_SECONDS
from devstack.slack_sink import CONTROL_PATH, SinkState, make_handler
from tests.reliability.data import ANCHOR, load_sessions
from tests.reliability.harness import run_context

CONN_ID = "slack_reliability"
WEBHOOK_TOKEN = "T000/B000/local"


class Sink:
    """A Slack webhook sink of our own on 127.0.0.1."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.touch()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(SinkState(out)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def fail_with(self, status: int) -> None:
        request = urllib.request.Request(
            self.url + CONTROL_PATH, data=json.dumps({"status": status}).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=5):
            pass

    def hang(self, on: bool = True) -> None:
        """Accept webhook posts and never answer them (``on=False`` answers again)."""
        request = urllib.request.Request(
            self.url + CONTROL_PATH, data=json.dumps({"hang": on}).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=5):
            pass

    def texts(self) -> list[str]:
        return [
            json.loads(line)["body"].get("text", "") for line in self.out.read_text().splitlines() if line
        ]

    def close(self) -> None:
        self.hang(False)
        self.server.shutdown()
        self.server.server_close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sink]:
    own = Sink(tmp_path / "messages.jsonl")
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}",
        json.dumps({"conn_type": "slackwebhook", "host": own.url, "password": WEBHOOK_TOKEN}),
    )
    yield own
    own.close()


def _point_at_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}",
        json.dumps(
            {
                "conn_type": "slackwebhook",
                "host": f"http://127.0.0.1:{_free_port()}",
                "password": WEBHOOK_TOKEN,
            }
        ),
    )


def failure_context(exception: BaseException) -> dict[str, Any]:
    """What the task runner passes to on_failure_callback (the keys FAILURE_TEXT uses, and more)."""
    from airflow.sdk import DAG

    dag = DAG(dag_id="cleanup_expired_sessions", schedule=None)
    run_id = "scheduled__2027-03-01T05:00:00+00:00"
    ti = SimpleNamespace(
        task_id="delete_sessions",
        dag_id=dag.dag_id,
        run_id=run_id,
        try_number=2,
        log_url="http://localhost:8080/dags/cleanup_expired_sessions/runs/x/tasks/delete_sessions",
    )
    return {
        "dag": dag,
        "ti": ti,
        "task_instance": ti,
        "run_id": run_id,
        "dag_run": SimpleNamespace(dag_id=dag.dag_id, run_id=run_id, run_after=ANCHOR, logical_date=ANCHOR),
        "exception": exception,
        "data_interval_end": ANCHOR,
    }


def _tripped_cleanup(pg: psycopg.Connection[Any]) -> tuple[GuardrailTripped, int]:
    """A real cleanup failure: the guardrail refuses a delete of most of the table."""
    load_sessions(pg, cutoff=ANCHOR - timedelta(days=30), due=90, kept=10)
    op = PostgresBatchedDeleteOperator(
        task_id="delete_sessions", table="app.sessions", timestamp_column="expires_at", retention_days=30
    )
    with pytest.raises(GuardrailTripped) as raised:
        op.execute(run_context(ANCHOR))
    return raised.value, pg.execute("SELECT count(*) FROM app.sessions").fetchone()[0]


class TestSlackFailureNotice:
    def test_posts_the_failure_with_task_run_and_error(self, sink: Sink, pg: psycopg.Connection[Any]) -> None:
        error, _ = _tripped_cleanup(pg)

        SlackFailureNotice(CONN_ID)(failure_context(error))

        (text,) = sink.texts()
        assert "*cleanup_expired_sessions* task `delete_sessions` failed (try 2)" in text
        assert "scheduled__2027-03-01T05:00:00+00:00" in text and "2027-03-01" in text
        assert "max_delete_fraction" in text and "/tasks/delete_sessions" in text

    @pytest.mark.parametrize("outage", ["http-500", "http-503", "gone"])
    def test_slack_down_is_logged_and_the_outcome_unchanged(
        self,
        outage: str,
        sink: Sink,
        pg: psycopg.Connection[Any],
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        error, rows = _tripped_cleanup(pg)
        if outage == "gone":
            _point_at_nothing(monkeypatch)
        else:
            sink.fail_with(int(outage[-3:]))

        with caplog.at_level(logging.ERROR, logger="data_lifecycle.alerts"):
            SlackFailureNotice(CONN_ID)(failure_context(error))  # must not raise

        assert any(
            "Could not post the failure notice" in r.getMessage() and CONN_ID in r.getMessage()
            for r in caplog.records
        ), [r.getMessage() for r in caplog.records]
        assert sink.texts() == []
        # The task's failure is still the guardrail's, and nothing was deleted.
        assert "max_delete_fraction" in str(error)
        assert pg.execute("SELECT count(*) FROM app.sessions").fetchone() == (rows,)

        sink.fail_with(200)
        if outage == "gone":
            return
        SlackFailureNotice(CONN_ID)(failure_context(error))
        assert len(sink.texts()) == 1, "a notice after the outage is delivered"


class TestRunSummaryPost:
    """The success summary of ``run_summary`` (``notify_success``) while Slack is down."""

    def _policy(self) -> Any:
        return SimpleNamespace(slack_conn_id=CONN_ID)

    def _results(self, summary: dict[str, Any]) -> dict[str, Any]:
        return {"delete_sessions": {"state": "success", "result": summary}}

    def test_summary_is_posted(self, sink: Sink) -> None:
        from data_lifecycle.dag_common import _post_summary

        _post_summary(
            self._policy(), "cleanup_expired_sessions", "scheduled__x", self._results({"deleted": 7})
        )

        (text,) = sink.texts()
        assert "cleanup_expired_sessions" in text and "`delete_sessions`: success, 7 removed" in text

    @pytest.mark.parametrize("outage", ["http-500", "gone"])
    def test_slack_down_does_not_change_a_successful_cleanup(
        self,
        outage: str,
        sink: Sink,
        pg: psycopg.Connection[Any],
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        from data_lifecycle.dag_common import _post_summary

        load_sessions(pg, cutoff=ANCHOR - timedelta(days=30), due=40, kept=60)
        summary = PostgresBatchedDeleteOperator(
            task_id="delete_sessions", table="app.sessions", timestamp_column="expires_at", retention_days=30
        ).execute(run_context(ANCHOR))
        if outage == "gone":
            _point_at_nothing(monkeypatch)
        else:
            sink.fail_with(500)

        with caplog.at_level(logging.ERROR, logger="data_lifecycle.dag_common"):
            _post_summary(self._policy(), "cleanup_expired_sessions", "scheduled__x", self._results(summary))

        assert any("Could not post the run summary" in r.getMessage() for r in caplog.records)
        assert sink.texts() == []
        assert summary["deleted"] == 40 and summary["remaining"] == 0
        assert pg.execute("SELECT count(*) FROM app.sessions").fetchone() == (60,)


class TestSlackHangs:
    """A webhook that accepts the connection and never answers (issue 12, defect 8): every Slack
    call gives up within ``SLACK_TIMEOUT_SECONDS``, logs it, and the outcome is unchanged."""

    LIMIT = SLACK_TIMEOUT_SECONDS + 3  # slack_sdk's default is 30 s, and one retry

    def test_failure_notice_gives_up_in_seconds(
        self, sink: Sink, pg: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
    ) -> None:
        error, rows = _tripped_cleanup(pg)
        sink.hang()

        started = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="data_lifecycle.alerts"):
            SlackFailureNotice(CONN_ID)(failure_context(error))  # must not raise
        elapsed = time.monotonic() - started

        assert elapsed < self.LIMIT, f"the failure notice held the task {elapsed:.1f} s"
        assert any("Could not post the failure notice" in r.getMessage() for r in caplog.records)
        assert "max_delete_fraction" in str(error)
        assert pg.execute("SELECT count(*) FROM app.sessions").fetchone() == (rows,)

    def test_run_summary_gives_up_in_seconds(self, sink: Sink, caplog: pytest.LogCaptureFixture) -> None:
        from data_lifecycle.dag_common import _post_summary

        sink.hang()
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="data_lifecycle.alerts"):
            _post_summary(
                SimpleNamespace(slack_conn_id=CONN_ID),
                "cleanup_expired_sessions",
                "scheduled__x",
                {"delete_sessions": {"state": "success", "result": {"deleted": 7}}},
            )
        assert time.monotonic() - started < self.LIMIT
        assert any("Could not post the run summary" in r.getMessage() for r in caplog.records)

    def test_erasure_notice_gives_up_in_seconds(self, sink: Sink, caplog: pytest.LogCaptureFixture) -> None:
        from data_lifecycle.erasure.steps import post_slack

        sink.hang()
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="data_lifecycle.alerts"):
            assert post_slack(CONN_ID, "erasure req-1 completed") is False
        assert time.monotonic() - started < self.LIMIT
        assert any("Could not post the erasure notice" in r.getMessage() for r in caplog.records)

        sink.hang(False)
        assert post_slack(CONN_ID, "erasure req-1 completed") is True

    def test_deadline_alert_is_bounded_too(self) -> None:
        from data_lifecycle.alerts import deadline_alert

        alert = deadline_alert(timedelta(hours=1))
        assert alert.callback.kwargs["timeout"] == SLACK_TIMEOUT_SECONDS
