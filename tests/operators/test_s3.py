"""S3 operators against the moto S3 server: lifecycle merge, archive copy-then-delete, expiry.

Objects become "old" by running the operator at a later run anchor (data_interval_end or
dag_run.run_after), never by faking clocks.
"""

from __future__ import annotations

import base64
import hashlib
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import ClientError

from data_lifecycle.exceptions import (
    GuardrailTripped,
    LifecycleConfigError,
    LifecycleError,
    VerificationFailed,
)
from data_lifecycle.operators.s3 import (
    S3ApplyLifecycleOperator,
    S3ExpireObjectsOperator,
    S3GlacierCopyThenDeleteOperator,
)
from data_lifecycle.operators.s3 import checksums as s3_checksums
from data_lifecycle.operators.s3 import common as s3_common
from data_lifecycle.operators.s3 import copy_then_delete as s3_copy

RETENTION = 30


def context_at(anchor: datetime, *, interval: bool = True) -> dict[str, Any]:
    """A run context; without ``interval`` it looks like a manual run with only run_after."""
    ctx: dict[str, Any] = {"dag_run": SimpleNamespace(run_after=anchor)}
    if interval:
        ctx["data_interval_end"] = anchor
    return ctx


def everything_old(*, interval: bool = True) -> dict[str, Any]:
    """Anchor 200 days ahead: with a 30-day retention every object written today is due."""
    return context_at(datetime.now(UTC) + timedelta(days=200), interval=interval)


def cutoff_now() -> dict[str, Any]:
    """A cutoff on the next whole second: objects written before this call are due, later ones are not.

    LastModified has one-second resolution, so the call waits for the second to turn.
    """
    now = datetime.now(UTC)
    cutoff = now.replace(microsecond=0) + timedelta(seconds=1)
    time.sleep((cutoff - now).total_seconds() + 0.05)
    return context_at(cutoff + timedelta(days=RETENTION), interval=False)


def put_many(
    client: Any, bucket: str, keys: list[str], *, body: Callable[[str], bytes], **extra: Any
) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=body(k), **extra), keys))


