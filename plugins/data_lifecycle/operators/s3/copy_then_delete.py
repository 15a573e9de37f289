"""Archive copy-then-delete: copy to an archive storage class, verify the copy's checksum, then delete the source."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from data_lifecycle.cutoff import compute_cutoff, parse_retention_days
from data_lifecycle.exceptions import (
    LifecycleConfigError,
    VerificationFailed,
)
from data_lifecycle.kill_switch import STOPPED_BY as KILL_SWITCH_STOP
from data_lifecycle.kill_switch import KillSwitch
from data_lifecycle.operators.s3.batch_operations import check_settings, plan_for
from data_lifecycle.operators.s3.checksums import HASHERS, expected_checksum, part_bytes_for, same_checksum
from data_lifecycle.operators.s3.common import (
    DELETE_OBJECTS_MAX_KEYS,
    MAX_KEYS_IN_ERROR,
    PROGRESS_LOG_SECONDS,
    bucket_versioning,
    check_bucket,
    delete_batches,
    error_code,
    is_not_found,
    listed_objects,
    pooled_s3_hook,
    sample_keys,
    unchanged_since_listed,
)
from data_lifecycle.operators.s3.inventory_source import (
    changed_since_inventory,
    inventory_objects,
    inventory_pages,
    inventory_report,
)
from data_lifecycle.pricing import monthly_saving
from data_lifecycle.rendered import as_bool

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.sdk import Context

# CopyObject: "You can store individual objects of up to 5 TB ... copy an object up to 5 GB in a single operation."
MAX_COPY_OBJECT_BYTES = 5 * 1024**3
# Storage classes whose objects must be restored before they can be read or copied.
ARCHIVED_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
ARCHIVE_TARGET_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE", "GLACIER_IR"})
# Days a restored copy stays readable (RestoreObject Days) and the retrieval tier asked for.
RESTORE_DAYS = 7
RESTORE_TIER = "Standard"
# Archive keys listed per page of sources before falling back to one HEAD per key.
EXISTING_COPIES_LIST_LIMIT = 5_000


@dataclass
class _Outcome:
    key: str
    status: str  # archived | resumed | skipped | restore_requested | failed
    size: int = 0
    storage_class: str = "STANDARD"
    etag: str | None = None
    reason: str = ""
    dest_key: str = ""
    # Verified by the checksum S3 returned for the copy; size and class still to be read from a listing.
    check_listing: bool = False


class S3GlacierCopyThenDeleteOperator(BaseOperator):
    """Archive objects older than the retention to an archive storage class: copy, verify, then delete.

    Each due object is copied to ``dest_bucket`` with the target storage class and a SHA-256
    checksum computed by S3. The copy must hold the source's size and SHA-256 in the target class.
    S3 answers a CopyObject that asks for a checksum with the checksum of the bytes it wrote: when
    that equals the source's, the copy's size and class are read from one listing of the archive's
    key range before the delete batch (two requests per object: HEAD of the source and the copy).
    Otherwise, and for multipart copies, the copy is verified by HEAD (``ChecksumMode=ENABLED``).
    The expected SHA-256 is the source's own
    stored full-object one when it has one; otherwise the source is streamed once (pinned to its
    ETag) and hashed here. Objects over 5 GB are copied in parts, and their composite checksum (the
    checksum of the part checksums) is computed from the same stream with the same part boundaries.
    ETags are never compared: they are not MD5s for multipart or KMS-encrypted objects.

    An archive object is never replaced. Copies are conditional writes (``IfNoneMatch="*"``, on the
    multipart completion too); an archive key that already exists counts as done only when its size
    and SHA-256 equal the source's, and otherwise the object fails for review with its source kept.

    Versioned source buckets (versioning Enabled or Suspended) are refused before anything is
    written: deleting the current version makes the previous one current again, so every run would
    archive an older version onto the same archive key. Tier versioned prefixes with lifecycle rules
    (``noncurrent_transitions`` / ``noncurrent_expiration_days``) instead.

    Only verified sources are deleted, with DeleteObjects in batches of at most 1,000, each entry
    carrying the verified ETag. Right before each batch the sources are listed again and any object
    rewritten since it was checked is kept (endpoints that ignore the ETag condition stay safe). A
    rerun finds verified copies by HEAD and only deletes their sources. Any failure fails the task
    after every other object was handled; each object is either fully archived or left in place.

    :param source_bucket: bucket to archive from (not versioned).
    :param source_prefix: key prefix to archive; empty is refused unless ``allow_whole_bucket``.
    :param dest_bucket: archive bucket.
    :param dest_prefix: prefix that replaces ``source_prefix`` in the archive key; None keeps the key.
        In the source bucket itself, neither prefix may contain the other.
    :param storage_class: GLACIER, DEEP_ARCHIVE or GLACIER_IR.
    :param retention_days: objects whose LastModified is older than this many days are archived (templated).
    :param aws_conn_id: the AWS connection.
    :param max_workers: size of the thread pool copying objects.
    :param checksum_algorithm: the copies' checksum; only SHA256 (a strong checksum) is accepted.
    :param restore_archived: request a restore of sources already in GLACIER/DEEP_ARCHIVE (and copy them
        once restored) instead of skipping them.
    :param allow_whole_bucket: allow an empty ``source_prefix``.
    :param inventory: read the keys from the source bucket's S3 Inventory report instead of listing
        it: ``{"manifest_bucket": ..., "manifest_prefix": ...}`` (the newest ``manifest.json`` there).
        Every object is still HEADed first; one gone or changed (ETag, size) since the report is skipped.
    :param batch_operations: with ``inventory``, above ``threshold`` due objects write an S3 Batch
        Operations plan instead of copying (see ``batch_operations.py``): ``threshold``,
        ``manifest_bucket``, ``manifest_prefix``, ``report_bucket``, ``report_prefix``, optional
        ``role_arn`` (else the connection's ``batch_operations_role_arn`` extra), ``submit``, ``priority``.
    :param dry_run: only report what would be archived (templated).
    """

    template_fields: Sequence[str] = ("retention_days", "dry_run")

    def __init__(
        self,
        *,
        source_bucket: str,
        source_prefix: str,
        dest_bucket: str,
        dest_prefix: str | None = None,
        storage_class: str = "GLACIER",
        retention_days: int | str,
        aws_conn_id: str = "lifecycle_aws",
        max_workers: int = 16,
        checksum_algorithm: str = "SHA256",
        restore_archived: bool = False,
        allow_whole_bucket: bool = False,
        inventory: Mapping[str, Any] | None = None,
        batch_operations: Mapping[str, Any] | None = None,
        dry_run: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source_bucket = source_bucket
        self.source_prefix = source_prefix
        self.dest_bucket = dest_bucket
        self.dest_prefix = dest_prefix
        self.storage_class = storage_class
        self.retention_days = retention_days
        self.aws_conn_id = aws_conn_id
        self.max_workers = max_workers
        self.checksum_algorithm = checksum_algorithm
        self.restore_archived = restore_archived
        self.allow_whole_bucket = allow_whole_bucket
        self.inventory = dict(inventory) if inventory else None
        self.batch_operations = dict(batch_operations) if batch_operations else None
        # Shadows BaseOperator.dry_run(), a render-only helper Airflow 3 never calls: the flag is templated.
        self.dry_run = dry_run  # type: ignore[method-assign,assignment]
        where = f"{self.task_id} (s3://{source_bucket}/{source_prefix})"
        if not source_bucket or not dest_bucket:
            raise LifecycleConfigError(f"{where}: source_bucket and dest_bucket are required")
        if storage_class not in ARCHIVE_TARGET_CLASSES:
            raise LifecycleConfigError(
                f"{where}: storage_class {storage_class!r} is not an archive class; "
                f"use one of {sorted(ARCHIVE_TARGET_CLASSES)}"
            )
        if checksum_algorithm not in HASHERS:
            raise LifecycleConfigError(
                f"{where}: checksum_algorithm {checksum_algorithm!r} is not supported (a strong checksum "
                f"proves the archive holds the same bytes); use one of {sorted(HASHERS)}"
            )
        if not source_prefix and not allow_whole_bucket:
            raise LifecycleConfigError(
                f"{where}: an empty source_prefix archives the whole bucket; pass allow_whole_bucket=True"
            )
        root = source_prefix if dest_prefix is None else dest_prefix
        if source_bucket == dest_bucket and (
            root.startswith(source_prefix) or source_prefix.startswith(root)
        ):
            raise LifecycleConfigError(
                f"{where}: source_prefix {source_prefix!r} and dest_prefix {root!r} overlap in one bucket, "
                "so archive copies could overwrite sources; use another bucket or disjoint prefixes"
            )
        if self.inventory is not None:
            inventory_report(source_bucket, self.inventory, where)
        if self.batch_operations is not None:
            if self.inventory is None:
                raise LifecycleConfigError(f"{where}: batch_operations needs inventory (the job's keys)")
            check_settings(self.batch_operations, where)
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise LifecycleConfigError(
                f"{where}: max_workers must be a positive integer, got {max_workers!r}"
            )

    @cached_property
    def hook(self) -> S3Hook:
        return pooled_s3_hook(self.aws_conn_id, self.max_workers + 4)

    def execute(self, context: Context) -> dict[str, Any]:

        cutoff = compute_cutoff(context, parse_retention_days(self.retention_days))
        dry_run = as_bool(self.dry_run, field="dry_run")
        client: Any = self.hook.get_conn()
        check_bucket(client, self.source_bucket)
        check_bucket(client, self.dest_bucket)
        versioning = bucket_versioning(client, self.source_bucket)
        if versioning:
            raise LifecycleConfigError(
                f"{self.task_id}: s3://{self.source_bucket} has versioning {versioning}; copy-then-delete "
                "archives unversioned buckets only (deleting a current version makes the previous one "
                "current again). Tier this prefix with lifecycle rules (noncurrent_transitions) instead"
            )
        self._refuse_overwrites(client)
        if self.batch_operations is not None and not dry_run:
            planned = self._batch_plan(client, cutoff)
            if planned is not None:
                return planned
        confirm = unchanged_since_listed(client, self.source_bucket, self.source_prefix)
        self.log.info(
            "Archiving s3://%s/%s objects last modified before %s to s3://%s/%s as %s%s",
            self.source_bucket,
            self.source_prefix,
            cutoff.isoformat(),
            self.dest_bucket,
            self.dest_prefix if self.dest_prefix is not None else self.source_prefix,
            self.storage_class,
            " (dry run)" if dry_run else "",
        )
        started = time.monotonic()
        stats = {
            "objects": 0,
            "bytes": 0,
            "skipped": 0,
            "failed": 0,
            "copies_reused": 0,
            "restores_requested": 0,
        }
        saving = 0.0
        moved_by_class: dict[str, int] = {}  # bytes archived, by the class they left
        failures: dict[str, str] = {}
        skipped: list[str] = []
        pending: list[_Outcome] = []
        # Asked before each object and each delete batch (a read every few seconds at most): once off,
        # no copy starts and no source is deleted; copies in flight finish, and a rerun finds them
        # verified and only deletes their sources.
        switch = KillSwitch(f"s3://{self.source_bucket}/{self.source_prefix}")

        def settle(outcome: _Outcome) -> None:
            if outcome.status in ("archived", "resumed"):
                pending.append(outcome)
                if outcome.status == "resumed":
                    stats["copies_reused"] += 1
            elif outcome.status == "failed":
                failures[outcome.key] = outcome.reason
            else:
                stats["skipped"] += 1
                if outcome.status == "restore_requested":
                    stats["restores_requested"] += 1
                if len(skipped) < MAX_KEYS_IN_ERROR:
                    skipped.append(f"{outcome.key} ({outcome.reason})")

        def flush(force: bool = False) -> None:
            nonlocal saving
            while pending and (force or len(pending) >= DELETE_OBJECTS_MAX_KEYS):
                if switch.tripped():
                    return
                batch = pending[:DELETE_OBJECTS_MAX_KEYS]
                del pending[:DELETE_OBJECTS_MAX_KEYS]
                batch = self._listed_copies_verified(client, batch, failures)
                # Conditional on the verified ETag, and checked against a fresh listing first: an
                # object rewritten since it was verified is kept even where the ETag is ignored.
                entries = [{"Key": o.key, "ETag": o.etag} for o in batch]
                by_key = {o.key: o for o in batch}
                # A failed request keeps its sources (their copies are verified, so a rerun only
                # deletes them); the other batches go on, and the task fails naming the keys.
                deleted, errors, kept = delete_batches(client, self.source_bucket, entries, confirm=confirm)
                for key, reason in errors.items():
                    failures[key] = f"archived and verified, but the source was not deleted: {reason}"
                for key, reason in kept.items():
                    settle(_Outcome(key, "skipped", reason=f"source kept, {reason}"))
                for entry in deleted:
                    outcome = by_key[entry["Key"]]
                    stats["objects"] += 1
                    stats["bytes"] += outcome.size
                    moved_by_class[outcome.storage_class] = (
                        moved_by_class.get(outcome.storage_class, 0) + outcome.size
                    )
                    saving += monthly_saving(outcome.size, outcome.storage_class, self.storage_class)

        last_log = started
        seen = 0
        with ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="s3-archive") as pool:
            in_flight: set[Future[_Outcome]] = set()
            for due, existing in self._due_pages(client, cutoff, dry_run):
                for obj in due:
                    if not dry_run and switch.tripped():
                        break
                    seen += 1
                    if obj.get("StorageClass") in ARCHIVED_CLASSES and not self.restore_archived:
                        settle(_Outcome(obj["Key"], "skipped", reason=f"already in {obj['StorageClass']}"))
                        continue
                    if dry_run:
                        stats["objects"] += 1
                        stats["bytes"] += obj["Size"]
                        saving += monthly_saving(obj["Size"], obj.get("StorageClass"), self.storage_class)
                        continue
                    in_flight.add(pool.submit(self._archive_one, obj, cutoff, existing))
                    if len(in_flight) >= self.max_workers * 4:
                        done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                        for future in done:
                            settle(future.result())
                        flush()
                    if time.monotonic() - last_log >= PROGRESS_LOG_SECONDS:
                        last_log = time.monotonic()
                        self._log_progress(seen, stats, len(failures), started)
                if switch.is_tripped:
                    break
            for future in in_flight:
                settle(future.result())
        flush(force=True)
        stats["failed"] = len(failures)
        summary: dict[str, Any] = {
            **stats,
            "seconds": round(time.monotonic() - started, 3),
            "estimated_monthly_saving_usd": round(saving, 6),
            "bytes_by_class": moved_by_class,
            "dry_run": dry_run,
            "cutoff": cutoff.isoformat(),
            "stopped_by": KILL_SWITCH_STOP if switch.is_tripped else None,
            "verified_sources_kept": len(pending),
        }
        self._log_progress(seen, stats, len(failures), started)
        if switch.is_tripped:
            self.log.warning(
                "Stopped by the kill switch: %d archived, %d verified copies whose sources were kept"
                " (a rerun deletes them)",
                stats["objects"],
                len(pending),
            )
        if skipped:
            self.log.info("Skipped %d object(s), e.g. %s", stats["skipped"], "; ".join(skipped))
        self.log.info("Archive summary: %s", summary)
        if failures:
            raise VerificationFailed(
                f"{len(failures)} object(s) under s3://{self.source_bucket}/{self.source_prefix} were not "
                f"archived and their sources were kept; {stats['objects']} archived. Failed: {sample_keys(failures)}"
            )
        return summary

    def _batch_plan(self, client: Any, cutoff: datetime) -> dict[str, Any] | None:
        """Above the threshold, the Batch Operations plan instead of copies (None: copy as usual)."""
        assert self.inventory is not None and self.batch_operations is not None
        report = inventory_report(self.source_bucket, self.inventory, self.task_id)
        due = [
            obj["Key"]
            for obj in inventory_objects(client, report, self.source_prefix)
            if obj["LastModified"] < cutoff and obj["StorageClass"] not in ARCHIVED_CLASSES
        ]
        threshold = int(self.batch_operations["threshold"])
        if len(due) <= threshold:
            self.log.info(
                "%d due object(s), within the Batch Operations threshold %d: copying", len(due), threshold
            )
            return None
        plan = plan_for(self, client, due, cutoff)
        return {
            "objects": 0,
            "bytes": 0,
            "skipped": 0,
            "failed": 0,
            "dry_run": False,
            "cutoff": cutoff.isoformat(),
            "batch_operations": plan,
        }

    @property
    def _client(self) -> Any:
        """The hook's cached boto3 client, shared by the worker threads (clients are thread-safe)."""
        return self.hook.get_conn()

    def _log_progress(self, seen: int, stats: Mapping[str, int], failed: int, started: float) -> None:
        elapsed = max(time.monotonic() - started, 1e-6)
        self.log.info(
            "Listed %d due object(s); archived %d (%d bytes, %.1f objects/s), skipped %d, failed %d",
            seen,
            stats["objects"],
            stats["bytes"],
            stats["objects"] / elapsed,
            stats["skipped"],
            failed,
        )

    def _due_pages(
        self, client: Any, cutoff: datetime, dry_run: bool
    ) -> Iterator[tuple[list[dict[str, Any]], Mapping[str, int] | None]]:
        """Per listing page: the due objects and the archive keys already in that page's key range."""
        after: str | None = None
        for contents in self._source_pages(client):
            if not contents:
                continue
            due = [obj for obj in contents if obj["LastModified"] < cutoff]
            first, last = self._dest_key(contents[0]["Key"]), self._dest_key(contents[-1]["Key"])
            existing = None if dry_run or not due else self._existing_copies(client, first, last, after)
            # Inventory pages are sorted within a page only: each one lists its own archive range.
            after = None if self.inventory else last
            yield due, existing

    def _source_pages(self, client: Any) -> Iterator[list[dict[str, Any]]]:
        """The source objects in pages: from the listing, or from the inventory report."""
        if self.inventory is not None:
            report = inventory_report(self.source_bucket, self.inventory, self.task_id)
            yield from inventory_pages(client, report, self.source_prefix)
            return
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.source_bucket, Prefix=self.source_prefix):
            yield page.get("Contents", [])

    def _existing_copies(
        self, client: Any, first: str, last: str, after: str | None
    ) -> Mapping[str, int] | None:
        """Sizes of archive objects with keys from ``first`` to ``last``, or None when too many to list.

        Replacing the prefix keeps the listing order, so one page of sources maps to one key range of
        the archive: a single LIST tells which copies exist and need a HEAD, instead of one HEAD per key.
        """
        root = self.dest_prefix if self.dest_prefix is not None else self.source_prefix
        found: dict[str, int] = {}
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(
            Bucket=self.dest_bucket, Prefix=root, StartAfter=after if after is not None else first[:-1]
        ):
            for obj in page.get("Contents", []):
                if obj["Key"] > last:
                    return found
                found[obj["Key"]] = int(obj["Size"])
                if len(found) > EXISTING_COPIES_LIST_LIMIT:
                    return None
        return found

    def _dest_key(self, key: str) -> str:
        if self.dest_prefix is None:
            return key
        return self.dest_prefix + key[len(self.source_prefix) :]

    def _head(self, bucket: str, key: str, version_id: str | None = None) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "ChecksumMode": "ENABLED"}
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            return self._client.head_object(**kwargs)
        except ClientError as exc:
            if is_not_found(exc):
                return None
            raise

    def _archive_one(
        self, obj: Mapping[str, Any], cutoff: datetime, existing: Mapping[str, int] | None
    ) -> _Outcome:
        """Copy, verify and report one object; never raises for a per-object problem."""
        key = obj["Key"]
        try:
            return self._copy_and_verify(obj, cutoff, existing)
        except Exception as exc:
            return _Outcome(key, "failed", reason=f"{type(exc).__name__}: {exc}")

    def _copy_and_verify(
        self, listed: Mapping[str, Any], cutoff: datetime, existing_copies: Mapping[str, int] | None
    ) -> _Outcome:
        key = listed["Key"]
        source = self._head(self.source_bucket, key)
        if source is None or source["LastModified"] >= cutoff:
            reason = "deleted since it was listed" if source is None else "rewritten since it was listed"
            return _Outcome(key, "skipped", reason=reason)
        changed = changed_since_inventory(listed, source)
        if changed:
            return _Outcome(key, "skipped", reason=changed)
        size = int(source["ContentLength"])
        storage_class = source.get("StorageClass") or "STANDARD"
        if storage_class in ARCHIVED_CLASSES:
            waiting = self._restore(source, key, storage_class)
            if waiting is not None:
                return waiting
        copy_source: dict[str, str] = {"Bucket": self.source_bucket, "Key": key}
        part_bytes = part_bytes_for(size) if size > MAX_COPY_OBJECT_BYTES else None
        expected = expected_checksum(self._client, source, copy_source, part_bytes, self.checksum_algorithm)
        dest_key = self._dest_key(key)
        outcome = _Outcome(
            key,
            "archived",
            size=size,
            storage_class=storage_class,
            etag=source["ETag"],
            dest_key=self._dest_key(key),
        )
        existing = None
        if existing_copies is None or dest_key in existing_copies:
            existing = self._head(self.dest_bucket, dest_key)
        if existing is None:
            return self._copy(outcome, copy_source, dest_key, part_bytes, expected)
        problem = self._verified(existing, size, expected)
        if problem is not None:
            return self._conflict(key, dest_key, problem)
        outcome.status = "resumed"
        return outcome

    def _copy(
        self,
        outcome: _Outcome,
        copy_source: Mapping[str, str],
        dest_key: str,
        part_bytes: int | None,
        expected: str,
    ) -> _Outcome:
        """Copy to an archive key that did not exist, without ever replacing one, then verify."""
        from botocore.exceptions import ClientError

        client: Any = self.hook.get_conn()
        extra: dict[str, Any] = {
            "StorageClass": self.storage_class,
            "ChecksumAlgorithm": self.checksum_algorithm,
            "CopySourceIfMatch": outcome.etag,
        }
        try:
            if part_bytes is None:
                response = client.copy_object(
                    Bucket=self.dest_bucket,
                    Key=dest_key,
                    CopySource=copy_source,
                    MetadataDirective="COPY",
                    IfNoneMatch="*",
                    **extra,
                )
                copy_version = response.get("VersionId")
                answered = (response.get("CopyObjectResult") or {}).get(f"Checksum{self.checksum_algorithm}")
            else:
                from boto3.s3.transfer import TransferConfig

                # The completion carries IfNoneMatch (see _refuse_overwrites).
                client.copy(
                    copy_source,
                    self.dest_bucket,
                    dest_key,
                    ExtraArgs=extra,
                    Config=TransferConfig(
                        multipart_threshold=MAX_COPY_OBJECT_BYTES,
                        multipart_chunksize=part_bytes,
                        max_concurrency=4,
                    ),
                )
                copy_version = None
                answered = None
        except ClientError as exc:
            if error_code(exc) not in ("PreconditionFailed", "412"):
                raise
            # Either condition failed: the archive key was written meanwhile, or the source was.
            if self._head(self.dest_bucket, dest_key) is not None:
                return self._conflict(outcome.key, dest_key, "it was written while this copy ran")
            return _Outcome(outcome.key, "skipped", reason="rewritten since it was checked")
        if answered and same_checksum(expected, answered):
            # S3 computed this from the bytes it wrote; size and class come from the listing.
            outcome.check_listing = True
            return outcome
        # No checksum in the answer (an endpoint that does not return one), or another one: HEAD
        # says what differs.
        copied = self._head(self.dest_bucket, dest_key, copy_version)
        problem = "the copy is missing" if copied is None else self._verified(copied, outcome.size, expected)
        if problem:
            return _Outcome(
                outcome.key,
                "failed",
                reason=f"copy s3://{self.dest_bucket}/{dest_key} not verified: {problem}",
            )
        return outcome

    def _listed_copies_verified(
        self, client: Any, batch: list[_Outcome], failures: dict[str, str]
    ) -> list[_Outcome]:
        """The batch without the copies whose listed size or storage class is wrong (those fail).

        Copies verified by the checksum of the copy's answer are checked here, one listing of the
        archive per delete batch instead of a HEAD per object.
        """
        unchecked = [o for o in batch if o.check_listing]
        if not unchecked:
            return batch
        root = self.dest_prefix if self.dest_prefix is not None else self.source_prefix
        listed = listed_objects(client, self.dest_bucket, root, [o.dest_key for o in unchecked])
        kept: list[_Outcome] = []
        for outcome in batch:
            problem = None
            if outcome.check_listing:
                entry = listed.get(outcome.dest_key)
                if entry is None:
                    problem = "the copy is missing from the listing"
                elif int(entry["Size"]) != outcome.size:
                    problem = f"size {entry['Size']} != {outcome.size}"
                elif (entry.get("StorageClass") or "STANDARD") != self.storage_class:
                    problem = f"storage class {entry.get('StorageClass')} != {self.storage_class}"
            if problem is None:
                kept.append(outcome)
            else:
                failures[outcome.key] = (
                    f"copy s3://{self.dest_bucket}/{outcome.dest_key} not verified: {problem}"
                )
        return kept

    def _conflict(self, key: str, dest_key: str, problem: str) -> _Outcome:
        return _Outcome(
            key,
            "failed",
            reason=(
                f"archive object s3://{self.dest_bucket}/{dest_key} already exists and is not a verified "
                f"copy of this source ({problem}); it was not replaced and the source was kept: review both"
            ),
        )

    @staticmethod
    def _refuse_overwrites(client: Any) -> None:
        """Make this client's multipart completions conditional writes too: the transfer manager
        used for copies over 5 GB takes no ``IfNoneMatch`` argument of its own."""

        def if_none_match(params: dict[str, Any], **_: Any) -> None:
            params.setdefault("IfNoneMatch", "*")

        client.meta.events.register(
            "before-parameter-build.s3.CompleteMultipartUpload",
            if_none_match,
            unique_id="data-lifecycle-archive-if-none-match",
        )

    def _restore(self, source: Mapping[str, Any], key: str, storage_class: str) -> _Outcome | None:
        """None when an archived source has been restored (readable); else request or await a restore."""
        restore = source.get("Restore") or ""
        if 'ongoing-request="false"' in restore:
            return None
        if 'ongoing-request="true"' in restore:
            return _Outcome(key, "skipped", reason=f"{storage_class} restore in progress")
        self._client.restore_object(
            Bucket=self.source_bucket,
            Key=key,
            RestoreRequest={"Days": RESTORE_DAYS, "GlacierJobParameters": {"Tier": RESTORE_TIER}},
        )
        return _Outcome(key, "restore_requested", reason=f"{storage_class} restore requested")

    def _verified(self, head: Mapping[str, Any], size: int, expected: str) -> str | None:
        """None when an archive object holds the source's bytes (size and SHA-256) in the target class,
        else what differs."""
        actual_size = int(head["ContentLength"])
        if actual_size != size:
            return f"size {actual_size} != {size}"
        actual = head.get(f"Checksum{self.checksum_algorithm}")
        if not same_checksum(expected, actual):
            return f"{self.checksum_algorithm} {actual} != {expected}"
        actual_class = head.get("StorageClass") or "STANDARD"
        if actual_class != self.storage_class:
            return f"storage class {actual_class} != {self.storage_class}"
        return None
