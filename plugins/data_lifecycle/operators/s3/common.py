"""What the S3 operators share: S3's own limits, error codes, DeleteObjects batches.

S3-compatible test servers accept more than S3 does (a DeleteObjects call with more than 1,000 keys,
a CopyObject over 5 GB, a transition to STANDARD_IA after one day), so the limits of S3 itself are
enforced here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from data_lifecycle.exceptions import (
    LifecycleConfigError,
)

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

# DeleteObjects: "The request can contain a list of up to 1,000 keys that you want to delete."
DELETE_OBJECTS_MAX_KEYS = 1_000
# How many failed keys an error message lists.
MAX_KEYS_IN_ERROR = 20
PROGRESS_LOG_SECONDS = 15.0


def error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def is_not_found(exc: Exception) -> bool:
    return error_code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchVersion")


def check_bucket(client: Any, bucket: str) -> None:
    """Fail with a clear message before any write when the bucket is missing or not ours to read."""
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = error_code(exc)
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise LifecycleConfigError(f"S3 bucket {bucket!r} does not exist") from exc
        if code in ("403", "AccessDenied"):
            raise LifecycleConfigError(
                f"S3 bucket {bucket!r} is not accessible with this connection"
            ) from exc
        raise


def pooled_s3_hook(aws_conn_id: str | None, pool: int) -> S3Hook:
    """An S3Hook whose client keeps ``pool`` connections open (for a thread pool of that size)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from botocore.config import Config

    hook = S3Hook(aws_conn_id=aws_conn_id)
    base = hook.conn_config.botocore_config or Config()
    hook.conn_config.botocore_config = base.merge(Config(max_pool_connections=pool))
    return hook


def bucket_versioning(client: Any, bucket: str) -> str:
    """``Enabled``, ``Suspended``, or ``""`` for a bucket that was never versioned."""
    return str(client.get_bucket_versioning(Bucket=bucket).get("Status") or "")


def listed_objects(
    client: Any, bucket: str, prefix: str, keys: Iterable[str]
) -> dict[str, Mapping[str, Any]]:
    """The listing entry (Size, ETag, StorageClass, ...) of each of ``keys`` that exists, from one
    listing of the keys' range: cheaper than a HEAD per key, a batch's range is about one page."""
    wanted = set(keys)
    if not wanted:
        return {}
    first, last = min(wanted), max(wanted)
    found: dict[str, Mapping[str, Any]] = {}
    paginator = client.get_paginator("list_objects_v2")
    # The first key without its last character sorts just before it.
    start = {"StartAfter": first[:-1]} if first[:-1] else {}
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, **start):
        for obj in page.get("Contents", []):
            if obj["Key"] > last:
                return found
            if obj["Key"] in wanted:
                found[obj["Key"]] = obj
    return found


def current_etags(client: Any, bucket: str, prefix: str, keys: Iterable[str]) -> dict[str, str]:
    """The ETag of each of ``keys`` that still exists, from one listing of the keys' range."""
    return {key: str(obj["ETag"]) for key, obj in listed_objects(client, bucket, prefix, keys).items()}


def _mutable(entry: Mapping[str, Any]) -> bool:
    """A plain key, or the ``null`` version (which the next write to the key replaces)."""
    return entry.get("VersionId") in (None, "null")


