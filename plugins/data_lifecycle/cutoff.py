"""The one place that turns a run's context into a cutoff timestamp.

``anchor = data_interval_end or dag_run.run_after`` and ``cutoff = anchor - retention``. Never the
wall clock: a cleared or backfilled run has the same anchor as the first try, so it selects the same
rows and objects, and a second run of the same interval finds nothing left to do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from data_lifecycle.exceptions import LifecycleConfigError

# Retention below this is almost always a mistake (a unit slip, a template rendering to 0).
DEFAULT_RETENTION_FLOOR = timedelta(days=1)

_DIGITS = re.compile(r"^\s*\d+\s*$")


def run_anchor(context: Mapping[str, Any]) -> datetime:
    """The end of the run's data interval, else its ``run_after`` (manual runs without a date)."""
    anchor = context.get("data_interval_end")
    if anchor is None:
        dag_run = context.get("dag_run")
        anchor = getattr(dag_run, "run_after", None)
        if anchor is None and isinstance(dag_run, Mapping):
            anchor = dag_run.get("run_after")
    if anchor is None:
        raise LifecycleConfigError(
            "Cannot compute a cutoff: the context has neither data_interval_end nor dag_run.run_after."
        )
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
