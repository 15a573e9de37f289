"""Policy files are read strictly: repeated keys, YAML 1.1 numbers and numbers out of bounds are errors
that name the file, the rule and the field (issue 12, defect 6).

Each case edits the text of a shipped file the way a person would, then loads it from disk through
the same cached loader the DAG files use.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from data_lifecycle.config_fields import strict_yaml_load
from data_lifecycle.erasure.subject_map import DEFAULT_SUBJECT_MAP_FILE, load_subject_map
from data_lifecycle.exceptions import LifecycleConfigError
from data_lifecycle.policy import DEFAULT_POLICY_FILE, load_policy

SESSIONS_RULE = "    retention_days: 1\n    max_delete_fraction: 0.9\n"
USERS_RULE = "    retention_days: 30\n    max_delete_fraction: 0.1\n"


def _edited(tmp_path: Path, source: Path, old: str, new: str) -> Path:
    text = source.read_text()
    assert text.count(old) == 1, f"the shipped file changed; {old!r} is not unique"
    path = tmp_path / source.name
    path.write_text(text.replace(old, new))
    return path


POLICY_MISTAKES = [
    pytest.param(
        USERS_RULE,
        "    retention_days: 30\n    max_delete_fraction: 0.1\n    retention_days: 1\n",
        r"soft_deleted\[0\] \(rule 'users'\), field 'retention_days': appears twice .*lines \d+ and \d+",
        id="repeated-retention-days",
    ),
    pytest.param(
        "\nexpired_sessions:\n",
        "\nexpired_sessions: []\nexpired_sessions:\n",
        r"top level, field 'expired_sessions': appears twice",
        id="repeated-section",
    ),
    pytest.param(
        "      min_size: 500\n",
        "      min_size: 500\n      min_size: 5\n",
        r"expired_sessions\[0\] \(rule 'sessions'\) batch, field 'min_size': appears twice",
        id="repeated-nested-key",
    ),
    pytest.param(
        "    deadline_minutes: 60\n",
        "    deadline_minutes: 60\n    deadline_minutes: 1\n",
        r"dags\.cleanup_expired_sessions, field 'deadline_minutes': appears twice",
        id="repeated-dag-setting",
    ),
    pytest.param(
        USERS_RULE,
        "    retention_days: 030\n    max_delete_fraction: 0.1\n",
        r"soft_deleted\[0\] \(rule 'users'\), field 'retention_days' \(line \d+\): '030' is not a plain "
        r"decimal whole number \(YAML 1.1 reads it as 24\)",
        id="octal-retention",
    ),
    pytest.param(
        USERS_RULE,
        "    retention_days: 0x1e\n    max_delete_fraction: 0.1\n",
        r"rule 'users'\), field 'retention_days' .*'0x1e' is not a plain decimal",
        id="hex-retention",
    ),
    pytest.param(
        USERS_RULE,
        "    retention_days: 1_000\n    max_delete_fraction: 0.1\n",
        r"rule 'users'\), field 'retention_days' .*'1_000' is not a plain decimal",
        id="underscore-retention",
    ),
    pytest.param(
        USERS_RULE,
        "    retention_days: 1:30\n    max_delete_fraction: 0.1\n",
        r"rule 'users'\), field 'retention_days' .*'1:30' is not a plain decimal .*reads it as 90",
        id="sexagesimal-retention",
    ),
    pytest.param(
        USERS_RULE,
        "    retention_days: 30\n    max_delete_fraction: .inf\n",
        r"rule 'users'\), field 'max_delete_fraction' .*'.inf' is not a plain decimal number",
        id="infinite-fraction",
    ),
    pytest.param(
        "  purge_soft_deleted:\n    notify_success: true\n",
        "  purge_soft_deleted:\n    notify_success: yes\n",
        r"field 'notify_success' .*'yes' is not true or false",
        id="yes-as-boolean",
    ),
    pytest.param(
        USERS_RULE,
        "    retention_days: 1000000\n    max_delete_fraction: 0.1\n",
        r"rule 'users'\), field 'retention_days': must be at most 36,500, got 1,000,000",
        id="million-days",
    ),
    pytest.param(
        USERS_RULE,
        "    retention_days: 30\n    max_delete_fraction: 1.5\n",
        r"rule 'users'\), field 'max_delete_fraction': must be in \(0, 1\], got 1.5",
        id="fraction-above-one",
    ),
    pytest.param(
        USERS_RULE,
        "    retention_days: 30\n    max_delete_fraction: 0\n",
        r"rule 'users'\), field 'max_delete_fraction': must be in \(0, 1\], got 0",
        id="zero-fraction",
    ),
    pytest.param(
        "      max_size: 2000\n",
        "      max_size: 2000000\n",
        r"rule 'users'\) batch, field 'max_size': must be at most 1,000,000",
        id="huge-batch",
    ),
    pytest.param(
        "    retention_months: 13\n",
        "    retention_months: 99999\n",
        r"rule 'student_progress'\), field 'retention_months': must be at most 1,200",
        id="huge-partition-retention",
    ),
    pytest.param(
        "    retention_days: 90\n  - id: upload_exports",
        "    retention_days: 90\n    max_objects: 10000000000000\n  - id: upload_exports",
        r"rule 'upload_tmp'\), field 'max_objects': must be at most",
        id="huge-object-count",
    ),
    pytest.param(
        "        expiration_days: 2465\n",
        "        expiration_days: 1000000\n",
        r"storage_tiers\[2\] \(rule 'log_archive_bucket'\), field 'rules': .*lifecycle-log-archive.*expiration_days must be an integer >= 1 and <= 36500",
        id="huge-lifecycle-expiration",
    ),
    pytest.param(
        "  scale_factor: 0.05\n",
        "  scale_factor: 2\n",
        r"vacuum, field 'scale_factor': must be in \(0, 1\]",
        id="vacuum-scale-above-one",
    ),
    pytest.param(
        USERS_RULE,
        "    retention_days: 30\n    override_floor_days: 31\n    max_delete_fraction: 0.1\n",
        r"rule 'users'\), field 'override_floor_days': \(31\) is above the rule's retention_days \(30\)",
        id="override-floor-above-retention",
    ),
]


@pytest.mark.parametrize(("old", "new", "expected"), POLICY_MISTAKES)
def test_policy_mistake_is_refused_naming_file_rule_and_field(tmp_path, old, new, expected):
    path = _edited(tmp_path, DEFAULT_POLICY_FILE, old, new)
    with pytest.raises(LifecycleConfigError) as info:
        load_policy(path)
    message = str(info.value)
    assert str(path) in message
    assert re.search(expected, message), message


SUBJECT_MAP_MISTAKES = [
    pytest.param(
        "tables:\n",
        "tables:\n  - table: app.users\n    column: id\ntables:\n",
        r"top level, field 'tables': appears twice",
        id="repeated-tables",
    ),
    pytest.param(
        "  table: app.users\n  key: id\n",
        "  table: app.users\n  key: id\n  key: user_id\n",
        r"subject, field 'key': appears twice",
        id="repeated-subject-key",
    ),
    pytest.param(
        "deadline_days: 30\n", "deadline_days: 030\n", r"field 'deadline_days' .*'030'", id="octal-deadline"
    ),
    pytest.param(
        "deadline_days: 30\n",
        "deadline_days: 100000\n",
        r"top level, field 'deadline_days': must be at most 36,500",
        id="huge-deadline",
    ),
    pytest.param(
        "  size: 5000\n", "  size: 5000000\n", r"batch, field 'size': must be at most", id="huge-batch"
    ),
]


@pytest.mark.parametrize(("old", "new", "expected"), SUBJECT_MAP_MISTAKES)
def test_subject_map_mistake_is_refused_naming_file_and_field(tmp_path, old, new, expected):
    path = _edited(tmp_path, DEFAULT_SUBJECT_MAP_FILE, old, new)
    with pytest.raises(LifecycleConfigError) as info:
        load_subject_map(path)
    message = str(info.value)
    assert str(path) in message and "erasure subject map" in message
    assert re.search(expected, message), message


@pytest.mark.parametrize(
    ("text", "value"),
    [
        pytest.param("a: 30", {"a": 30}, id="int"),
        pytest.param("a: -0", {"a": 0}, id="signed-zero"),
        pytest.param("a: 0.25", {"a": 0.25}, id="float"),
        pytest.param("a: '030'", {"a": "030"}, id="quoted-digits-stay-text"),
        pytest.param("a: true\nb: False", {"a": True, "b": False}, id="booleans"),
        pytest.param("a: &x {b: 1}\nc: *x", {"a": {"b": 1}, "c": {"b": 1}}, id="alias"),
        pytest.param("", None, id="empty"),
    ],
)
def test_plain_yaml_still_loads(text, value):
    assert strict_yaml_load(text, "f.yaml") == value


def test_explicit_int_tag_on_octal_text_is_refused():
    with pytest.raises(LifecycleConfigError, match="'030' is not a plain decimal"):
        strict_yaml_load("a: !!int '030'", "f.yaml")


def test_shipped_files_load():
    assert load_policy(DEFAULT_POLICY_FILE).soft_deleted[0].retention_days == 30
    assert load_subject_map(DEFAULT_SUBJECT_MAP_FILE).deadline_days == 30
