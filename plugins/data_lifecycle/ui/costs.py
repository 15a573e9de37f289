"""The page's cost figures: storage cost now, what the cleanups save, and the 12-month forecast.

All of it comes from the recorded facts (the newest inventory, the S3 bytes the runs removed or
moved) priced by ``data_lifecycle.pricing`` and forecast by ``data_lifecycle.forecast``; nothing
is listed. The forecast sees the inventory at its granularity: each age band of each bucket,
prefix and class is one group of objects of the band's average size and middle age.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, timedelta
from typing import Any

from data_lifecycle.forecast import ObjectGroup, compare, rules_by_bucket
from data_lifecycle.pricing import DEFAULT_REGION, MONTH_DAYS, PRICES, monthly_cost, monthly_saving

# The middle age (days) of each band of data_lifecycle.inventory.AGE_BANDS; 365+ counts as a year.
BAND_AGE_DAYS: Mapping[str, int] = {"0-29": 15, "30-89": 60, "90-179": 135, "180-364": 272, "365+": 365}


def inventory_groups(rows: Iterable[Mapping[str, Any]]) -> list[ObjectGroup]:
    groups = []
    for row in rows:
        for band, counts in sorted(row["age_histogram"].items()):
            objects = int(counts["objects"])
            if objects <= 0:
                continue
            groups.append(
                ObjectGroup(
                    bucket=row["bucket"],
                    key=row["prefix"],
                    count=objects,
                    size_bytes=int(counts["bytes"]) // objects,
                    age_days=BAND_AGE_DAYS[band],
                    storage_class=row["storage_class"],
                )
            )
    return groups


def monthly_saving_of(change: Mapping[str, Any]) -> float:
    """USD per month the change saves: removed bytes cost nothing, moved bytes cost their new class."""
    if change["action"] == "removed":
        return monthly_cost({change["storage_class"]: change["bytes"]})
    return monthly_saving(change["bytes"], change["storage_class"], change["to_class"])


def cost_summary(
    inventory: Sequence[Mapping[str, Any]], changes: Sequence[Mapping[str, Any]], policy: Any, today: date
) -> dict[str, Any]:
    prices = PRICES[DEFAULT_REGION]
    by_class: dict[str, int] = {}
    for row in inventory:
        for counts in row["age_histogram"].values():
            by_class[row["storage_class"]] = by_class.get(row["storage_class"], 0) + int(counts["bytes"])
    per_month = sum(monthly_saving_of(c) for c in changes)
    to_date = sum(monthly_saving_of(c) * max((today - c["day"]).days, 0) / MONTH_DAYS for c in changes)
    summary: dict[str, Any] = {
        "region": prices.region,
        "prices_as_of": str(prices.as_of),
        "as_of": inventory[0]["date"].isoformat() if inventory else None,
        "monthly_now_usd": monthly_cost(by_class),
        "saving_per_month_usd": per_month,
        "saved_to_date_usd": to_date,
        "forecast": None,
    }
    groups = inventory_groups(inventory)
    if groups:
        start = inventory[0]["date"]
        comparison = compare(groups, rules_by_bucket(policy), months=12, prices=prices)
        summary["forecast"] = {
            "months": [(start + timedelta(days=MONTH_DAYS * (i + 1))).strftime("%b %Y") for i in range(12)],
            "without_rules_usd": [m.total_usd for m in comparison.without_rules],
            "with_rules_usd": [m.total_usd for m in comparison.with_rules],
            "total_with_rules_usd": sum(m.total_usd for m in comparison.with_rules),
            "saving_12_months_usd": comparison.saving_usd,
        }
    return summary
