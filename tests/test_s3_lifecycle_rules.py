"""Pure tests of the lifecycle rule model: validation, conversion, normalisation and merge."""

from __future__ import annotations

from typing import Any

import pytest

from data_lifecycle.exceptions import LifecycleConfigError
from data_lifecycle.s3_lifecycle_rules import (
    MAX_LIFECYCLE_RULES,
    merge_rules,
    normalise_rule,
    to_aws_rule,
    validate_rules,
)

TIERING: dict[str, Any] = {
    "id": "logs-tiering",
    "prefix": "app/",
    "transitions": [
        {"days": 30, "storage_class": "STANDARD_IA"},
        {"days": 90, "storage_class": "GLACIER"},
        {"days": 365, "storage_class": "DEEP_ARCHIVE"},
    ],
    "expiration_days": 730,
    "abort_incomplete_multipart_days": 7,
    "noncurrent_transitions": [{"days": 30, "storage_class": "GLACIER"}],
    "noncurrent_expiration_days": 120,
}


def rule(**overrides: Any) -> dict[str, Any]:
    return {**TIERING, **overrides}


def test_valid_rule_converts_to_the_aws_shape() -> None:
    assert validate_rules([TIERING]) == []
    assert to_aws_rule(TIERING) == {
        "ID": "logs-tiering",
        "Filter": {"Prefix": "app/"},
        "Status": "Enabled",
        "Transitions": [
            {"Days": 30, "StorageClass": "STANDARD_IA"},
            {"Days": 90, "StorageClass": "GLACIER"},
            {"Days": 365, "StorageClass": "DEEP_ARCHIVE"},
        ],
        "Expiration": {"Days": 730},
        "NoncurrentVersionTransitions": [{"NoncurrentDays": 30, "StorageClass": "GLACIER"}],
        "NoncurrentVersionExpiration": {"NoncurrentDays": 120},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
    }


@pytest.mark.parametrize(
    ("prefix", "tags", "expected"),
    [
        pytest.param("a/", None, {"Prefix": "a/"}, id="prefix"),
        pytest.param("", None, {"Prefix": ""}, id="whole-bucket"),
        pytest.param("", {"k": "v"}, {"Tag": {"Key": "k", "Value": "v"}}, id="one-tag"),
        pytest.param(
            "a/",
            {"k": "v"},
            {"And": {"Prefix": "a/", "Tags": [{"Key": "k", "Value": "v"}]}},
            id="prefix-and-tag",
        ),
        pytest.param(
            "",
            {"b": "2", "a": "1"},
            {"And": {"Tags": [{"Key": "a", "Value": "1"}, {"Key": "b", "Value": "2"}]}},
            id="two-tags",
        ),
    ],
)
def test_filter_shapes(prefix: str, tags: dict[str, str] | None, expected: dict[str, Any]) -> None:
    converted = to_aws_rule({"id": "r", "prefix": prefix, "tags": tags, "expiration_days": 10})
    assert converted["Filter"] == expected


def test_normalise_treats_equivalent_spellings_as_equal() -> None:
    ours = to_aws_rule(rule(tags={"team": "web"}, abort_incomplete_multipart_days=None))
    theirs = {
        **ours,
        "Filter": {"And": {"Tags": [{"Key": "team", "Value": "web"}], "Prefix": "app/"}},
        "Transitions": list(reversed(ours["Transitions"])),
    }
    assert normalise_rule(ours) == normalise_rule(theirs)
    legacy = {"ID": "x", "Prefix": "p/", "Status": "Enabled", "Expiration": {"Days": 3}}
    assert normalise_rule(legacy) == normalise_rule(
        to_aws_rule({"id": "x", "prefix": "p/", "expiration_days": 3})
    )


