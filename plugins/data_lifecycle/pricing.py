"""S3 storage prices, the one table the cost report and the savings estimates read.

us-east-1, USD per GB-month, as published by AWS (see DESIGN.md). Request, retrieval and
minimum-duration charges are not modelled: the figures are storage cost only.
"""

from __future__ import annotations

from collections.abc import Mapping

GB = 1024**3

PRICE_PER_GB_MONTH: Mapping[str, float] = {
    "STANDARD": 0.023,
    "STANDARD_IA": 0.0125,
    "ONEZONE_IA": 0.01,
    "INTELLIGENT_TIERING": 0.023,
    "GLACIER_IR": 0.004,
    "GLACIER": 0.0036,
    "DEEP_ARCHIVE": 0.00099,
}


def price_per_gb_month(storage_class: str | None) -> float:
    """Price of a storage class; S3 reports STANDARD objects with no class at all."""
    key = storage_class or "STANDARD"
    if key not in PRICE_PER_GB_MONTH:
        raise KeyError(f"No price for storage class {key!r}; known: {sorted(PRICE_PER_GB_MONTH)}")
    return PRICE_PER_GB_MONTH[key]


def monthly_cost(bytes_by_class: Mapping[str, int]) -> float:
    """Monthly storage cost in USD of the given bytes per storage class."""
    return sum(size / GB * price_per_gb_month(cls) for cls, size in bytes_by_class.items())


def monthly_saving(size_bytes: int, from_class: str | None, to_class: str | None) -> float:
    """USD per month saved by moving ``size_bytes`` from one class to another."""
    return size_bytes / GB * (price_per_gb_month(from_class) - price_per_gb_month(to_class))
