"""Hypothesis state machines over a small bucket model, on the moto server with S3's conditional
answers emulated (``real_s3_conditions``): random puts, overwrites, deletes, versions, delete markers
and runs, some racing a writer or losing their deletes (then retried), each followed by a rerun.

After every step the buckets are checked against the model:

* every source object (or version) a run deleted was due, and has a verified archive copy of the
  same bytes (size, SHA-256, storage class); an archive object, once there, never changes;
* nothing inside retention is deleted (a version counts from when it became noncurrent);
* a rerun of the same run copies nothing and deletes nothing.

``LIFECYCLE_STATEFUL_EXAMPLES``, ``LIFECYCLE_STATEFUL_STEPS`` and ``LIFECYCLE_STATEFUL_TICKS`` run
more (the defaults keep ``make test`` to a few seconds).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from data_lifecycle.exceptions import LifecycleError
from data_lifecycle.operators.s3 import S3ExpireObjectsOperator, S3GlacierCopyThenDeleteOperator
from tests.reliability.harness import fault_when, real_s3_conditions, run_context, s3_faults
from tests.reliability.invariants import sha256_b64

RETENTION = 30
KEYS = st.sampled_from(["logs/a", "logs/b", "logs/c"])
# Fewer keys, longer histories: versions and markers pile up on one key.
VERSIONED_KEYS = st.sampled_from(["logs/a", "logs/b"])
BODIES = st.binary(min_size=1, max_size=48)
# Each tick sleeps into the next second, giving runs old and recent objects; one per example keeps
# make test quick (LIFECYCLE_STATEFUL_TICKS for more).
MAX_TICKS = int(os.environ.get("LIFECYCLE_STATEFUL_TICKS", "1"))
SETTINGS = settings(
    max_examples=int(os.environ.get("LIFECYCLE_STATEFUL_EXAMPLES", "3")),
    stateful_step_count=int(os.environ.get("LIFECYCLE_STATEFUL_STEPS", "6")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def next_second() -> None:
    """Sleep into the next second: LastModified has one-second resolution."""
    now = datetime.now(UTC)
    time.sleep(1 - now.microsecond / 1e6 + 0.01)


def cutoffs(times: list[datetime]) -> st.SearchStrategy[datetime]:
    """A cutoff at one of the times seen (what is older is due), or after everything."""
    latest = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    return st.sampled_from(sorted({*times, latest}))


class Calls:
    """Copies and deletes sent by one operator's client."""

    def __init__(self, client: Any) -> None:
        self.copies = self.deletes = 0
        for op in ("CopyObject", "UploadPartCopy"):
            client.meta.events.register(f"provide-client-params.s3.{op}", self._copy)
        client.meta.events.register("provide-client-params.s3.DeleteObjects", self._delete)

    def _copy(self, **_: Any) -> None:
        self.copies += 1

    def _delete(self, **_: Any) -> None:
        self.deletes += 1


