"""The retention policy: one YAML file, loaded into frozen dataclasses and validated at parse time.

Every cleanup target of every DAG is declared in ``include/policies/lifecycle.yaml`` (or the file
named by ``LIFECYCLE_POLICY_FILE``). Adding a table to a cleanup is a YAML change. A bad policy
raises ``LifecycleConfigError`` naming the file, the rule and the field, so the DAG file that loads
it shows up as an import error in the Airflow UI and in the integrity test. Loading reads one small
file and touches no database or network: milliseconds at parse time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from data_lifecycle.config_fields import (
    IDENTIFIER,
    MAX_BATCH_ROWS,
    MAX_COUNT,
    MAX_LOAD_FACTOR,
    MAX_MILLISECONDS,
    MAX_MINUTES,
    MAX_MONTHS,
    MAX_REPLICA_LAG_SECONDS,
    MAX_SECONDS,
    QUALIFIED_TABLE,
    load_yaml_file,
)
from data_lifecycle.config_fields import ConfigFields as _Fields
from data_lifecycle.exceptions import LifecycleConfigError
from data_lifecycle.s3_lifecycle_rules import validate_rules
from data_lifecycle.s3_mechanisms import check_s3_mechanisms, prefixes_overlap

# S3's default minimum object size for lifecycle transitions (as data_lifecycle.archive).
DEFAULT_MIN_OBJECT_BYTES = 128 * 1024

DEFAULT_POLICY_FILE = Path(__file__).resolve().parents[2] / "include" / "policies" / "lifecycle.yaml"
POLICY_FILE_ENV = "LIFECYCLE_POLICY_FILE"

ARCHIVE_STORAGE_CLASSES = ("GLACIER_IR", "GLACIER", "DEEP_ARCHIVE")
PARTITION_MODES = ("drop", "archive_schema", "s3")
PARTITION_INTERVALS = ("daily", "weekly", "monthly", "yearly")
DEFAULT_PARTITION_ACTIONS = ("report", "delete")


@dataclass(frozen=True)
class ArchiveTarget:
    """Where rows or objects are copied before they are deleted."""

    bucket: str
    prefix: str
    # Row archives: the size an object aims for (S3 does not tier objects below 128 KiB by default).
    min_object_bytes: int = DEFAULT_MIN_OBJECT_BYTES


@dataclass(frozen=True)
class ChildTable:
    """A table whose rows reference the target's key and go first, in the same transaction."""

    table: str
    column: str


@dataclass(frozen=True)
class BatchSettings:
    target_seconds: float = 0.5
    min_size: int = 100
    max_size: int = 50_000
    sleep_seconds: float = 0.0
    lock_timeout_ms: int = 2_000
    statement_timeout_ms: int = 60_000
    # Load-aware pauses (see operators/postgres/load_guard.py); None: off.
    max_load_p99_factor: float | None = None
    max_replica_lag_seconds: float | None = None


@dataclass(frozen=True)
class TableRule:
    """A batched delete: rows of ``table`` whose ``timestamp_column`` is older than the retention."""

    id: str
    table: str
    timestamp_column: str
    retention_days: int
    override_floor_days: int | None = None
    children: tuple[ChildTable, ...] = ()
    archive: ArchiveTarget | None = None
    batch: BatchSettings = field(default_factory=BatchSettings)
    max_runtime_minutes: int | None = None
    max_rows: int | None = None
    max_delete_fraction: float = 0.5
    allow_large_delete: bool = False
    # For a ``timestamp without time zone`` column: the zone its values are in, or UTC.
    timezone: str | None = None
    naive_is_utc: bool = False


@dataclass(frozen=True)
class PartitionRule:
    """Monthly partitions of a range-partitioned table: premake ahead, drop past retention."""

    id: str
    table: str
    retention_months: int
    premake_months: int = 3
    mode: str = "drop"
    archive_schema: str = "archive"
    archive: ArchiveTarget | None = None
    # daily, weekly, monthly or yearly; None: inferred from the existing partitions.
    interval: str | None = None
    # Rows older than the cutoff in the DEFAULT partition: "report" them, or "delete" them in batches.
    default_partition_rows: str = "report"


