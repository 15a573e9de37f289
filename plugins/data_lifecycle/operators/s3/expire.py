"""Expiry of objects (and, optionally, noncurrent versions) older than the retention."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from data_lifecycle.cutoff import compute_cutoff, parse_retention_days
from data_lifecycle.exceptions import (
    GuardrailTripped,
    LifecycleConfigError,
    LifecycleError,
)
from data_lifecycle.kill_switch import STOPPED_BY as KILL_SWITCH_STOP
from data_lifecycle.kill_switch import KillSwitch
from data_lifecycle.operators.s3.common import (
    bucket_versioning,
    check_bucket,
    delete_batches,
    error_code,
    sample_keys,
    unchanged_since_listed,
)
from data_lifecycle.rendered import as_bool

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.sdk import Context


class S3ExpireObjectsOperator(BaseOperator):
    """Delete objects under a prefix whose LastModified is older than the retention.

    Each delete carries the listed ETag, and right before each batch the keys are listed again:
    an object rewritten since the listing (inside retention again) is kept, also where the endpoint
    ignores the ETag condition.

    In a versioned bucket a plain delete only adds a delete marker: the bytes stay, billed and, for
    user data, still personal data. So on a bucket with versioning Enabled or Suspended the operator
    needs ``include_versions``, or an enabled lifecycle rule with a noncurrent-version expiration
    covering the prefix, and otherwise fails before deleting anything. With ``include_versions`` it
    lists versions and permanently deletes, by version id, current versions older than the cutoff,
    noncurrent versions that became noncurrent before it, and delete markers older than it. Entries
    of one key are ordered by the listing (newest first, ``IsLatest`` first), never by timestamp
    alone: LastModified has one-second resolution, so a version and a delete marker written in the
    same second are treated as noncurrent since the newest time either order allows.

    :param bucket: the bucket.
    :param prefix: key prefix; empty is refused unless ``allow_whole_bucket``.
    :param retention_days: objects older than this many days are deleted (templated).
    :param aws_conn_id: the AWS connection.
    :param allow_whole_bucket: allow an empty ``prefix``.
    :param include_versions: purge versions and delete markers too (versioned buckets).
    :param max_objects: refuse the run, deleting nothing, if more than this many entries are due.
    :param dry_run: only report what would be deleted (templated).
    """

    template_fields: Sequence[str] = ("retention_days", "dry_run")

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str,
        retention_days: int | str,
        aws_conn_id: str = "lifecycle_aws",
        allow_whole_bucket: bool = False,
        include_versions: bool = False,
        max_objects: int = 100_000,
        dry_run: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bucket = bucket
        self.prefix = prefix
        self.retention_days = retention_days
        self.aws_conn_id = aws_conn_id
        self.allow_whole_bucket = allow_whole_bucket
        self.include_versions = include_versions
        self.max_objects = max_objects
        # Shadows BaseOperator.dry_run(), a render-only helper Airflow 3 never calls: the flag is templated.
        self.dry_run = dry_run  # type: ignore[method-assign,assignment]
        if not bucket:
            raise LifecycleConfigError(f"{self.task_id}: bucket is required")
        if not prefix and not allow_whole_bucket:
            raise LifecycleConfigError(
                f"{self.task_id} (s3://{bucket}): an empty prefix expires the whole bucket; "
                "pass allow_whole_bucket=True"
            )
        if isinstance(max_objects, bool) or not isinstance(max_objects, int) or max_objects < 1:
            raise LifecycleConfigError(
                f"{self.task_id}: max_objects must be a positive integer, got {max_objects!r}"
            )

    @cached_property
    def hook(self) -> S3Hook:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(aws_conn_id=self.aws_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        cutoff = compute_cutoff(context, parse_retention_days(self.retention_days))
        dry_run = as_bool(self.dry_run, field="dry_run")
        client: Any = self.hook.get_conn()
        check_bucket(client, self.bucket)
        if not self.include_versions:
            self._check_unversioned_or_expiring(client)
        started = time.monotonic()
        due: list[tuple[str, dict[str, str], int]] = []
        self._class_of: dict[tuple[str, str | None], str] = {}  # for the bytes per storage class
        listing = (
            self._due_versions(client, cutoff) if self.include_versions else self._due_objects(client, cutoff)
        )
        for item in listing:
            due.append(item)
            if len(due) > self.max_objects:
                raise GuardrailTripped(
                    f"More than max_objects={self.max_objects} objects under s3://{self.bucket}/{self.prefix} "
                    f"are older than {cutoff.isoformat()}; nothing was deleted. Raise max_objects if intended."
                )
        counts = {"object": 0, "version": 0, "delete_marker": 0}
        size_of: dict[tuple[str, str | None], int] = {}
        for kind, ident, size in due:
            counts[kind] += 1
            size_of[(ident["Key"], ident.get("VersionId"))] = size
        summary: dict[str, Any] = {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "cutoff": cutoff.isoformat(),
            "objects": counts["object"],
            "bytes": sum(size_of.values()),
            "versions": counts["version"],
            "delete_markers": counts["delete_marker"],
            "kept_changed": 0,
            "dry_run": dry_run,
            "stopped_by": None,
        }
        if dry_run or not due:
            self.log.info("%s: %s", "Dry run, nothing deleted" if dry_run else "Nothing to expire", summary)
            return summary
        switch = KillSwitch(f"s3://{self.bucket}/{self.prefix}")  # asked before each DeleteObjects
        deleted, errors, kept = delete_batches(
            client,
            self.bucket,
            [ident for _, ident, _ in due],
            confirm=unchanged_since_listed(client, self.bucket, self.prefix),
            stop=switch.tripped,
        )
        if kept:
            self.log.info("Kept %d object(s) changed since the listing: %s", len(kept), sample_keys(kept))
        kinds = {(ident["Key"], ident.get("VersionId")): kind for kind, ident, _ in due}
        counts = {"object": 0, "version": 0, "delete_marker": 0}
        for entry in deleted:
            counts[kinds[(entry["Key"], entry.get("VersionId"))]] += 1
        summary.update(
            objects=counts["object"],
            versions=counts["version"],
            delete_markers=counts["delete_marker"],
            bytes=sum(size_of[(e["Key"], e.get("VersionId"))] for e in deleted),
            kept_changed=len(kept),
            bytes_by_class=_bytes_by_class(deleted, size_of, self._class_of),
            stopped_by=KILL_SWITCH_STOP if switch.is_tripped else None,
        )
        if switch.is_tripped:
            self.log.warning(
                "Stopped by the kill switch after %d of %d due entries; the next run resumes",
                len(deleted),
                len(due),
            )
        elapsed = max(time.monotonic() - started, 1e-6)
        self.log.info(
            "Expired %d entries from s3://%s/%s in %.1f s (%.0f/s): %s",
            len(deleted),
            self.bucket,
            self.prefix,
            elapsed,
            len(deleted) / elapsed,
            summary,
        )
        if errors:
            raise LifecycleError(
                f"{len(errors)} of {len(due)} entries under s3://{self.bucket}/{self.prefix} could not be "
                f"deleted (the rest were): {sample_keys(errors)}"
            )
        return summary

    def _check_unversioned_or_expiring(self, client: Any) -> None:
        """Refuse plain deletes in a versioned bucket unless a lifecycle rule expires what they leave."""
        from botocore.exceptions import ClientError

        versioning = bucket_versioning(client, self.bucket)
        if not versioning:
            return
        try:
            rules = client.get_bucket_lifecycle_configuration(Bucket=self.bucket).get("Rules", [])
        except ClientError as exc:
            if error_code(exc) != "NoSuchLifecycleConfiguration":
                raise
            rules = []
        if not any(_expires_noncurrent(rule, self.prefix) for rule in rules):
            raise LifecycleConfigError(
                f"{self.task_id}: s3://{self.bucket} has versioning {versioning}, so deleting under "
                f"{self.prefix!r} only adds delete markers and keeps every byte; set include_versions, "
                "or add a lifecycle rule with noncurrent_expiration_days covering this prefix"
            )

    def _due_objects(self, client: Any, cutoff: datetime) -> Iterator[tuple[str, dict[str, str], int]]:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", []):
                if obj["LastModified"] < cutoff:
                    self._class_of[(obj["Key"], None)] = obj.get("StorageClass") or "STANDARD"
                    yield "object", {"Key": obj["Key"], "ETag": obj["ETag"]}, int(obj["Size"])

    def _due_versions(self, client: Any, cutoff: datetime) -> Iterator[tuple[str, dict[str, str], int]]:
        """Walk every version newest first per key; a noncurrent one is due once its successor is old.

        Versions and delete markers come in two lists; merged per key with ``IsLatest`` first and then
        by LastModified. Entries of one key with equal LastModified may be in either order, so each of
        them counts as noncurrent since the entry before the whole group: nothing goes early.
        """
        paginator = client.get_paginator("list_object_versions")
        key: str | None = None
        previous: datetime | None = None  # LastModified of the newer entry of the same key
        since: datetime | None = None  # noncurrent since, for the current group of equal times
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            entries = [(v, "version") for v in page.get("Versions", [])] + [
                (m, "delete_marker") for m in page.get("DeleteMarkers", [])
            ]
            entries.sort(key=lambda e: (e[0]["Key"], not e[0]["IsLatest"], -e[0]["LastModified"].timestamp()))
            for entry, kind in entries:
                modified = entry["LastModified"]
                if entry["Key"] != key:
                    key, previous, since = entry["Key"], None, None
                ident = {"Key": entry["Key"], "VersionId": entry["VersionId"]}
                if entry["VersionId"] == "null" and entry.get("ETag"):
                    # The next write to the key replaces the null version: delete only these bytes.
                    ident["ETag"] = entry["ETag"]
                size = int(entry.get("Size", 0))
                storage_class = entry.get("StorageClass") or "STANDARD"
                if entry["IsLatest"]:
                    since = modified
                    if modified < cutoff:
                        self._class_of[(entry["Key"], entry["VersionId"])] = storage_class
                        yield ("object" if kind == "version" else kind), ident, size
                else:
                    if modified != previous:
                        since = previous
                    if since is not None and since < cutoff:
                        self._class_of[(entry["Key"], entry["VersionId"])] = storage_class
                        yield kind, ident, size
                previous = modified


def _expires_noncurrent(rule: dict[str, Any], prefix: str) -> bool:
    """An enabled rule that expires noncurrent versions of every object under ``prefix``."""
    if rule.get("Status") != "Enabled" or not rule.get("NoncurrentVersionExpiration"):
        return False
    raw = rule.get("Filter")
    if raw is None:
        return prefix.startswith(rule.get("Prefix", "") or "")
    if set(raw) - {"Prefix"}:
        return False  # a tag or size filter covers only some objects
    return prefix.startswith(raw.get("Prefix", "") or "")


def _bytes_by_class(
    deleted: Sequence[Mapping[str, Any]],
    size_of: dict[tuple[str, str | None], int],
    class_of: dict[tuple[str, str | None], str],
) -> dict[str, int]:
    out: dict[str, int] = {}
    for entry in deleted:
        ident = (entry["Key"], entry.get("VersionId"))
        cls = class_of.get(ident, "STANDARD")
        out[cls] = out.get(cls, 0) + size_of[ident]
    return out