def all_keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def crc32_twin(data: bytes) -> bytes:
    """Other bytes of the same length and the same CRC32 (CRC32 is linear over XOR for equal lengths:
    flipping a set of bits whose CRC32 differences cancel out keeps the checksum)."""
    zero = zlib.crc32(bytes(len(data)))
    rows: list[tuple[int, int]] = []  # (CRC32 difference, bit set) in echelon form
    for bit in range(min(len(data) * 8, 64)):
        flipped = bytearray(len(data))
        flipped[bit // 8] |= 1 << (bit % 8)
        diff, bits = zlib.crc32(bytes(flipped)) ^ zero, 1 << bit
        for row_diff, row_bits in rows:
            if diff ^ row_diff < diff:
                diff, bits = diff ^ row_diff, bits ^ row_bits
        if diff == 0:
            delta = bits.to_bytes(8, "little") + bytes(len(data) - 8)
            return bytes(a ^ b for a, b in zip(data, delta, strict=True))
        rows.append((diff, bits))
        rows.sort(reverse=True)
    raise AssertionError("no CRC32 twin found")


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


class CallCounter:
    """Counts (and records the parameters of) API calls made by an operator's own client."""

    def __init__(self, client: Any, *operations: str) -> None:
        self.calls: dict[str, list[dict[str, Any]]] = {op: [] for op in operations}
        for op in operations:
            client.meta.events.register(f"provide-client-params.s3.{op}", self._record(op))

    def _record(self, op: str) -> Callable[..., None]:
        def handler(params: dict[str, Any], **_: Any) -> None:
            self.calls[op].append(dict(params))

        return handler

    def count(self, op: str) -> int:
        return len(self.calls[op])


def fail_when(
    client: Any, op: str, predicate: Callable[[dict[str, Any]], bool], code: str = "InternalError"
) -> None:
    """Make ``op`` raise a ClientError for the calls whose parameters match."""

    def handler(params: dict[str, Any], **_: Any) -> None:
        if predicate(params):
            raise ClientError({"Error": {"Code": code, "Message": "injected failure"}}, op)

    client.meta.events.register(f"provide-client-params.s3.{op}", handler)


TIERING: dict[str, Any] = {
    "id": "logs-tiering",
    "prefix": "app/",
    "tags": {"tier": "auto"},
    "transitions": [
        {"days": 30, "storage_class": "STANDARD_IA"},
        {"days": 90, "storage_class": "GLACIER"},
        {"days": 365, "storage_class": "DEEP_ARCHIVE"},
    ],
    "expiration_days": 730,
    "noncurrent_transitions": [{"days": 30, "storage_class": "GLACIER"}],
    "noncurrent_expiration_days": 120,
}
SESSIONS: dict[str, Any] = {
    "id": "tmp-expiry",
    "prefix": "tmp/",
    "expiration_days": 7,
    "abort_incomplete_multipart_days": 2,
}
FOREIGN = {
    "ID": "security-team-rule",
    "Filter": {"Prefix": "audit/"},
    "Status": "Enabled",
    "Transitions": [{"Days": 0, "StorageClass": "GLACIER"}],
}


def lifecycle(client: Any, bucket: str) -> list[dict[str, Any]]:
    try:
        return client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "NoSuchLifecycleConfiguration":
            return []
        raise


class TestS3ApplyLifecycleOperator:
    def test_merge_keeps_foreign_rules_and_absent_removes_ours(
        self, s3_client: Any, make_bucket: Any
    ) -> None:
        bucket = make_bucket("lc")
        stale = {
            "ID": "old-tmp",
            "Filter": {"Prefix": "old/"},
            "Status": "Enabled",
            "Expiration": {"Days": 3},
        }
        s3_client.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration={"Rules": [FOREIGN, stale]}
        )

        op = S3ApplyLifecycleOperator(
            task_id="lc", bucket=bucket, rules=[TIERING, SESSIONS, {"id": "old-tmp", "absent": True}]
        )
        result = op.execute(everything_old())

        assert result == {
            "bucket": bucket,
            "added": ["logs-tiering", "tmp-expiry"],
            "changed": [],
            "removed": ["old-tmp"],
            "unchanged": [],
            "put": True,
            "warnings": [],
            "dry_run": False,
        }
        rules = {r["ID"]: r for r in lifecycle(s3_client, bucket)}
        assert set(rules) == {"security-team-rule", "logs-tiering", "tmp-expiry"}
        assert rules["security-team-rule"] == FOREIGN
        assert rules["logs-tiering"]["Filter"] == {
            "And": {"Prefix": "app/", "Tags": [{"Key": "tier", "Value": "auto"}]}
        }
        assert rules["tmp-expiry"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 2}

    def test_second_run_makes_no_put(self, s3_client: Any, make_bucket: Any) -> None:
        bucket = make_bucket("lc")
        first = S3ApplyLifecycleOperator(task_id="lc", bucket=bucket, rules=[TIERING, SESSIONS])
        first_calls = CallCounter(first.hook.get_conn(), "PutBucketLifecycleConfiguration")
        assert first.execute(everything_old())["put"] is True
        assert first_calls.count("PutBucketLifecycleConfiguration") == 1
        before = lifecycle(s3_client, bucket)

        again = S3ApplyLifecycleOperator(task_id="lc", bucket=bucket, rules=[TIERING, SESSIONS])
        calls = CallCounter(again.hook.get_conn(), "PutBucketLifecycleConfiguration", "DeleteBucketLifecycle")
        result = again.execute(everything_old(interval=False))

        assert result["put"] is False
        assert result["unchanged"] == ["logs-tiering", "tmp-expiry"]
        assert result["added"] == result["changed"] == result["removed"] == []
        assert calls.count("PutBucketLifecycleConfiguration") == calls.count("DeleteBucketLifecycle") == 0
        assert lifecycle(s3_client, bucket) == before

    def test_changed_rule_is_replaced_in_place(self, s3_client: Any, make_bucket: Any) -> None:
        bucket = make_bucket("lc")
        s3_client.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration={"Rules": [FOREIGN]}
        )
        S3ApplyLifecycleOperator(task_id="lc", bucket=bucket, rules=[SESSIONS]).execute(everything_old())

        result = S3ApplyLifecycleOperator(
            task_id="lc", bucket=bucket, rules=[{**SESSIONS, "expiration_days": 14}]
        ).execute(everything_old())

        assert result["changed"] == ["tmp-expiry"] and result["put"] is True
        rules = lifecycle(s3_client, bucket)
        assert [r["ID"] for r in rules] == ["security-team-rule", "tmp-expiry"]
        assert rules[1]["Expiration"] == {"Days": 14}

    def test_transition_default_minimum_object_size_is_passed_back(
        self, s3_client: Any, make_bucket: Any
    ) -> None:
        bucket = make_bucket("lc")
        s3_client.put_bucket_lifecycle_configuration(
            Bucket=bucket,
            LifecycleConfiguration={"Rules": [FOREIGN]},
            TransitionDefaultMinimumObjectSize="varies_by_storage_class",
        )
        # The server reports the size it keeps; whatever it reports must go back unchanged.
        reported = s3_client.get_bucket_lifecycle_configuration(Bucket=bucket)[
            "TransitionDefaultMinimumObjectSize"
        ]
        op = S3ApplyLifecycleOperator(task_id="lc", bucket=bucket, rules=[SESSIONS])
        calls = CallCounter(op.hook.get_conn(), "PutBucketLifecycleConfiguration")

        op.execute(everything_old())

        (put,) = calls.calls["PutBucketLifecycleConfiguration"]
        assert put["TransitionDefaultMinimumObjectSize"] == reported
        assert s3_client.get_bucket_lifecycle_configuration(Bucket=bucket)[
            "TransitionDefaultMinimumObjectSize"
        ] == (reported)

    def test_dry_run_reports_the_diff_and_writes_nothing(self, s3_client: Any, make_bucket: Any) -> None:
        bucket = make_bucket("lc")
        op = S3ApplyLifecycleOperator(task_id="lc", bucket=bucket, rules=[TIERING], dry_run="True")

        result = op.execute(everything_old())

        assert result["added"] == ["logs-tiering"] and result["put"] is False and result["dry_run"] is True
        assert lifecycle(s3_client, bucket) == []

    def test_removing_the_last_rule_deletes_the_configuration(self, s3_client: Any, make_bucket: Any) -> None:
        bucket = make_bucket("lc")
        S3ApplyLifecycleOperator(task_id="lc", bucket=bucket, rules=[SESSIONS]).execute(everything_old())

        result = S3ApplyLifecycleOperator(
            task_id="lc", bucket=bucket, rules=[{"id": "tmp-expiry", "absent": True}]
        ).execute(everything_old())

        assert result["removed"] == ["tmp-expiry"] and result["put"] is True
        assert lifecycle(s3_client, bucket) == []

    def test_short_stays_are_logged_and_returned_as_warnings(self, make_bucket: Any) -> None:
        rules = [{**TIERING, "expiration_days": 400}]
        result = S3ApplyLifecycleOperator(task_id="lc", bucket=make_bucket("lc"), rules=rules).execute(
            everything_old()
        )
        assert result["warnings"] == [
            "Lifecycle rule 'logs-tiering': expiration_days keeps objects in DEEP_ARCHIVE for 35 days before it "
            "expires; S3 charges a minimum of 180 days"
        ]

    @pytest.mark.parametrize(
        ("rules", "message"),
        [
            pytest.param(
                [{**TIERING, "transitions": [{"days": 10, "storage_class": "STANDARD_IA"}]}],
                "'logs-tiering'.*STANDARD_IA after 10 days",
                id="ia-at-10-days",
            ),
            pytest.param(
                [
                    {
                        **TIERING,
                        "transitions": [
                            {"days": 180, "storage_class": "GLACIER"},
                            {"days": 90, "storage_class": "DEEP_ARCHIVE"},
                        ],
                    }
                ],
                "'logs-tiering'.*ascending days",
                id="descending-transitions",
            ),
            pytest.param(
                [TIERING, SESSIONS, TIERING], "'logs-tiering' is defined more than once", id="duplicate-ids"
            ),
            pytest.param(
                [{**TIERING, "expiration_days": 100}],
                "'logs-tiering'.*after the last transition",
                id="expiry-before-transition",
            ),
            pytest.param(
                [{**SESSIONS, "transitions": [{"days": 30, "storage_class": "REDUCED_REDUNDANCY"}]}],
                "'tmp-expiry'.*unknown storage class",
                id="unknown-class",
            ),
            pytest.param(
                [{"id": f"rule-{i}", "prefix": f"p{i}/", "expiration_days": 30} for i in range(1_001)],
                "1001 lifecycle rules",
                id="1001-rules",
            ),
        ],
    )
    def test_invalid_rules_are_rejected_before_any_call(
        self, s3_client: Any, make_bucket: Any, rules: list[dict[str, Any]], message: str
    ) -> None:
        bucket = make_bucket("lc")
        s3_client.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration={"Rules": [FOREIGN]}
        )

        with pytest.raises(LifecycleConfigError, match=message):
            S3ApplyLifecycleOperator(task_id="lc", bucket=bucket, rules=rules)

        assert lifecycle(s3_client, bucket) == [FOREIGN]

    def test_too_many_rules_after_merge_writes_nothing(self, s3_client: Any, make_bucket: Any) -> None:
        bucket = make_bucket("lc")
        theirs = [
            {
                "ID": f"theirs-{i}",
                "Filter": {"Prefix": f"t{i}/"},
                "Status": "Enabled",
                "Expiration": {"Days": 9},
            }
            for i in range(600)
        ]
        s3_client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": theirs})
        ours = [{"id": f"ours-{i}", "prefix": f"o{i}/", "expiration_days": 30} for i in range(401)]
        op = S3ApplyLifecycleOperator(task_id="lc", bucket=bucket, rules=ours)
        calls = CallCounter(op.hook.get_conn(), "PutBucketLifecycleConfiguration")

        with pytest.raises(LifecycleConfigError, match="1001 lifecycle rules"):
            op.execute(everything_old())

        assert calls.count("PutBucketLifecycleConfiguration") == 0
        assert len(lifecycle(s3_client, bucket)) == 600

    def test_missing_bucket_is_named(self) -> None:
        op = S3ApplyLifecycleOperator(task_id="lc", bucket="no-such-bucket-lc", rules=[SESSIONS])
        with pytest.raises(LifecycleConfigError, match="no-such-bucket-lc"):
            op.execute(everything_old())


