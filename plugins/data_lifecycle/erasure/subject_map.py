"""The erasure subject map: which tables and buckets hold one user's data, and how each is erased.

Loaded from ``include/policies/erasure_subject_map.yaml`` (or the file named by
``ERASURE_SUBJECT_MAP_FILE``) into frozen dataclasses. Validation happens at parse time and touches
no database: every name is a plain identifier, unknown keys are refused, and an error names the
file, the target and the field. Catalog checks (the tables exist, column types fit the mask) happen
at run time in the planner.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

from data_lifecycle.config_fields import (
    BUCKET_NAME,
    MAX_BATCH_ROWS,
    MAX_MILLISECONDS,
    QUALIFIED_TABLE,
    ConfigFields,
    load_yaml_file,
)

DEFAULT_SUBJECT_MAP_FILE = (
    Path(__file__).resolve().parents[3] / "include" / "policies" / "erasure_subject_map.yaml"
)
SUBJECT_MAP_FILE_ENV = "ERASURE_SUBJECT_MAP_FILE"

CONN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")
# A reference column name, or a pattern of one with ``*`` for any characters (``*_user_id``).
REFERENCE_PATTERN = re.compile(r"^[A-Za-z_*][A-Za-z0-9_*]{0,62}\Z")
DEFAULT_REFERENCE_COLUMNS = ("user_id", "owner_id", "customer_id", "member_id", "account_id", "*_user_id")
# The value of ``ledger_survives_restore`` that accepts a ledger in an erased database.
ACKNOWLEDGED = "acknowledged"
PLACEHOLDER = "user_id"
# Characters allowed in a key prefix template around the placeholder.
PREFIX_TEXT = re.compile(r"^[A-Za-z0-9!_.*'()/-]*$")


class Action(StrEnum):
    DELETE = "delete"
    MASK = "mask"


class ArchiveHandling(StrEnum):
    """What happens to the subject columns of rows our DAGs archive (``archive:`` of a target)."""

    PSEUDONYMISE = "pseudonymise"


class MaskStrategy(StrEnum):
    NULL = "null"
    FIXED = "fixed"
    KEYED_HASH = "keyed_hash"


class _Fields(ConfigFields):
    """Reads one mapping of the subject map, naming file, place and field in every error."""

    def __init__(self, raw: Any, where: str, source: str) -> None:
        super().__init__(raw, where, source, document="erasure subject map")


@dataclass(frozen=True)
class Hop:
    """One step of a join path: ``<previous column> = table.key``, then on through ``table.column``."""

    table: str
    key: str
    column: str


@dataclass(frozen=True)
class MaskColumn:
    column: str
    strategy: MaskStrategy
    value: str | None = None


@dataclass(frozen=True)
class TableTarget:
    """Rows of ``table`` that belong to the subject, and what happens to them."""

    name: str
    table: str
    column: str
    action: Action = Action.DELETE
    via: tuple[Hop, ...] = ()
    mask: tuple[MaskColumn, ...] = ()
    archive: ArchiveHandling | None = None


@dataclass(frozen=True)
class BucketTarget:
    """Key prefixes (templates with ``{user_id}``) of one bucket that hold the subject's objects."""

    bucket: str
    prefixes: tuple[str, ...]

    def render(self, user_id: int) -> tuple[str, ...]:
        return tuple(p.format(**{PLACEHOLDER: int(user_id)}) for p in self.prefixes)


@dataclass(frozen=True)
class Exemption:
    """An ``ignore:`` entry: a reference column (table, column) or an archive destination
    (``s3://bucket/prefix``) that the coverage check accepts as not erased, with the reason."""

    table: str | None
    column: str | None
    reason: str
    archive: str | None = None


@dataclass(frozen=True)
class Subject:
    table: str
    key: str
    reference_columns: tuple[str, ...]
    created_column: str | None = None


@dataclass(frozen=True)
class BatchSettings:
    size: int = 5_000
    lock_timeout_ms: int = 2_000
    statement_timeout_ms: int = 60_000