@dataclass(frozen=True)
class ExpiryRule:
    """S3 objects under ``prefix`` older than the retention are deleted."""

    id: str
    bucket: str
    prefix: str
    retention_days: int
    override_floor_days: int | None = None
    include_versions: bool = False
    max_objects: int = 100_000
    allow_whole_bucket: bool = False


@dataclass(frozen=True)
class ObjectArchiveRule:
    """S3 objects older than the retention are copied to a colder bucket, verified, then deleted."""

    id: str
    source_bucket: str
    source_prefix: str
    dest_bucket: str
    dest_prefix: str | None
    storage_class: str
    retention_days: int
    override_floor_days: int | None = None


@dataclass(frozen=True)
class BucketTiers:
    """Lifecycle rules (storage tiers) owned by us on one bucket."""

    id: str
    bucket: str
    rules: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class VacuumSettings:
    schemas: tuple[str, ...] = ("public",)
    tables: tuple[str, ...] = ()
    dead_tuple_threshold: int = 1_000
    scale_factor: float = 0.05


@dataclass(frozen=True)
class InventoryReport:
    """An S3 Inventory report (CSV) that describes ``bucket``: read instead of listing the bucket.

    S3 delivers it under ``manifest_prefix`` (``<destination prefix>/<bucket>/<configuration id>/``)
    in dated folders; the newest ``manifest.json`` there is read.
    """

    bucket: str
    manifest_bucket: str
    manifest_prefix: str


@dataclass(frozen=True)
class InventorySettings:
    """The daily inventory of every bucket the policy names (lifecycle_inventory DAG)."""

    prefix_depth: int = 1
    reports: tuple[InventoryReport, ...] = ()

    def report_for(self, bucket: str) -> InventoryReport | None:
        return next((r for r in self.reports if r.bucket == bucket), None)


@dataclass(frozen=True)
class DagSettings:
    """Run behaviour of one DAG: deadline, retries, Slack success summary."""

    deadline_minutes: int = 120
    retries: int = 3
    retry_delay_seconds: int = 300
    max_retry_delay_seconds: int = 3_600
    notify_success: bool = False
    retention_floor_days: int = 1


@dataclass(frozen=True)
class Policy:
    source: str
    postgres_conn_id: str
    aws_conn_id: str
    slack_conn_id: str
    dags: Mapping[str, DagSettings]
    expired_sessions: tuple[TableRule, ...]
    app_logs: tuple[TableRule, ...]
    soft_deleted: tuple[TableRule, ...]
    partitions: tuple[PartitionRule, ...]
    s3_expiry: tuple[ExpiryRule, ...]
    storage_tiers: tuple[BucketTiers, ...]
    object_archives: tuple[ObjectArchiveRule, ...]
    vacuum: VacuumSettings
    inventory: InventorySettings = InventorySettings()

    def buckets(self) -> tuple[str, ...]:
        """Every bucket a rule of the policy names, in the order they first appear."""
        names: list[str] = []
        rules: tuple[TableRule | PartitionRule, ...] = (
            *self.expired_sessions,
            *self.app_logs,
            *self.soft_deleted,
            *self.partitions,
        )
        names += [rule.archive.bucket for rule in rules if rule.archive is not None]
        names += [r.bucket for r in self.s3_expiry] + [t.bucket for t in self.storage_tiers]
        for a in self.object_archives:
            names += [a.source_bucket, a.dest_bucket]
        return tuple(dict.fromkeys(names))

    def dag(self, dag_id: str) -> DagSettings:
        return self.dags.get(dag_id, self.dags.get("default", DagSettings()))

    def retention_rules(self, dag_id: str) -> tuple[Any, ...]:
        """The rules whose ``retention_days`` a manual run of ``dag_id`` may override."""
        sections = {
            "cleanup_expired_sessions": self.expired_sessions,
            "archive_app_logs": self.app_logs,
            "purge_soft_deleted": self.soft_deleted,
            "cleanup_s3_objects": self.s3_expiry,
            "apply_storage_tiers": self.object_archives,
        }
        return tuple(sections.get(dag_id, ()))

    def tables_with_deletes(self) -> tuple[str, ...]:
        """Every table a delete DAG changes: the assets the vacuum DAG is scheduled on."""
        tables: list[str] = []
        for rule in (*self.expired_sessions, *self.app_logs, *self.soft_deleted):
            for name in (*(c.table for c in rule.children), rule.table):
                if name not in tables:
                    tables.append(name)
        return tuple(tables)