def body_of(key: str) -> bytes:
    return f"payload of {key}\n".encode() * 3


def archive_op(source: str, dest: str, **kwargs: Any) -> S3GlacierCopyThenDeleteOperator:
    params: dict[str, Any] = {
        "task_id": "archive",
        "source_bucket": source,
        "source_prefix": "logs/",
        "dest_bucket": dest,
        "dest_prefix": "archive/logs/",
        "retention_days": str(RETENTION),
    }
    return S3GlacierCopyThenDeleteOperator(**{**params, **kwargs})


class TestS3GlacierCopyThenDeleteOperator:
    def test_archives_thousands_of_objects_with_verified_checksums(
        self, s3_client: Any, make_bucket: Any
    ) -> None:
        source, dest = make_bucket("src"), make_bucket("arch")
        keys = [f"logs/{i:05d}.log" for i in range(2_500)]
        # Most carry a stored SHA256; every 25th gets it computed from its bytes.
        streamed = keys[::25]
        put_many(
            s3_client, source, sorted(set(keys) - set(streamed)), body=body_of, ChecksumAlgorithm="SHA256"
        )
        put_many(s3_client, source, [*streamed, "other/keep.log"], body=body_of)
        op = archive_op(source, dest)
        calls = CallCounter(op.hook.get_conn(), "DeleteObjects", "CopyObject", "GetObject")

        summary = op.execute(everything_old())

        assert summary["objects"] == 2_500
        assert summary["bytes"] == sum(len(body_of(k)) for k in keys)
        assert (summary["skipped"], summary["failed"], summary["copies_reused"]) == (0, 0, 0)
        assert summary["estimated_monthly_saving_usd"] > 0
        assert summary["dry_run"] is False and summary["cutoff"]
        assert calls.count("CopyObject") == 2_500
        assert sorted(c["Key"] for c in calls.calls["GetObject"]) == streamed
        assert [len(c["Delete"]["Objects"]) for c in calls.calls["DeleteObjects"]] == [1_000, 1_000, 500]
        assert all_keys(s3_client, source) == ["other/keep.log"]
        pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=dest)
        archived = {o["Key"]: o for page in pages for o in page["Contents"]}
        assert sorted(archived) == ["archive/" + k for k in keys]
        assert {o["StorageClass"] for o in archived.values()} == {"GLACIER"}

        def checksum(key: str) -> str:
            return s3_client.head_object(Bucket=dest, Key="archive/" + key, ChecksumMode="ENABLED")[
                "ChecksumSHA256"
            ]

        sample = keys[::25]
        with ThreadPoolExecutor(max_workers=16) as pool:
            assert list(pool.map(checksum, sample)) == [sha256_b64(body_of(k)) for k in sample]

    def test_failed_or_unverified_copy_keeps_its_source_and_fails_the_task(
        self, s3_client: Any, make_bucket: Any
    ) -> None:
        source, dest = make_bucket("src"), make_bucket("arch")
        keys = [f"logs/{i:02d}.log" for i in range(20)]
        put_many(s3_client, source, keys, body=body_of)
        s3_client.put_object(Bucket=source, Key="decoy.bin", Body=b"not the same bytes")
        op = archive_op(source, dest)
        client = op.hook.get_conn()
        fail_when(client, "CopyObject", lambda p: p["Key"] == "archive/logs/03.log")

        def corrupt(params: dict[str, Any], **_: Any) -> None:
            if params["Key"] == "archive/logs/07.log":
                params["CopySource"] = {"Bucket": source, "Key": "decoy.bin"}

        client.meta.events.register("provide-client-params.s3.CopyObject", corrupt)

        with pytest.raises(VerificationFailed) as raised:
            op.execute(everything_old())

        message = str(raised.value)
        assert "2 object(s)" in message and "18 archived" in message
        assert "logs/03.log" in message and "injected failure" in message
        assert "logs/07.log" in message and "not verified: size" in message
        assert all_keys(s3_client, source, "logs/") == ["logs/03.log", "logs/07.log"]
        assert s3_client.get_object(Bucket=source, Key="logs/07.log")["Body"].read() == body_of("logs/07.log")

    def test_rerun_after_a_partial_run_copies_nothing_twice(self, s3_client: Any, make_bucket: Any) -> None:
        source, dest = make_bucket("src"), make_bucket("arch")
        keys = [f"logs/{i:03d}.log" for i in range(40)]
        put_many(s3_client, source, keys, body=body_of)
        crashed = archive_op(source, dest)
        # The first run copies only the even keys, then dies before deleting anything.
        fail_when(crashed.hook.get_conn(), "CopyObject", lambda p: int(p["Key"][-7:-4]) % 2 == 1)
        fail_when(crashed.hook.get_conn(), "DeleteObjects", lambda p: True, code="ServiceUnavailable")

        # Failed copies and failed deletes alike: the task fails after handling every key.
        with pytest.raises(VerificationFailed, match="were not archived and their sources were kept"):
            crashed.execute(everything_old())
        assert all_keys(s3_client, source) == keys
        assert all_keys(s3_client, dest) == ["archive/" + k for k in keys[::2]]

        rerun = archive_op(source, dest)
        calls = CallCounter(rerun.hook.get_conn(), "CopyObject")
        summary = rerun.execute(everything_old(interval=False))

        assert sorted(c["CopySource"]["Key"] for c in calls.calls["CopyObject"]) == keys[1::2]
        assert (summary["objects"], summary["copies_reused"], summary["failed"]) == (40, 20, 0)
        assert all_keys(s3_client, source) == []
        assert all_keys(s3_client, dest) == ["archive/" + k for k in keys]
        assert rerun.execute(everything_old())["objects"] == 0

    @pytest.mark.parametrize("status", ["Enabled", "Suspended"])
    def test_versioned_source_is_refused_and_keeps_every_version(
        self, status: str, s3_client: Any, make_bucket: Any
    ) -> None:
        source, dest = make_bucket("src", versioned=True), make_bucket("arch")
        bodies = [b"first", b"second", b"third"]
        ids = [s3_client.put_object(Bucket=source, Key="logs/a.log", Body=b)["VersionId"] for b in bodies]
        s3_client.put_bucket_versioning(Bucket=source, VersioningConfiguration={"Status": status})

        # Three runs: each would delete the current version and make the previous one current.
        for _ in range(3):
            with pytest.raises(LifecycleConfigError, match=f"versioning {status}.*lifecycle rules"):
                archive_op(source, dest).execute(everything_old())

        versions = s3_client.list_object_versions(Bucket=source)["Versions"]
        assert sorted(v["VersionId"] for v in versions) == sorted(ids)
        assert all_keys(s3_client, dest) == []

    def test_an_archive_object_with_other_bytes_is_never_replaced(
        self, s3_client: Any, make_bucket: Any, real_s3: None
    ) -> None:
        source, dest = make_bucket("src"), make_bucket("arch")
        put_many(s3_client, source, ["logs/a.log", "logs/b.log"], body=body_of, ChecksumAlgorithm="SHA256")
        other = body_of("logs/x.log")  # same size, other bytes
        s3_client.put_object(
            Bucket=dest,
            Key="archive/logs/a.log",
            Body=other,
            ChecksumAlgorithm="SHA256",
            StorageClass="GLACIER",
        )
        op = archive_op(source, dest)

        with pytest.raises(
            VerificationFailed, match=r"1 object\(s\).*logs/a.log.*already exists.*not replaced"
        ):
            op.execute(everything_old())

        def checksum(key: str) -> str:
            return s3_client.head_object(Bucket=dest, Key=key, ChecksumMode="ENABLED")["ChecksumSHA256"]

        assert checksum("archive/logs/a.log") == sha256_b64(other)
        assert all_keys(s3_client, source) == ["logs/a.log"]
        assert checksum("archive/logs/b.log") == sha256_b64(body_of("logs/b.log"))

    def test_a_crc32_match_is_not_a_verified_copy(
        self, s3_client: Any, make_bucket: Any, real_s3: None
    ) -> None:
        source, dest = make_bucket("src"), make_bucket("arch")
        original = body_of("logs/a.log")
        forged = crc32_twin(original)
        assert len(forged) == len(original) and forged != original
        assert zlib.crc32(forged) == zlib.crc32(original)
        s3_client.put_object(Bucket=source, Key="logs/a.log", Body=original, ChecksumAlgorithm="CRC32")
        planted = s3_client.put_object(
            Bucket=dest,
            Key="archive/logs/a.log",
            Body=forged,
            ChecksumAlgorithm="CRC32",
            StorageClass="GLACIER",
        )["ETag"]

        with pytest.raises(VerificationFailed, match="already exists"):
            archive_op(source, dest).execute(everything_old())

        assert s3_client.get_object(Bucket=source, Key="logs/a.log")["Body"].read() == original
        assert s3_client.head_object(Bucket=dest, Key="archive/logs/a.log")["ETag"] == planted

    def test_an_archive_key_written_during_the_copy_is_not_replaced(
        self, s3_client: Any, make_bucket: Any, real_s3: None
    ) -> None:
        source, dest = make_bucket("src"), make_bucket("arch")
        s3_client.put_object(Bucket=source, Key="logs/a.log", Body=b"ours")
        op = archive_op(source, dest)
        calls = CallCounter(op.hook.get_conn(), "CopyObject")

        def someone_writes_it(params: dict[str, Any], **_: Any) -> None:
            s3_client.put_object(Bucket=dest, Key=params["Key"], Body=b"theirs")

        op.hook.get_conn().meta.events.register_first(
            "provide-client-params.s3.CopyObject", someone_writes_it
        )
        with pytest.raises(VerificationFailed, match="written while this copy ran"):
            op.execute(everything_old())

        assert calls.calls["CopyObject"][0]["IfNoneMatch"] == "*"
        assert s3_client.get_object(Bucket=dest, Key="archive/logs/a.log")["Body"].read() == b"theirs"
        assert all_keys(s3_client, source) == ["logs/a.log"]

    def test_a_source_rewritten_after_its_copy_is_kept_without_the_endpoint_s_help(
        self, s3_client: Any, make_bucket: Any
    ) -> None:
        """The moto server ignores the ETag on DeleteObjects: the listing right before the batch
        is what keeps the new bytes."""
        source, dest = make_bucket("src"), make_bucket("arch")
        put_many(s3_client, source, ["logs/a.log", "logs/b.log"], body=body_of)
        op = archive_op(source, dest)

        def note_key(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
            context["archive_key"] = params["Key"]

        def rewrite_after_verification(context: dict[str, Any], **_: Any) -> None:
            # Right after the copy's answer, which carries the checksum that verifies it.
            if context.get("archive_key") == "archive/logs/a.log":
                s3_client.put_object(Bucket=source, Key="logs/a.log", Body=b"new bytes")

        events = op.hook.get_conn().meta.events
        events.register("provide-client-params.s3.CopyObject", note_key)
        events.register("after-call.s3.CopyObject", rewrite_after_verification)
        summary = op.execute(everything_old())

        assert (summary["objects"], summary["skipped"], summary["failed"]) == (1, 1, 0)
        assert s3_client.get_object(Bucket=source, Key="logs/a.log")["Body"].read() == b"new bytes"
        assert all_keys(s3_client, source) == ["logs/a.log"]

    def test_a_source_rewritten_at_the_delete_is_kept_by_the_conditional_delete(
        self, s3_client: Any, make_bucket: Any, real_s3: None
    ) -> None:
        source, dest = make_bucket("src"), make_bucket("arch")
        put_many(s3_client, source, ["logs/a.log", "logs/b.log"], body=body_of)
        op = archive_op(source, dest)

        def rewrite_now(params: dict[str, Any], **_: Any) -> None:
            s3_client.put_object(Bucket=source, Key="logs/a.log", Body=b"new bytes")

        # First: before the emulation of S3's answer compares the ETags.
        op.hook.get_conn().meta.events.register_first("provide-client-params.s3.DeleteObjects", rewrite_now)
        summary = op.execute(everything_old())

        assert (summary["objects"], summary["skipped"], summary["failed"]) == (1, 1, 0)
        assert s3_client.get_object(Bucket=source, Key="logs/a.log")["Body"].read() == b"new bytes"

    def test_objects_already_in_glacier_are_skipped(self, s3_client: Any, make_bucket: Any) -> None:
        source, dest = make_bucket("src"), make_bucket("arch")
        s3_client.put_object(Bucket=source, Key="logs/cold.log", Body=b"cold", StorageClass="GLACIER")
        s3_client.put_object(Bucket=source, Key="logs/warm.log", Body=b"warm")

        summary = archive_op(source, dest).execute(everything_old())

        assert (summary["objects"], summary["skipped"], summary["failed"]) == (1, 1, 0)
        assert all_keys(s3_client, source) == ["logs/cold.log"]
        assert all_keys(s3_client, dest) == ["archive/logs/warm.log"]

    def test_restore_archived_requests_a_restore_then_archives(
        self, s3_client: Any, make_bucket: Any
    ) -> None:
        source, dest = make_bucket("src"), make_bucket("arch")
        s3_client.put_object(Bucket=source, Key="logs/cold.log", Body=b"cold", StorageClass="DEEP_ARCHIVE")

        first = archive_op(source, dest, restore_archived=True).execute(everything_old())

        assert (first["objects"], first["skipped"], first["restores_requested"]) == (0, 1, 1)
        assert "Restore" in s3_client.head_object(Bucket=source, Key="logs/cold.log")
        # The test server finishes restores at once; S3 takes hours, and a later run picks the object up.
        second = archive_op(source, dest, restore_archived=True).execute(everything_old())
        assert second["objects"] == 1
        assert all_keys(s3_client, source) == []

    def test_objects_over_the_copy_limit_use_multipart_copy(
        self, s3_client: Any, make_bucket: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(s3_copy, "MAX_COPY_OBJECT_BYTES", 6 * 1024**2)
        monkeypatch.setattr(s3_checksums, "MULTIPART_COPY_PART_BYTES", 5 * 1024**2)
        source, dest = make_bucket("src"), make_bucket("arch")
        big = bytes(range(256)) * (12 * 1024**2 // 256 + 7)
        s3_client.put_object(Bucket=source, Key="logs/big.bin", Body=big, ChecksumAlgorithm="SHA256")
        s3_client.put_object(Bucket=source, Key="logs/small.bin", Body=b"small")
        op = archive_op(source, dest, storage_class="GLACIER_IR")
        calls = CallCounter(op.hook.get_conn(), "CopyObject", "UploadPartCopy")

        summary = op.execute(everything_old())

        assert (summary["objects"], summary["failed"]) == (2, 0)
        assert calls.count("CopyObject") == 1 and calls.count("UploadPartCopy") == 3
        assert s3_client.get_object(Bucket=dest, Key="archive/logs/big.bin")["Body"].read() == big
        assert all_keys(s3_client, source) == []

    def test_a_multipart_copy_does_not_replace_an_archive_key_written_meanwhile(
        self, s3_client: Any, make_bucket: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(s3_copy, "MAX_COPY_OBJECT_BYTES", 6 * 1024**2)
        monkeypatch.setattr(s3_checksums, "MULTIPART_COPY_PART_BYTES", 5 * 1024**2)
        source, dest = make_bucket("src"), make_bucket("arch")
        big = bytes(range(256)) * (7 * 1024**2 // 256)
        s3_client.put_object(Bucket=source, Key="logs/big.bin", Body=big, ChecksumAlgorithm="SHA256")
        op = archive_op(source, dest)

        def someone_writes_it(params: dict[str, Any], **_: Any) -> None:
            s3_client.put_object(Bucket=dest, Key=params["Key"], Body=b"theirs")

        op.hook.get_conn().meta.events.register(
            "provide-client-params.s3.CreateMultipartUpload", someone_writes_it
        )
        with pytest.raises(VerificationFailed, match="written while this copy ran"):
            op.execute(everything_old())

        assert s3_client.get_object(Bucket=dest, Key="archive/logs/big.bin")["Body"].read() == b"theirs"
        assert all_keys(s3_client, source) == ["logs/big.bin"]

    def test_dry_run_touches_nothing(self, s3_client: Any, make_bucket: Any) -> None:
        source, dest = make_bucket("src"), make_bucket("arch")
        put_many(s3_client, source, ["logs/a", "logs/b"], body=body_of)

        summary = archive_op(source, dest, dry_run="True").execute(everything_old())

        assert (summary["objects"], summary["dry_run"]) == (2, True)
        assert summary["bytes"] == len(body_of("logs/a")) * 2
        assert all_keys(s3_client, source) == ["logs/a", "logs/b"]
        assert all_keys(s3_client, dest) == []

    def test_two_requests_per_object_when_the_copy_answers_with_its_checksum(
        self, s3_client: Any, make_bucket: Any
    ) -> None:
        """HEAD of the source and the copy; the rest (listings, deletes) is per batch of 1,000.

        The moto server answers CopyObject with the checksum it computed for the copy, as S3 does.
        """
        source, dest = make_bucket("src"), make_bucket("arch")
        keys = [f"logs/{i:05d}.log" for i in range(1_200)]
        put_many(s3_client, source, keys, body=body_of, ChecksumAlgorithm="SHA256")
        op = archive_op(source, dest)
        sent: Counter[str] = Counter()
        op.hook.get_conn().meta.events.register(
            "before-send.s3", lambda event_name, **_: sent.update([event_name.rsplit(".", 1)[-1]])
        )

        summary = op.execute(everything_old())

        assert (summary["objects"], summary["failed"]) == (1_200, 0)
        assert (sent["HeadObject"], sent["CopyObject"]) == (1_200, 1_200)
        assert sent["DeleteObjects"] == 2
        # The rest: the buckets' checks, then per batch of 1,000 a few listings and the delete.
        assert sum(sent.values()) - 2 * len(keys) <= 3 + 2 * 6, sent
        assert all_keys(s3_client, source) == []
        assert len(all_keys(s3_client, dest)) == 1_200

    def test_without_a_checksum_in_the_copy_s_answer_each_copy_is_verified_by_head(
        self, s3_client: Any, make_bucket: Any
    ) -> None:
        source, dest = make_bucket("src"), make_bucket("arch")
        keys = [f"logs/{i:02d}.log" for i in range(30)]
        put_many(s3_client, source, keys, body=body_of, ChecksumAlgorithm="SHA256")
        op = archive_op(source, dest)
        client = op.hook.get_conn()
        calls = CallCounter(client, "HeadObject")

        def no_checksum(parsed: dict[str, Any], **_: Any) -> None:  # an endpoint that returns none
            for name in list(parsed.get("CopyObjectResult", {})):
                if name.startswith("Checksum"):
                    del parsed["CopyObjectResult"][name]

        client.meta.events.register("after-call.s3.CopyObject", no_checksum)
        summary = op.execute(everything_old())

        assert (summary["objects"], summary["failed"]) == (30, 0)
        heads = sorted(c["Key"] for c in calls.calls["HeadObject"])
        assert heads == sorted(keys + ["archive/" + k for k in keys])

    def test_a_copy_in_the_wrong_class_is_caught_by_the_listing_and_keeps_its_source(
        self, s3_client: Any, make_bucket: Any
    ) -> None:
        """The checksum in the copy's answer matches, but the endpoint ignored the storage class."""
        source, dest = make_bucket("src"), make_bucket("arch")
        keys = [f"logs/{i:02d}.log" for i in range(10)]
        put_many(s3_client, source, keys, body=body_of, ChecksumAlgorithm="SHA256")
        op = archive_op(source, dest)

        def ignore_class(params: dict[str, Any], **_: Any) -> None:
            if params["Key"] == "archive/logs/04.log":
                params["StorageClass"] = "STANDARD"

        op.hook.get_conn().meta.events.register("provide-client-params.s3.CopyObject", ignore_class)
        with pytest.raises(VerificationFailed, match=r"logs/04.log.*storage class STANDARD != GLACIER"):
            op.execute(everything_old())

        assert all_keys(s3_client, source) == ["logs/04.log"]

    def test_recent_objects_stay_and_deletes_are_conditional(self, s3_client: Any, make_bucket: Any) -> None:
        source, dest = make_bucket("src"), make_bucket("arch")
        etag = s3_client.put_object(Bucket=source, Key="logs/old.log", Body=b"old")["ETag"]
        ctx = cutoff_now()
        s3_client.put_object(Bucket=source, Key="logs/new.log", Body=b"new")
        op = archive_op(source, dest)
        calls = CallCounter(op.hook.get_conn(), "DeleteObjects")

        summary = op.execute(ctx)

        assert summary["objects"] == 1
        assert all_keys(s3_client, source) == ["logs/new.log"]
        # Unversioned: the delete only applies to the bytes that were verified.
        assert calls.calls["DeleteObjects"][0]["Delete"]["Objects"] == [{"Key": "logs/old.log", "ETag": etag}]

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            pytest.param({"source_prefix": ""}, "allow_whole_bucket", id="whole-bucket"),
            pytest.param({"storage_class": "STANDARD_IA"}, "not an archive class", id="not-archive-class"),
            pytest.param({"checksum_algorithm": "MD5"}, "not supported", id="checksum"),
            pytest.param(
                {"dest_bucket": "src-bucket", "dest_prefix": None},
                "overlap",
                id="onto-itself",
            ),
            pytest.param(
                {"dest_bucket": "src-bucket", "dest_prefix": "logs/old/"}, "overlap", id="dest-inside-source"
            ),
            pytest.param(
                {"dest_bucket": "src-bucket", "source_prefix": "logs/a/", "dest_prefix": "logs/"},
                "overlap",
                id="source-inside-dest",
            ),
            pytest.param({"dest_bucket": "src-bucket", "dest_prefix": ""}, "overlap", id="empty-dest-prefix"),
            pytest.param({"checksum_algorithm": "CRC32"}, "strong checksum", id="weak-checksum"),
            pytest.param({"max_workers": 0}, "max_workers", id="no-workers"),
        ],
    )
    def test_bad_arguments_are_refused_at_construction(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(LifecycleConfigError, match=message):
            archive_op("src-bucket", "arch-bucket", **kwargs)

    def test_bad_rendered_values_are_refused_before_any_call(self, make_bucket: Any) -> None:
        source, dest = make_bucket("src"), make_bucket("arch")
        with pytest.raises(LifecycleConfigError, match="retention_days"):
            archive_op(source, dest, retention_days="0").execute(everything_old())
        with pytest.raises(LifecycleConfigError, match="dry_run"):
            archive_op(source, dest, dry_run="maybe").execute(everything_old())


def expire_op(bucket: str, **kwargs: Any) -> S3ExpireObjectsOperator:
    params: dict[str, Any] = {
        "task_id": "expire",
        "bucket": bucket,
        "prefix": "tmp/",
        "retention_days": RETENTION,
    }
    return S3ExpireObjectsOperator(**{**params, **kwargs})


@pytest.fixture
def versioned_history(s3_client: Any, make_bucket: Any) -> Iterator[tuple[str, dict[str, str]]]:
    """tmp/a.txt with two versions, tmp/b.txt deleted (a marker over one version), keep/c.txt."""
    bucket = make_bucket("ver", versioned=True)
    ids = {
        "a1": s3_client.put_object(Bucket=bucket, Key="tmp/a.txt", Body=b"a1")["VersionId"],
        "a2": s3_client.put_object(Bucket=bucket, Key="tmp/a.txt", Body=b"a22")["VersionId"],
        "b1": s3_client.put_object(Bucket=bucket, Key="tmp/b.txt", Body=b"b1")["VersionId"],
    }
    ids["b_marker"] = s3_client.delete_object(Bucket=bucket, Key="tmp/b.txt")["VersionId"]
    s3_client.put_object(Bucket=bucket, Key="keep/c.txt", Body=b"c")
    yield bucket, ids


class TestS3ExpireObjectsOperator:
    def test_only_old_objects_under_the_prefix_go(self, s3_client: Any, make_bucket: Any) -> None:
        bucket = make_bucket("exp")
        put_many(s3_client, bucket, ["tmp/old-1", "tmp/old-2", "keep/old-3"], body=body_of)
        ctx = cutoff_now()
        put_many(s3_client, bucket, ["tmp/new-1"], body=body_of)

        summary = expire_op(bucket).execute(ctx)

        assert summary == {
            "bucket": bucket,
            "prefix": "tmp/",
            "cutoff": summary["cutoff"],
            "objects": 2,
            "bytes": 2 * len(body_of("tmp/old-1")),
            "bytes_by_class": {"STANDARD": 2 * len(body_of("tmp/old-1"))},
            "versions": 0,
            "delete_markers": 0,
            "kept_changed": 0,
            "dry_run": False,
            "stopped_by": None,
        }
        assert all_keys(s3_client, bucket) == ["keep/old-3", "tmp/new-1"]
        assert expire_op(bucket).execute(ctx)["objects"] == 0

    def test_deletes_in_batches_within_the_s3_limit(
        self, s3_client: Any, make_bucket: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(s3_common, "DELETE_OBJECTS_MAX_KEYS", 10)
        bucket = make_bucket("exp")
        put_many(s3_client, bucket, [f"tmp/{i:02d}" for i in range(25)], body=lambda k: b"x")
        op = expire_op(bucket)
        calls = CallCounter(op.hook.get_conn(), "DeleteObjects")

        assert op.execute(everything_old())["objects"] == 25

        assert [len(c["Delete"]["Objects"]) for c in calls.calls["DeleteObjects"]] == [10, 10, 5]
        assert all_keys(s3_client, bucket) == []

    def test_whole_bucket_needs_explicit_permission(self, s3_client: Any, make_bucket: Any) -> None:
        bucket = make_bucket("exp")
        put_many(s3_client, bucket, ["a", "b/c"], body=body_of)
        with pytest.raises(LifecycleConfigError, match="allow_whole_bucket"):
            expire_op(bucket, prefix="")

        assert expire_op(bucket, prefix="", allow_whole_bucket=True).execute(everything_old())["objects"] == 2
        assert all_keys(s3_client, bucket) == []

    def test_versions_and_delete_markers_are_purged_when_asked(
        self, s3_client: Any, versioned_history: tuple[str, dict[str, str]]
    ) -> None:
        bucket, _ = versioned_history

        summary = expire_op(bucket, include_versions=True).execute(everything_old())

        assert (summary["objects"], summary["versions"], summary["delete_markers"]) == (1, 2, 1)
        assert summary["bytes"] == len(b"a1") + len(b"a22") + len(b"b1")
        listing = s3_client.list_object_versions(Bucket=bucket)
        assert [v["Key"] for v in listing["Versions"]] == ["keep/c.txt"]
        assert "DeleteMarkers" not in listing

    @pytest.mark.parametrize("status", ["Enabled", "Suspended"])
    def test_a_versioned_bucket_without_versions_or_a_noncurrent_rule_is_refused(
        self, status: str, s3_client: Any, versioned_history: tuple[str, dict[str, str]]
    ) -> None:
        bucket, _ = versioned_history
        s3_client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": status})
        # A noncurrent expiration on another prefix, and one behind a tag filter, do not count.
        rules = [
            {
                "ID": "other",
                "Filter": {"Prefix": "keep/"},
                "Status": "Enabled",
                "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
            },
            {
                "ID": "tagged",
                "Filter": {"And": {"Prefix": "tmp/", "Tags": [{"Key": "k", "Value": "v"}]}},
                "Status": "Enabled",
                "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
            },
        ]
        s3_client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
        before = s3_client.list_object_versions(Bucket=bucket)
        op = expire_op(bucket)
        calls = CallCounter(op.hook.get_conn(), "DeleteObjects")

        with pytest.raises(LifecycleConfigError, match=f"versioning {status}.*include_versions.*noncurrent"):
            op.execute(everything_old())

        assert calls.count("DeleteObjects") == 0
        after = s3_client.list_object_versions(Bucket=bucket)
        assert after["Versions"] == before["Versions"] and after["DeleteMarkers"] == before["DeleteMarkers"]

    def test_with_a_noncurrent_rule_a_versioned_bucket_gets_delete_markers(
        self, s3_client: Any, versioned_history: tuple[str, dict[str, str]]
    ) -> None:
        bucket, ids = versioned_history
        rule = {
            "ID": "noncurrent",
            "Filter": {"Prefix": "tmp"},
            "Status": "Enabled",
            "NoncurrentVersionExpiration": {"NoncurrentDays": 30},
        }
        s3_client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [rule]})

        summary = expire_op(bucket).execute(everything_old(interval=False))

        assert (summary["objects"], summary["versions"], summary["delete_markers"]) == (1, 0, 0)
        listing = s3_client.list_object_versions(Bucket=bucket, Prefix="tmp/")
        assert {v["VersionId"] for v in listing["Versions"]} == {ids["a1"], ids["a2"], ids["b1"]}
        assert len(listing["DeleteMarkers"]) == 2

    def test_recently_overwritten_versions_stay(self, s3_client: Any, make_bucket: Any) -> None:
        bucket = make_bucket("ver", versioned=True)
        old = s3_client.put_object(Bucket=bucket, Key="tmp/a.txt", Body=b"old")["VersionId"]
        ctx = cutoff_now()
        new = s3_client.put_object(Bucket=bucket, Key="tmp/a.txt", Body=b"new")["VersionId"]

        summary = expire_op(bucket, include_versions=True).execute(ctx)

        # The old version became noncurrent after the cutoff, so it is still within retention.
        assert (summary["objects"], summary["versions"]) == (0, 0)
        listing = s3_client.list_object_versions(Bucket=bucket)
        assert {v["VersionId"] for v in listing["Versions"]} == {old, new}

    def test_an_object_rewritten_after_the_listing_is_kept(self, s3_client: Any, make_bucket: Any) -> None:
        """The moto server ignores the ETag on DeleteObjects: the listing right before the batch is
        what keeps the new bytes."""
        bucket = make_bucket("exp")
        put_many(s3_client, bucket, ["tmp/a", "tmp/b"], body=body_of)
        op = expire_op(bucket)
        calls = CallCounter(op.hook.get_conn(), "DeleteObjects", "ListObjectsV2")

        def rewrite_after_first_listing(**_: Any) -> None:
            if calls.count("ListObjectsV2") == 1:
                s3_client.put_object(Bucket=bucket, Key="tmp/a", Body=b"written after the listing")

        op.hook.get_conn().meta.events.register("after-call.s3.ListObjectsV2", rewrite_after_first_listing)
        summary = op.execute(everything_old())

        assert (summary["objects"], summary["kept_changed"]) == (1, 1)
        assert s3_client.get_object(Bucket=bucket, Key="tmp/a")["Body"].read() == b"written after the listing"
        (sent,) = calls.calls["DeleteObjects"]
        assert [set(o) for o in sent["Delete"]["Objects"]] == [{"Key", "ETag"}]

    def test_a_null_version_rewritten_after_the_listing_is_kept(
        self, s3_client: Any, make_bucket: Any
    ) -> None:
        """Without versioning every object is the ``null`` version, and a write replaces it: deleting
        ``VersionId=null`` would delete the new bytes."""
        bucket = make_bucket("exp")
        put_many(s3_client, bucket, ["tmp/a", "tmp/b"], body=body_of)
        op = expire_op(bucket, include_versions=True)
        calls = CallCounter(op.hook.get_conn(), "ListObjectVersions")

        def rewrite_after_first_listing(**_: Any) -> None:
            if calls.count("ListObjectVersions") == 1:
                s3_client.put_object(Bucket=bucket, Key="tmp/a", Body=b"written after the listing")

        op.hook.get_conn().meta.events.register(
            "after-call.s3.ListObjectVersions", rewrite_after_first_listing
        )
        summary = op.execute(everything_old())

        assert (summary["objects"], summary["kept_changed"]) == (1, 1)
        assert s3_client.get_object(Bucket=bucket, Key="tmp/a")["Body"].read() == b"written after the listing"

    def test_an_object_rewritten_at_the_delete_is_kept_by_the_conditional_delete(
        self, s3_client: Any, make_bucket: Any, real_s3: None
    ) -> None:
        bucket = make_bucket("exp")
        put_many(s3_client, bucket, ["tmp/a", "tmp/b"], body=body_of)
        op = expire_op(bucket)

        def rewrite_now(**_: Any) -> None:
            s3_client.put_object(Bucket=bucket, Key="tmp/a", Body=b"new")

        # First: before the emulation of S3's answer compares the ETags.
        op.hook.get_conn().meta.events.register_first("provide-client-params.s3.DeleteObjects", rewrite_now)
        summary = op.execute(everything_old())

        assert (summary["objects"], summary["kept_changed"]) == (1, 1)
        assert all_keys(s3_client, bucket) == ["tmp/a"]

    def test_a_delete_marker_and_a_version_of_the_same_second_are_not_ordered_by_time(
        self, s3_client: Any, make_bucket: Any
    ) -> None:
        bucket = make_bucket("ver", versioned=True)
        first = s3_client.put_object(Bucket=bucket, Key="tmp/a", Body=b"v1")["VersionId"]
        # v2 then a delete marker, in one second; then v3 after the cutoff.
        for _ in range(5):
            now = datetime.now(UTC)
            time.sleep(1 - now.microsecond / 1e6 + 0.01)
            s3_client.put_object(Bucket=bucket, Key="tmp/a", Body=b"v2")
            marker = s3_client.delete_object(Bucket=bucket, Key="tmp/a")["VersionId"]
            listing = s3_client.list_object_versions(Bucket=bucket)
            times = {e["LastModified"] for e in listing["Versions"][:1] + listing["DeleteMarkers"][:1]}
            if len(times) == 1:
                break
        else:
            pytest.fail("could not write a version and a delete marker in the same second")
        ctx = cutoff_now()
        s3_client.put_object(Bucket=bucket, Key="tmp/a", Body=b"v3")

        expire_op(bucket, include_versions=True).execute(ctx)

        # The marker became noncurrent when v3 was written, after the cutoff: inside retention.
        listing = s3_client.list_object_versions(Bucket=bucket)
        assert [m["VersionId"] for m in listing.get("DeleteMarkers", [])] == [marker]
        assert first not in {v["VersionId"] for v in listing["Versions"]}

    def test_max_objects_guardrail_deletes_nothing(self, s3_client: Any, make_bucket: Any) -> None:
        bucket = make_bucket("exp")
        keys = [f"tmp/{i:02d}" for i in range(30)]
        put_many(s3_client, bucket, keys, body=body_of)
        op = expire_op(bucket, max_objects=10)
        calls = CallCounter(op.hook.get_conn(), "DeleteObjects")

        with pytest.raises(GuardrailTripped, match="max_objects=10"):
            op.execute(everything_old())

        assert calls.count("DeleteObjects") == 0
        assert all_keys(s3_client, bucket) == keys

    def test_dry_run_deletes_nothing(self, s3_client: Any, make_bucket: Any) -> None:
        bucket = make_bucket("exp")
        put_many(s3_client, bucket, ["tmp/a", "tmp/b"], body=body_of)

        summary = expire_op(bucket, dry_run="true").execute(everything_old())

        assert (summary["objects"], summary["dry_run"]) == (2, True)
        assert all_keys(s3_client, bucket) == ["tmp/a", "tmp/b"]

    def test_missing_bucket_is_named_before_any_write(self) -> None:
        with pytest.raises(LifecycleConfigError, match="no-such-bucket-exp"):
            expire_op("no-such-bucket-exp").execute(everything_old())

    def test_per_key_delete_errors_fail_the_task_after_the_rest(
        self, s3_client: Any, make_bucket: Any
    ) -> None:
        bucket = make_bucket("lock", versioned=True, object_lock=True)
        put_many(s3_client, bucket, ["tmp/a", "tmp/b", "tmp/c"], body=body_of)
        held = s3_client.head_object(Bucket=bucket, Key="tmp/b")["VersionId"]
        s3_client.put_object_legal_hold(
            Bucket=bucket, Key="tmp/b", VersionId=held, LegalHold={"Status": "ON"}
        )

        with pytest.raises(LifecycleError, match=r"1 of 3 entries.*tmp/b@"):
            expire_op(bucket, include_versions=True).execute(everything_old())

        listing = s3_client.list_object_versions(Bucket=bucket)
        assert [v["Key"] for v in listing["Versions"]] == ["tmp/b"]
        s3_client.put_object_legal_hold(
            Bucket=bucket, Key="tmp/b", VersionId=held, LegalHold={"Status": "OFF"}
        )
