"""The policy file: typed, validated at parse time, errors that name the file, rule and field."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from data_lifecycle.exceptions import LifecycleConfigError
from data_lifecycle.policy import DEFAULT_POLICY_FILE, load_policy, parse_policy


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_POLICY_FILE.read_text())


def test_shipped_policy_loads_every_area():
    policy = load_policy(DEFAULT_POLICY_FILE)
    assert [r.table for r in policy.expired_sessions] == ["app.sessions"]
    assert policy.app_logs[0].archive is not None
    assert [c.table for c in policy.soft_deleted[0].children] == [
        "app.sessions",
        "app.user_uploads",
        "app.student_progress",
    ]
    assert policy.partitions[0].retention_months == 13
    assert {r.prefix for r in policy.s3_expiry} == {"tmp/", "exports/"}
    assert policy.object_archives[0].storage_class == "GLACIER"
    assert policy.dag("cleanup_expired_sessions").deadline_minutes == 60
    assert policy.dag("maintain_partitions").deadline_minutes == 120  # from `default`


def test_loading_takes_milliseconds(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(DEFAULT_POLICY_FILE.read_text())
    started = time.perf_counter()
    load_policy(path)
    assert time.perf_counter() - started < 0.5


def _mutate(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set (or with value=KeyError delete) a dotted path like 'expired_sessions.0.retention_days'."""
    doc = copy.deepcopy(doc)
    node: Any = doc
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last: Any = int(parts[-1]) if isinstance(node, list) else parts[-1]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return doc


BAD = [
    pytest.param("expired_sessions.0.retention_days", 0, "retention_days", id="zero-retention"),
    pytest.param("expired_sessions.0.retention_days", -5, "retention_days", id="negative-retention"),
    pytest.param(
        "expired_sessions.0.retention_days", "30", "must be a whole number", id="retention-as-string"
    ),
    pytest.param("expired_sessions.0.retention_days", True, "retention_days", id="retention-as-bool"),
    pytest.param(
        "expired_sessions.0.table", "app.sessions; DROP TABLE x", "plain 'schema.table'", id="sql-in-table"
    ),
    pytest.param("expired_sessions.0.table", 'app."sessions"', "plain 'schema.table'", id="quoted-table"),
    pytest.param(
        "expired_sessions.0.table", "app.s\u0435ssions", "plain 'schema.table'", id="cyrillic-lookalike"
    ),
    pytest.param("expired_sessions.0.table", "sessions", "plain 'schema.table'", id="table-without-schema"),
    pytest.param("expired_sessions.0.table", "app.sessions\n", "plain 'schema.table'", id="trailing-newline"),
    pytest.param(
        "expired_sessions.0.timestamp_column", "expires_at--", "plain column name", id="sql-in-column"
    ),
    pytest.param(
        "expired_sessions.0.timestamp_colum", "expires_at", "timestamp_colum", id="typo-unknown-key"
    ),
    pytest.param("expired_sessions.0.timestamp_column", KeyError, "is required", id="missing-column"),
    pytest.param(
        "expired_sessions.0.max_delete_fraction", 1.5, "max_delete_fraction", id="fraction-above-one"
    ),
    pytest.param("expired_sessions.0.batch.min_size", 100000, "min_size", id="min-batch-above-max"),
    pytest.param(
        "expired_sessions.0.batch.max_load_p99_factor", 1, "max_load_p99_factor", id="load-factor-one"
    ),
    pytest.param(
        "expired_sessions.0.batch.max_load_p99_factor", 500, "max_load_p99_factor", id="load-factor-huge"
    ),
    pytest.param(
        "expired_sessions.0.batch.max_load_p99_factor", "1.5", "max_load_p99_factor", id="load-factor-text"
    ),
    pytest.param(
        "expired_sessions.0.batch.max_replica_lag_seconds", 0, "max_replica_lag_seconds", id="zero-lag"
    ),
    pytest.param(
        "expired_sessions.0.batch.max_replica_lag_seconds",
        86400,
        "max_replica_lag_seconds",
        id="lag-above-an-hour",
    ),
    pytest.param("app_logs.0.archive", KeyError, "archive", id="logs-without-archive"),
    pytest.param("app_logs.0.archive.bucket", "Not_A_Bucket", "bucket", id="invalid-bucket-name"),
    pytest.param("s3_expiry.0.prefix", "", "allow_whole_bucket", id="empty-prefix"),
    pytest.param(
        "object_archives.0.storage_class", "GLACIER_DEEP", "storage_class", id="invalid-storage-class"
    ),
    pytest.param(
        "object_archives.0.dest_bucket", "dreamseed-logs", "overlap in bucket", id="archive-onto-its-source"
    ),
    pytest.param("storage_tiers.0.rules.1.prefix", "", "whole bucket", id="whole-bucket-lifecycle-rule"),
    pytest.param("partitions.0.mode", "truncate", "mode", id="unknown-partition-mode"),
    pytest.param("partitions.0.interval", "hourly", "interval", id="unknown-partition-interval"),
    pytest.param(
        "partitions.0.default_partition_rows", "drop", "default_partition_rows", id="unknown-default-action"
    ),
    pytest.param("expired_sessions.0.timezone", "Mars/Olympus", "IANA time zone", id="unknown-timezone"),
    pytest.param("expired_sessions.0.naive_is_utc", "yes", "naive_is_utc", id="naive-is-utc-not-bool"),
    pytest.param("app_logs.0.archive.min_object_bytes", 0, "min_object_bytes", id="zero-object-size"),
    pytest.param("partitions.0.retention_months", 0, "retention_months", id="zero-partition-retention"),
    pytest.param("dags.default.retries", 1, "retries", id="too-few-retries"),
    pytest.param("version", 2, "version", id="unknown-version"),
    pytest.param("vacuums", {}, "vacuums", id="typo-top-level"),
]


