"""Purge every object version and delete marker under a subject's key prefixes.

A plain delete in a versioned bucket only adds a delete marker; erasure removes each version by id.
Before anything in a bucket is deleted, every version under the subject's prefixes is checked for
an S3 Object Lock legal hold or an unexpired retention: if any is locked, nothing in that bucket is
deleted and ``ErasureBlocked`` names the keys (relative to the prefix template, so no id leaks into
logs, Slack or the ledger). The role needs s3:ListBucketVersions, s3:GetObjectLegalHold,
s3:GetObjectRetention and s3:DeleteObjectVersion.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from data_lifecycle.erasure.subject_map import BucketTarget
from data_lifecycle.exceptions import GuardrailTripped, VerificationFailed

log = logging.getLogger(__name__)

# DeleteObjects accepts at most 1,000 keys per request (S3 API reference).
DELETE_OBJECTS_MAX_KEYS = 1_000
# Error codes meaning "no lock configured on this bucket or version".
NO_LOCK_CODES = frozenset({"ObjectLockConfigurationNotFoundError", "NoSuchObjectLockConfiguration"})
MAX_LISTED_BLOCKERS = 10


class ErasureBlocked(GuardrailTripped):
    """Data under erasure is protected (legal hold, retention); nothing in that bucket was deleted."""


@dataclass(frozen=True)
class Version:
    key: str
    version_id: str
    delete_marker: bool


def target_label(bucket: str, template: str) -> str:
    """How a prefix appears in results: the template, never the rendered id."""
    return f"s3://{bucket}/{template}"


def list_versions(s3: Any, bucket: str, prefix: str) -> list[Version]:
    """Every version and delete marker whose key starts with ``prefix``."""
    out: list[Version] = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for v in page.get("Versions", []):
            out.append(Version(v["Key"], v["VersionId"], False))
        for m in page.get("DeleteMarkers", []):
            out.append(Version(m["Key"], m["VersionId"], True))
    return [v for v in out if v.key.startswith(prefix)]


def bucket_lock_enabled(s3: Any, bucket: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        conf = s3.get_object_lock_configuration(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in NO_LOCK_CODES:
            return False
        raise
    return conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"


def lock_reason(s3: Any, bucket: str, version: Version, now: datetime) -> str | None:
    """Why a version may not be deleted (legal hold, retention), or None."""
    from botocore.exceptions import ClientError

    if version.delete_marker:
        return None
    head = s3.head_object(Bucket=bucket, Key=version.key, VersionId=version.version_id)
    status = head.get("ObjectLockLegalHoldStatus")
    try:
        hold = s3.get_object_legal_hold(Bucket=bucket, Key=version.key, VersionId=version.version_id)
        status = (hold.get("LegalHold") or {}).get("Status") or status
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in NO_LOCK_CODES:
            raise
    if status == "ON":
        return "legal hold"
    mode, until = head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")
    if mode and until and until > now:
        return f"{mode.lower()} retention until {until.isoformat()}"
    return None


@dataclass(frozen=True)
class BucketScan:
    """What lies under the subject's prefixes of one bucket, by prefix template."""

    bucket: str
    found: dict[str, list[Version]]

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        return {
            target_label(self.bucket, t): {
                "versions": sum(not v.delete_marker for v in vs),
                "delete_markers": sum(v.delete_marker for v in vs),
            }
            for t, vs in self.found.items()
        }


def scan_bucket(s3: Any, target: BucketTarget, user_id: int, *, now: datetime | None = None) -> BucketScan:
    """List every version under the subject's prefixes; raise ``ErasureBlocked`` if any is locked."""
    now = now or datetime.now(UTC)
    rendered = dict(zip(target.prefixes, target.render(user_id), strict=True))
    found = {template: list_versions(s3, target.bucket, prefix) for template, prefix in rendered.items()}
    blockers = []
    if any(found.values()) and bucket_lock_enabled(s3, target.bucket):
        for template, versions in found.items():
            for v in versions:
                reason = lock_reason(s3, target.bucket, v, now)
                if reason:
                    relative = v.key[len(rendered[template]) :]
                    blockers.append(f"{template}...{relative} (version {v.version_id}: {reason})")
    if blockers:
        shown = "; ".join(blockers[:MAX_LISTED_BLOCKERS])
        more = (
            f" and {len(blockers) - MAX_LISTED_BLOCKERS} more" if len(blockers) > MAX_LISTED_BLOCKERS else ""
        )
        raise ErasureBlocked(
            f"s3://{target.bucket}: {len(blockers)} version(s) under the subject's prefixes are protected by "
            f"Object Lock: {shown}{more}. Nothing in this bucket was deleted; release the hold (or wait for "
            "the retention) after legal review, then clear the task."
        )
    return BucketScan(bucket=target.bucket, found=found)


def delete_scanned(s3: Any, scan: BucketScan) -> dict[str, dict[str, int]]:
    """Delete every version and delete marker of a scan; returns its counts."""
    for template, versions in scan.found.items():
        _delete_versions(s3, scan.bucket, versions, template)
    return scan.counts


def remaining(s3: Any, target: BucketTarget, user_id: int) -> dict[str, int]:
    """Versions and delete markers still under each prefix (by template)."""
    return {
        target_label(target.bucket, t): len(list_versions(s3, target.bucket, p))
        for t, p in zip(target.prefixes, target.render(user_id), strict=True)
    }


def _delete_versions(s3: Any, bucket: str, versions: Iterable[Version], template: str) -> None:
    items = [{"Key": v.key, "VersionId": v.version_id} for v in versions]
    for start in range(0, len(items), DELETE_OBJECTS_MAX_KEYS):
        chunk = items[start : start + DELETE_OBJECTS_MAX_KEYS]
        resp = s3.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
        errors = resp.get("Errors") or []
        if errors:
            codes = sorted({e.get("Code", "?") for e in errors})
            raise VerificationFailed(
                f"s3://{bucket}/{template}: {len(errors)} version(s) could not be deleted ({', '.join(codes)})"
            )
    log.info("Deleted %d version(s) and delete marker(s) under s3://%s/%s", len(items), bucket, template)
