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