@pytest.mark.parametrize(("path", "value", "expected"), BAD)
def test_bad_policy_is_rejected_naming_the_field(shipped, path, value, expected):
    doc = _mutate(shipped, path, value)
    with pytest.raises(LifecycleConfigError) as info:
        parse_policy(doc, "policy.yaml")
    message = str(info.value)
    assert "policy.yaml" in message
    assert expected in message


def test_duplicate_rule_ids_are_rejected(shipped):
    doc = copy.deepcopy(shipped)
    doc["s3_expiry"][1]["id"] = doc["s3_expiry"][0]["id"]
    with pytest.raises(LifecycleConfigError, match="duplicate rule id 'upload_tmp'"):
        parse_policy(doc, "policy.yaml")


def test_error_names_the_rule(shipped):
    doc = _mutate(shipped, "soft_deleted.0.children.1.column", "user id")
    with pytest.raises(LifecycleConfigError, match=r"rule 'users'.*children\[1\].*'column'"):
        parse_policy(doc, "policy.yaml")


def test_malformed_yaml_names_the_file(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("version: 1\nexpired_sessions: [\n")
    with pytest.raises(LifecycleConfigError, match=r"broken\.yaml.*not valid YAML"):
        load_policy(path)


def test_missing_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(LifecycleConfigError, match="does not exist"):
        load_policy(tmp_path / "nope.yaml")


def _archive_doc(shipped: Any, **rule: Any) -> Any:
    doc = copy.deepcopy(shipped)
    doc["object_archives"][0].update(rule)
    return doc


def test_overlapping_archive_prefixes_in_one_bucket_are_refused(shipped):
    doc = _archive_doc(shipped, dest_bucket="dreamseed-logs", source_prefix="logs/a/", dest_prefix="logs/")
    with pytest.raises(LifecycleConfigError, match=r"logs_to_glacier.*dest_prefix.*overlap"):
        parse_policy(doc, "policy.yaml")


def test_a_prefix_tiered_by_lifecycle_and_archived_by_copy_is_refused(shipped):
    doc = copy.deepcopy(shipped)
    doc["storage_tiers"][0]["rules"][0] = {
        "id": "lifecycle-logs-tiers",
        "prefix": "app/",
        "transitions": [{"days": 90, "storage_class": "GLACIER"}],
    }
    with pytest.raises(
        LifecycleConfigError,
        match=r"policy.yaml: storage_tiers rule 'logs_bucket' lifecycle rule 'lifecycle-logs-tiers' and "
        r"object_archives rule 'logs_to_glacier' \(source\) both act on s3://dreamseed-logs/.*one mechanism",
    ):
        parse_policy(doc, "policy.yaml")


@pytest.mark.parametrize(
    ("section", "rule"),
    [
        pytest.param(
            "s3_expiry",
            {"id": "logs", "bucket": "dreamseed-logs", "prefix": "app/old/", "retention_days": 30},
            id="expiry-under-an-archived-prefix",
        ),
        pytest.param(
            "s3_expiry",
            {"id": "archives", "bucket": "dreamseed-log-archive", "prefix": "app/", "retention_days": 30},
            id="expiry-of-the-archive",
        ),
        pytest.param(
            "object_archives",
            {
                "id": "again",
                "source_bucket": "dreamseed-log-archive",
                "source_prefix": "app/",
                "dest_bucket": "dreamseed-uploads",
                "dest_prefix": "old-logs/",
                "retention_days": 30,
            },
            id="archive-of-an-archive",
        ),
    ],
)
def test_two_mechanisms_on_one_prefix_are_refused(shipped, section, rule):
    doc = copy.deepcopy(shipped)
    doc[section].append(rule)
    with pytest.raises(LifecycleConfigError, match="one mechanism"):
        parse_policy(doc, "policy.yaml")


def test_an_archive_needs_a_declared_expiring_lifecycle(shipped):
    doc = copy.deepcopy(shipped)
    doc["storage_tiers"] = [t for t in doc["storage_tiers"] if t["bucket"] != "dreamseed-log-archive"]
    with pytest.raises(
        LifecycleConfigError,
        match=r"logs_to_glacier.*s3://dreamseed-log-archive/app/ has no declared lifecycle",
    ):
        parse_policy(doc, "policy.yaml")


def test_the_shipped_archive_bucket_has_its_own_lifecycle(shipped):
    policy = parse_policy(shipped, "policy.yaml")
    (tiers,) = [t for t in policy.storage_tiers if t.bucket == "dreamseed-log-archive"]
    assert any(r.get("prefix") == "app/" and r.get("expiration_days") for r in tiers.rules)


def test_table_and_partition_rules_carry_zone_interval_and_object_size(shipped: dict[str, Any]) -> None:
    from data_lifecycle.dag_common import (
        batched_delete_kwargs,
        partition_premake_kwargs,
        partition_retention_kwargs,
    )

    doc = copy.deepcopy(shipped)
    doc["expired_sessions"][0]["timezone"] = "Europe/Berlin"
    doc["app_logs"][0]["archive"]["min_object_bytes"] = 262_144
    doc["partitions"][0]["interval"] = "daily"
    doc["partitions"][0]["default_partition_rows"] = "delete"
    policy = parse_policy(doc, "policy.yaml")
    sessions = batched_delete_kwargs(policy, policy.expired_sessions[0])
    assert (sessions["timezone"], sessions["naive_is_utc"]) == ("Europe/Berlin", False)
    assert batched_delete_kwargs(policy, policy.app_logs[0])["archive"]["min_object_bytes"] == 262_144
    assert partition_premake_kwargs(policy, policy.partitions[0])["interval"] == "daily"
    assert partition_retention_kwargs(policy, policy.partitions[0])["delete_default_rows"] is True


def test_load_budget_reaches_the_operator(shipped):
    from data_lifecycle.dag_common import batched_delete_kwargs

    doc = _mutate(shipped, "expired_sessions.0.batch.max_load_p99_factor", 1.5)
    doc = _mutate(doc, "expired_sessions.0.batch.max_replica_lag_seconds", 10)
    policy = parse_policy(doc, "policy.yaml")
    kwargs = batched_delete_kwargs(policy, policy.expired_sessions[0])
    assert kwargs["max_load_p99_factor"] == 1.5 and kwargs["max_replica_lag_seconds"] == 10.0
    plain = parse_policy(shipped, "policy.yaml")
    assert batched_delete_kwargs(plain, plain.expired_sessions[0])["max_load_p99_factor"] is None