def _archive(raw: Any, where: str, source: str) -> ArchiveTarget | None:
    if raw is None:
        return None
    f = _Fields(raw, f"{where} archive", source)
    target = ArchiveTarget(
        bucket=f.bucket("bucket"),
        prefix=f.get("prefix", str, "").strip("/"),
        min_object_bytes=f.positive_int(
            "min_object_bytes", DEFAULT_MIN_OBJECT_BYTES, maximum=5 * 1024**4
        ),  # S3 objects are at most 5 TiB
    )
    f.done()
    return target


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _batch(raw: Any, where: str, source: str) -> BatchSettings:
    if raw is None:
        return BatchSettings()
    f = _Fields(raw, f"{where} batch", source)
    d = BatchSettings()
    settings = BatchSettings(
        target_seconds=float(f.positive_number("target_seconds", d.target_seconds, maximum=3_600)),
        min_size=f.positive_int("min_size", d.min_size, maximum=MAX_BATCH_ROWS),
        max_size=f.positive_int("max_size", d.max_size, maximum=MAX_BATCH_ROWS),
        sleep_seconds=float(f.number("sleep_seconds", d.sleep_seconds, maximum=60, open_min=False)),
        lock_timeout_ms=f.positive_int("lock_timeout_ms", d.lock_timeout_ms, maximum=MAX_MILLISECONDS),
        statement_timeout_ms=f.positive_int(
            "statement_timeout_ms", d.statement_timeout_ms, maximum=MAX_MILLISECONDS
        ),
        max_load_p99_factor=_optional_float(
            f.number("max_load_p99_factor", None, minimum=1.0, maximum=MAX_LOAD_FACTOR)
        ),
        max_replica_lag_seconds=_optional_float(
            f.positive_number("max_replica_lag_seconds", None, maximum=MAX_REPLICA_LAG_SECONDS)
        ),
    )
    if settings.min_size > settings.max_size:
        f.fail("min_size", f"({settings.min_size}) is larger than max_size ({settings.max_size})")
    f.done()
    return settings


def _timezone(f: _Fields, key: str) -> str | None:
    from zoneinfo import ZoneInfo

    zone = f.get(key, str, None)
    if zone is not None:
        try:
            ZoneInfo(zone)
        except (ValueError, OSError, KeyError):
            f.fail(key, f"must be an IANA time zone such as Europe/Berlin, got {zone!r}")
    return cast("str | None", zone)


def _rule_fields(raw: Any, section: str, index: int, source: str) -> _Fields:
    rule_id = raw.get("id") if isinstance(raw, Mapping) else None
    where = f"{section}[{index}]" + (f" (rule '{rule_id}')" if rule_id else "")
    f = _Fields(raw, where, source)
    rid = f.get("id", str)
    if not IDENTIFIER.match(rid):
        f.fail("id", f"must be letters, digits and underscores, got {rid!r}")
    return f


def _retention(f: _Fields, key: str, floor: int) -> int:
    days = f.days(key)
    if days < floor:
        f.fail(key, f"must be at least {floor} (the retention floor), got {days}")
    return int(days)


def _override_floor(f: _Fields, retention_days: int, floor: int) -> int:
    """The shortest retention a manual run may ask for: the rule's own, unless it declares less."""
    days = f.days("override_floor_days", retention_days)
    if days < floor:
        f.fail("override_floor_days", f"must be at least {floor} (the retention floor), got {days}")
    if days > retention_days:
        f.fail("override_floor_days", f"({days}) is above the rule's retention_days ({retention_days})")
    return int(days)


