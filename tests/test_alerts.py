"""The texts of Slack notices: deadline intervals and what follows a failed try."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from data_lifecycle.alerts import _human, next_try_text


def test_deadline_intervals_read_naturally():
    assert _human(timedelta(minutes=1)) == "1 minute"
    assert _human(timedelta(minutes=45)) == "45 minutes"
    assert _human(timedelta(hours=1)) == "1 hour"
    assert _human(timedelta(hours=3)) == "3 hours"


def _context(try_number: int) -> dict[str, object]:
    task = SimpleNamespace(
        retry_delay=timedelta(minutes=5), retry_exponential_backoff=2.0, max_retry_delay=timedelta(hours=1)
    )
    ended = datetime(2026, 3, 1, 2, 0, 0, tzinfo=UTC)
    return {
        "ti": SimpleNamespace(try_number=try_number, max_tries=3, end_date=ended, task=task),
        "task": task,
    }


def test_a_retried_try_says_which_try_follows_and_when():
    assert next_try_text(_context(1), retrying=True) == (
        "Retry follows: try 2 of 4 not before 02:05:00 UTC (in 5 min to 10 min)."
    )
    # Backoff doubles the delay per try, capped at max_retry_delay.
    assert next_try_text(_context(3), retrying=True) == (
        "Retry follows: try 4 of 4 not before 02:20:00 UTC (in 20 min to 40 min)."
    )


def test_the_last_try_says_no_retry_follows():
    assert next_try_text(_context(4), retrying=False) == "No retry follows: try 4 of 4 was the last."


def test_missed_deadline_posts_the_rendered_notice_as_the_triggerer_runs_it(slack_sink):
    """The triggerer imports the callback by its path and awaits it with the deadline's context."""
    import asyncio

    from airflow.triggers.callback import CallbackTrigger

    from data_lifecycle.alerts import deadline_alert

    alert = deadline_alert(timedelta(minutes=45))
    assert alert.callback.path == "data_lifecycle.deadline_notice.post_deadline_notice"
    context = {
        "dag_run": {"dag_id": "cleanup_expired_sessions", "dag_run_id": "scheduled__2026-03-01"},
        "deadline": {"id": "d-1", "deadline_time": "2026-03-01T02:45:00+00:00"},
    }
    trigger = CallbackTrigger(alert.callback.path, {**alert.callback.kwargs, "context": context})

    async def events() -> list[dict[str, object]]:
        return [event.payload async for event in trigger.run()]

    states = [str(e["state"]) for e in asyncio.run(events())]
    assert states[-1].lower().endswith("success"), states
    texts = slack_sink.texts()
    assert any(
        "*cleanup_expired_sessions* run `scheduled__2026-03-01` has not succeeded 45 minutes" in t
        and "deadline 2026-03-01T02:45:00+00:00" in t
        for t in texts
    ), texts
