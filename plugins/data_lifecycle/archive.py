"""Rows to S3: a typed, restorable format under collision-free keys, verified before anything is deleted.

**Format** (``data_lifecycle.rows/2``), one gzip object: the first line is a JSON header
``{"format": "data_lifecycle.rows/2", "table": "app.app_logs", "columns": [{"name": "id", "type":
"bigint"}, ...]}``; every further line is one row, a JSON array with each column's PostgreSQL text
representation (``column::text``, what ``COPY`` writes) or ``null``. The text form round-trips every
type exactly (bytea, interval months, numeric NaN/Infinity, timestamps, json/jsonb, arrays, ...):
``restore_archive`` inserts each value as ``%s::text::<column type>``. Objects are byte-identical
for identical rows (gzip without a timestamp).

**Reading** (also for erasure and audits): ``read_archive(client, bucket, key)`` returns an
:class:`ArchiveContent` (table, column names and types, rows as tuples of text or None);
``read_archive_rows(...)`` the rows as ``{column: text or None}`` dicts. Objects of the first,
untyped format (plain JSON lines of row objects) are read too, as ``format == "jsonl/1"``.
**Restoring**: ``restore_archive(conn, client, bucket, key, table=...)`` loads one object back into
a table in one transaction and returns the row count.

**Writing**: :class:`S3ArchiveWriter` uploads with a SHA-256 checksum and the row count in the
metadata, then reads the object's HEAD back (``ChecksumMode=ENABLED``) and compares size, checksum
and row count. Only a verified :class:`ArchivedObject` is returned; anything else raises
``VerificationFailed`` so the caller keeps its rows.

**Keys**: a batch's key holds digests of its exact first and last key tuples
(``batch_{first}_{last}``), so distinct batches never share a key. A rerun after a crash starts at
the same first key; ``replace_stale`` removes an earlier upload of that batch with a different last
key (its rows were never deleted), so a rewrite replaces rather than adds.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
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
FORMAT = "data_lifecycle.rows/2"
LEGACY_FORMAT = "jsonl/1"
ARCHIVE_SUFFIX = ".rows.gz"
# Objects below S3's default minimum size for lifecycle transitions (128 KiB) never tier.
DEFAULT_MIN_OBJECT_BYTES = 128 * 1024
# How often (in uncompressed bytes) the encoder measures its compressed size.
_SIZE_CHECK_BYTES = 16 * 1024
# gzip's default level: within a few per cent of level 9's size on row text, at a third of its time.
GZIP_LEVEL = 6
# One encoder for every line (json.dumps with options builds a new one per call).
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True)
class ArchiveConfig:
    """Where archived rows go: ``{"bucket": ..., "prefix": ..., "aws_conn_id": ...}``."""

    bucket: str
    prefix: str = ""
    aws_conn_id: str = DEFAULT_AWS_CONN_ID
    min_object_bytes: int = DEFAULT_MIN_OBJECT_BYTES

    @classmethod
    def from_value(cls, value: Mapping[str, Any] | ArchiveConfig, *, field: str = "archive") -> ArchiveConfig:
        if isinstance(value, ArchiveConfig):
            return value
        if not isinstance(value, Mapping):
            raise LifecycleConfigError(
                f"{field} must be a mapping with bucket/prefix/aws_conn_id, got {value!r}"
            )
        unknown = set(value) - {"bucket", "prefix", "aws_conn_id", "min_object_bytes"}
        if unknown:
            raise LifecycleConfigError(f"{field} has unknown keys {sorted(unknown)}")
        bucket = value.get("bucket")
        if not isinstance(bucket, str) or not BUCKET_RE.fullmatch(bucket):
            raise LifecycleConfigError(f"{field}.bucket={bucket!r} is not a valid S3 bucket name")
        prefix = str(value.get("prefix") or "").strip("/")
        min_bytes = value.get("min_object_bytes", DEFAULT_MIN_OBJECT_BYTES)
        if isinstance(min_bytes, bool) or not isinstance(min_bytes, int) or min_bytes < 1:
            raise LifecycleConfigError(
                f"{field}.min_object_bytes must be a whole number >= 1, got {min_bytes!r}"
            )
        return cls(
            bucket=bucket,
            prefix=prefix,
            aws_conn_id=str(value.get("aws_conn_id") or DEFAULT_AWS_CONN_ID),
            min_object_bytes=min_bytes,
        )


@dataclass(frozen=True)
class ArchivedObject:
    bucket: str
    key: str
    rows: int
    size: int
    sha256: str  # base64, as S3 reports ChecksumSHA256


def json_default(value: Any) -> Any:  # noqa: PLR0911
    """JSON for the types PostgreSQL returns that ``json`` does not know (summaries and logs only;
    archives store the exact text form instead)."""
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


def cutoff_token(cutoff: datetime) -> str:
    return cutoff.astimezone(UTC).strftime("%Y-%m-%dT%H%M%SZ")


def _digest(values: Sequence[str | None]) -> str:
    return hashlib.sha256(json.dumps(list(values), ensure_ascii=False).encode("utf-8")).hexdigest()[:32]


def batch_stem(prefix: str, *, schema: str, table: str, cutoff: datetime, first: Sequence[str | None]) -> str:
    """The key prefix every upload of the batch starting at ``first`` shares (see ``batch_key``)."""
    stem = f"{schema}.{table}/cutoff={cutoff_token(cutoff)}/batch_{_digest(first)}_"
    return f"{prefix}/{stem}" if prefix else stem


def batch_key(
    prefix: str,
    *,
    schema: str,
    table: str,
    cutoff: datetime,
    first: Sequence[str | None],
    last: Sequence[str | None],
) -> str:
    """``{prefix}/{schema}.{table}/cutoff=2027-03-01T050000Z/batch_{sha(first)}_{sha(last)}.rows.gz``.

    ``first`` and ``last`` are the text forms of the batch's first and last key tuples.
    """
    stem = batch_stem(prefix, schema=schema, table=table, cutoff=cutoff, first=first)
    return f"{stem}{_digest(last)}{ARCHIVE_SUFFIX}"


def partition_key(prefix: str, schema: str, table: str, partition: str, part: int) -> str:
    """``{prefix}/{schema}.{table}/partition={partition}/part_00000.rows.gz``."""
    stem = f"{schema}.{table}/partition={partition}/part_{part:05d}{ARCHIVE_SUFFIX}"
    return f"{prefix}/{stem}" if prefix else stem


# A row transform sees one row as ``{column: text or None}`` with ``{column: type name}`` and returns
# the row to archive (the erasure map's pseudonymisation of subject columns).
RowTransform = Callable[[Mapping[str, str | None], Mapping[str, str]], Mapping[str, Any]]


class S3ArchiveWriter:
    """Uploads row batches and verifies each object before the caller may delete its rows.

    :param client: a boto3 S3 client (``S3Hook(aws_conn_id=...).get_conn()``).
    :param bucket: the archive bucket.
    :param row_transform: applied to each row as it is encoded (see ``RowTransform``); the row
        count is unchanged. Its ``prepare()``, if it has one, runs here: writers are built before any
        row is locked, so a transform that reads a secret does so outside the batch transactions.
    """

    def __init__(self, client: Any, bucket: str, row_transform: RowTransform | None = None) -> None:
        self.client = client
        self.bucket = bucket
        self.row_transform = row_transform
        prepare = getattr(row_transform, "prepare", None)
        if callable(prepare):
            prepare()

    def encoder(self, table: str, columns: Sequence[tuple[str, str]]) -> ArchiveEncoder:
        """An encoder for one object of ``table``'s rows, applying this writer's row transform."""
        return ArchiveEncoder(table, columns, row_transform=self.row_transform)

    def write(self, key: str, encoder: ArchiveEncoder) -> ArchivedObject:
        """Upload the encoded rows to ``key`` and return the verified object (raises VerificationFailed)."""
        if len(key.encode("utf-8")) > MAX_S3_KEY_BYTES:
            raise LifecycleConfigError(f"Archive key is longer than {MAX_S3_KEY_BYTES} bytes: {key[:80]}...")
        body, count = encoder.finish(), encoder.rows
        sha256 = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ContentType="application/gzip",
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=sha256,
            Metadata={ROW_COUNT_METADATA_KEY: str(count), "format": FORMAT},
        )
        archived = ArchivedObject(bucket=self.bucket, key=key, rows=count, size=len(body), sha256=sha256)
        self.verify(archived)
        return archived

    def replace_stale(self, stem: str, keep: str) -> list[str]:
        """Delete the objects under ``stem`` other than ``keep``: earlier uploads of the same batch.

        Called after ``keep`` is verified and while the batch's rows are still locked and not yet
        deleted: every row of such an upload is still in the table (its delete was rolled back).
        """
        stale = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=stem)
        for page in pages:
            stale += [o["Key"] for o in page.get("Contents", []) if o["Key"] != keep]
        if stale:
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in stale], "Quiet": True}
            )
        return stale

    def remove(self, key: str) -> None:
        """Delete one object of this bucket (an archive whose deleted rows are now in another)."""
        self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": key}], "Quiet": True})

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


class ArchiveEncoder:
    """Rows in the ``data_lifecycle.rows/2`` format, gzip-compressed as they are added.

    ``compressed_size()`` is the exact size the object would have if it ended now, measured every
    16 KiB of input; the batch loop cuts a batch there once it reaches its target size, so the cut
    depends only on the rows (a rerun over the same rows cuts at the same row). Lines are compressed
    16 KiB at a time (gzip level 6), one call per chunk rather than per row.
    """

    def __init__(
        self, table: str, columns: Sequence[tuple[str, str]], *, row_transform: RowTransform | None = None
    ) -> None:
        self._names = [n for n, _ in columns]
        self._types = dict(columns)
        self._transform = row_transform
        self._zlib = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # wbits 31: a gzip stream, mtime 0
        self._parts: list[bytes] = []
        self._compressed = 0  # bytes in _parts
        self._pending: list[bytes] = []
        self._since_check = 0
        self._size = 0
        self.rows = 0
        header = {"format": FORMAT, "table": table, "columns": [{"name": n, "type": t} for n, t in columns]}
        self._add_line(header)

    def _add_line(self, value: Any) -> None:
        line = (_JSON.encode(value) + "\n").encode("utf-8")
        self._pending.append(line)
        self._since_check += len(line)

    def _compress_pending(self) -> None:
        if self._pending:
            part = self._zlib.compress(b"".join(self._pending))
            self._pending = []
            self._parts.append(part)
            self._compressed += len(part)

    def add(self, values: Sequence[str | None]) -> None:
        if self._transform is not None:
            row = self._transform(dict(zip(self._names, values, strict=True)), self._types)
            values = [None if row[n] is None else str(row[n]) for n in self._names]
        self._add_line(list(values))
        self.rows += 1

    def compressed_size(self) -> int | None:
        """The object's size if it ended now; None between measurements."""
        if self._since_check < _SIZE_CHECK_BYTES:
            return None
        self._since_check = 0
        self._compress_pending()
        self._size = self._compressed + len(self._zlib.copy().flush())
        return self._size

    def finish(self) -> bytes:
        if not hasattr(self, "_body"):
            self._compress_pending()
            self._body = b"".join(self._parts) + self._zlib.flush()
        return self._body


