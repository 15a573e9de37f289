"""The inventory's pure parts and its refusals: age bands, prefixes, the policy section, bad manifests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from data_lifecycle.exceptions import LifecycleConfigError
from data_lifecycle.inventory import age_band, prefix_of, tally_report
from data_lifecycle.policy import DEFAULT_POLICY_FILE, InventoryReport, parse_policy


@pytest.mark.parametrize(
    ("age", "band"),
    [
        (0, "0-29"),
        (29, "0-29"),
        (30, "30-89"),
        (89, "30-89"),
        (90, "90-179"),
        (364, "180-364"),
        (365, "365+"),
    ],
)
def test_age_bands_follow_the_tier_transitions(age: int, band: str) -> None:
    assert age_band(age) == band


@pytest.mark.parametrize(
    ("key", "depth", "prefix"),
    [
        ("top.txt", 1, ""),
        ("app/2026/x.gz", 1, "app/"),
        ("app/2026/x.gz", 2, "app/2026/"),
        ("app/x", 3, "app/"),
    ],
)
def test_prefix_is_the_first_segments(key: str, depth: int, prefix: str) -> None:
    assert prefix_of(key, depth) == prefix


def _policy(inventory: Any) -> dict[str, Any]:
    doc = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    doc["inventory"] = inventory
    return doc


def test_the_shipped_policy_inventories_every_bucket_it_names() -> None:
    policy = parse_policy(yaml.safe_load(DEFAULT_POLICY_FILE.read_text()), "lifecycle.yaml")
    assert set(policy.buckets()) == {"dreamseed-logs", "dreamseed-uploads", "dreamseed-log-archive"}
    assert policy.inventory.prefix_depth == 1 and policy.inventory.reports == ()


@pytest.mark.parametrize(
    ("inventory", "field"),
    [
        pytest.param(
            {"reports": [{"bucket": "dreamseed-logs", "manifest_prefix": "x/"}]},
            "manifest_bucket",
            id="no-manifest-bucket",
        ),
        pytest.param(
            {"reports": [{"bucket": "Bad_Bucket", "manifest_bucket": "b-inv", "manifest_prefix": "x/"}]},
            "bucket",
            id="bad-bucket",
        ),
        pytest.param({"prefix_depth": 0}, "prefix_depth", id="depth-zero"),
        pytest.param({"report": []}, "report", id="unknown-field"),
    ],
)
def test_a_bad_inventory_section_names_the_field(inventory: Any, field: str) -> None:
    with pytest.raises(LifecycleConfigError, match=rf"inventory.*'{field}'"):
        parse_policy(_policy(inventory), "lifecycle.yaml")


@pytest.mark.parametrize(
    ("manifest", "problem"),
    [
        pytest.param({"fileFormat": "ORC"}, "fileFormat 'ORC' is not supported", id="orc"),
        pytest.param({"sourceBucket": "someone-else"}, "describes bucket 'someone-else'", id="other-bucket"),
        pytest.param(
            {"fileSchema": "Bucket, Key, Size"},
            "fileSchema lacks LastModifiedDate, StorageClass",
            id="schema",
        ),
    ],
)
def test_a_manifest_the_page_cannot_trust_is_refused_naming_it(
    s3_client: Any, make_bucket: Any, manifest: dict[str, Any], problem: str
) -> None:
    reports = make_bucket("inv")
    report = InventoryReport(
        bucket="src-bucket", manifest_bucket=reports, manifest_prefix="src-bucket/daily/"
    )
    body = {
        "sourceBucket": "src-bucket",
        "fileFormat": "CSV",
        "fileSchema": "Bucket, Key, Size, LastModifiedDate, StorageClass",
        "files": [],
        **manifest,
    }
    key = "src-bucket/daily/2026-01-01T01-00Z/manifest.json"
    s3_client.put_object(Bucket=reports, Key=key, Body=json.dumps(body))
    with pytest.raises(LifecycleConfigError, match=problem) as err:
        tally_report(s3_client, report, datetime(2026, 2, 1, tzinfo=UTC), 1)
    assert key in str(err.value)


def test_a_report_without_a_manifest_is_a_clear_error(s3_client: Any, make_bucket: Any) -> None:
    reports = make_bucket("inv")
    report = InventoryReport(
        bucket="src-bucket", manifest_bucket=reports, manifest_prefix="src-bucket/daily/"
    )
    with pytest.raises(LifecycleConfigError, match=r"no manifest\.json under"):
        tally_report(s3_client, report, datetime(2026, 2, 1, tzinfo=UTC), 1)
