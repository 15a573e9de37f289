"""S3 lifecycle rules: our policy format, validation against S3's limits, conversion and merge.

A friendly rule (what the policy file produces)::

    {"id": "logs-tiering", "prefix": "app/", "tags": {"team": "web"},
     "transitions": [{"days": 30, "storage_class": "STANDARD_IA"}, {"days": 90, "storage_class": "GLACIER"}],
     "expiration_days": 730, "abort_incomplete_multipart_days": 7,
     "noncurrent_transitions": [{"days": 30, "storage_class": "GLACIER"}],
     "noncurrent_expiration_days": 90, "absent": False}

``absent: True`` means "remove the rule with this id". A rule with an empty prefix and no tags acts
on the whole bucket: that is refused, except for ``abort_incomplete_multipart_days`` alone, unless the
rule says ``allow_whole_bucket: True``. Everything here is pure: no network.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from data_lifecycle.config_fields import MAX_DAYS
from data_lifecycle.exceptions import LifecycleConfigError
from data_lifecycle.pricing import MIN_STORAGE_DAYS

# PutBucketLifecycleConfiguration: "A lifecycle configuration can have up to 1,000 rules."
MAX_LIFECYCLE_RULES = 1_000
# Lifecycle ID element: "The value cannot be longer than 255 characters."
MAX_RULE_ID_LENGTH = 255
# Lifecycle transition considerations: objects must be stored >= 30 days before moving to an IA class.
IA_MIN_TRANSITION_DAYS = 30
IA_CLASSES = frozenset({"STANDARD_IA", "ONEZONE_IA"})
# Lifecycle transition waterfall: which class an object may move on to from each class.
ALLOWED_NEXT_CLASS: Mapping[str, frozenset[str]] = {
    "STANDARD_IA": frozenset({"INTELLIGENT_TIERING", "ONEZONE_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"}),
    "INTELLIGENT_TIERING": frozenset({"ONEZONE_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"}),
    "ONEZONE_IA": frozenset({"GLACIER", "DEEP_ARCHIVE"}),
    "GLACIER_IR": frozenset({"GLACIER", "DEEP_ARCHIVE"}),
    "GLACIER": frozenset({"DEEP_ARCHIVE"}),
    "DEEP_ARCHIVE": frozenset(),
}
TRANSITION_CLASSES = frozenset(ALLOWED_NEXT_CLASS)

_RULE_KEYS = frozenset(
    {
        "id",
        "prefix",
        "tags",
        "transitions",
        "expiration_days",
        "abort_incomplete_multipart_days",
        "noncurrent_transitions",
        "noncurrent_expiration_days",
        "absent",
        "allow_whole_bucket",
    }
)
# Actions that change or remove objects (abort_incomplete_multipart_days only drops unfinished uploads).
_OBJECT_ACTIONS = ("transitions", "expiration_days", "noncurrent_transitions", "noncurrent_expiration_days")


@dataclass(frozen=True)
class LifecycleDiff:
    """What a merge changes, by rule ID."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return bool(self.added or self.changed or self.removed)