@dataclass(frozen=True)
class SubjectMap:
    source: str
    subject: Subject
    tables: tuple[TableTarget, ...]
    buckets: tuple[BucketTarget, ...]
    exempt: tuple[Exemption, ...]
    deadline_days: int
    alert_after_days: int
    hmac_conn_id: str
    ledger_conn_id: str | None
    ledger_table: str
    batch: BatchSettings
    postgres_conn_id: str | None = None
    ledger_survives_restore: str | None = None

    def target(self, name: str) -> TableTarget:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(name)

    def covered_columns(self) -> frozenset[tuple[str, str]]:
        """``(schema.table, column)`` pairs the map erases or explicitly exempts."""
        pairs = {(t.table, t.column) for t in self.tables}
        pairs |= {(e.table, e.column) for e in self.exempt if e.table and e.column}
        return frozenset(pairs)

    def ignored_archives(self) -> frozenset[str]:
        """Archive destinations (``s3://bucket/prefix``) the map accepts as not erased."""
        return frozenset(e.archive for e in self.exempt if e.archive)


def _mask(f: _Fields) -> tuple[MaskColumn, ...]:
    items = f.get("mask", list, [])
    out = []
    for i, item in enumerate(items):
        mf = _Fields(item, f"{f.where} mask[{i}]", f.source)
        column = mf.identifier("column")
        strategy_raw = mf.get("strategy", str)
        try:
            strategy = MaskStrategy(strategy_raw)
        except ValueError:
            mf.fail(
                "strategy", f"must be one of {', '.join(s.value for s in MaskStrategy)}, got {strategy_raw!r}"
            )
        value = mf.get("value", str, None)
        if strategy is MaskStrategy.FIXED and value is None:
            mf.fail("value", "is required for strategy 'fixed'")
        if strategy is not MaskStrategy.FIXED and value is not None:
            mf.fail("value", f"only applies to strategy 'fixed', not {strategy.value!r}")
        mf.done()
        out.append(MaskColumn(column=column, strategy=strategy, value=value))
    return tuple(out)


def _table_target(raw: Any, index: int, source: str) -> TableTarget:
    label = raw.get("id") or raw.get("table") if isinstance(raw, Mapping) else None
    f = _Fields(raw, f"tables[{index}]" + (f" (target '{label}')" if label else ""), source)
    table = f.table("table")
    name = f.matching(
        "id", re.compile(r"^[A-Za-z0-9_.]{1,127}$"), "letters, digits, dots, underscores", table
    )
    column = f.identifier("column")
    action_raw = f.get("action", str, Action.DELETE.value)
    try:
        action = Action(action_raw)
    except ValueError:
        f.fail("action", f"must be one of {', '.join(a.value for a in Action)}, got {action_raw!r}")
    hops = []
    for j, hop in enumerate(f.get("via", list, [])):
        hf = _Fields(hop, f"{f.where} via[{j}]", source)
        hops.append(Hop(table=hf.table("table"), key=hf.identifier("key"), column=hf.identifier("column")))
        hf.done()
    mask = _mask(f)
    archive_raw = f.get("archive", str, None)
    archive = None
    if archive_raw is not None:
        try:
            archive = ArchiveHandling(archive_raw)
        except ValueError:
            f.fail("archive", f"must be {', '.join(a.value for a in ArchiveHandling)}, got {archive_raw!r}")
        if hops:
            f.fail("archive", "needs the subject id in the row itself; a target with 'via' cannot use it")
    if action is Action.MASK:
        if not mask:
            f.fail("mask", "is required when action is 'mask' (list the columns and their strategy)")
        masked = [m.column for m in mask]
        if len(set(masked)) != len(masked):
            f.fail("mask", "names a column twice")
        if column not in masked:
            f.fail(
                "mask", f"must cover the reference column '{column}', or the rows still point at the subject"
            )
    elif mask:
        f.fail("mask", "only applies when action is 'mask'")
    f.done()
    return TableTarget(
        name=name, table=table, column=column, action=action, via=tuple(hops), mask=mask, archive=archive
    )


