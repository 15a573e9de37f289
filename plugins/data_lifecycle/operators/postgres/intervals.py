"""Partition intervals: infer daily/weekly/monthly/yearly from existing bounds, step, find gaps.

Pure functions over :class:`data_lifecycle.pg_catalog.Partition` bounds (UTC datetimes), used by
the premake operator. Daily and weekly grids keep the phase of the existing partitions (a weekly
grid starting on Mondays stays on Mondays); monthly and yearly grids are calendar months and years.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from data_lifecycle.exceptions import LifecycleConfigError
from data_lifecycle.pg_catalog import Partition

INTERVALS = ("daily", "weekly", "monthly", "yearly")
_FIXED = {"daily": timedelta(days=1), "weekly": timedelta(days=7)}
# Name suffixes, strftime of the range's lower bound.
SUFFIX_FORMATS = {"daily": "%Y_%m_%d", "weekly": "%Y_%m_%d", "monthly": "%Y_%m", "yearly": "%Y"}
# How a period is named in summaries.
LABEL_FORMATS = {"daily": "%Y-%m-%d", "weekly": "%Y-%m-%d", "monthly": "%Y-%m", "yearly": "%Y"}
MAX_SUFFIX_LENGTH = len("_YYYY_MM_DD")


def add_months(value: datetime, months: int) -> datetime:
    index = value.year * 12 + value.month - 1 + months
    return value.replace(year=index // 12, month=index % 12 + 1, day=1)


def _kind(lower: datetime, upper: datetime) -> str | None:
    for name, width in _FIXED.items():
        if upper - lower == width:
            return name
    at_start = lower == lower.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if at_start and upper == add_months(lower, 1):
        return "monthly"
    if at_start and lower.month == 1 and upper == add_months(lower, 12):
        return "yearly"
    return None


def bounded(parts: Sequence[Partition]) -> list[Partition]:
    return [p for p in parts if not p.is_default and p.lower is not None and p.upper is not None]


def infer_interval(parts: Sequence[Partition], *, table: str) -> str | None:
    """The interval most existing partitions span; None when there are none to look at."""
    kinds = Counter(_kind(p.lower, p.upper) for p in bounded(parts))  # type: ignore[arg-type]
    if not kinds:
        return None
    kind, _ = kinds.most_common(1)[0]
    if kind is None:
        raise LifecycleConfigError(
            f"{table}: cannot tell the partition interval from the existing bounds; declare interval"
            f" (one of {list(INTERVALS)}) in the policy"
        )
    return kind


def period_start(value: datetime, interval: str, origin: datetime | None) -> datetime:
    """The start of the period of ``interval`` holding ``value`` (on ``origin``'s grid if fixed-width)."""
    if interval in _FIXED:
        width = _FIXED[interval]
        if origin is None:
            origin = value.replace(hour=0, minute=0, second=0, microsecond=0)
        return origin + ((value - origin) // width) * width
    month = value.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return month.replace(month=1) if interval == "yearly" else month


def next_period(value: datetime, interval: str) -> datetime:
    if interval in _FIXED:
        return value + _FIXED[interval]
    return add_months(value, 12 if interval == "yearly" else 1)


def uncovered(
    lower: datetime, upper: datetime, parts: Sequence[Partition]
) -> list[tuple[datetime, datetime]]:
    """The pieces of ``[lower, upper)`` no bounded partition covers (oldest first)."""
    pieces = [(lower, upper)]
    for part in parts:
        if part.is_default:
            continue
        p_lo = part.lower or datetime.min.replace(tzinfo=UTC)  # MINVALUE
        p_hi = part.upper or datetime.max.replace(tzinfo=UTC)  # MAXVALUE
        rest = []
        for lo, hi in pieces:
            if p_hi <= lo or p_lo >= hi:
                rest.append((lo, hi))
                continue
            if lo < p_lo:
                rest.append((lo, p_lo))
            if p_hi < hi:
                rest.append((p_hi, hi))
        pieces = rest
    return sorted(pieces)