def _positive_int(rule_id: str, name: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_DAYS:
        raise LifecycleConfigError(
            f"Lifecycle rule {rule_id!r}: {name} must be an integer >= {minimum} and <= {MAX_DAYS}, got {value!r}"
        )
    return value


def _check_transitions(
    rule_id: str, name: str, transitions: Any, warnings: list[str]
) -> list[tuple[int, str]]:
    """Validate one transition chain; return it as ``(days, class)`` pairs."""
    if not isinstance(transitions, Sequence) or isinstance(transitions, str):
        raise LifecycleConfigError(f"Lifecycle rule {rule_id!r}: {name} must be a list, got {transitions!r}")
    chain: list[tuple[int, str]] = []
    for index, step in enumerate(transitions):
        where = f"{name}[{index}]"
        if not isinstance(step, Mapping) or set(step) != {"days", "storage_class"}:
            raise LifecycleConfigError(
                f"Lifecycle rule {rule_id!r}: {where} must have exactly 'days' and 'storage_class', got {step!r}"
            )
        days = _positive_int(rule_id, f"{where}.days", step["days"], minimum=0)
        storage_class = step["storage_class"]
        if storage_class not in TRANSITION_CLASSES:
            raise LifecycleConfigError(
                f"Lifecycle rule {rule_id!r}: {where} has unknown storage class {storage_class!r}; "
                f"known: {sorted(TRANSITION_CLASSES)}"
            )
        if storage_class in IA_CLASSES and days < IA_MIN_TRANSITION_DAYS:
            raise LifecycleConfigError(
                f"Lifecycle rule {rule_id!r}: {where} moves objects to {storage_class} after {days} days; "
                f"S3 requires at least {IA_MIN_TRANSITION_DAYS}"
            )
        if chain:
            prev_days, prev_class = chain[-1]
            if days <= prev_days:
                raise LifecycleConfigError(
                    f"Lifecycle rule {rule_id!r}: {name} must be in ascending days; "
                    f"{storage_class} at {days} follows {prev_class} at {prev_days}"
                )
            if storage_class not in ALLOWED_NEXT_CLASS[prev_class]:
                raise LifecycleConfigError(
                    f"Lifecycle rule {rule_id!r}: {name} cannot move objects from {prev_class} to "
                    f"{storage_class}; allowed after {prev_class}: {sorted(ALLOWED_NEXT_CLASS[prev_class]) or 'none'}"
                )
            _warn_min_duration(
                rule_id,
                name,
                prev_class,
                stay=days - prev_days,
                action=f"moves on to {storage_class}",
                warnings=warnings,
            )
        chain.append((days, storage_class))
    return chain


def _warn_min_duration(
    rule_id: str, name: str, storage_class: str, *, stay: int, action: str, warnings: list[str]
) -> None:
    minimum = MIN_STORAGE_DAYS.get(storage_class)
    if minimum is not None and stay < minimum:
        warnings.append(
            f"Lifecycle rule {rule_id!r}: {name} keeps objects in {storage_class} for {stay} days before it "
            f"{action}; S3 charges a minimum of {minimum} days"
        )


def _check_expiration(
    rule_id: str, name: str, days: Any, chain: list[tuple[int, str]], warnings: list[str]
) -> None:
    if days is None:
        return
    days = _positive_int(rule_id, name, days)
    if chain:
        last_days, last_class = chain[-1]
        if days <= last_days:
            raise LifecycleConfigError(
                f"Lifecycle rule {rule_id!r}: {name}={days} must be after the last transition "
                f"({last_class} at {last_days} days)"
            )
        _warn_min_duration(
            rule_id, name, last_class, stay=days - last_days, action="expires", warnings=warnings
        )


def validate_rules(rules: Iterable[Mapping[str, Any]]) -> list[str]:
    """Check friendly rules against S3's limits; raise on the first error, return warnings.

    :param rules: rules in our format; ``absent`` rules only need an ``id``.
    """
    warnings: list[str] = []
    seen: set[str] = set()
    count = 0
    for index, rule in enumerate(rules):
        count += 1
        if not isinstance(rule, Mapping):
            raise LifecycleConfigError(f"Lifecycle rule #{index} must be a mapping, got {rule!r}")
        rule_id = rule.get("id")
        if not isinstance(rule_id, str) or not rule_id.strip() or len(rule_id) > MAX_RULE_ID_LENGTH:
            raise LifecycleConfigError(
                f"Lifecycle rule #{index}: id must be a non-empty string of at most "
                f"{MAX_RULE_ID_LENGTH} characters, got {rule_id!r}"
            )
        if rule_id in seen:
            raise LifecycleConfigError(f"Lifecycle rule {rule_id!r} is defined more than once")
        seen.add(rule_id)
        unknown = set(rule) - _RULE_KEYS
        if unknown:
            raise LifecycleConfigError(f"Lifecycle rule {rule_id!r}: unknown field(s) {sorted(unknown)}")
        if rule.get("absent", False) is True:
            continue
        if rule.get("absent", False) is not False:
            raise LifecycleConfigError(f"Lifecycle rule {rule_id!r}: absent must be true or false")
        prefix = rule.get("prefix", "")
        if not isinstance(prefix, str):
            raise LifecycleConfigError(f"Lifecycle rule {rule_id!r}: prefix must be a string, got {prefix!r}")
        tags = rule.get("tags") or {}
        if not isinstance(tags, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
        ):
            raise LifecycleConfigError(
                f"Lifecycle rule {rule_id!r}: tags must map strings to strings, got {tags!r}"
            )
        chain = _check_transitions(rule_id, "transitions", rule.get("transitions") or [], warnings)
        _check_expiration(rule_id, "expiration_days", rule.get("expiration_days"), chain, warnings)
        nc_chain = _check_transitions(
            rule_id, "noncurrent_transitions", rule.get("noncurrent_transitions") or [], warnings
        )
        _check_expiration(
            rule_id, "noncurrent_expiration_days", rule.get("noncurrent_expiration_days"), nc_chain, warnings
        )
        if rule.get("abort_incomplete_multipart_days") is not None:
            _positive_int(rule_id, "abort_incomplete_multipart_days", rule["abort_incomplete_multipart_days"])
            if tags:
                # PutBucketLifecycleConfiguration rejects AbortIncompleteMultipartUpload with a tag filter.
                raise LifecycleConfigError(
                    f"Lifecycle rule {rule_id!r}: abort_incomplete_multipart_days cannot be used with tags"
                )
        allow_whole = rule.get("allow_whole_bucket", False)
        if not isinstance(allow_whole, bool):
            raise LifecycleConfigError(
                f"Lifecycle rule {rule_id!r}: allow_whole_bucket must be true or false"
            )
        acts = [k for k in _OBJECT_ACTIONS if rule.get(k) not in (None, [])]
        if not prefix and not tags and acts and not allow_whole:
            raise LifecycleConfigError(
                f"Lifecycle rule {rule_id!r}: an empty prefix with no tags applies {', '.join(acts)} to the "
                "whole bucket; give a prefix, or set allow_whole_bucket: true if you mean it"
            )
        if not (chain or nc_chain) and all(
            rule.get(k) is None
            for k in ("expiration_days", "noncurrent_expiration_days", "abort_incomplete_multipart_days")
        ):
            raise LifecycleConfigError(f"Lifecycle rule {rule_id!r} has no action (transition or expiration)")
    if count > MAX_LIFECYCLE_RULES:
        raise LifecycleConfigError(
            f"{count} lifecycle rules given; S3 allows at most {MAX_LIFECYCLE_RULES} per bucket"
        )
    return warnings


def to_aws_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    """Convert a validated friendly rule to the shape PutBucketLifecycleConfiguration takes."""
    prefix = rule.get("prefix", "") or ""
    tags = [{"Key": k, "Value": v} for k, v in sorted((rule.get("tags") or {}).items())]
    lifecycle_filter: dict[str, Any]
    if len(tags) > 1 or (tags and prefix):
        lifecycle_filter = {"And": {"Prefix": prefix, "Tags": tags}} if prefix else {"And": {"Tags": tags}}
    elif tags:
        lifecycle_filter = {"Tag": tags[0]}
    else:
        lifecycle_filter = {"Prefix": prefix}
    aws: dict[str, Any] = {"ID": rule["id"], "Filter": lifecycle_filter, "Status": "Enabled"}
    if rule.get("transitions"):
        aws["Transitions"] = [
            {"Days": t["days"], "StorageClass": t["storage_class"]} for t in rule["transitions"]
        ]
    if rule.get("expiration_days") is not None:
        aws["Expiration"] = {"Days": rule["expiration_days"]}
    if rule.get("noncurrent_transitions"):
        aws["NoncurrentVersionTransitions"] = [
            {"NoncurrentDays": t["days"], "StorageClass": t["storage_class"]}
            for t in rule["noncurrent_transitions"]
        ]
    if rule.get("noncurrent_expiration_days") is not None:
        aws["NoncurrentVersionExpiration"] = {"NoncurrentDays": rule["noncurrent_expiration_days"]}
    if rule.get("abort_incomplete_multipart_days") is not None:
        aws["AbortIncompleteMultipartUpload"] = {
            "DaysAfterInitiation": rule["abort_incomplete_multipart_days"]
        }
    return aws


def _canonical_filter(rule: Mapping[str, Any]) -> dict[str, Any]:
    """One form for the equivalent ways S3 spells a filter (legacy Prefix, Prefix, Tag, And)."""
    raw = rule.get("Filter")
    if raw is None:
        raw = {"Prefix": rule.get("Prefix", "")}
    conditions = raw.get("And", raw)
    tags = list(conditions.get("Tags", []))
    if "Tag" in conditions:
        tags.append(conditions["Tag"])
    canonical: dict[str, Any] = {
        "Prefix": conditions.get("Prefix", "") or "",
        "Tags": sorted((t["Key"], t["Value"]) for t in tags),
    }
    for size_key in ("ObjectSizeGreaterThan", "ObjectSizeLessThan"):
        if conditions.get(size_key) is not None:
            canonical[size_key] = int(conditions[size_key])
    return canonical


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _canonical(v) for k, v in sorted(value.items()) if v not in (None, [], {})}
    if isinstance(value, list | tuple):
        return sorted((_canonical(v) for v in value), key=repr)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def normalise_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    """An AWS-shaped rule reduced to what matters for comparison (filter spelling, order, empties)."""
    body = {k: v for k, v in rule.items() if k not in ("Filter", "Prefix")}
    body["Filter"] = _canonical_filter(rule)
    return _canonical(body)