def _prefix_template(value: Any, f: _Fields, key: str) -> str:
    if not isinstance(value, str):
        f.fail(key, f"must list strings, got {value!r}")
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as exc:
        f.fail(key, f"{value!r} is not a valid template: {exc}")
    fields = [p[1] for p in parts if p[1] is not None]
    if fields != [PLACEHOLDER]:
        f.fail(key, f"{value!r} must contain '{{{PLACEHOLDER}}}' exactly once and no other placeholder")
    if any(p[2] or p[3] for p in parts):
        f.fail(key, f"{value!r}: no format spec or conversion on '{{{PLACEHOLDER}}}'")
    literal = "".join(p[0] for p in parts)
    if not PREFIX_TEXT.match(literal):
        f.fail(key, f"{value!r} has characters outside the safe S3 key set")
    after = value.split("{" + PLACEHOLDER + "}", 1)[1]
    if not after or after[0].isalnum():
        f.fail(key, f"{value!r}: '{{{PLACEHOLDER}}}' must be followed by a delimiter such as '/'")
    return value


def _bucket_target(raw: Any, index: int, source: str) -> BucketTarget:
    label = raw.get("bucket") if isinstance(raw, Mapping) else None
    f = _Fields(raw, f"buckets[{index}]" + (f" (bucket '{label}')" if label else ""), source)
    bucket = f.matching("bucket", BUCKET_NAME, "a valid S3 bucket name")
    prefixes = f.get("prefixes", list)
    if not prefixes:
        f.fail("prefixes", "must list at least one key prefix template")
    rendered = tuple(_prefix_template(p, f, "prefixes") for p in prefixes)
    f.done()
    return BucketTarget(bucket=bucket, prefixes=rendered)


def parse_subject_map(doc: Any, source: str) -> SubjectMap:
    """Build a validated ``SubjectMap`` from a parsed YAML document."""
    top = _Fields(doc, "top level", source)
    version = top.get("version", int)
    if version != 1:
        top.fail("version", f"only version 1 is supported, got {version}")
    sf = _Fields(top.get("subject", dict), "subject", source)
    refs = sf.get("reference_columns", list, list(DEFAULT_REFERENCE_COLUMNS))
    if not refs:
        sf.fail("reference_columns", "must list at least one column name or pattern")
    for r in refs:
        if not isinstance(r, str) or not REFERENCE_PATTERN.match(r) or set(r) == {"*"}:
            sf.fail(
                "reference_columns",
                f"must list column names or patterns with '*' (such as '*_user_id'), got {r!r}",
            )
    subject = Subject(
        table=sf.table("table"),
        key=sf.identifier("key"),
        reference_columns=tuple(refs),
        created_column=sf.identifier("created_column", None),
    )
    sf.done()
    cf = _Fields(top.get("connections", dict, {}), "connections", source)
    hmac_conn_id = cf.matching("hmac", CONN_ID, "a connection id", "erasure_hmac")
    ledger_conn_id = cf.matching("ledger", CONN_ID, "a connection id", None)
    postgres_conn_id = cf.matching("postgres", CONN_ID, "a connection id", None)
    cf.done()
    survives = top.get("ledger_survives_restore", str, None)
    if survives is not None and survives != ACKNOWLEDGED:
        top.fail(
            "ledger_survives_restore",
            f"the only value is '{ACKNOWLEDGED}' (the ledger shares an erased database and you accept "
            f"that a restore rewinds it), got {survives!r}",
        )
    bf = _Fields(top.get("batch", dict, {}), "batch", source)
    d = BatchSettings()
    batch = BatchSettings(
        size=bf.positive_int("size", d.size, maximum=MAX_BATCH_ROWS),
        lock_timeout_ms=bf.positive_int("lock_timeout_ms", d.lock_timeout_ms, maximum=MAX_MILLISECONDS),
        statement_timeout_ms=bf.positive_int(
            "statement_timeout_ms", d.statement_timeout_ms, maximum=MAX_MILLISECONDS
        ),
    )
    bf.done()
    tables = tuple(_table_target(t, i, source) for i, t in enumerate(top.get("tables", list)))
    buckets = tuple(_bucket_target(b, i, source) for i, b in enumerate(top.get("buckets", list, [])))
    exempt = _ignore_list(top)
    deadline_days = top.days("deadline_days", 30)
    alert_after_days = top.days("alert_after_days", max(1, deadline_days - 5))
    if alert_after_days > deadline_days:
        top.fail("alert_after_days", f"({alert_after_days}) is after the deadline ({deadline_days} days)")
    smap = SubjectMap(
        source=source,
        subject=subject,
        tables=tables,
        buckets=buckets,
        exempt=tuple(exempt),
        deadline_days=deadline_days,
        alert_after_days=alert_after_days,
        hmac_conn_id=hmac_conn_id,
        ledger_conn_id=ledger_conn_id,
        postgres_conn_id=postgres_conn_id,
        ledger_survives_restore=survives,
        ledger_table=top.matching(
            "ledger_table", QUALIFIED_TABLE, "a plain 'schema.table' name", "app.erasure_ledger"
        ),
        batch=batch,
    )
    top.done()
    _check_targets(smap, top)
    return smap