def _table_rules(raw: Any, section: str, source: str, floor: int) -> tuple[TableRule, ...]:
    rules = []
    for i, item in enumerate(_list(raw, section, source)):
        f = _rule_fields(item, section, i, source)
        children = []
        for j, child in enumerate(f.get("children", list, [])):
            cf = _Fields(child, f"{f.where} children[{j}]", source)
            children.append(ChildTable(table=cf.table("table"), column=cf.identifier("column")))
            cf.done()
        fraction = float(f.fraction("max_delete_fraction", 0.5))
        retention_days = _retention(f, "retention_days", floor)
        rules.append(
            TableRule(
                id=f.get("id", str),
                table=f.table("table"),
                timestamp_column=f.identifier("timestamp_column"),
                retention_days=retention_days,
                override_floor_days=_override_floor(f, retention_days, floor),
                children=tuple(children),
                archive=_archive(f.get("archive", dict, None), f.where, source),
                batch=_batch(f.get("batch", dict, None), f.where, source),
                max_runtime_minutes=f.positive_int("max_runtime_minutes", None, maximum=MAX_MINUTES),
                max_rows=f.positive_int("max_rows", None, maximum=MAX_COUNT),
                max_delete_fraction=fraction,
                allow_large_delete=f.get("allow_large_delete", bool, False),
                timezone=_timezone(f, "timezone"),
                naive_is_utc=f.get("naive_is_utc", bool, False),
            )
        )
        if rules[-1].timezone and rules[-1].naive_is_utc:
            f.fail("timezone", "give timezone or naive_is_utc, not both")
        f.done()
    return _unique(rules, section, source)


def _partition_rules(raw: Any, source: str) -> tuple[PartitionRule, ...]:
    rules = []
    for i, item in enumerate(_list(raw, "partitions", source)):
        f = _rule_fields(item, "partitions", i, source)
        rule = PartitionRule(
            id=f.get("id", str),
            table=f.table("table"),
            retention_months=f.positive_int("retention_months", maximum=MAX_MONTHS),
            premake_months=f.positive_int("premake_months", 3, maximum=120),
            mode=f.choice("mode", PARTITION_MODES, "drop"),
            archive_schema=f.identifier("archive_schema", "archive"),
            archive=_archive(f.get("archive", dict, None), f.where, source),
            interval=f.choice("interval", PARTITION_INTERVALS, None),
            default_partition_rows=f.choice("default_partition_rows", DEFAULT_PARTITION_ACTIONS, "report"),
        )
        if rule.mode == "s3" and rule.archive is None:
            f.fail("archive", "is required when mode is 's3'")
        f.done()
        rules.append(rule)
    return _unique(rules, "partitions", source)


def _expiry_rules(raw: Any, source: str, floor: int) -> tuple[ExpiryRule, ...]:
    rules = []
    for i, item in enumerate(_list(raw, "s3_expiry", source)):
        f = _rule_fields(item, "s3_expiry", i, source)
        retention_days = _retention(f, "retention_days", floor)
        rule = ExpiryRule(
            id=f.get("id", str),
            bucket=f.bucket("bucket"),
            prefix=f.get("prefix", str),
            retention_days=retention_days,
            override_floor_days=_override_floor(f, retention_days, floor),
            include_versions=f.get("include_versions", bool, False),
            max_objects=f.positive_int("max_objects", 100_000, maximum=MAX_COUNT),
            allow_whole_bucket=f.get("allow_whole_bucket", bool, False),
        )
        if not rule.prefix.strip("/") and not rule.allow_whole_bucket:
            f.fail("prefix", "is empty (the whole bucket); set allow_whole_bucket: true if you mean it")
        f.done()
        rules.append(rule)
    return _unique(rules, "s3_expiry", source)


def _tier_rules(raw: Any, source: str) -> tuple[BucketTiers, ...]:
    tiers = []
    for i, item in enumerate(_list(raw, "storage_tiers", source)):
        f = _rule_fields(item, "storage_tiers", i, source)
        rules = f.get("rules", list)
        for j, rule in enumerate(rules):
            if not isinstance(rule, Mapping) or not isinstance(rule.get("id"), str):
                f.fail(f"rules[{j}]", "each lifecycle rule must be a mapping with a string 'id'")
        try:
            validate_rules(rules)
        except LifecycleConfigError as exc:
            f.fail("rules", str(exc))
        tiers.append(BucketTiers(id=f.get("id", str), bucket=f.bucket("bucket"), rules=tuple(rules)))
        f.done()
    return _unique(tiers, "storage_tiers", source)