def merge_rules(
    current: Sequence[Mapping[str, Any]], desired: Sequence[Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], LifecycleDiff]:
    """Merge friendly ``desired`` rules into the bucket's ``current`` AWS rules by ID.

    Rules with IDs not in ``desired`` are kept as they are; ``absent`` rules are removed; the others
    replace the rule with the same ID in place, or are appended in the order given.
    """
    absent = {r["id"] for r in desired if r.get("absent", False)}
    wanted = {r["id"]: to_aws_rule(r) for r in desired if not r.get("absent", False)}
    diff = LifecycleDiff()
    merged: list[dict[str, Any]] = []
    seen: set[str] = set()
    for rule in current:
        rule_id = rule.get("ID", "")
        seen.add(rule_id)
        if rule_id in absent:
            diff.removed.append(rule_id)
        elif rule_id in wanted:
            if normalise_rule(rule) == normalise_rule(wanted[rule_id]):
                diff.unchanged.append(rule_id)
                merged.append(dict(rule))
            else:
                diff.changed.append(rule_id)
                merged.append(wanted[rule_id])
        else:
            merged.append(dict(rule))
    for rule_id, rule in wanted.items():
        if rule_id not in seen:
            diff.added.append(rule_id)
            merged.append(rule)
    if len(merged) > MAX_LIFECYCLE_RULES:
        raise LifecycleConfigError(
            f"Merging gives {len(merged)} lifecycle rules ({len(merged) - len(wanted)} kept from the bucket); "
            f"S3 allows at most {MAX_LIFECYCLE_RULES}"
        )
    return merged, diff
