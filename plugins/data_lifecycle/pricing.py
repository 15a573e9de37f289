"""S3 prices: one dated table per region, read by the cost report, the savings estimates and the
12-month forecast (``data_lifecycle.forecast``).

Figures are USD as published on the Amazon S3 pricing page for the region. Storage is the
first-tier price per GB-month (the first 50 TB of STANDARD; larger estates pay a few percent
less). Retrieval, GET/PUT and data-transfer charges are not modelled: the forecast is about what
the lifecycle rules change, which is storage, transitions and minimum charges.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from types import MappingProxyType

GB = 1024**3
KIB = 1024
# Days in a billing month in the forecast; AWS averages byte-hours over the calendar month.
MONTH_DAYS = 30
DEFAULT_REGION = "us-east-1"

# S3 storage classes: minimum storage duration (days). Deleting, overwriting or transitioning an
# object earlier is charged for the remaining days.
MIN_STORAGE_DAYS: Mapping[str, int] = MappingProxyType(
    {
        "STANDARD_IA": 30,
        "ONEZONE_IA": 30,
        "GLACIER_IR": 90,
        "GLACIER": 90,
        "DEEP_ARCHIVE": 180,
    }
)
# Lifecycle transition considerations: "Amazon S3 does not transition objects that are smaller than
# 128 KB" (the default since September 2024; KB there is 1,024 bytes).
MIN_TRANSITION_BYTES = 128 * KIB
# Storage classes: "minimum billable object size of 128 KB" for Standard-IA, One Zone-IA and
# Glacier Instant Retrieval.
MIN_BILLABLE_BYTES: Mapping[str, int] = MappingProxyType(
    {"STANDARD_IA": 128 * KIB, "ONEZONE_IA": 128 * KIB, "GLACIER_IR": 128 * KIB}
)
# Glacier Flexible Retrieval and Deep Archive: each archived object carries 32 KB of index data
# billed at the class's price, and 8 KB of metadata billed at the STANDARD price.
ARCHIVE_OVERHEAD_CLASS_BYTES = 32 * KIB
ARCHIVE_OVERHEAD_STANDARD_BYTES = 8 * KIB
ARCHIVE_OVERHEAD_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
# Coldest last: the order lifecycle transitions go in (S3's waterfall), and the order reports list.
STORAGE_CLASSES = (
    "STANDARD",
    "INTELLIGENT_TIERING",
    "STANDARD_IA",
    "ONEZONE_IA",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
)


@dataclass(frozen=True)
class RegionPrices:
    """S3 prices of one region, as published on ``as_of``.

    :param region: AWS region code.
    :param as_of: the date the figures were read from the pricing page.
    :param storage_per_gb_month: USD per GB-month, per storage class.
    :param transition_per_1000: USD per 1,000 lifecycle transition requests, per target class.
    :param write_per_1000: USD per 1,000 PUT, COPY, POST or LIST requests, by the class written
        (a COPY is billed at the destination's class; LIST at STANDARD's).
    :param read_per_1000: USD per 1,000 GET or HEAD requests of STANDARD objects (DELETE is free).
    :param batch_operations_per_job: USD per S3 Batch Operations job.
    :param batch_operations_per_million: USD per million objects a Batch Operations job processes.
    :param inventory_per_million: USD per million objects listed in an S3 Inventory report.
    """

    region: str
    as_of: date
    storage_per_gb_month: Mapping[str, float]
    transition_per_1000: Mapping[str, float]
    write_per_1000: Mapping[str, float] = field(default_factory=dict)
    read_per_1000: float = 0.0
    batch_operations_per_job: float = 0.0
    batch_operations_per_million: float = 0.0
    inventory_per_million: float = 0.0

    def storage(self, storage_class: str | None) -> float:
        """USD per GB-month of a class; S3 reports STANDARD objects with no class at all."""
        key = storage_class or "STANDARD"
        if key not in self.storage_per_gb_month:
            raise KeyError(
                f"No {self.region} price for storage class {key!r}; known: {sorted(self.storage_per_gb_month)}"
            )
        return self.storage_per_gb_month[key]

    def transition(self, target_class: str) -> float:
        """USD for one lifecycle transition request into ``target_class``."""
        if target_class not in self.transition_per_1000:
            raise KeyError(f"No {self.region} transition price into {target_class!r}")
        return self.transition_per_1000[target_class] / 1000


PRICES: Mapping[str, RegionPrices] = MappingProxyType(
    {
        "us-east-1": RegionPrices(
            region="us-east-1",
            as_of=date(2026, 6, 1),
            storage_per_gb_month=MappingProxyType(
                {
                    "STANDARD": 0.023,
                    "INTELLIGENT_TIERING": 0.023,  # frequent-access tier; monitoring fee not modelled
                    "STANDARD_IA": 0.0125,
                    "ONEZONE_IA": 0.01,
                    "GLACIER_IR": 0.004,
                    "GLACIER": 0.0036,
                    "DEEP_ARCHIVE": 0.00099,
                }
            ),
            transition_per_1000=MappingProxyType(
                {
                    "INTELLIGENT_TIERING": 0.01,
                    "STANDARD_IA": 0.01,
                    "ONEZONE_IA": 0.01,
                    "GLACIER_IR": 0.02,
                    "GLACIER": 0.03,
                    "DEEP_ARCHIVE": 0.05,
                }
            ),
            write_per_1000=MappingProxyType(
                {
                    "STANDARD": 0.005,
                    "STANDARD_IA": 0.01,
                    "GLACIER_IR": 0.02,
                    "GLACIER": 0.03,
                    "DEEP_ARCHIVE": 0.05,
                }
            ),
            read_per_1000=0.0004,
            batch_operations_per_job=0.25,
            batch_operations_per_million=1.00,
            inventory_per_million=0.0025,
        ),
    }
)

PRICE_PER_GB_MONTH: Mapping[str, float] = PRICES[DEFAULT_REGION].storage_per_gb_month


def region_prices(region: str = DEFAULT_REGION) -> RegionPrices:
    """The price table of ``region``; a clear error names the regions we have prices for."""
    if region not in PRICES:
        raise KeyError(f"No S3 prices for region {region!r}; known: {sorted(PRICES)}")
    return PRICES[region]


def price_per_gb_month(storage_class: str | None) -> float:
    """us-east-1 price of a storage class; S3 reports STANDARD objects with no class at all."""
    return PRICES[DEFAULT_REGION].storage(storage_class)


def monthly_cost(bytes_by_class: Mapping[str, int]) -> float:
    """Monthly storage cost in USD (us-east-1) of the given bytes per storage class."""
    return sum(size / GB * price_per_gb_month(cls) for cls, size in bytes_by_class.items())


def monthly_saving(size_bytes: int, from_class: str | None, to_class: str | None) -> float:
    """USD per month (us-east-1) saved by moving ``size_bytes`` from one class to another."""
    return size_bytes / GB * (price_per_gb_month(from_class) - price_per_gb_month(to_class))