@dataclass(frozen=True)
class ArchiveContent:
    """One archive object read back: the source table, its columns and the rows (text values)."""

    format: str
    table: str | None
    columns: list[tuple[str, str | None]]  # (name, PostgreSQL type) in column order
    rows: list[tuple[Any, ...]]

    def columns_typed(self) -> list[tuple[str, str]]:
        """The columns as (name, type) for a new encoder (the untyped first format has none)."""
        return [(name, type_name or "text") for name, type_name in self.columns]

    def as_dicts(self) -> list[dict[str, Any]]:
        names = [name for name, _ in self.columns]
        return [dict(zip(names, row, strict=True)) for row in self.rows]


def parse_archive(body: bytes) -> ArchiveContent:
    """Decode one archive object's bytes (either format)."""
    # Split on "\n" only: str.splitlines() also splits on characters JSON leaves unescaped (U+0085,
    # U+2028, ...), which would cut a row holding them in two.
    lines = [line for line in gzip.decompress(body).decode("utf-8").split("\n") if line.strip()]
    if not lines:
        return ArchiveContent(LEGACY_FORMAT, None, [], [])
    first = json.loads(lines[0])
    if isinstance(first, dict) and first.get("format") == FORMAT:
        columns: list[tuple[str, str | None]] = [(str(c["name"]), str(c["type"])) for c in first["columns"]]
        rows = [tuple(json.loads(line)) for line in lines[1:]]
        return ArchiveContent(FORMAT, first.get("table"), columns, rows)
    # The first format: one JSON object per row, values as JSON (types not recoverable).
    objects = [json.loads(line) for line in lines]
    names = list(dict.fromkeys(k for o in objects for k in o))
    rows = [tuple(o.get(n) for n in names) for o in objects]
    return ArchiveContent(LEGACY_FORMAT, None, [(n, None) for n in names], rows)