def _object_archive_rules(raw: Any, source: str, floor: int) -> tuple[ObjectArchiveRule, ...]:
    rules = []
    for i, item in enumerate(_list(raw, "object_archives", source)):
        f = _rule_fields(item, "object_archives", i, source)
        retention_days = _retention(f, "retention_days", floor)
        rules.append(
            ObjectArchiveRule(
                id=f.get("id", str),
                source_bucket=f.bucket("source_bucket"),
                source_prefix=f.get("source_prefix", str),
                dest_bucket=f.bucket("dest_bucket"),
                dest_prefix=f.get("dest_prefix", str, None),
                storage_class=f.choice("storage_class", ARCHIVE_STORAGE_CLASSES, "GLACIER"),
                retention_days=retention_days,
                override_floor_days=_override_floor(f, retention_days, floor),
            )
        )
        rule = rules[-1]
        if not rule.source_prefix.strip("/"):
            f.fail("source_prefix", "is empty (the whole bucket); archive a prefix")
        root = rule.source_prefix if rule.dest_prefix is None else rule.dest_prefix
        if rule.source_bucket == rule.dest_bucket and prefixes_overlap(rule.source_prefix, root):
            f.fail(
                "dest_prefix",
                f"{root!r} and source_prefix {rule.source_prefix!r} overlap in bucket {rule.dest_bucket!r}, "
                "so archive copies could overwrite sources; use another bucket or disjoint prefixes",
            )
        f.done()
    return _unique(rules, "object_archives", source)


def _vacuum(raw: Any, source: str) -> VacuumSettings:
    if raw is None:
        return VacuumSettings()
    f = _Fields(raw, "vacuum", source)
    schemas = f.get("schemas", list, ["public"])
    tables = f.get("tables", list, [])
    for s in schemas:
        if not isinstance(s, str) or not IDENTIFIER.match(s):
            f.fail("schemas", f"must list plain schema names, got {s!r}")
    for t in tables:
        if not isinstance(t, str) or not QUALIFIED_TABLE.match(t):
            f.fail("tables", f"must list plain 'schema.table' names, got {t!r}")
    settings = VacuumSettings(
        schemas=tuple(schemas),
        tables=tuple(tables),
        dead_tuple_threshold=f.positive_int("dead_tuple_threshold", 1_000, minimum=0, maximum=MAX_COUNT),
        scale_factor=float(f.fraction("scale_factor", 0.05)),
    )
    f.done()
    return settings


def _inventory(raw: Any, source: str) -> InventorySettings:
    if raw is None:
        return InventorySettings()
    f = _Fields(raw, "inventory", source)
    reports = []
    for i, item in enumerate(f.get("reports", list, [])):
        r = _Fields(item, f"inventory.reports[{i}]", source)
        reports.append(
            InventoryReport(
                bucket=r.bucket("bucket"),
                manifest_bucket=r.bucket("manifest_bucket"),
                manifest_prefix=r.get("manifest_prefix", str),
            )
        )
        r.done()
    settings = InventorySettings(
        prefix_depth=f.positive_int("prefix_depth", 1, maximum=32), reports=tuple(reports)
    )
    f.done()
    return settings


def _dag_settings(raw: Any, source: str) -> dict[str, DagSettings]:
    out: dict[str, DagSettings] = {}
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise LifecycleConfigError(f"Invalid policy {source}: dags: must be a mapping of dag_id to settings")
    base = DagSettings()
    if "default" in raw:
        base = _one_dag(raw["default"], "dags.default", source, base)
    out["default"] = base
    for dag_id, settings in raw.items():
        if dag_id != "default":
            out[dag_id] = _one_dag(settings, f"dags.{dag_id}", source, base)
    return out