def test_short_stays_are_warnings() -> None:
    warnings = validate_rules(
        [
            rule(
                transitions=[
                    {"days": 30, "storage_class": "STANDARD_IA"},
                    {"days": 40, "storage_class": "GLACIER"},
                    {"days": 100, "storage_class": "DEEP_ARCHIVE"},
                ],
                expiration_days=200,
            )
        ]
    )
    assert len(warnings) == 3
    assert "STANDARD_IA for 10 days" in warnings[0]
    assert "GLACIER for 60 days" in warnings[1]
    assert "DEEP_ARCHIVE for 100 days before it expires" in warnings[2]


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        pytest.param(
            [rule(transitions=[{"days": 10, "storage_class": "STANDARD_IA"}])],
            "at least 30",
            id="ia-at-10-days",
        ),
        pytest.param(
            [rule(transitions=[{"days": 20, "storage_class": "ONEZONE_IA"}])],
            "at least 30",
            id="onezone-ia-at-20-days",
        ),
        pytest.param(
            [
                rule(
                    transitions=[
                        {"days": 90, "storage_class": "GLACIER"},
                        {"days": 60, "storage_class": "DEEP_ARCHIVE"},
                    ]
                )
            ],
            "ascending days",
            id="descending-days",
        ),
        pytest.param(
            [
                rule(
                    transitions=[
                        {"days": 60, "storage_class": "GLACIER"},
                        {"days": 200, "storage_class": "STANDARD_IA"},
                    ]
                )
            ],
            "cannot move objects from GLACIER to STANDARD_IA",
            id="class-order",
        ),
        pytest.param(
            [
                rule(
                    transitions=[
                        {"days": 30, "storage_class": "ONEZONE_IA"},
                        {"days": 90, "storage_class": "GLACIER_IR"},
                    ]
                )
            ],
            "cannot move objects from ONEZONE_IA to GLACIER_IR",
            id="onezone-to-glacier-ir",
        ),
        pytest.param([rule(), rule()], "defined more than once", id="duplicate-ids"),
        pytest.param([rule(expiration_days=200)], "after the last transition", id="expiry-before-transition"),
        pytest.param(
            [rule(noncurrent_expiration_days=10)], "after the last transition", id="noncurrent-expiry-early"
        ),
        pytest.param(
            [rule(transitions=[{"days": 30, "storage_class": "COLD"}])],
            "unknown storage class 'COLD'",
            id="unknown-class",
        ),
        pytest.param(
            [
                {"id": f"r{i}", "prefix": f"p{i}/", "expiration_days": 30}
                for i in range(MAX_LIFECYCLE_RULES + 1)
            ],
            "at most 1000",
            id="1001-rules",
        ),
        pytest.param([{"id": "", "expiration_days": 3}], "non-empty string", id="empty-id"),
        pytest.param([{"id": "x", "prefix": "a/"}], "no action", id="no-action"),
        pytest.param([{"id": "x", "expiry": 3}], "unknown field", id="misspelt-field"),
        pytest.param([rule(expiration_days=0)], "integer >= 1", id="zero-expiration"),
        pytest.param([rule(tags={"a": "b"})], "cannot be used with tags", id="abort-multipart-with-tags"),
    ],
)
def test_invalid_rules_name_the_problem(rules: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(LifecycleConfigError, match=message):
        validate_rules(rules)


def test_merge_keeps_foreign_rules_in_place_and_reports_the_diff() -> None:
    foreign = {"ID": "theirs", "Filter": {"Prefix": "x/"}, "Status": "Enabled", "Expiration": {"Days": 5}}
    current = [foreign, to_aws_rule(TIERING), {**to_aws_rule({"id": "old", "expiration_days": 9})}]
    desired = [
        {**TIERING},
        {"id": "old", "absent": True},
        {"id": "gone-already", "absent": True},
        {"id": "new", "prefix": "n/", "expiration_days": 3},
    ]
    merged, diff = merge_rules(current, desired)
    assert [r["ID"] for r in merged] == ["theirs", "logs-tiering", "new"]
    assert merged[0] == foreign
    assert (diff.added, diff.changed, diff.removed, diff.unchanged) == (
        ["new"],
        [],
        ["old"],
        ["logs-tiering"],
    )

    merged, diff = merge_rules(merged, [rule(expiration_days=800)])
    assert diff.changed == ["logs-tiering"]
    assert merged[1]["Expiration"] == {"Days": 800}


def test_merge_counts_kept_rules_against_the_limit() -> None:
    current = [to_aws_rule({"id": f"f{i}", "expiration_days": 9}) for i in range(999)]
    with pytest.raises(LifecycleConfigError, match="1001 lifecycle rules"):
        merge_rules(current, [{"id": "a", "expiration_days": 1}, {"id": "b", "expiration_days": 1}])


@pytest.mark.parametrize(
    "whole_bucket",
    [
        pytest.param({"id": "x", "prefix": "", "expiration_days": 30}, id="empty-prefix-expiration"),
        pytest.param({"id": "x", "expiration_days": 30}, id="no-prefix"),
        pytest.param({"id": "x", "prefix": "", "noncurrent_expiration_days": 1}, id="noncurrent-expiration"),
        pytest.param(
            {"id": "x", "transitions": [{"days": 30, "storage_class": "STANDARD_IA"}]}, id="transition"
        ),
        pytest.param(
            {"id": "x", "prefix": "", "expiration_days": 30, "abort_incomplete_multipart_days": 7},
            id="expiration-beside-abort",
        ),
    ],
)
def test_whole_bucket_rules_are_refused_unless_allowed(whole_bucket: dict[str, Any]) -> None:
    with pytest.raises(LifecycleConfigError, match=r"'x'.*whole bucket.*allow_whole_bucket: true"):
        validate_rules([whole_bucket])

    allowed = {**whole_bucket, "allow_whole_bucket": True}
    validate_rules([allowed])
    assert "allow_whole_bucket" not in str(to_aws_rule(allowed))


@pytest.mark.parametrize(
    "scoped",
    [
        pytest.param({"id": "x", "prefix": "", "abort_incomplete_multipart_days": 7}, id="abort-only"),
        pytest.param({"id": "x", "prefix": "", "tags": {"k": "v"}, "expiration_days": 3}, id="tag-filter"),
        pytest.param({"id": "x", "prefix": "tmp/", "expiration_days": 3}, id="prefix"),
    ],
)
def test_rules_that_do_not_act_on_the_whole_bucket_pass(scoped: dict[str, Any]) -> None:
    assert validate_rules([scoped]) == []


def test_allow_whole_bucket_must_be_a_boolean() -> None:
    with pytest.raises(LifecycleConfigError, match="allow_whole_bucket must be true or false"):
        validate_rules([{"id": "x", "prefix": "", "expiration_days": 3, "allow_whole_bucket": "yes"}])