def read_archive(client: Any, bucket: str, key: str) -> ArchiveContent:
    """Read one archive object (either format)."""
    return parse_archive(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def read_archive_rows(client: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    """The rows of one archive object as ``{column: PostgreSQL text or None}`` dicts."""
    return read_archive(client, bucket, key).as_dicts()


def restore_archive(conn: Any, client: Any, bucket: str, key: str, *, table: str | None = None) -> int:
    """Insert the rows of one archive object into ``table`` (default: the table it came from).

    Values go in as ``%s::text::<the target column's type>``, so they are exactly the originals.
    Generated columns are recomputed; identity columns keep their archived values. One
    transaction: all rows or none. Returns the number of rows inserted.
    """
    from psycopg import sql

    from data_lifecycle import pg_catalog

    content = read_archive(client, bucket, key)
    if content.format != FORMAT:
        raise LifecycleConfigError(
            f"s3://{bucket}/{key} is in the untyped {content.format} format; cannot restore"
        )
    target = pg_catalog.resolve_table(conn, table or str(content.table), field="table")
    live = pg_catalog.columns(conn, target)
    names = [name for name, _ in content.columns]
    missing = [n for n in names if n not in live]
    if missing:
        raise LifecycleConfigError(f"{target.qualified} has no column(s) {missing} of s3://{bucket}/{key}")
    wanted = [i for i, n in enumerate(names) if not live[n].generated]
    cols = [live[names[i]] for i in wanted]
    insert = sql.SQL("INSERT INTO {t} ({c}) OVERRIDING SYSTEM VALUE VALUES ({v})").format(
        t=target.ident,
        c=sql.SQL(", ").join(c.ident for c in cols),
        v=sql.SQL(", ").join(sql.SQL("%s::text::{}").format(sql.SQL(c.type_name)) for c in cols),
    )
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(insert, [[row[i] for i in wanted] for row in content.rows])
    return len(content.rows)