def _one_dag(raw: Any, where: str, source: str, base: DagSettings) -> DagSettings:
    f = _Fields(raw or {}, where, source)
    settings = DagSettings(
        deadline_minutes=f.positive_int("deadline_minutes", base.deadline_minutes, maximum=MAX_MINUTES),
        retries=f.positive_int("retries", base.retries, minimum=2, maximum=20),
        retry_delay_seconds=f.positive_int(
            "retry_delay_seconds", base.retry_delay_seconds, maximum=MAX_SECONDS
        ),
        max_retry_delay_seconds=f.positive_int(
            "max_retry_delay_seconds", base.max_retry_delay_seconds, maximum=MAX_SECONDS
        ),
        notify_success=f.get("notify_success", bool, base.notify_success),
        retention_floor_days=f.days("retention_floor_days", base.retention_floor_days),
    )
    f.done()
    return settings


def _list(raw: Any, section: str, source: str) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise LifecycleConfigError(f"Invalid policy {source}: {section}: must be a list of rules")
    return raw


def _unique(rules: list[Any], section: str, source: str) -> tuple[Any, ...]:
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise LifecycleConfigError(f"Invalid policy {source}: {section}: duplicate rule id '{rule.id}'")
        seen.add(rule.id)
    return tuple(rules)


TOP_LEVEL_KEYS = (
    "version",
    "connections",
    "dags",
    "expired_sessions",
    "app_logs",
    "soft_deleted",
    "partitions",
    "s3_expiry",
    "storage_tiers",
    "object_archives",
    "vacuum",
    "inventory",
)


def parse_policy(doc: Any, source: str) -> Policy:
    """Build a validated ``Policy`` from a parsed YAML document."""
    top = _Fields(doc, "top level", source)
    version = top.get("version", int)
    if version != 1:
        top.fail("version", f"only version 1 is supported, got {version}")
    conns = _Fields(top.get("connections", dict, {}), "connections", source)
    dags = _dag_settings(top.get("dags", dict, {}), source)
    floor = dags["default"].retention_floor_days
    policy = Policy(
        source=source,
        postgres_conn_id=conns.get("postgres", str, "lifecycle_postgres"),
        aws_conn_id=conns.get("aws", str, "lifecycle_aws"),
        slack_conn_id=conns.get("slack", str, "slack_alerts"),
        dags=dags,
        expired_sessions=_table_rules(
            top.get("expired_sessions", list, []), "expired_sessions", source, floor
        ),
        app_logs=_table_rules(top.get("app_logs", list, []), "app_logs", source, floor),
        soft_deleted=_table_rules(top.get("soft_deleted", list, []), "soft_deleted", source, floor),
        partitions=_partition_rules(top.get("partitions", list, []), source),
        s3_expiry=_expiry_rules(top.get("s3_expiry", list, []), source, floor),
        storage_tiers=_tier_rules(top.get("storage_tiers", list, []), source),
        object_archives=_object_archive_rules(top.get("object_archives", list, []), source, floor),
        vacuum=_vacuum(top.get("vacuum", dict, None), source),
        inventory=_inventory(top.get("inventory", dict, None), source),
    )
    conns.done()
    top.done()
    for rule in policy.app_logs:
        if rule.archive is None:
            raise LifecycleConfigError(
                f"Invalid policy {source}: app_logs rule '{rule.id}', field 'archive': "
                "log rows are archived to S3 before they are deleted; declare the bucket"
            )
    check_s3_mechanisms(policy, source)
    return policy


def policy_path() -> Path:
    """``LIFECYCLE_POLICY_FILE``, else ``include/`` beside ``plugins/`` (Astronomer), else
    ``include/`` inside the DAGs folder (MWAA and Cloud Composer ship plugins separately)."""
    if os.environ.get(POLICY_FILE_ENV):
        return Path(os.environ[POLICY_FILE_ENV])
    if DEFAULT_POLICY_FILE.exists():
        return DEFAULT_POLICY_FILE
    from airflow.configuration import conf

    return Path(conf.get("core", "dags_folder")) / "include" / "policies" / DEFAULT_POLICY_FILE.name


def load_policy(path: Path | str | None = None) -> Policy:
    """Load and validate the policy file (cached per path and modification time)."""
    resolved = Path(path) if path is not None else policy_path()
    return cast(Policy, load_yaml_file(resolved, parse_policy, "policy"))
