"""The cutoff helper: one anchor per run, whatever day it runs on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from data_lifecycle.cutoff import (
    compute_cutoff,
    compute_cutoff_months,
    parse_retention_days,
    parse_retention_months,
    run_anchor,
    subtract_months,
)
from data_lifecycle.exceptions import LifecycleConfigError

END = datetime(2027, 1, 2, 2, 0, tzinfo=UTC)


def test_anchor_is_data_interval_end_when_present():
    context = {"data_interval_end": END, "dag_run": SimpleNamespace(run_after=END + timedelta(hours=5))}
    assert run_anchor(context) == END


def test_anchor_falls_back_to_run_after_for_manual_runs():
    context = {"data_interval_end": None, "dag_run": SimpleNamespace(run_after=END)}
    assert compute_cutoff(context, timedelta(days=7)) == END - timedelta(days=7)


def test_anchor_without_either_is_refused():
    with pytest.raises(LifecycleConfigError, match="neither data_interval_end"):
        run_anchor({"dag_run": SimpleNamespace(run_after=None)})


@pytest.mark.parametrize(
    ("value", "days"),
    [pytest.param(30, 30, id="int"), pytest.param("7", 7, id="rendered-template-digits")],
)
def test_retention_days_accepts_whole_days(value, days):
    assert parse_retention_days(value) == timedelta(days=days)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(0, id="zero"),
        pytest.param(-3, id="negative"),
        pytest.param("thirty", id="word"),
        pytest.param(1.5, id="float"),
        pytest.param(True, id="bool"),
        pytest.param(None, id="none"),
    ],
)
def test_retention_days_refuses_bad_values(value):
    with pytest.raises(LifecycleConfigError, match="retention_days"):
        parse_retention_days(value)


@pytest.mark.parametrize(
    ("moment", "months", "expected"),
    [
        pytest.param(
            datetime(2027, 3, 31, tzinfo=UTC), 1, datetime(2027, 2, 28, tzinfo=UTC), id="clamps-day"
        ),
        pytest.param(
            datetime(2027, 1, 15, tzinfo=UTC), 13, datetime(2025, 12, 15, tzinfo=UTC), id="across-years"
        ),
        pytest.param(datetime(2028, 3, 29, tzinfo=UTC), 1, datetime(2028, 2, 29, tzinfo=UTC), id="leap-year"),
    ],
)
def test_subtract_months(moment, months, expected):
    assert subtract_months(moment, months) == expected


def test_months_cutoff_uses_the_run_anchor():
    context = {"data_interval_end": END, "dag_run": SimpleNamespace(run_after=END)}
    assert compute_cutoff_months(context, 13) == datetime(2025, 12, 2, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize("value", [0, -1, "x", None, True])
def test_months_retention_refuses_bad_values(value):
    with pytest.raises(LifecycleConfigError, match="retention_months"):
        parse_retention_months(value)


def test_pendulum_anchor_becomes_a_plain_aware_utc_datetime():
    import pendulum

    anchor = pendulum.datetime(2027, 4, 1, 8, tz="Europe/Berlin")
    cutoff = compute_cutoff(
        {"data_interval_end": anchor, "dag_run": SimpleNamespace(run_after=anchor)}, timedelta(days=1)
    )
    assert type(cutoff) is datetime
    assert cutoff.isoformat() == "2027-03-31T06:00:00+00:00"
    assert cutoff < datetime(2027, 3, 31, 6, 0, 1, tzinfo=UTC)
