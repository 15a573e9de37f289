"""Subject map validation, keys and request checks: pure logic, no services."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from data_lifecycle.erasure.keys import SubjectKeys
from data_lifecycle.erasure.planner import erase_order
from data_lifecycle.erasure.steps import Request
from data_lifecycle.erasure.subject_map import (
    DEFAULT_SUBJECT_MAP_FILE,
    Action,
    MaskStrategy,
    load_subject_map,
    parse_subject_map,
)
from data_lifecycle.exceptions import LifecycleConfigError

BASE = yaml.safe_load(DEFAULT_SUBJECT_MAP_FILE.read_text())


def _with(change: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    change(doc)
    return doc


def test_the_dreamseed_map_loads():
    smap = load_subject_map()
    assert [t.table for t in smap.tables] == [
        "app.sessions",
        "app.user_uploads",
        "app.student_progress",
        "app.app_logs",
        "app.users",
    ]
    logs = smap.target("app.app_logs")
    assert logs.action is Action.MASK and logs.mask[0].strategy is MaskStrategy.NULL
    assert smap.buckets[0].render(42) == ("user_42/",)
    assert smap.deadline_days == 30


BAD_MAPS = [
    pytest.param(
        lambda d: d.update(surprise=1),
        "top level, field 'surprise': is not a known field",
        id="unknown-top-key",
    ),
    pytest.param(
        lambda d: d["tables"][0].update(colum="user_id"),
        "tables[0] (target 'app.sessions'), field 'colum'",
        id="unknown-target-key",
    ),
    pytest.param(
        lambda d: d["tables"][0].update(table="app.sessions; drop table x"),
        "field 'table': must be a plain 'schema.table' name",
        id="table-not-identifier",
    ),
    pytest.param(
        lambda d: d["tables"][1].update(column='user"id'),
        "field 'column': must be a plain column name",
        id="quoted-column",
    ),
    pytest.param(
        lambda d: d["tables"][3]["mask"][0].update(strategy="scramble"),
        "field 'strategy': must be one of",
        id="bad-strategy",
    ),
    pytest.param(
        lambda d: d["tables"][3].update(mask=[{"column": "message", "strategy": "fixed", "value": "x"}]),
        "must cover the reference column 'user_id'",
        id="mask-misses-reference",
    ),
    pytest.param(
        lambda d: d["tables"][3]["mask"].append({"column": "message", "strategy": "fixed"}),
        "field 'value': is required for strategy 'fixed'",
        id="fixed-without-value",
    ),
    pytest.param(lambda d: d["tables"].pop(), "must erase the subject row itself", id="no-subject-row"),
    pytest.param(
        lambda d: d["buckets"][0].update(prefixes=["user_{user_id}"]),
        "must be followed by a delimiter",
        id="prefix-no-delimiter",
    ),
    pytest.param(
        lambda d: d["buckets"][0].update(prefixes=["users/"]),
        "must contain '{user_id}' exactly once",
        id="prefix-no-placeholder",
    ),
    pytest.param(
        lambda d: d["buckets"][0].update(prefixes=["{email}/{user_id}/"]),
        "exactly once and no other",
        id="prefix-other-field",
    ),
    pytest.param(lambda d: d.update(alert_after_days=45), "is after the deadline", id="alert-after-deadline"),
]


@pytest.mark.parametrize(("change", "message"), BAD_MAPS)
def test_bad_maps_name_file_target_and_field(change, message):
    with pytest.raises(LifecycleConfigError) as err:
        parse_subject_map(_with(change), "maps/erasure.yaml")
    assert "maps/erasure.yaml" in str(err.value)
    assert message in str(err.value)


def test_erase_order_puts_children_first_and_the_subject_last():
    doc = _with(
        lambda d: d["tables"].insert(
            0,
            {
                "table": "app.upload_notes",
                "column": "upload_id",
                "via": [{"table": "app.user_uploads", "key": "id", "column": "user_id"}],
            },
        )
    )
    doc["tables"].append(doc["tables"].pop(0))  # listed last: the order must not depend on the file
    smap = parse_subject_map(doc, "m.yaml")
    order = [t.table for t in erase_order(smap, {("app.sessions", "app.users")})]
    assert order[-1] == "app.users"
    assert order.index("app.upload_notes") < order.index("app.user_uploads")


def test_keys_hash_seal_and_refuse_a_foreign_token():
    keys = SubjectKeys(secret=b"k" * 40)
    other = SubjectKeys(secret=b"z" * 40)
    token = keys.seal(42)
    assert keys.unseal(token, keys.subject_hash(42)) == 42
    with pytest.raises(LifecycleConfigError, match="does not match its hash"):
        keys.unseal(token, keys.subject_hash(43))
    with pytest.raises(LifecycleConfigError, match="cannot be read"):
        other.unseal(token, other.subject_hash(42))
    with pytest.raises(LifecycleConfigError, match="at least 32"):
        SubjectKeys(secret=b"short")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        pytest.param({"user_id": True, "request_id": "REQ-1"}, "positive integer", id="bool-id"),
        pytest.param(
            {"user_id": 42, "request_id": "REQ-42"}, "contains the subject's id", id="id-in-request-id"
        ),
        pytest.param(
            {"user_id": 42, "request_id": "REQ-1", "requested_by": "user 42"},
            "contains the subject's id",
            id="id-in-requested-by",
        ),
        pytest.param(
            {"user_id": 42, "request_id": "REQ-1", "requested_at": "2026-01-01T00:00:00"},
            "timezone",
            id="naive-time",
        ),
    ],
)
def test_request_checks_at_run_time(params, message):
    with pytest.raises(LifecycleConfigError, match=message):
        Request.from_params(params)


def test_request_id_with_other_digits_is_fine():
    assert Request.from_params({"user_id": 42, "request_id": "REQ-2026-0420"}).user_id == 42
