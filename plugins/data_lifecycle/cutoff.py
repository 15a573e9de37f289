"""The one place that turns a run's context into a cutoff timestamp.

``anchor = data_interval_end or dag_run.run_after`` and ``cutoff = anchor - retention``. Never the
wall clock: a cleared or backfilled run has the same anchor as the first try, so it selects the same
rows and objects, and a second run of the same interval finds nothing left to do.

An anchor may lie in the past (reruns, backfills), never after the run's own ``run_after`` plus a
small skew: a manual run's logical date and data interval are free input in the trigger form and
the REST API, and a date a year ahead would move every cutoff a year forward. Airflow never starts
a run before its ``run_after``, so comparing with it (not with the clock) refuses that input while
runs at a chosen past or present date keep working.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from data_lifecycle.exceptions import LifecycleConfigError

# Retention below this is almost always a mistake (a unit slip, a template rendering to 0).
DEFAULT_RETENTION_FLOOR = timedelta(days=1)
MAX_RETENTION_DAYS = 36_500

_DIGITS = re.compile(r"^\s*\d+\s*$")

# How far an anchor may lie after the run's run_after (clock differences, rounding of intervals).
ANCHOR_SKEW_ENV = "LIFECYCLE_ANCHOR_SKEW_SECONDS"
DEFAULT_ANCHOR_SKEW = timedelta(minutes=5)
MAX_ANCHOR_SKEW = timedelta(days=1)


def run_anchor(context: Mapping[str, Any]) -> datetime:
    """The end of the run's data interval, else its ``run_after``; refused if after ``run_after``."""
    run_after = _run_after(context)
    anchor = context.get("data_interval_end")
    if anchor is None:
        anchor = run_after
    if anchor is None:
        raise LifecycleConfigError(
            "Cannot compute a cutoff: the context has neither data_interval_end nor dag_run.run_after."
        )
    anchor = _utc(anchor)
    check_not_after_run(anchor, context, what="The run's anchor (data_interval_end)")
    return anchor


def check_not_after_run(moment: datetime, context: Mapping[str, Any], *, what: str) -> None:
    """Refuse ``moment`` later than the run's ``run_after`` plus the allowed skew, before any write."""
    run_after = _run_after(context)
    if run_after is None:
        raise LifecycleConfigError(f"Cannot check {what}: the context has no dag_run.run_after.")
    skew = anchor_skew()
    if _utc(moment) > _utc(run_after) + skew:
        raise LifecycleConfigError(
            f"{what} {_utc(moment).isoformat()} is after the run's run_after {_utc(run_after).isoformat()} "
            f"(allowed skew {int(skew.total_seconds())} s): a future date would move every cutoff forward "
            "and remove data still inside its retention. Nothing was changed. To process a past date, "
            "trigger the run with that logical date or backfill it; to shorten retention for one run, "
            f"use the retention_days override. The skew is set by {ANCHOR_SKEW_ENV}."
        )


def anchor_skew() -> timedelta:
    """``LIFECYCLE_ANCHOR_SKEW_SECONDS`` (0 to 86,400), else 5 minutes."""
    raw = os.environ.get(ANCHOR_SKEW_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_ANCHOR_SKEW
    if not _DIGITS.match(raw) or timedelta(seconds=int(raw)) > MAX_ANCHOR_SKEW:
        raise LifecycleConfigError(f"{ANCHOR_SKEW_ENV} must be 0 to 86400 seconds, got {raw!r}")
    return timedelta(seconds=int(raw))


def _run_after(context: Mapping[str, Any]) -> datetime | None:
    dag_run = context.get("dag_run")
    value = getattr(dag_run, "run_after", None)
    if value is None and isinstance(dag_run, Mapping):
        value = dag_run.get("run_after")
    return None if value is None else _utc(value)


def _utc(anchor: Any) -> datetime:
    if isinstance(anchor, str):
        anchor = datetime.fromisoformat(anchor)
    offset = anchor.utcoffset()
    if offset is None:
        raise LifecycleConfigError(f"Run anchor {anchor!r} has no timezone; refusing to guess one.")
    # A plain UTC datetime: Airflow hands out pendulum objects, whose arithmetic and isoformat()
    # drop the offset once converted to datetime.timezone.utc.
    wall = datetime(
        anchor.year, anchor.month, anchor.day, anchor.hour, anchor.minute, anchor.second, anchor.microsecond
    )
    return (wall - offset).replace(tzinfo=UTC)


def parse_retention_days(
    value: Any, *, field: str = "retention_days", floor: timedelta = DEFAULT_RETENTION_FLOOR
) -> timedelta:
    """Validate a retention given in days (an int, or the digit string a template renders to).

    :param value: days to keep; bools, floats, negative numbers and words are refused.
    :param field: the name used in the error message.
    :param floor: the smallest retention accepted.
    """
    if isinstance(value, bool) or value is None:
        raise LifecycleConfigError(f"{field} must be a whole number of days, got {value!r}")
    if isinstance(value, str):
        if not _DIGITS.match(value):
            raise LifecycleConfigError(f"{field} must be a whole number of days, got {value!r}")
        value = int(value)
    if not isinstance(value, int):
        raise LifecycleConfigError(f"{field} must be a whole number of days, got {value!r}")
    if value > MAX_RETENTION_DAYS:
        raise LifecycleConfigError(f"{field}={value} is above {MAX_RETENTION_DAYS} days (a hundred years)")
    retention = timedelta(days=value)
    if retention < floor or value <= 0:
        raise LifecycleConfigError(
            f"{field}={value} is below the floor of {floor.days} day(s); refusing to delete that recent data"
        )
    return retention


def compute_cutoff(context: Mapping[str, Any], retention: timedelta) -> datetime:
    """``run_anchor(context) - retention``: rows and objects strictly older than this are due."""
    if retention <= timedelta(0):
        raise LifecycleConfigError(f"retention must be positive, got {retention}")
    return run_anchor(context) - retention


def parse_retention_months(value: Any, *, field: str = "retention_months") -> int:
    """Validate a retention given in whole calendar months (an int or its rendered digit string)."""
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not _DIGITS.match(value)):
        raise LifecycleConfigError(f"{field} must be a whole number of months, got {value!r}")
    if isinstance(value, str):
        value = int(value)
    if not isinstance(value, int) or value < 1:
        raise LifecycleConfigError(f"{field} must be at least 1 month, got {value!r}")
    return value


def subtract_months(moment: datetime, months: int) -> datetime:
    """``moment`` minus whole calendar months, the day clamped to the target month's length."""
    index = moment.year * 12 + moment.month - 1 - months
    year, month = divmod(index, 12)
    month += 1
    days_in_month = [31, 29 if _leap(year) else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]
    return moment.replace(year=year, month=month, day=min(moment.day, days_in_month))


def compute_cutoff_months(context: Mapping[str, Any], months: int | str) -> datetime:
    """``run_anchor(context)`` minus ``months`` calendar months (for monthly partitions)."""
    return subtract_months(run_anchor(context), parse_retention_months(months))


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
