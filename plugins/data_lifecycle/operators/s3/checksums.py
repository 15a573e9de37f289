"""Checksums a faithful archive copy must have: stored on the source, or computed from its bytes."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

# Part size for multipart copies (UploadPartCopy parts are 5 MiB to 5 GiB, at most 10,000 parts).
MULTIPART_COPY_PART_BYTES = 512 * 1024**2
STREAM_CHUNK_BYTES = 8 * 1024**2

# Strong checksums only: two different byte strings of one size share a CRC32 far too easily for a
# match to prove that an archive object holds the bytes about to be deleted.
HASHERS: Mapping[str, Callable[[], Any]] = {"SHA256": hashlib.sha256}


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def same_checksum(expected: str, actual: str | None) -> bool:
    """Compare S3 checksums; a composite one may carry a ``-<parts>`` suffix (base64 has no '-')."""
    if not actual:
        return False
    e_value, _, e_parts = expected.partition("-")
    a_value, _, a_parts = actual.partition("-")
    return e_value == a_value and (not e_parts or not a_parts or e_parts == a_parts)


def part_bytes_for(size: int) -> int:
    """The part size a multipart copy of ``size`` bytes uses (the transfer manager's own adjustment)."""
    from s3transfer.utils import ChunksizeAdjuster

    return ChunksizeAdjuster().adjust_chunksize(MULTIPART_COPY_PART_BYTES, size)


def expected_checksum(
    client: Any,
    source: Mapping[str, Any],
    copy_source: Mapping[str, str],
    part_bytes: int | None,
    algorithm: str,
) -> str:
    """The checksum a faithful copy has: stored on the source, else computed from its bytes."""
    stored = source.get(f"Checksum{algorithm}")
    composite = source.get("ChecksumType") == "COMPOSITE" or (stored and "-" in stored)
    if part_bytes is None and stored and not composite:
        return stored
    body = client.get_object(Bucket=copy_source["Bucket"], Key=copy_source["Key"], IfMatch=source["ETag"])[
        "Body"
    ]
    new_hash = HASHERS[algorithm]
    whole = new_hash()
    part_digests: list[bytes] = []
    part = new_hash()
    part_left = part_bytes or 0
    for chunk in body.iter_chunks(STREAM_CHUNK_BYTES):
        whole.update(chunk)
        rest = chunk
        while part_bytes and rest:
            piece, rest = rest[:part_left], rest[part_left:]
            part.update(piece)
            part_left -= len(piece)
            if part_left == 0:
                part_digests.append(part.digest())
                part, part_left = new_hash(), part_bytes
    if part_bytes is None:
        return b64(whole.digest())
    if part_left != part_bytes:
        part_digests.append(part.digest())
    combined = new_hash()
    for digest in part_digests:
        combined.update(digest)
    return f"{b64(combined.digest())}-{len(part_digests)}"
