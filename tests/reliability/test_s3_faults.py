"""S3 faults injected into the operators' own clients (botocore event handlers): failed copies,
failed or lying HEADs, DeleteObjects answering HTTP 200 with per-key Errors, throttling (SlowDown).

Unverified objects are never deleted, the task fails naming the keys, and the retry finishes. Every
check is on the real buckets: each source gone has a copy of the same size and SHA-256.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from data_lifecycle.exceptions import LifecycleError, VerificationFailed
from data_lifecycle.operators.postgres import PostgresBatchedDeleteOperator
from data_lifecycle.operators.s3 import S3ExpireObjectsOperator, S3GlacierCopyThenDeleteOperator
from tests.reliability.data import ANCHOR
from tests.reliability.harness import fault_when, http_error, rewrite_response, run_context, s3_faults
from tests.reliability.invariants import (
    assert_deleted_rows_archived,
    assert_sources_have_verified_copies,
    object_listing,
    table_rows,
    verified_archive,
)

RETENTION = 30
KEYS = [f"logs/{i:02d}.log" for i in range(14)]
FAILING = {"logs/03.log", "logs/07.log", "logs/11.log"}


def later() -> datetime:
    """A run anchor far enough ahead that every object written now is due."""
    return datetime.now(UTC) + timedelta(days=200)


def _dest_key(key: str) -> str:
    return "archive/" + key


class Estate:
    """A source bucket of random objects and an empty archive bucket."""

    def __init__(self, s3_client: Any, make_bucket: Any, keys: list[str] = KEYS) -> None:
        self.client = s3_client
        self.source, self.dest = make_bucket("fault-src"), make_bucket("fault-arch")
        rng = random.Random(self.source)
        self.originals = {k: rng.randbytes(rng.randint(1, 20_000)) for k in keys}
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(
                pool.map(
                    lambda k: s3_client.put_object(Bucket=self.source, Key=k, Body=self.originals[k]), keys
                )
            )

    def op(self, task_id: str = "archive_logs") -> S3GlacierCopyThenDeleteOperator:
        return S3GlacierCopyThenDeleteOperator(
            task_id=task_id,
            source_bucket=self.source,
            source_prefix="logs/",
            dest_bucket=self.dest,
            dest_prefix="archive/logs/",
            storage_class="GLACIER",
            retention_days=RETENTION,
            max_workers=4,
        )

    def check(self) -> set[str]:
        return assert_sources_have_verified_copies(
            self.client,
            originals=self.originals,
            due=set(self.originals),
            source_bucket=self.source,
            dest_bucket=self.dest,
            dest_key=_dest_key,
        )

    def left(self) -> set[str]:
        return set(object_listing(self.client, self.source))

    def retry_finishes(self) -> None:
        summary = self.op("retry").execute(run_context(later()))
        assert summary["failed"] == 0
        assert self.check() == set(self.originals)
        assert self.left() == set()
        dest = object_listing(self.client, self.dest)
        again = self.op("again").execute(run_context(later()))
        assert (again["objects"], again["failed"]) == (0, 0)
        assert object_listing(self.client, self.dest) == dest


def _copy_of_failing(params: dict[str, Any]) -> bool:
    return params["CopySource"]["Key"] in FAILING


def _raise_connection_error(params: dict[str, Any], **_: Any) -> None:
    if params["CopySource"]["Key"] in FAILING:
        raise EndpointConnectionError(endpoint_url="https://s3.example.invalid")


COPY_FAULTS: list[Any] = [
    pytest.param(
        fault_when("CopyObject", lambda p: ("InternalError", 500) if _copy_of_failing(p) else None),
        "InternalError",
        id="copy-internal-error-500",
    ),
    pytest.param(
        fault_when("CopyObject", lambda p: ("SlowDown", 503) if _copy_of_failing(p) else None),
        "SlowDown",
        id="copy-throttled-503",
    ),
    pytest.param(
        [("provide-client-params.s3.CopyObject", _raise_connection_error)],
        "Could not connect",
        id="copy-connection-error",
    ),
]


def _dest_head(estate: Estate) -> Callable[[dict[str, Any]], bool]:
    return lambda p: p["Bucket"] == estate.dest and p["Key"][len("archive/") :] in FAILING


def _corrupt_checksum(_: dict[str, Any], parsed: dict[str, Any]) -> None:
    parsed["ChecksumSHA256"] = "A" * 43 + "="


def _shrink(_: dict[str, Any], parsed: dict[str, Any]) -> None:
    parsed["ContentLength"] = parsed["ContentLength"] + 1


def _warm_class(_: dict[str, Any], parsed: dict[str, Any]) -> None:
    parsed["StorageClass"] = "STANDARD"


def _no_checksum_in_copy_answer(estate: Estate) -> list[tuple[str, Callable[..., Any]]]:
    """The failing keys' copies are answered without a checksum (an endpoint that returns none),
    so that they are verified by HEAD."""

    def drop(_: dict[str, Any], parsed: dict[str, Any]) -> None:
        result = parsed.get("CopyObjectResult", {})
        for name in [n for n in result if n.startswith("Checksum")]:
            del result[name]

    return rewrite_response("CopyObject", _copy_of_failing, drop)


def _head_faults(estate: Estate, faults: list[tuple[str, Callable[..., Any]]]) -> list[Any]:
    return [*_no_checksum_in_copy_answer(estate), *faults]


HEAD_FAULTS: list[Any] = [
    pytest.param(
        lambda e: _head_faults(
            e, fault_when("HeadObject", lambda p: ("InternalError", 500) if _dest_head(e)(p) else None)
        ),
        "InternalError",
        id="head-error-500",
    ),
    pytest.param(
        lambda e: _head_faults(
            e, fault_when("HeadObject", lambda p: ("SlowDown", 503) if _dest_head(e)(p) else None)
        ),
        "SlowDown",
        id="head-throttled-503",
    ),
    pytest.param(
        lambda e: _head_faults(
            e, fault_when("HeadObject", lambda p: ("404", 404) if _dest_head(e)(p) else None)
        ),
        "the copy is missing",
        id="head-not-found",
    ),
    pytest.param(
        lambda e: _head_faults(e, rewrite_response("HeadObject", _dest_head(e), _corrupt_checksum)),
        "not verified: SHA256",
        id="head-wrong-checksum",
    ),
    pytest.param(
        lambda e: _head_faults(e, rewrite_response("HeadObject", _dest_head(e), _shrink)),
        "not verified: size",
        id="head-wrong-size",
    ),
    pytest.param(
        lambda e: _head_faults(e, rewrite_response("HeadObject", _dest_head(e), _warm_class)),
        "not verified: storage class",
        id="head-wrong-storage-class",
    ),
]


def _dest_listing(estate: Estate) -> Callable[[dict[str, Any]], bool]:
    return lambda p: p["Bucket"] == estate.dest


def _listed(change: Callable[[dict[str, Any]], bool]) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    """Apply ``change`` to the failing keys' entries of a listing; it returns False to drop one."""

    def rewrite(_: dict[str, Any], parsed: dict[str, Any]) -> None:
        entries = parsed.get("Contents", [])
        parsed["Contents"] = [
            e for e in entries if e["Key"][len("archive/") :] not in FAILING or change(e) is not False
        ]

    return rewrite


