"""One mechanism per S3 prefix: tiering rules, copy-then-delete, row archives and expiry never overlap.

Checked when the policy loads (:func:`data_lifecycle.policy.parse_policy`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data_lifecycle.exceptions import LifecycleConfigError


def prefixes_overlap(a: str, b: str) -> bool:
    """Whether two key prefixes share keys (one contains the other; an empty prefix contains all)."""
    return a.startswith(b) or b.startswith(a)


@dataclass(frozen=True)
class _Claim:
    """One mechanism acting on the keys under ``bucket``/``prefix``."""

    kind: str  # lifecycle | archive_source | archive_dest | row_archive | expiry
    bucket: str
    prefix: str
    where: str
    expires: bool = False


# Mechanisms that may share keys: lifecycle rules among themselves (S3 orders them), and a lifecycle
# rule over archives (their declared lifecycle). Any other pair on overlapping prefixes decides an
# object's fate by whichever acts first.
_COMPATIBLE = {
    frozenset({"lifecycle"}),
    frozenset({"lifecycle", "archive_dest"}),
    frozenset({"lifecycle", "row_archive"}),
    frozenset({"row_archive"}),
}


def _claims(policy: Any) -> list[_Claim]:
    claims: list[_Claim] = []
    for tiers in policy.storage_tiers:
        for raw in tiers.rules:
            acts = any(
                raw.get(k) not in (None, [])
                for k in (
                    "transitions",
                    "expiration_days",
                    "noncurrent_transitions",
                    "noncurrent_expiration_days",
                )
            )
            if raw.get("absent", False) or not acts:
                continue  # removed, or only aborts unfinished uploads
            claims.append(
                _Claim(
                    "lifecycle",
                    tiers.bucket,
                    str(raw.get("prefix", "") or ""),
                    f"storage_tiers rule '{tiers.id}' lifecycle rule '{raw['id']}'",
                    expires=raw.get("expiration_days") is not None,
                )
            )
    for rule in policy.object_archives:
        where = f"object_archives rule '{rule.id}'"
        claims.append(_Claim("archive_source", rule.source_bucket, rule.source_prefix, f"{where} (source)"))
        dest = rule.source_prefix if rule.dest_prefix is None else rule.dest_prefix
        claims.append(_Claim("archive_dest", rule.dest_bucket, dest, f"{where} (archive)"))
    for table_rule in policy.app_logs:
        if table_rule.archive is not None:
            archive = table_rule.archive
            claims.append(
                _Claim("row_archive", archive.bucket, archive.prefix, f"app_logs rule '{table_rule.id}'")
            )
    for part in policy.partitions:
        if part.archive is not None:
            claims.append(
                _Claim(
                    "row_archive", part.archive.bucket, part.archive.prefix, f"partitions rule '{part.id}'"
                )
            )
    for expiry in policy.s3_expiry:
        claims.append(_Claim("expiry", expiry.bucket, expiry.prefix, f"s3_expiry rule '{expiry.id}'"))
    return claims


def check_s3_mechanisms(policy: Any, source: str) -> None:
    """One mechanism per prefix, and every object archive under a declared, expiring lifecycle."""
    claims = _claims(policy)
    for i, a in enumerate(claims):
        for b in claims[i + 1 :]:
            if (
                a.bucket == b.bucket
                and prefixes_overlap(a.prefix, b.prefix)
                and frozenset({a.kind, b.kind}) not in _COMPATIBLE
            ):
                raise LifecycleConfigError(
                    f"Invalid policy {source}: {a.where} and {b.where} both act on s3://{a.bucket}/ keys "
                    f"under {a.prefix!r} and {b.prefix!r}; give each prefix one mechanism (lifecycle "
                    "tiers, archive copy-then-delete or expiry)"
                )
    for dest in (c for c in claims if c.kind == "archive_dest"):
        if not any(
            c.kind == "lifecycle"
            and c.expires
            and c.bucket == dest.bucket
            and dest.prefix.startswith(c.prefix)
            for c in claims
        ):
            raise LifecycleConfigError(
                f"Invalid policy {source}: {dest.where}: the archive s3://{dest.bucket}/{dest.prefix} has no "
                "declared lifecycle; add a storage_tiers rule with expiration_days for that bucket and "
                "prefix (archives are otherwise kept forever)"
            )
