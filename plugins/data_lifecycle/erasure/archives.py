"""Every place our own DAGs copy a mapped table's rows or a mapped prefix's objects to, and how
erasure covers it.

Derived from the retention policy (``lifecycle.yaml``), never typed by hand:

- rows: a batched delete in archive mode writes ``{prefix}/{schema}.{table}/...`` objects, and a
  partition retention in mode ``s3`` writes ``{prefix}/{schema}.{table}/partition=...`` objects.
  Covered when every map target of that table says ``archive: pseudonymise``: the writer then
  replaces the subject columns as it writes (:class:`ArchivePseudonymiser`), so no archive object
  ever holds the subject id, and erasure has nothing to rewrite there.
- objects: copy-then-delete (``object_archives``) copies a mapped prefix such as
  ``user_{user_id}/`` to another bucket. Covered when the map lists the destination bucket with the
  copied prefix template, so erasure purges every version there too (legal hold respected).

A destination may instead be listed under ``ignore:`` (``archive: s3://bucket/prefix``) with a
reason. The check touches no database and no network: it runs with the coverage check and before
each erase step's first write.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from data_lifecycle.erasure.subject_map import (
    PLACEHOLDER,
    ArchiveHandling,
    MaskStrategy,
    SubjectMap,
    TableTarget,
)
from data_lifecycle.exceptions import LifecycleConfigError

# Copies of copies (an archive bucket archived again) are followed this deep.
MAX_COPY_DEPTH = 8


@dataclass(frozen=True)
class ArchiveDestination:
    """One place the policy copies a mapped table or prefix to.

    :param source: ``schema.table`` or ``s3://bucket/template``.
    :param rule: the policy section and rule id that copies it.
    :param location: ``s3://bucket/prefix`` of the copies (a prefix template for objects).
    :param covered: how the map covers it, or None when it does not.
    """

    source: str
    rule: str
    location: str
    covered: str | None


def _row_destinations(policy: Any, smap: SubjectMap) -> list[ArchiveDestination]:
    mapped: dict[str, list[TableTarget]] = {}
    for t in smap.tables:
        mapped.setdefault(t.table, []).append(t)
    found: list[tuple[str, str, Any]] = []
    for section in ("expired_sessions", "app_logs", "soft_deleted"):
        for rule in getattr(policy, section):
            if rule.archive is not None:
                found.append((rule.table, f"{section} '{rule.id}'", rule.archive))
    for prule in policy.partitions:
        if prule.mode == "s3" and prule.archive is not None:
            found.append((prule.table, f"partitions '{prule.id}'", prule.archive))
    out = []
    for table, rule, archive in found:
        if table not in mapped:
            continue
        prefix = f"{archive.prefix.strip('/')}/" if archive.prefix.strip("/") else ""
        location = f"s3://{archive.bucket}/{prefix}{table}/"
        pseudonymised = all(t.archive is ArchiveHandling.PSEUDONYMISE for t in mapped[table])
        covered = "pseudonymised as archived" if pseudonymised else None
        if covered is None and _ignored(smap, location):
            covered = "ignored"
        out.append(ArchiveDestination(source=table, rule=rule, location=location, covered=covered))
    return out


def _object_destinations(policy: Any, smap: SubjectMap) -> list[ArchiveDestination]:
    out: list[ArchiveDestination] = []
    todo = [(b.bucket, p, 0) for b in smap.buckets for p in b.prefixes]
    seen: set[tuple[str, str]] = set()
    while todo:
        bucket, template, depth = todo.pop(0)
        literal = template.split("{" + PLACEHOLDER + "}", 1)[0]
        for rule in policy.object_archives:
            if rule.source_bucket != bucket:
                continue
            src = rule.source_prefix
            root = rule.dest_prefix if rule.dest_prefix is not None else src
            if literal.startswith(src):
                dest = (rule.dest_bucket, root + template[len(src) :])
            elif src.startswith(literal):
                # The rule copies some subjects' prefixes (or part of one): its whole destination.
                dest = (rule.dest_bucket, root)
            else:
                continue
            location = f"s3://{dest[0]}/{dest[1]}"
            covered = "purged" if _listed(smap, *dest) else ("ignored" if _ignored(smap, location) else None)
            out.append(
                ArchiveDestination(
                    source=f"s3://{bucket}/{template}",
                    rule=f"object_archives '{rule.id}'",
                    location=location,
                    covered=covered,
                )
            )
            if dest not in seen and depth < MAX_COPY_DEPTH and PLACEHOLDER in dest[1]:
                seen.add(dest)
                todo.append((*dest, depth + 1))
    return out


def _listed(smap: SubjectMap, bucket: str, template: str) -> bool:
    return any(b.bucket == bucket and template in b.prefixes for b in smap.buckets)


def _ignored(smap: SubjectMap, location: str) -> bool:
    return any(location.startswith(i) for i in smap.ignored_archives())


def archive_destinations(policy: Any, smap: SubjectMap) -> list[ArchiveDestination]:
    """Every archive destination of a mapped table or prefix, with how the map covers it."""
    return [*_row_destinations(policy, smap), *_object_destinations(policy, smap)]


def check_archive_coverage(policy: Any, smap: SubjectMap) -> list[str]:
    """Raise ``LifecycleConfigError`` naming every uncovered destination; else list them all."""
    dests = archive_destinations(policy, smap)
    gaps = [d for d in dests if d.covered is None]
    if gaps:
        listed = "; ".join(f"{d.location} (copies of {d.source}, by {d.rule})" for d in gaps)
        raise LifecycleConfigError(
            f"Erasure subject map {smap.source} does not cover {len(gaps)} archive destination(s) of "
            f"policy {policy.source}: {listed}. Mark the table's targets 'archive: pseudonymise', list "
            "the destination bucket and prefix under 'buckets', or add it to 'ignore' with a reason; "
            "nothing was erased."
        )
    return [f"{d.location} <- {d.source}: {d.covered}" for d in dests]


# Integer columns get a negative pseudonym within the type's range: it restores into the column's
# own type and can never equal a real (positive) id.
_INTEGER_BOUNDS = {"smallint": 2**15 - 1, "integer": 2**31 - 1, "bigint": 2**63 - 1}


def pseudonym(keys: Any, label: str, type_name: str | None = None) -> str:
    """The keyed hash of ``label``, as text that fits a column of ``type_name``.

    Text columns (and unknown types) hold the hex HMAC; integer columns a negative integer taken
    from it; ``uuid`` columns a UUID made of its first 128 bits. The same subject always gets the
    same pseudonym in one column, so archived rows of one person stay linkable to each other only.
    """
    digest = keys.label_hash(label)
    if type_name in _INTEGER_BOUNDS:
        return str(-(int(digest[:16], 16) % _INTEGER_BOUNDS[type_name]) - 1)
    if type_name == "uuid":
        return str(uuid.UUID(digest[:32]))
    return digest


class ArchivePseudonymiser:
    """Row transform for the archive writer: the subject columns of one table's rows, pseudonymised.

    For every map target of ``table`` with ``archive: pseudonymise``, a row whose reference column
    holds a subject id gets that column replaced by the keyed hash ``HMAC(key, "<table>.<column>:<id>")``
    (the construction of the map's ``keyed_hash`` mask), and every other masked column its mask
    (null, fixed or keyed hash), as an erasure would leave it. Rows without a subject pass unchanged.
    The key is read when the archive writer is built (run time), never when the DAG is parsed.

    :param table: ``schema.table`` whose rows are archived.
    :param map_path: the subject map file (default: the deployed one).
    """

    def __init__(self, table: str, map_path: str | None = None) -> None:
        self.table = table
        self.map_path = map_path
        self._state: tuple[list[TableTarget], Any] | None = None

    def prepare(self) -> None:
        """Read the map and the key now (the writer calls it before any row is locked)."""
        self._load()

    def _load(self) -> tuple[list[TableTarget], Any]:
        if self._state is None:
            from data_lifecycle.erasure.keys import load_subject_keys
            from data_lifecycle.erasure.subject_map import load_subject_map

            smap = load_subject_map(self.map_path)
            targets = [
                t for t in smap.tables if t.table == self.table and t.archive is ArchiveHandling.PSEUDONYMISE
            ]
            self._state = (targets, load_subject_keys(smap.hmac_conn_id, smap.subject.table))
        return self._state

    def __call__(
        self, row: Mapping[str, Any], column_types: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        targets, keys = self._load()
        types = column_types or {}
        out = dict(row)
        for target in targets:
            subject = row.get(target.column)
            if subject is None:
                continue
            for m in target.mask:
                if m.strategy is MaskStrategy.NULL:
                    out[m.column] = None
                elif m.strategy is MaskStrategy.FIXED:
                    out[m.column] = m.value
                else:
                    out[m.column] = pseudonym(keys, f"{self.table}.{m.column}:{subject}", types.get(m.column))
            label = f"{self.table}.{target.column}:{subject}"
            out[target.column] = pseudonym(keys, label, types.get(target.column))
        return out

    def __repr__(self) -> str:
        return f"ArchivePseudonymiser({self.table!r})"


def archive_row_transform(smap: SubjectMap, table: str) -> ArchivePseudonymiser | None:
    """The transform for archiving ``table``'s rows, or None when the map does not pseudonymise it."""
    if any(t.table == table and t.archive is ArchiveHandling.PSEUDONYMISE for t in smap.tables):
        return ArchivePseudonymiser(table)
    return None