# Copies verified by the checksum of the copy's answer get their size and class from a listing of
# the archive before the delete: a listing that says otherwise keeps the sources.
LISTING_FAULTS: list[Any] = [
    pytest.param(
        lambda e: rewrite_response("ListObjectsV2", _dest_listing(e), _listed(lambda o: o.update(Size=1))),
        "not verified: size",
        id="listing-wrong-size",
    ),
    pytest.param(
        lambda e: rewrite_response(
            "ListObjectsV2", _dest_listing(e), _listed(lambda o: o.update(StorageClass="STANDARD"))
        ),
        "not verified: storage class",
        id="listing-wrong-storage-class",
    ),
    pytest.param(
        lambda e: rewrite_response("ListObjectsV2", _dest_listing(e), _listed(lambda o: False)),
        "missing from the listing",
        id="listing-copy-missing",
    ),
]


class TestGlacierCopyThenDeleteFaults:
    @pytest.mark.parametrize(("faults", "reason"), COPY_FAULTS)
    def test_failed_copies_keep_their_sources_and_the_retry_finishes(
        self, faults: list[Any], reason: str, s3_client: Any, make_bucket: Any
    ) -> None:
        estate = Estate(s3_client, make_bucket)
        with s3_faults(*faults), pytest.raises(VerificationFailed) as raised:
            estate.op().execute(run_context(later()))

        message = str(raised.value)
        assert f"{len(FAILING)} object(s)" in message and reason in message
        assert all(key in message for key in FAILING)
        assert estate.left() == FAILING
        assert estate.check() == set(KEYS) - FAILING
        estate.retry_finishes()

    @pytest.mark.parametrize(("faults", "reason"), HEAD_FAULTS + LISTING_FAULTS)
    def test_unverified_copies_keep_their_sources_and_the_retry_finishes(
        self, faults: Callable[[Estate], list[Any]], reason: str, s3_client: Any, make_bucket: Any
    ) -> None:
        estate = Estate(s3_client, make_bucket)
        with s3_faults(*faults(estate)), pytest.raises(VerificationFailed) as raised:
            estate.op().execute(run_context(later()))

        message = str(raised.value)
        assert reason in message and all(key in message for key in FAILING), message
        assert estate.left() == FAILING
        assert estate.check() == set(KEYS) - FAILING
        estate.retry_finishes()

    @pytest.mark.parametrize(
        ("code", "actually_deleted"),
        [
            pytest.param("InternalError", False, id="per-key-error-kept"),
            pytest.param("SlowDown", False, id="per-key-slowdown-kept"),
            pytest.param("InternalError", True, id="per-key-error-but-deleted"),
        ],
    )
    def test_delete_objects_200_with_per_key_errors(
        self, code: str, actually_deleted: bool, s3_client: Any, make_bucket: Any
    ) -> None:
        """HTTP 200 whose Errors name some keys: those keys are reported, nothing unverified goes."""
        estate = Estate(s3_client, make_bucket)

        def hold_back(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
            # A new request body: the caller's own list must stay as it sent it.
            objects = params["Delete"]["Objects"]
            context["held_back"] = [o["Key"] for o in objects if o["Key"] in FAILING]
            if not actually_deleted:
                kept = [o for o in objects if o["Key"] not in FAILING]
                params["Delete"] = {**params["Delete"], "Objects": kept}

        def report(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
            held = set(context.get("held_back", []))
            parsed["Deleted"] = [d for d in parsed.get("Deleted", []) if d["Key"] not in held]
            parsed["Errors"] = [{"Key": k, "Code": code, "Message": "injected per-key error"} for k in held]

        faults = [
            ("provide-client-params.s3.DeleteObjects", hold_back),
            ("after-call.s3.DeleteObjects", report),
        ]
        with s3_faults(*faults), pytest.raises(VerificationFailed) as raised:
            estate.op().execute(run_context(later()))

        message = str(raised.value)
        assert "source was not deleted" in message and code in message
        assert all(key in message for key in FAILING), message
        assert estate.left() == (set() if actually_deleted else FAILING)
        assert estate.check() == set(KEYS) - (set() if actually_deleted else FAILING)
        estate.retry_finishes()

    def test_transient_slowdown_on_delete_is_retried_by_the_client(
        self, s3_client: Any, make_bucket: Any
    ) -> None:
        estate = Estate(s3_client, make_bucket)
        sent: list[int] = []

        def throttle_once(**_: Any) -> Any:
            sent.append(1)
            return http_error("SlowDown", 503, "Please reduce your request rate.") if len(sent) == 1 else None

        with s3_faults(("before-send.s3.DeleteObjects", throttle_once)):
            summary = estate.op().execute(run_context(later()))

        assert len(sent) >= 2, "the throttled DeleteObjects was not retried"
        assert (summary["objects"], summary["failed"]) == (len(KEYS), 0)
        assert estate.check() == set(KEYS)

    def test_persistent_slowdown_on_delete_keeps_every_source(self, s3_client: Any, make_bucket: Any) -> None:
        estate = Estate(s3_client, make_bucket)
        with (
            s3_faults(*fault_when("DeleteObjects", lambda _: ("SlowDown", 503))),
            pytest.raises((ClientError, VerificationFailed)),
        ):
            estate.op().execute(run_context(later()))

        assert estate.left() == set(KEYS)
        estate.check()
        estate.retry_finishes()

    def test_persistent_slowdown_on_delete_fails_naming_the_keys(
        self, s3_client: Any, make_bucket: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from data_lifecycle.operators.s3 import copy_then_delete

        monkeypatch.setattr(copy_then_delete, "DELETE_OBJECTS_MAX_KEYS", 10)
        estate = Estate(s3_client, make_bucket)
        calls: list[int] = []

        def first_batch_throttled(params: dict[str, Any]) -> tuple[str, int] | None:
            calls.append(1)
            return ("SlowDown", 503) if len(calls) == 1 else None

        with (
            s3_faults(*fault_when("DeleteObjects", first_batch_throttled)),
            pytest.raises(Exception) as raised,
        ):
            estate.op().execute(run_context(later()))

        assert isinstance(raised.value, LifecycleError), repr(raised.value)
        assert "SlowDown" in str(raised.value)
        assert len(estate.left()) == 10, "the batches after the throttled one were not attempted"


class TestExpireObjectsFaults:
    def test_per_key_throttling_is_reported_and_the_retry_finishes(
        self, s3_client: Any, make_bucket: Any
    ) -> None:
        bucket = make_bucket("fault-exp")
        for key in KEYS:
            s3_client.put_object(Bucket=bucket, Key=key, Body=b"x")

        def hold_back(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
            objects = params["Delete"]["Objects"]
            context["held_back"] = [o["Key"] for o in objects if o["Key"] in FAILING]
            kept = [o for o in objects if o["Key"] not in FAILING]
            params["Delete"] = {**params["Delete"], "Objects": kept}

        def report(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
            parsed["Errors"] = [
                {"Key": k, "Code": "SlowDown", "Message": "Please reduce your request rate."}
                for k in context.get("held_back", [])
            ]

        op = S3ExpireObjectsOperator(
            task_id="expire", bucket=bucket, prefix="logs/", retention_days=RETENTION
        )
        faults = [
            ("provide-client-params.s3.DeleteObjects", hold_back),
            ("after-call.s3.DeleteObjects", report),
        ]
        with s3_faults(*faults), pytest.raises(LifecycleError) as raised:
            op.execute(run_context(later()))

        assert f"{len(FAILING)} of {len(KEYS)} entries" in str(raised.value)
        assert all(k in str(raised.value) for k in FAILING)
        assert set(object_listing(s3_client, bucket)) == FAILING
        retry = S3ExpireObjectsOperator(
            task_id="expire", bucket=bucket, prefix="logs/", retention_days=RETENTION
        )
        assert retry.execute(run_context(later()))["objects"] == len(FAILING)
        assert object_listing(s3_client, bucket) == {}


class TestArchiveModeDeleteFaults:
    """Rows archived to S3 before delete: a failed upload or verification keeps the batch's rows."""

    @pytest.mark.parametrize(
        ("faults", "error"),
        [
            pytest.param(
                lambda calls: fault_when(
                    "PutObject", lambda p: ("SlowDown", 503) if calls.append(1) or len(calls) == 3 else None
                ),
                ClientError,
                id="put-throttled",
            ),
            pytest.param(
                lambda calls: fault_when(
                    "HeadObject",
                    lambda p: ("InternalError", 500) if calls.append(1) or len(calls) == 3 else None,
                ),
                ClientError,
                id="head-error",
            ),
            pytest.param(
                lambda calls: rewrite_response(
                    "HeadObject", lambda p: calls.append(1) or len(calls) == 3, _corrupt_checksum
                ),
                VerificationFailed,
                id="head-wrong-checksum",
            ),
        ],
    )
    def test_third_batch_fault_keeps_its_rows_and_the_retry_finishes(
        self,
        faults: Callable[[list[int]], list[Any]],
        error: type[Exception],
        pg: psycopg.Connection[Any],
        s3_client: Any,
        make_bucket: Any,
    ) -> None:
        cutoff = ANCHOR - timedelta(days=7)
        pg.execute(
            "INSERT INTO app.app_logs (created_at, level, logger, message, context)"
            " SELECT %s - g * interval '1 minute', 'INFO', 'app', 'm ' || g, jsonb_build_object('g', g)"
            " FROM generate_series(1, 100) g",
            (cutoff,),
        )
        pg.execute(
            "INSERT INTO app.app_logs (created_at, level, logger, message) VALUES (%s, 'INFO', 'app', 'kept')",
            (cutoff,),
        )
        before = table_rows(pg, "app.app_logs")
        due = {k for k, r in before.items() if r["message"] != "kept"}
        bucket = make_bucket("fault-rows")

        def op() -> PostgresBatchedDeleteOperator:
            return PostgresBatchedDeleteOperator(
                task_id="archive_logs",
                table="app.app_logs",
                timestamp_column="created_at",
                retention_days=7,
                archive={"bucket": bucket, "prefix": "db-archive"},
                batch_size=20,
                min_batch_size=20,
                max_batch_size=20,
                max_delete_fraction=1.0,
            )

        with s3_faults(*faults([])), pytest.raises(error):
            op().execute(run_context(ANCHOR))

        after = table_rows(pg, "app.app_logs")
        assert len(before) - len(after) == 40, "the two batches before the fault stay deleted"
        assert_deleted_rows_archived(before, after, verified_archive(s3_client, bucket, ""), due=due)

        summary = op().execute(run_context(ANCHOR))
        assert summary["remaining"] == 0
        final = table_rows(pg, "app.app_logs")
        assert (
            assert_deleted_rows_archived(before, final, verified_archive(s3_client, bucket, ""), due=due)
            == due
        )