class ArchiveMachine(RuleBasedStateMachine):
    """An unversioned source prefix archived by copy-then-delete into an archive bucket."""

    client: Any

    def __init__(self) -> None:
        super().__init__()
        self.ticks = 0
        self.source, self.dest = f"sm-src-{uuid.uuid4().hex[:10]}", f"sm-arch-{uuid.uuid4().hex[:10]}"
        self.client.create_bucket(Bucket=self.source)
        self.client.create_bucket(Bucket=self.dest)
        self.current: dict[str, bytes] = {}  # what each source key holds, by the model
        self.modified: dict[str, datetime] = {}
        self.archive: dict[str, tuple[int, str]] = {}  # size and SHA-256 of each archive object seen

    # -- the world ---------------------------------------------------------------------------

    def _write(self, key: str, body: bytes, *, sha256: bool = False) -> None:
        extra = {"ChecksumAlgorithm": "SHA256"} if sha256 else {}
        self.client.put_object(Bucket=self.source, Key=key, Body=body, **extra)
        self.current[key] = body
        self.modified[key] = self.client.head_object(Bucket=self.source, Key=key)["LastModified"]

    @rule(key=KEYS, body=BODIES, sha256=st.booleans())
    def put(self, key: str, body: bytes, sha256: bool) -> None:
        self._write(key, body, sha256=sha256)

    @rule(key=KEYS)
    def remove(self, key: str) -> None:
        self.client.delete_object(Bucket=self.source, Key=key)
        self.current.pop(key, None)

    @rule(key=KEYS, body=BODIES)
    def someone_writes_the_archive_key(self, key: str, body: bytes) -> None:
        if "archive/" + key not in self.archive:
            self.client.put_object(
                Bucket=self.dest,
                Key="archive/" + key,
                Body=body,
                ChecksumAlgorithm="SHA256",
                StorageClass="GLACIER",
            )
            self.archive["archive/" + key] = (len(body), sha256_b64(body))

    @precondition(lambda self: self.ticks < MAX_TICKS)
    @rule()
    def tick(self) -> None:
        self.ticks += 1
        next_second()

    # -- runs --------------------------------------------------------------------------------

    def _op(self) -> S3GlacierCopyThenDeleteOperator:
        return S3GlacierCopyThenDeleteOperator(
            task_id="archive",
            source_bucket=self.source,
            source_prefix="logs/",
            dest_bucket=self.dest,
            dest_prefix="archive/logs/",
            retention_days=RETENTION,
            max_workers=2,
        )

    def _execute(self, cutoff: datetime, race: str = "none") -> Calls:
        op = self._op()
        client = op.hook.get_conn()
        calls = Calls(client)
        if race == "rewrite_after_copy":

            def rewrite(params: dict[str, Any], **_: Any) -> None:
                key = params["Key"].removeprefix("archive/")
                if params["Bucket"] == self.dest and key in self.current:
                    self._write(key, b"rewritten after its copy: " + self.current[key])

            client.meta.events.register_first("provide-client-params.s3.HeadObject", rewrite)
        elif race == "rewrite_at_delete":

            def rewrite_first(params: dict[str, Any], **_: Any) -> None:
                key = params["Delete"]["Objects"][0]["Key"]
                self._write(key, b"rewritten at the delete: " + self.current.get(key, b""))

            client.meta.events.register_first("provide-client-params.s3.DeleteObjects", rewrite_first)
        elif race == "deletes_fail":
            for event, handler in fault_when("DeleteObjects", lambda _: ("SlowDown", 503)):
                client.meta.events.register(event, handler)
        try:
            op.execute(run_context(cutoff + timedelta(days=RETENTION)))
        except LifecycleError:
            pass  # conflicts and failed deletes fail the task; the checks below say what is left
        self._check(cutoff)
        return calls

    @rule(
        data=st.data(),
        race=st.sampled_from(["none", "rewrite_after_copy", "rewrite_at_delete", "deletes_fail"]),
    )
    def run(self, data: st.DataObject, race: str) -> None:
        cutoff = data.draw(cutoffs(list(self.modified.values())))
        self._execute(cutoff, race)
        if race == "deletes_fail":
            retry = self._execute(cutoff)
            assert retry.copies == 0, "the retry copied again what was verified already"
        again = self._execute(cutoff)
        assert (again.copies, again.deletes) == (0, 0), "a rerun of the same run did work"

    # -- checks ------------------------------------------------------------------------------

    def _check(self, cutoff: datetime) -> None:
        from botocore.exceptions import ClientError

        for key, body in list(self.current.items()):
            try:
                now: bytes | None = self.client.get_object(Bucket=self.source, Key=key)["Body"].read()
            except ClientError:
                now = None
            if now == body:
                continue
            assert now is None, f"{key} holds bytes nobody wrote"
            assert self.modified[key] < cutoff, f"{key} was deleted inside retention"
            assert self._archived("archive/" + key) == (len(body), sha256_b64(body)), (
                f"{key} was deleted without a verified copy of its bytes"
            )
            del self.current[key]
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.dest)
        for obj in (o for page in pages for o in page.get("Contents", [])):
            self.archive.setdefault(obj["Key"], self._archived(obj["Key"]))

    def _archived(self, dest_key: str) -> tuple[int, str] | None:
        """Size and SHA-256 of an archive object in GLACIER, None when there is none."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.dest, Key=dest_key, ChecksumMode="ENABLED")
        except ClientError:
            return None
        assert head.get("StorageClass") == "GLACIER", f"{dest_key}: storage class {head.get('StorageClass')}"
        return int(head["ContentLength"]), str(head.get("ChecksumSHA256"))

    @invariant()
    def archive_objects_never_change(self) -> None:
        for dest_key, seen in self.archive.items():
            assert self._archived(dest_key) == seen, f"{dest_key} was replaced"


@dataclass
class Entry:
    version_id: str
    marker: bool
    modified: datetime


class VersionedExpiryMachine(RuleBasedStateMachine):
    """A versioned bucket expired with include_versions: versions and delete markers by id."""

    client: Any

    def __init__(self) -> None:
        super().__init__()
        self.ticks = 0
        self.bucket = f"sm-ver-{uuid.uuid4().hex[:10]}"
        self.client.create_bucket(Bucket=self.bucket)
        self.client.put_bucket_versioning(Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})
        self.history: dict[str, list[Entry]] = {}  # newest first, in the order they were written

    def _record(self, key: str, version_id: str, marker: bool) -> None:
        listing = self.client.list_object_versions(Bucket=self.bucket, Prefix=key)
        entries = [*listing.get("Versions", []), *listing.get("DeleteMarkers", [])]
        (modified,) = [e["LastModified"] for e in entries if e["VersionId"] == version_id]
        self.history.setdefault(key, []).insert(0, Entry(version_id, marker, modified))

    @rule(key=VERSIONED_KEYS, body=BODIES)
    def put_version(self, key: str, body: bytes) -> None:
        version = self.client.put_object(Bucket=self.bucket, Key=key, Body=body)["VersionId"]
        self._record(key, version, marker=False)

    @rule(key=VERSIONED_KEYS, body=BODIES)
    def version_then_marker(self, key: str, body: bytes) -> None:
        """A version and a delete marker, most likely in the same second."""
        self.put_version(key, body)
        self.delete_marker(key)

    @rule(key=VERSIONED_KEYS)
    def delete_marker(self, key: str) -> None:
        response = self.client.delete_object(Bucket=self.bucket, Key=key)
        if "VersionId" in response:  # the moto server adds no marker to a key that never existed
            self._record(key, response["VersionId"], marker=True)

    @precondition(lambda self: self.ticks < MAX_TICKS)
    @rule()
    def tick(self) -> None:
        self.ticks += 1
        next_second()

    def _execute(self, cutoff: datetime) -> int:
        op = S3ExpireObjectsOperator(
            task_id="expire",
            bucket=self.bucket,
            prefix="logs/",
            retention_days=RETENTION,
            include_versions=True,
        )
        calls = Calls(op.hook.get_conn())
        op.execute(run_context(cutoff + timedelta(days=RETENTION)))
        self._check(cutoff)
        return calls.deletes

    @rule(data=st.data())
    def run(self, data: st.DataObject) -> None:
        cutoff = data.draw(cutoffs([e.modified for h in self.history.values() for e in h]))
        self._execute(cutoff)
        assert self._execute(cutoff) == 0, "a rerun of the same run deleted again"

    def _check(self, cutoff: datetime) -> None:
        listing = self.client.list_object_versions(Bucket=self.bucket)
        present = {
            (e["Key"], e["VersionId"])
            for e in [*listing.get("Versions", []), *listing.get("DeleteMarkers", [])]
        }
        for key, entries in self.history.items():
            kept = []
            for i, entry in enumerate(entries):
                if (key, entry.version_id) in present:
                    kept.append(entry)
                    continue
                # Current: due when older than the cutoff; noncurrent: when its successor is.
                since = entry.modified if i == 0 else entries[i - 1].modified
                assert since < cutoff, f"{key}@{entry.version_id} was deleted inside retention"
            self.history[key] = kept
        known = {(k, e.version_id) for k, h in self.history.items() for e in h}
        assert present == known, f"entries nobody wrote or that came back: {present ^ known}"


@pytest.mark.parametrize(
    "machine", [ArchiveMachine, VersionedExpiryMachine], ids=["archive", "versioned-expiry"]
)
def test_no_object_is_lost(machine: type[RuleBasedStateMachine], s3_client: Any) -> None:
    with s3_faults(*real_s3_conditions(s3_client)):
        run_state_machine_as_test(
            type(machine.__name__, (machine,), {"client": s3_client}), settings=SETTINGS
        )