def _ignore_list(top: _Fields) -> list[Exemption]:
    """``ignore:`` (or its older name ``exempt:``): every entry names what it ignores and why."""
    if "ignore" in top.raw and "exempt" in top.raw:
        top.fail("exempt", "is the older name of 'ignore'; use only 'ignore'")
    key = "exempt" if "exempt" in top.raw else "ignore"
    out = []
    for i, item in enumerate(top.get(key, list, [])):
        ef = _Fields(item, f"{key}[{i}]", top.source)
        reason = ef.get("reason", str)
        if len(reason.strip()) < 10:
            ef.fail("reason", "must say why this is not erased (at least a short sentence)")
        if "archive" in ef.raw:
            archive = ef.get("archive", str)
            if not archive.startswith("s3://"):
                ef.fail("archive", f"must be an archive destination 's3://bucket/prefix', got {archive!r}")
            out.append(Exemption(table=None, column=None, reason=reason, archive=archive))
        else:
            out.append(Exemption(table=ef.table("table"), column=ef.identifier("column"), reason=reason))
        ef.done()
    return out


def _check_targets(smap: SubjectMap, top: _Fields) -> None:
    if not smap.tables:
        top.fail("tables", "must list at least the subject table")
    names = [t.name for t in smap.tables]
    for name in names:
        if names.count(name) > 1:
            top.fail("tables", f"target '{name}' appears twice; give one of them an 'id'")
    subject_rows = [t for t in smap.tables if t.table == smap.subject.table]
    if len(subject_rows) != 1 or subject_rows[0].column != smap.subject.key or subject_rows[0].via:
        top.fail(
            "tables",
            f"must erase the subject row itself once: table {smap.subject.table}, column {smap.subject.key}",
        )
    if subject_rows[0].action is not Action.DELETE:
        top.fail("tables", f"the subject row ({smap.subject.table}) is deleted, not masked")
    buckets = [b.bucket for b in smap.buckets]
    if len(set(buckets)) != len(buckets):
        top.fail("buckets", "a bucket appears twice; list all its prefixes under one entry")


def subject_map_path() -> Path:
    return Path(os.environ.get(SUBJECT_MAP_FILE_ENV) or DEFAULT_SUBJECT_MAP_FILE)


def load_subject_map(path: Path | str | None = None) -> SubjectMap:
    """Load and validate the erasure subject map file (cached per path and modification time)."""
    resolved = Path(path) if path is not None else subject_map_path()
    return cast(SubjectMap, load_yaml_file(resolved, parse_subject_map, "erasure subject map"))