def unchanged_since_listed(
    client: Any, bucket: str, prefix: str
) -> Callable[[list[Mapping[str, Any]]], tuple[list[Mapping[str, Any]], dict[str, str]]]:
    """A ``delete_batches`` check: keep out every entry whose object changed since it was listed.

    Deletes carry the ETag too, but S3-compatible servers may ignore it; this check does not depend
    on them. A version with an id of its own never changes and needs no check; a plain key or a
    ``null`` version must still be the current object with the listed ETag (a ``null`` delete
    marker: the key must still have no current object).
    """

    def confirm(batch: list[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], dict[str, str]]:
        now = current_etags(client, bucket, prefix, [e["Key"] for e in batch if _mutable(e)])
        keep: list[Mapping[str, Any]] = []
        changed: dict[str, str] = {}
        for entry in batch:
            if not _mutable(entry) or now.get(entry["Key"]) == entry.get("ETag"):
                keep.append(entry)
            elif entry.get("ETag") is None:
                changed[entry_label(entry)] = "written since it was listed"
            else:
                changed[entry_label(entry)] = (
                    "gone" if entry["Key"] not in now else "rewritten since it was listed"
                )
        return keep, changed

    return confirm


def entry_label(entry: Mapping[str, Any]) -> str:
    version = entry.get("VersionId")
    return f"{entry['Key']}@{version}" if version else str(entry["Key"])


def delete_batches(
    client: Any,
    bucket: str,
    entries: Sequence[Mapping[str, Any]],
    *,
    confirm: Callable[[list[Mapping[str, Any]]], tuple[list[Mapping[str, Any]], dict[str, str]]]
    | None = None,
    stop: Callable[[], bool] | None = None,
) -> tuple[list[Mapping[str, Any]], dict[str, str], dict[str, str]]:
    """DeleteObjects in batches of at most 1,000; return what was deleted, the per-key errors and
    the keys kept because they changed.

    ``confirm(batch)`` runs right before each request and returns the entries still safe to delete
    and, for the others, why they are kept. A batch answers HTTP 200 even when some keys failed, so
    every response's ``Errors`` is read, and a key missing from both ``Deleted`` and ``Errors``
    counts as failed; so does every key of a request that failed as a whole. ``PreconditionFailed`` (the ETag sent no longer matches) means the object was
    rewritten: it is kept, not failed. ``stop()`` is asked before each request; when it answers
    true the remaining entries are left alone (neither deleted nor failed).
    """
    from botocore.exceptions import ClientError

    deleted: list[Mapping[str, Any]] = []
    errors: dict[str, str] = {}
    kept: dict[str, str] = {}
    for start in range(0, len(entries), DELETE_OBJECTS_MAX_KEYS):
        if stop is not None and stop():
            break
        batch = list(entries[start : start + DELETE_OBJECTS_MAX_KEYS])
        try:
            if confirm is not None:
                batch, changed = confirm(batch)
                kept.update(changed)
            if not batch:
                continue
            response = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": False})
        except ClientError as exc:
            # Throttling that outlasted the client's retries, or a refusal of the whole request:
            # this batch stays, the next ones go on, and the caller names the keys.
            errors.update({entry_label(entry): f"DeleteObjects failed: {exc}" for entry in batch})
            continue
        done = {(d["Key"], d.get("VersionId")) for d in response.get("Deleted", [])}
        failed = {(e["Key"], e.get("VersionId")): e for e in response.get("Errors", [])}
        for entry in batch:
            key, version = entry["Key"], entry.get("VersionId")
            label = entry_label(entry)
            # Some S3-compatible servers leave VersionId out of Deleted/Errors entries.
            error = failed.get((key, version)) or failed.get((key, None))
            if error is not None and error.get("Code") == "PreconditionFailed":
                kept[label] = "rewritten since it was checked (PreconditionFailed)"
            elif error is not None:
                errors[label] = f"{error.get('Code')}: {error.get('Message')}"
            elif (key, version) in done or (key, None) in done:
                deleted.append(entry)
            else:
                errors[label] = "not reported as deleted"
    return deleted, errors, kept


def sample_keys(keys: Mapping[str, str] | Sequence[str]) -> str:
    items = [f"{k} ({v})" for k, v in keys.items()] if isinstance(keys, Mapping) else list(keys)
    more = len(items) - MAX_KEYS_IN_ERROR
    return ", ".join(items[:MAX_KEYS_IN_ERROR]) + (f" and {more} more" if more > 0 else "")
