"""What the S3 operators share: S3's own limits, error codes, DeleteObjects batches.

S3-compatible test servers accept more than S3 does (a DeleteObjects call with more than 1,000 keys,
a CopyObject over 5 GB, a transition to STANDARD_IA after one day), so the limits of S3 itself are
enforced here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def delete_batches(
    client: Any, bucket: str, entries: Sequence[Mapping[str, Any]]
) -> tuple[list[Mapping[str, Any]], dict[str, str]]:
    """DeleteObjects in batches of at most 1,000; return what was deleted and the per-key errors.

    A batch answers HTTP 200 even when some keys failed, so every response's ``Errors`` is read and
    a key missing from both ``Deleted`` and ``Errors`` counts as failed.
    """
    deleted: list[Mapping[str, Any]] = []
    errors: dict[str, str] = {}
    for start in range(0, len(entries), DELETE_OBJECTS_MAX_KEYS):
        batch = list(entries[start : start + DELETE_OBJECTS_MAX_KEYS])
        response = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": False})
        done = {(d["Key"], d.get("VersionId")) for d in response.get("Deleted", [])}
        failed = {
            (e["Key"], e.get("VersionId")): f"{e.get('Code')}: {e.get('Message')}"
            for e in response.get("Errors", [])
        }
        for entry in batch:
            key, version = entry["Key"], entry.get("VersionId")
            label = f"{key}@{version}" if version else key
            # Some S3-compatible servers leave VersionId out of Deleted/Errors entries.
            reason = failed.get((key, version)) or failed.get((key, None))
            if reason is not None:
                errors[label] = reason
            elif (key, version) in done or (key, None) in done:
                deleted.append(entry)
            else:
                errors[label] = "not reported as deleted"
    return deleted, errors


def sample_keys(keys: Mapping[str, str] | Sequence[str]) -> str:
    items = [f"{k} ({v})" for k, v in keys.items()] if isinstance(keys, Mapping) else list(keys)
    more = len(items) - MAX_KEYS_IN_ERROR
    return ", ".join(items[:MAX_KEYS_IN_ERROR]) + (f" and {more} more" if more > 0 else "")
