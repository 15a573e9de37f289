"""Checks on real state: rows against their S3 archives, S3 sources against their archive copies.

The promise they check: whatever dies in the middle, no row or object is lost or removed early.
Every deleted row is in an archive object whose size, SHA-256 and row count match; every deleted
source object has a copy whose size and checksum match the original bytes; nothing inside
retention is touched.
"""

from __future__ import annotations

import base64
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from data_lifecycle.archive import ROW_COUNT_METADATA_KEY, parse_archive


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def table_rows(conn: psycopg.Connection[Any], table: str, key: str = "id") -> dict[Any, dict[str, Any]]:
    """Every row of ``table`` by ``key`` (its typed value), in archive form: each column's text."""
    schema, name = table.split(".")
    cols = [
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
            " AND NOT attisdropped ORDER BY attnum",
            (f"{schema}.{name}",),
        )
    ]
    query = sql.SQL("SELECT {k} AS lc_key, {c} FROM {t}").format(
        k=sql.Identifier(key),
        c=sql.SQL(", ").join(
            sql.SQL("{}::text AS {}").format(sql.Identifier(c), sql.Identifier(c)) for c in cols
        ),
        t=sql.Identifier(schema, name),
    )
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query).fetchall()
    return {row.pop("lc_key"): row for row in rows}


@dataclass
class ArchiveObject:
    key: str
    rows: list[dict[str, Any]]


def verified_archive(client: Any, bucket: str, prefix: str) -> list[ArchiveObject]:
    """Every archive object under ``prefix``, each checked: size, SHA-256 and row count match."""
    found = []
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for obj in page.get("Contents", []):
            head = client.head_object(Bucket=bucket, Key=obj["Key"], ChecksumMode="ENABLED")
            body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            rows = parse_archive(body).as_dicts()
            assert head["ContentLength"] == len(body), f"{obj['Key']}: size differs from its body"
            assert head["ChecksumSHA256"] == sha256_b64(body), f"{obj['Key']}: checksum differs"
            assert head["Metadata"][ROW_COUNT_METADATA_KEY] == str(len(rows)), f"{obj['Key']}: row count"
            found.append(ArchiveObject(obj["Key"], rows))
    return found


def assert_deleted_rows_archived(
    before: dict[Any, dict[str, Any]],
    after: dict[Any, dict[str, Any]],
    archive: list[ArchiveObject],
    *,
    due: set[Any],
    key: str = "id",
) -> set[Any]:
    """Rows gone from the table were due and are, unchanged, in a verified archive object.

    Returns the deleted keys. Rows still in the table are unchanged.
    """
    deleted = set(before) - set(after)
    early = deleted - due
    assert not early, f"rows inside retention were deleted: {sorted(early)[:10]}"
    for k, row in after.items():
        assert row == before[k], f"row {k} changed"
    # Archived rows are keyed by the key's text form, as the archive holds it.
    archived: dict[Any, dict[str, Any]] = {}
    for obj in archive:
        for row in obj.rows:
            assert row[key] not in archived, f"row {row[key]} is in two archive objects"
            archived[row[key]] = row
    missing = sorted(k for k in deleted if before[k][key] not in archived)
    assert not missing, f"{len(missing)} deleted rows are in no archive object, e.g. {missing[:10]}"
    differ = sorted(k for k in deleted if archived[before[k][key]] != before[k])
    assert not differ, f"archived rows differ from the originals, e.g. {differ[:5]}"
    unknown = set(archived) - {row[key] for row in before.values()}
    assert not unknown, f"archive holds rows that never existed: {sorted(unknown)[:5]}"
    return deleted


def object_listing(client: Any, bucket: str, prefix: str = "") -> dict[str, tuple[int, str]]:
    """key -> (size, ETag) of the current objects under ``prefix``."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: (int(o["Size"]), o["ETag"]) for page in pages for o in page.get("Contents", [])}


def assert_sources_have_verified_copies(
    client: Any,
    *,
    originals: dict[str, bytes],
    due: set[str],
    source_bucket: str,
    dest_bucket: str,
    dest_key: Any,
    storage_class: str = "GLACIER",
) -> set[str]:
    """Every original object gone from the source was due and has a copy of equal size and SHA-256.

    Objects still in the source are byte-identical to the originals. Returns the deleted keys.
    """
    present = object_listing(client, source_bucket)
    deleted = set(originals) - set(present)
    early = deleted - due
    assert not early, f"objects inside retention were deleted: {sorted(early)[:10]}"

    def source_unchanged(key: str) -> str | None:
        body = client.get_object(Bucket=source_bucket, Key=key)["Body"].read()
        return None if body == originals[key] else f"source {key} changed"

    def copy_verified(key: str) -> str | None:
        head = client.head_object(Bucket=dest_bucket, Key=dest_key(key), ChecksumMode="ENABLED")
        if head["ContentLength"] != len(originals[key]):
            return f"copy of {key}: size {head['ContentLength']} != {len(originals[key])}"
        if head.get("ChecksumSHA256") != sha256_b64(originals[key]):
            return f"copy of {key}: checksum differs"
        if (head.get("StorageClass") or "STANDARD") != storage_class:
            return f"copy of {key}: storage class {head.get('StorageClass')}"
        return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        problems = [
            *pool.map(source_unchanged, sorted(k for k in present if k in originals)),
            *pool.map(copy_verified, sorted(deleted)),
        ]
    problems = [p for p in problems if p]
    assert not problems, problems[:10]
    return deleted
