"""What S3 will cost month by month for the next year, with the policy's lifecycle rules and without.

The model follows S3's billing, in days, over 30-day months (``pricing.MONTH_DAYS``):

- storage: bytes held in each class each day, at the class's price per GB-month; objects in
  STANDARD_IA, ONEZONE_IA and GLACIER_IR bill at least 128 KiB each; objects in GLACIER and
  DEEP_ARCHIVE carry 32 KiB billed at their class's price and 8 KiB at STANDARD's;
- transitions: one lifecycle transition request per object per move, at the target class's price;
- minimum storage duration: an object that leaves a class (by transition or expiration) before
  the class's minimum is charged the remaining days, in the month it leaves;
- S3 does not transition objects smaller than 128 KiB (they stay where they are until expired).

Rules are the policy's friendly lifecycle rules (``BucketTiers.rules``, the format
``s3_lifecycle_rules`` validates) and its ``s3_expiry`` rules. When several rules match an object,
S3's precedence applies: expiration wins over transition, and the coldest class due wins. Rules
with tag filters are not applied (an inventory does not list tags), so the forecast errs on the
side of no saving. Everything here is pure and deterministic.

``python -m data_lifecycle.forecast --daily-gb 10`` prints the seed's scenario: 10 GB of new data a
day on the seed's tiering schedule, month by month and in the steady state.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from data_lifecycle.policy import Policy
from data_lifecycle.pricing import (
    ARCHIVE_OVERHEAD_CLASS_BYTES,
    ARCHIVE_OVERHEAD_CLASSES,
    ARCHIVE_OVERHEAD_STANDARD_BYTES,
    DEFAULT_REGION,
    GB,
    MIN_BILLABLE_BYTES,
    MIN_STORAGE_DAYS,
    MIN_TRANSITION_BYTES,
    MONTH_DAYS,
    PRICES,
    STORAGE_CLASSES,
    RegionPrices,
    region_prices,
)
from data_lifecycle.s3_lifecycle_rules import validate_rules

Rules = Sequence[Mapping[str, Any]]
_RANK = {cls: i for i, cls in enumerate(STORAGE_CLASSES)}

# The seed's DataArchiver.classify_data: hot < 30 days, warm < 90, cold < 365, then deep archive
# (the shipped policy's lifecycle-logs-tiers rule is the same schedule).
SEED_TIERS: tuple[tuple[int, str], ...] = ((30, "STANDARD_IA"), (90, "GLACIER"), (365, "DEEP_ARCHIVE"))
# The seed keeps deep-archived data forever, which never reaches a steady state; the shipped
# policy expires app/ logs after 7 years (lifecycle-logs-tiers), so the scenario does too.
SEED_RETENTION_DAYS = 2555


@dataclass(frozen=True)
class ObjectGroup:
    """``count`` objects of one size, age and class under one key (a listing row, or a bucket of an
    inventory's size/age histogram).

    :param bucket: the bucket, which selects the lifecycle rules.
    :param key: the object key, or a key prefix, matched against the rules' prefixes.
    :param count: number of objects.
    :param size_bytes: size of each object.
    :param age_days: age at the start of the forecast; negative for objects written that many days
        after the start (new data).
    :param storage_class: class at the start of the forecast (or when written, for new data).
    """

    bucket: str
    key: str
    count: int
    size_bytes: int
    age_days: int
    storage_class: str = "STANDARD"


@dataclass(frozen=True)
class Schedule:
    """What the matching rules do to an object: move at these ages, then expire."""

    transitions: tuple[tuple[int, str], ...] = ()
    expiration_days: int | None = None


@dataclass(frozen=True)
class MonthCost:
    """One month of an estate: bytes per class on its last day, and what the month costs (USD)."""

    bytes_by_class: Mapping[str, int] = field(default_factory=dict)
    storage_usd: float = 0.0
    transition_usd: float = 0.0
    early_deletion_usd: float = 0.0
    transition_requests: int = 0
    expired_bytes: int = 0

    @property
    def total_usd(self) -> float:
        return self.storage_usd + self.transition_usd + self.early_deletion_usd

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_class.values())


@dataclass(frozen=True)
class Comparison:
    """The same estate forecast without the rules and with them."""

    without_rules: tuple[MonthCost, ...]
    with_rules: tuple[MonthCost, ...]

    @property
    def saving_usd(self) -> float:
        return sum(m.total_usd for m in self.without_rules) - sum(m.total_usd for m in self.with_rules)


@dataclass(frozen=True)
class _Segment:
    """A stay in one class, in ages (days): ``[start, end)``, ``end`` None for ever."""

    storage_class: str
    start: int
    end: int | None
    entered: int  # the age the object entered the class, for the minimum duration
    next_class: str | None = None  # set when the stay ends by a transition


@dataclass
class _Month:
    bytes_by_class: dict[str, int] = field(default_factory=dict)
    storage_usd: float = 0.0
    transition_usd: float = 0.0
    early_deletion_usd: float = 0.0
    transition_requests: int = 0
    expired_bytes: int = 0

    def frozen(self) -> MonthCost:
        ordered = {c: self.bytes_by_class[c] for c in sorted(self.bytes_by_class, key=_rank)}
        return MonthCost(
            ordered,
            self.storage_usd,
            self.transition_usd,
            self.early_deletion_usd,
            self.transition_requests,
            self.expired_bytes,
        )


def _rank(storage_class: str) -> int:
    if storage_class not in _RANK:
        raise KeyError(f"Unknown storage class {storage_class!r}; known: {list(STORAGE_CLASSES)}")
    return _RANK[storage_class]


def schedule_for(key: str, rules: Iterable[Mapping[str, Any]]) -> Schedule:
    """The schedule S3 applies to ``key`` under ``rules`` (friendly lifecycle rules).

    Expiration is the earliest of the matching rules'; a transition is kept only if it goes to a
    colder class than every earlier one, and only if it comes before the expiration.
    """
    steps: list[tuple[int, str]] = []
    expirations: list[int] = []
    for rule in rules:
        if rule.get("absent") or rule.get("tags") or not key.startswith(rule.get("prefix") or ""):
            continue
        steps.extend((int(t["days"]), str(t["storage_class"])) for t in rule.get("transitions") or ())
        if rule.get("expiration_days") is not None:
            expirations.append(int(rule["expiration_days"]))
    expiration = min(expirations, default=None)
    chain: list[tuple[int, str]] = []
    for days, cls in sorted(steps, key=lambda s: (s[0], -_rank(s[1]))):
        if expiration is not None and days >= expiration:
            break
        if not chain or _rank(cls) > _rank(chain[-1][1]):
            chain.append((days, cls))
    return Schedule(tuple(chain), expiration)


def rules_by_bucket(policy: Policy) -> dict[str, tuple[Mapping[str, Any], ...]]:
    """The policy's lifecycle rules per bucket: ``storage_tiers`` as they are, and ``s3_expiry`` as
    expiration rules (cleanup_s3_objects deletes those objects itself, after ``retention_days``)."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for tiers in policy.storage_tiers:
        out.setdefault(tiers.bucket, []).extend(tiers.rules)
    for expiry in policy.s3_expiry:
        out.setdefault(expiry.bucket, []).append(
            {
                "id": f"s3_expiry-{expiry.id}",
                "prefix": expiry.prefix,
                "expiration_days": expiry.retention_days,
            }
        )
    return {bucket: tuple(rules) for bucket, rules in out.items()}


def _segments(group: ObjectGroup, schedule: Schedule) -> list[_Segment]:
    """The group's stays from the forecast start (or from when it is written) to its expiration."""
    start = max(group.age_days, 0)
    cls = group.storage_class
    # Time already spent in the current class: since the schedule moved it there, else since written.
    entered = next((d for d, c in schedule.transitions if c == cls and d <= start), 0)
    expiration = schedule.expiration_days
    if expiration is not None and expiration <= start:
        return [_Segment(cls, start, start, entered)]  # overdue: expired on the first day
    steps: list[tuple[int, str]] = []
    if group.size_bytes >= MIN_TRANSITION_BYTES:
        ahead = [(d, c) for d, c in schedule.transitions if _rank(c) > _rank(cls)]
        due = [s for s in ahead if s[0] <= start]
        # An overdue object moves once, straight to the coldest class due.
        steps = due[-1:] + [s for s in ahead if s[0] > start]
    segments: list[_Segment] = []
    for days, target in steps:
        at = max(days, start)
        segments.append(_Segment(cls, start, at, entered, next_class=target))
        cls, start, entered = target, at, at
    segments.append(_Segment(cls, start, expiration, entered))
    return segments


def _storage_rate(size_bytes: int, storage_class: str, prices: RegionPrices) -> float:
    """USD per object per month in ``storage_class``, with the minimum billable size and overheads."""
    billable = max(size_bytes, MIN_BILLABLE_BYTES.get(storage_class, 0))
    rate = billable / GB * prices.storage(storage_class)
    if storage_class in ARCHIVE_OVERHEAD_CLASSES:
        rate += ARCHIVE_OVERHEAD_CLASS_BYTES / GB * prices.storage(storage_class)
        rate += ARCHIVE_OVERHEAD_STANDARD_BYTES / GB * prices.storage("STANDARD")
    return rate


def _add_group(months: list[_Month], group: ObjectGroup, schedule: Schedule, prices: RegionPrices) -> None:
    n = group.count
    for seg in _segments(group, schedule):
        rate = n * _storage_rate(group.size_bytes, seg.storage_class, prices)
        # Forecast days: day t is when the group is t + age_days old.
        t_start = seg.start - group.age_days
        t_end = None if seg.end is None else seg.end - group.age_days
        for index, month in enumerate(months):
            lo, hi = index * MONTH_DAYS, (index + 1) * MONTH_DAYS
            days = (hi if t_end is None else min(hi, t_end)) - max(lo, t_start)
            if days > 0:
                month.storage_usd += rate * days / MONTH_DAYS
            last_day = hi - 1
            if t_start <= last_day and (t_end is None or last_day < t_end):
                month.bytes_by_class[seg.storage_class] = (
                    month.bytes_by_class.get(seg.storage_class, 0) + n * group.size_bytes
                )
        if seg.end is None or t_end is None or t_end // MONTH_DAYS >= len(months):
            continue
        month = months[t_end // MONTH_DAYS]
        short = MIN_STORAGE_DAYS.get(seg.storage_class, 0) - (seg.end - seg.entered)
        if short > 0:
            month.early_deletion_usd += rate * short / MONTH_DAYS
        if seg.next_class is not None:
            month.transition_requests += n
            month.transition_usd += n * prices.transition(seg.next_class)
        else:
            month.expired_bytes += n * group.size_bytes


def forecast(
    groups: Iterable[ObjectGroup],
    rules: Mapping[str, Rules],
    *,
    months: int = 12,
    prices: RegionPrices | None = None,
) -> tuple[MonthCost, ...]:
    """Month by month for ``months`` months: bytes per class on the month's last day and its cost.

    :param groups: the estate (listing or inventory rows) and any new data (negative ages).
    :param rules: friendly lifecycle rules per bucket; ``{}`` forecasts the estate left as it is.
    :param months: how many 30-day months to forecast.
    :param prices: a region's price table (default us-east-1).
    """
    prices = prices or PRICES[DEFAULT_REGION]
    out = [_Month() for _ in range(months)]
    for group in groups:
        if group.count <= 0 or group.size_bytes < 0:
            raise ValueError(f"Object group {group} needs a positive count and a size >= 0")
        _add_group(out, group, schedule_for(group.key, rules.get(group.bucket, ())), prices)
    return tuple(m.frozen() for m in out)


def compare(
    groups: Iterable[ObjectGroup],
    rules: Mapping[str, Rules],
    *,
    months: int = 12,
    prices: RegionPrices | None = None,
) -> Comparison:
    """The estate forecast as it is (no lifecycle rules at all) and under ``rules``."""
    groups = tuple(groups)
    return Comparison(
        without_rules=forecast(groups, {}, months=months, prices=prices),
        with_rules=forecast(groups, rules, months=months, prices=prices),
    )


def daily_inflow(
    bucket: str, key: str, *, objects_per_day: int, object_size: int, days: int
) -> tuple[ObjectGroup, ...]:
    """New data: ``objects_per_day`` objects of ``object_size`` written on each of ``days`` days."""
    return tuple(ObjectGroup(bucket, key, objects_per_day, object_size, age_days=-day) for day in range(days))


def steady_state(
    objects_per_day: int, object_size: int, schedule: Schedule, *, prices: RegionPrices | None = None
) -> MonthCost:
    """One month once the estate has stopped growing: the data written each day is expired each day.

    Each month then holds every age of the data once, so it costs 30 times the whole life of one
    day's data. Needs an expiration: without one the estate grows for ever.
    """
    if schedule.expiration_days is None:
        raise ValueError("A steady state needs an expiration: without one the estate grows for ever")
    prices = prices or PRICES[DEFAULT_REGION]
    group = ObjectGroup("", "", objects_per_day, object_size, age_days=0)
    life = [_Month() for _ in range(schedule.expiration_days // MONTH_DAYS + 1)]
    _add_group(life, group, schedule, prices)
    held: dict[str, int] = {}
    for seg in _segments(group, schedule):
        if seg.end is not None and seg.end > seg.start:
            held[seg.storage_class] = held.get(seg.storage_class, 0) + (
                objects_per_day * object_size * (seg.end - seg.start)
            )
    return replace(
        _Month(held).frozen(),
        storage_usd=MONTH_DAYS * sum(m.storage_usd for m in life),
        transition_usd=MONTH_DAYS * sum(m.transition_usd for m in life),
        early_deletion_usd=MONTH_DAYS * sum(m.early_deletion_usd for m in life),
        transition_requests=MONTH_DAYS * sum(m.transition_requests for m in life),
        expired_bytes=MONTH_DAYS * objects_per_day * object_size,
    )


def seed_rules(retention_days: int = SEED_RETENTION_DAYS, *, tiering: bool = True) -> list[dict[str, Any]]:
    """The seed's schedule as one friendly lifecycle rule (validated like the policy's).

    The scenario is one bucket of new data, so the rule covers the whole bucket on purpose.
    """
    rule: dict[str, Any] = {
        "id": "seed-tiers",
        "prefix": "",
        "allow_whole_bucket": True,
        "expiration_days": retention_days,
    }
    if tiering:
        rule["transitions"] = [{"days": d, "storage_class": c} for d, c in SEED_TIERS if d < retention_days]
    validate_rules([rule])
    return [rule]


# -- the command ------------------------------------------------------------------------------


def usd(value: float) -> str:
    """Dollars with enough digits to show a demo's cents and a fleet's thousands alike."""
    if value == 0:
        return "$0"
    if abs(value) < 0.01:
        return f"${value:.6f}"
    return f"${value:,.2f}"


def gib(size: int) -> str:
    return f"{size / GB:,.1f}"


def month_table(comparison: Comparison, *, unit: str = "GiB") -> list[str]:
    """Rows: month, bytes held, cost without and with the rules, and the bytes per class with them."""
    scale, fmt = (GB, "{:,.1f}") if unit == "GiB" else (1024**2, "{:,.2f}")
    classes = [c for c in STORAGE_CLASSES if any(m.bytes_by_class.get(c) for m in comparison.with_rules)] or [
        "STANDARD"
    ]
    head = f"  {'month':>5} {'stored ' + unit:>12} {'no rules':>12} {'with rules':>12}   " + " ".join(
        f"{c:>12}" for c in classes
    )
    rows = [head]
    for i, (bare, ruled) in enumerate(zip(comparison.without_rules, comparison.with_rules, strict=True)):
        per_class = " ".join(f"{fmt.format(ruled.bytes_by_class.get(c, 0) / scale):>12}" for c in classes)
        rows.append(
            f"  {i + 1:>5} {fmt.format(bare.total_bytes / scale):>12} {usd(bare.total_usd):>12} "
            f"{usd(ruled.total_usd):>12}   {per_class}"
        )
    total_bare = sum(m.total_usd for m in comparison.without_rules)
    total_ruled = sum(m.total_usd for m in comparison.with_rules)
    rows.append(f"  {'total':>5} {'':>12} {usd(total_bare):>12} {usd(total_ruled):>12}")
    return rows


def seed_report(
    *,
    daily_gb: float,
    object_size: int,
    months: int = 12,
    retention_days: int = SEED_RETENTION_DAYS,
    prices: RegionPrices | None = None,
) -> list[str]:
    """The seed's scenario: the next ``months`` from an empty bucket, then the steady state."""
    prices = prices or PRICES[DEFAULT_REGION]
    per_day = max(1, round(daily_gb * GB / object_size))
    tiered, bare = seed_rules(retention_days), seed_rules(retention_days, tiering=False)
    inflow = daily_inflow(
        "seed", "logs/", objects_per_day=per_day, object_size=object_size, days=months * MONTH_DAYS
    )
    comparison = Comparison(
        without_rules=forecast(inflow, {"seed": bare}, months=months, prices=prices),
        with_rules=forecast(inflow, {"seed": tiered}, months=months, prices=prices),
    )
    schedule = " -> ".join(["STANDARD"] + [f"{c} at {d} d" for d, c in SEED_TIERS if d < retention_days])
    out = [
        f"Seed scenario: {per_day * object_size / GB:,.2f} GiB of new data a day in {object_size / 1024**2:,.2f} MiB "
        f"objects ({per_day:,} a day), expired at {retention_days} days; {prices.region} prices of {prices.as_of}",
        f"  tiering (the seed's schedule): {schedule}",
        f"  the next {months} months from an empty bucket ('no rules' = expiration only):",
        *month_table(comparison),
    ]
    steady_bare = steady_state(per_day, object_size, schedule_for("", bare), prices=prices)
    steady_tiered = steady_state(per_day, object_size, schedule_for("", tiered), prices=prices)
    out.append(f"  steady state (from day {retention_days} on), per month:")
    out.append(f"    {'':22} {'no tiering':>12} {'with tiering':>14}")
    for label, attr in (
        ("storage", "storage_usd"),
        ("transition requests", "transition_usd"),
        ("minimum-duration", "early_deletion_usd"),
        ("total", "total_usd"),
    ):
        out.append(
            f"    {label:22} {usd(getattr(steady_bare, attr)):>12} {usd(getattr(steady_tiered, attr)):>14}"
        )
    held = ", ".join(f"{c} {gib(b)} GiB" for c, b in steady_tiered.bytes_by_class.items())
    out.append(f"    held with tiering: {held}")
    saving = 1 - steady_tiered.total_usd / steady_bare.total_usd if steady_bare.total_usd else 0.0
    out.append(
        f"    saving: {usd(steady_bare.total_usd - steady_tiered.total_usd)} a month, {saving * 100:.1f} %"
    )
    return out


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        value = kind(text)
        if not value > 0 or math.isinf(value):
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
        return value

    return parse


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m data_lifecycle.forecast",
        description="S3 cost of the seed's scenario with and without its tiering schedule.",
    )
    parser.add_argument("--daily-gb", type=_positive(float), default=10.0, help="new data a day, GiB (10)")
    parser.add_argument("--object-mb", type=_positive(float), default=16.0, help="object size, MiB (16)")
    parser.add_argument("--months", type=_positive(int), default=12, help="months to forecast (12)")
    parser.add_argument(
        "--retention-days",
        type=_positive(int),
        default=SEED_RETENTION_DAYS,
        help=f"expire objects at this age ({SEED_RETENTION_DAYS}, the shipped policy's for logs)",
    )
    parser.add_argument("--region", choices=sorted(PRICES), default=DEFAULT_REGION)
    args = parser.parse_args(argv)
    lines = seed_report(
        daily_gb=args.daily_gb,
        object_size=max(1, round(args.object_mb * 1024**2)),
        months=args.months,
        retention_days=args.retention_days,
        prices=region_prices(args.region),
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
