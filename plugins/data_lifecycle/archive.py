"""Rows to S3: gzip JSON lines under deterministic keys, verified before anything is deleted.

The writer uploads with a SHA-256 checksum and the row count in the object metadata, then reads
the object's HEAD back (``ChecksumMode=ENABLED``) and compares size, checksum and row count. Only a
verified :class:`ArchivedObject` is returned; anything else raises ``VerificationFailed`` so the
caller keeps its rows. Keys are derived from the table, the cutoff and the key range, so a rerun
after a crash overwrites the same object instead of adding a second copy.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from data_lifecycle.exceptions import LifecycleConfigError, VerificationFailed

DEFAULT_AWS_CONN_ID = "lifecycle_aws"
ROW_COUNT_METADATA_KEY = "row-count"
# S3 object keys are at most 1,024 bytes (UTF-8).
MAX_S3_KEY_BYTES = 1024
# S3 bucket names: 3-63 lowercase letters, digits, dots and hyphens.
BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._=+-]")


@dataclass(frozen=True)
class ArchiveConfig:
    """Where archived rows go: ``{"bucket": ..., "prefix": ..., "aws_conn_id": ...}``."""

    bucket: str
    prefix: str = ""
    aws_conn_id: str = DEFAULT_AWS_CONN_ID

    @classmethod
    def from_value(cls, value: Mapping[str, Any] | ArchiveConfig, *, field: str = "archive") -> ArchiveConfig:
        if isinstance(value, ArchiveConfig):
            return value
        if not isinstance(value, Mapping):
            raise LifecycleConfigError(
                f"{field} must be a mapping with bucket/prefix/aws_conn_id, got {value!r}"
            )
        unknown = set(value) - {"bucket", "prefix", "aws_conn_id"}
        if unknown:
            raise LifecycleConfigError(f"{field} has unknown keys {sorted(unknown)}")
        bucket = value.get("bucket")
        if not isinstance(bucket, str) or not BUCKET_RE.fullmatch(bucket):
            raise LifecycleConfigError(f"{field}.bucket={bucket!r} is not a valid S3 bucket name")
        prefix = str(value.get("prefix") or "").strip("/")
        return cls(
            bucket=bucket, prefix=prefix, aws_conn_id=str(value.get("aws_conn_id") or DEFAULT_AWS_CONN_ID)
        )


@dataclass(frozen=True)
class ArchivedObject:
    bucket: str
    key: str
    rows: int
    size: int
    sha256: str  # base64, as S3 reports ChecksumSHA256


def json_default(value: Any) -> Any:  # noqa: PLR0911
    """JSON for the types PostgreSQL returns that ``json`` does not know."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def encode_rows(rows: Iterable[Mapping[str, Any]]) -> tuple[bytes, int]:
    """Gzip JSON lines (byte-identical for identical rows: no timestamp in the gzip header)."""
    count = 0
    lines = []
    for row in rows:
        lines.append(json.dumps(row, default=json_default, sort_keys=False, ensure_ascii=False))
        count += 1
    payload = ("\n".join(lines) + "\n").encode("utf-8") if lines else b""
    return gzip.compress(payload, mtime=0), count


def key_token(values: Sequence[Any]) -> str:
    """A key-safe rendering of one (possibly composite) key value."""
    parts = []
    for value in values:
        text = str(value)
        if isinstance(value, datetime):
            text = value.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ") if value.tzinfo else value.isoformat()
        parts.append(_UNSAFE_KEY_CHARS.sub("_", text))
    return "_".join(parts)


def cutoff_token(cutoff: datetime) -> str:
    return cutoff.astimezone(UTC).strftime("%Y-%m-%dT%H%M%SZ")


def batch_key(
    prefix: str, *, schema: str, table: str, cutoff: datetime, first: Sequence[Any], last: Sequence[Any]
) -> str:
    """``{prefix}/{schema}.{table}/cutoff=2027-03-01T050000Z/keys_{first}-{last}.jsonl.gz``."""
    stem = (
        f"{schema}.{table}/cutoff={cutoff_token(cutoff)}/keys_{key_token(first)}-{key_token(last)}.jsonl.gz"
    )
    return f"{prefix}/{stem}" if prefix else stem


def partition_key(prefix: str, schema: str, table: str, partition: str, part: int) -> str:
    """``{prefix}/{schema}.{table}/partition={partition}/part_00000.jsonl.gz``."""
    stem = f"{schema}.{table}/partition={partition}/part_{part:05d}.jsonl.gz"
    return f"{prefix}/{stem}" if prefix else stem


class S3ArchiveWriter:
    """Uploads row batches and verifies each object before the caller may delete its rows.

    :param client: a boto3 S3 client (``S3Hook(aws_conn_id=...).get_conn()``).
    :param bucket: the archive bucket.
    :param row_transform: applied to each row before it is encoded (the erasure map's
        pseudonymisation of subject columns); the row count is unchanged. Its ``prepare()``, if it
        has one, runs here: writers are built before any row is locked, so a transform that reads
        a secret does so outside the batch transactions.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        row_transform: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.row_transform = row_transform
        prepare = getattr(row_transform, "prepare", None)
        if callable(prepare):
            prepare()

    def write(self, key: str, rows: Sequence[Mapping[str, Any]]) -> ArchivedObject:
        """Upload ``rows`` to ``key`` and return the verified object (raises VerificationFailed)."""
        if len(key.encode("utf-8")) > MAX_S3_KEY_BYTES:
            raise LifecycleConfigError(f"Archive key is longer than {MAX_S3_KEY_BYTES} bytes: {key[:80]}...")
        if self.row_transform is not None:
            rows = [self.row_transform(r) for r in rows]
        body, count = encode_rows(rows)
        sha256 = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ContentType="application/gzip",
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=sha256,
            Metadata={ROW_COUNT_METADATA_KEY: str(count)},
        )
        archived = ArchivedObject(bucket=self.bucket, key=key, rows=count, size=len(body), sha256=sha256)
        self.verify(archived)
        return archived

    def verify(self, expected: ArchivedObject) -> None:
        """HEAD the object and compare size, SHA-256 and row count with what was uploaded."""
        head = self.client.head_object(Bucket=expected.bucket, Key=expected.key, ChecksumMode="ENABLED")
        problems = []
        if int(head.get("ContentLength", -1)) != expected.size:
            problems.append(f"size {head.get('ContentLength')} != {expected.size}")
        if head.get("ChecksumSHA256") != expected.sha256:
            problems.append(f"ChecksumSHA256 {head.get('ChecksumSHA256')!r} != {expected.sha256!r}")
        rows = (head.get("Metadata") or {}).get(ROW_COUNT_METADATA_KEY)
        if rows != str(expected.rows):
            problems.append(f"row count {rows!r} != {expected.rows}")
        if problems:
            raise VerificationFailed(
                f"s3://{expected.bucket}/{expected.key} failed verification ({'; '.join(problems)});"
                " its rows were kept"
            )


def read_rows(client: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    """Read an archive object back (tests and restores)."""
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    text = gzip.decompress(body).decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]
