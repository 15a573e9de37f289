"""Bad policies and parameters, end to end against real state: each is refused with an error naming
the problem, before any write, and the rows, partitions, objects and lifecycle configuration are
exactly as they were.

All cases share one estate (a database with DreamSeed rows and partitions, a bucket with objects
and a lifecycle configuration) whose run anchor makes everything in it due: an operator that got
past its checks would delete.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql

from data_lifecycle.exceptions import LifecycleConfigError
from data_lifecycle.operators.postgres import (
    PostgresBatchedDeleteOperator,
    PostgresPartitionPremakeOperator,
    PostgresPartitionRetentionOperator,
)
from data_lifecycle.operators.s3 import (
    S3ApplyLifecycleOperator,
    S3ExpireObjectsOperator,
    S3GlacierCopyThenDeleteOperator,
)
from data_lifecycle.policy import DEFAULT_POLICY_FILE, load_policy
from tests.conftest import admin_connect
from tests.reliability.data import load_monthly_progress, load_sessions
from tests.reliability.harness import postgres_conn_json, run_context, scratch_database

FOREIGN_RULE = {
    "ID": "security-team-rule",
    "Filter": {"Prefix": "audit/"},
    "Status": "Enabled",
    "Expiration": {"Days": 400},
}
TIERS = {
    "id": "logs-tiers",
    "prefix": "logs/",
    "transitions": [{"days": 30, "storage_class": "STANDARD_IA"}, {"days": 90, "storage_class": "GLACIER"}],
}


@dataclass
class Estate:
    dbname: str
    pg: psycopg.Connection[Any]
    s3: Any
    bucket: str
    archive: str
    policy_dir: Path
    anchor: datetime

    def context(self) -> dict[str, Any]:
        return run_context(self.anchor)

    def snapshot(self) -> dict[str, Any]:
        relations = self.pg.execute(
            "SELECT c.relname, c.relkind, c.relispartition FROM pg_class c"
            " WHERE c.relnamespace = 'app'::regnamespace AND c.relkind IN ('r', 'p') ORDER BY 1"
        ).fetchall()
        contents = {}
        for name, _, _ in relations:
            ident = sql.Identifier("app", name)
            contents[name] = self.pg.execute(
                sql.SQL(
                    "SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {} t"
                ).format(ident)
            ).fetchone()
        objects = {}
        for bucket in (self.bucket, self.archive):
            listing = self.s3.list_objects_v2(Bucket=bucket).get("Contents", [])
            objects[bucket] = sorted((o["Key"], o["Size"], o["ETag"]) for o in listing)
        rules = self.s3.get_bucket_lifecycle_configuration(Bucket=self.bucket)["Rules"]
        return {"relations": relations, "contents": contents, "objects": objects, "lifecycle": rules}

    def policy_file(
        self, mutate: Callable[[dict[str, Any]], Any] | None = None, text: str | None = None
    ) -> Path:
        """A copy of the shipped policy pointing at this estate, changed by ``mutate`` (or raw ``text``)."""
        doc = yaml.safe_load(DEFAULT_POLICY_FILE.read_text().replace("dreamseed-uploads", self.bucket))
        if mutate is not None:
            mutate(doc)
        path = self.policy_dir / f"lifecycle-{uuid.uuid4().hex[:8]}.yaml"
        path.write_text(text if text is not None else yaml.safe_dump(doc, sort_keys=False))
        return path


@pytest.fixture(scope="module")
def estate(local_stack: Any, s3_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Estate]:
    with (
        scratch_database("t_bad") as dbname,
        pytest.MonkeyPatch.context() as mp,
        admin_connect(dbname) as pg,
    ):
        mp.setenv("AIRFLOW_CONN_LIFECYCLE_POSTGRES", postgres_conn_json(dbname))
        anchor = datetime.now(UTC).replace(microsecond=0) + timedelta(days=400)
        load_sessions(pg, cutoff=anchor - timedelta(days=30), due=50, kept=10)
        load_monthly_progress(pg, first=anchor.year * 12 + anchor.month - 1 - 20, months=18, per_month=5)
        pg.execute(
            "CREATE TABLE app.scores_by_lesson (lesson_id int NOT NULL, score int) PARTITION BY RANGE (lesson_id)"
        )
        pg.execute(
            "CREATE TABLE app.scores_by_lesson_1 PARTITION OF app.scores_by_lesson FOR VALUES FROM (0) TO (100)"
        )
        pg.execute(
            "CREATE TABLE app.events_by_kind (kind text NOT NULL, at timestamptz) PARTITION BY LIST (kind)"
        )
        pg.execute(
            "CREATE TABLE app.events_by_kind_login PARTITION OF app.events_by_kind FOR VALUES IN ('login')"
        )
        pg.execute("INSERT INTO app.scores_by_lesson VALUES (1, 50)")
        pg.execute("INSERT INTO app.events_by_kind VALUES ('login', %s)", (anchor - timedelta(days=900),))
        bucket, archive = f"bad-src-{uuid.uuid4().hex[:8]}", f"bad-arch-{uuid.uuid4().hex[:8]}"
        for name in (bucket, archive):
            s3_client.create_bucket(Bucket=name)
        for key in ("logs/a.log", "logs/b.log", "tmp/c.tmp", "exports/d.csv", "audit/e.json"):
            s3_client.put_object(Bucket=bucket, Key=key, Body=key.encode())
        s3_client.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration={"Rules": [FOREIGN_RULE]}
        )
        yield Estate(dbname, pg, s3_client, bucket, archive, tmp_path_factory.mktemp("policies"), anchor)


# -- the cases ------------------------------------------------------------------------------------


def delete(**overrides: Any) -> Callable[[Estate], Any]:
    def run(e: Estate) -> Any:
        kwargs = {
            "task_id": "delete_sessions",
            "table": "app.sessions",
            "timestamp_column": "expires_at",
            "retention_days": 30,
            "max_delete_fraction": 1.0,
            **overrides,
        }
        return PostgresBatchedDeleteOperator(**kwargs).execute(e.context())

    return run


def partition_retention(**overrides: Any) -> Callable[[Estate], Any]:
    def run(e: Estate) -> Any:
        kwargs = {"task_id": "retention", "table": "app.student_progress", "retention_months": 3, **overrides}
        return PostgresPartitionRetentionOperator(**kwargs).execute(e.context())

    return run


def premake(**overrides: Any) -> Callable[[Estate], Any]:
    def run(e: Estate) -> Any:
        kwargs = {"task_id": "premake", "table": "app.student_progress", **overrides}
        return PostgresPartitionPremakeOperator(**kwargs).execute(e.context())

    return run


def expire(**overrides: Any) -> Callable[[Estate], Any]:
    def run(e: Estate) -> Any:
        kwargs = {
            "task_id": "expire",
            "bucket": e.bucket,
            "prefix": "tmp/",
            "retention_days": 30,
            **overrides,
        }
        return S3ExpireObjectsOperator(**kwargs).execute(e.context())

    return run


def copy_delete(**overrides: Any) -> Callable[[Estate], Any]:
    def run(e: Estate) -> Any:
        kwargs = {
            "task_id": "to_glacier",
            "source_bucket": e.bucket,
            "source_prefix": "logs/",
            "dest_bucket": e.archive,
            "retention_days": 30,
            **overrides,
        }
        return S3GlacierCopyThenDeleteOperator(**kwargs).execute(e.context())

    return run


def lifecycle(rules: list[dict[str, Any]], bucket: str | None = None) -> Callable[[Estate], Any]:
    def run(e: Estate) -> Any:
        return S3ApplyLifecycleOperator(task_id="tiers", bucket=bucket or e.bucket, rules=rules).execute(
            e.context()
        )

    return run


def policy(
    mutate: Callable[[dict[str, Any]], Any] | None = None, text: str | None = None
) -> Callable[[Estate], Any]:
    """Load a policy file and build every operator the DAG files build from it, then run the S3 ones."""
    from data_lifecycle.dag_common import expiry_kwargs, lifecycle_kwargs, object_archive_kwargs

    def run(e: Estate) -> Any:
        loaded = load_policy(e.policy_file(mutate, text))
        ops: list[Any] = [
            S3ApplyLifecycleOperator(**lifecycle_kwargs(loaded, t)) for t in loaded.storage_tiers
        ]
        ops += [S3ExpireObjectsOperator(**expiry_kwargs(loaded, r)) for r in loaded.s3_expiry]
        ops += [
            S3GlacierCopyThenDeleteOperator(**object_archive_kwargs(loaded, r))
            for r in loaded.object_archives
        ]
        return ops

    return run


def erasure_params(conf: dict[str, Any]) -> Callable[[Estate], Any]:
    """Validate a trigger's conf against the erase_user_data DAG's params (done when a run is created)."""

    def run(e: Estate) -> Any:
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(
            dag_folder=str(DEFAULT_POLICY_FILE.parents[2] / "dags" / "erase_user_data.py"), safe_mode=False
        )
        assert not bag.import_errors, bag.import_errors
        params = copy.deepcopy(bag.dags["erase_user_data"].params)
        params.update(conf)
        return params.validate()

    return run


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        node: Any = doc
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        last: Any = int(parts[-1]) if isinstance(node, list) else parts[-1]
        node[last] = value

    return mutate


def _rename(path: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        section, index, key = path.split(".")
        rule = doc[section][int(index)]
        rule[new] = rule.pop(key)

    return mutate


def _duplicate_expiry_id(doc: dict[str, Any]) -> None:
    doc["s3_expiry"][1]["id"] = doc["s3_expiry"][0]["id"]


def _ia_after_10_days(doc: dict[str, Any]) -> None:
    doc["storage_tiers"][1]["rules"][0]["transitions"][0]["days"] = 10


GOOD_ERASURE = {"request_id": "DSR-2027-0001", "dry_run": True}

CASES = [
    # retention
    pytest.param(delete(retention_days=0), "retention_days=0 is below the floor", id="retention-zero"),
    pytest.param(delete(retention_days=-5), "retention_days=-5 is below the floor", id="retention-negative"),
    pytest.param(delete(retention_days="thirty"), "whole number of days, got 'thirty'", id="retention-word"),
    pytest.param(
        delete(retention_days="7.5"), "whole number of days, got '7.5'", id="retention-decimal-string"
    ),
    pytest.param(delete(retention_days=True), "whole number of days, got True", id="retention-bool"),
    pytest.param(expire(retention_days=0), "below the floor", id="s3-retention-zero"),
    pytest.param(partition_retention(retention_months=0), "at least 1 month", id="partition-retention-zero"),
    pytest.param(
        policy(_set("dags.default.retention_floor_days", 7)),
        "retention_days.*at least 7 \\(the retention floor\\), got 1",
        id="policy-below-floor",
    ),
    pytest.param(
        policy(_set("expired_sessions.0.retention_days", "30")),
        "must be a whole number",
        id="policy-retention-string",
    ),
    # names
    pytest.param(delete(table="nope.sessions"), "no table nope.sessions", id="unknown-schema"),
    pytest.param(delete(table="app.sessionz"), "no table app.sessionz", id="unknown-table"),
    pytest.param(
        delete(timestamp_column="expired"), "'expired': app.sessions has no such column", id="unknown-column"
    ),
    pytest.param(delete(timestamp_column="token"), "app.sessions.token is text", id="column-not-a-timestamp"),
    pytest.param(
        delete(table="app.sessions; DROP TABLE app.users"), "not a plain 'schema.table'", id="sql-in-table"
    ),
    pytest.param(delete(table='app."sessions"'), "not a plain 'schema.table'", id="quoted-table"),
    pytest.param(delete(table="app.s\u0435ssions"), "not a plain 'schema.table'", id="lookalike-table"),
    pytest.param(
        delete(timestamp_column="expires_at; DROP TABLE x"), "not a plain identifier", id="sql-in-column"
    ),
    pytest.param(delete(timestamp_column="expires_at'--"), "not a plain identifier", id="quote-in-column"),
    pytest.param(delete(timestamp_column="exp\u0456res_at"), "not a plain identifier", id="lookalike-column"),
    pytest.param(
        delete(extra_predicate="true; DROP TABLE app.users"), "one boolean expression", id="sql-in-predicate"
    ),
    pytest.param(
        policy(_set("expired_sessions.0.table", "app.sessions; DROP TABLE x")),
        "plain 'schema.table'",
        id="policy-sql-in-table",
    ),
    # partitions
    pytest.param(partition_retention(table="app.sessions"), "not a partitioned table", id="not-partitioned"),
    pytest.param(
        partition_retention(table="app.scores_by_lesson"),
        "partitioned on lesson_id \\(integer\\), not on a timestamp",
        id="integer-range-partitions",
    ),
    pytest.param(
        partition_retention(table="app.events_by_kind"), "not range-partitioned", id="list-partitions"
    ),
    pytest.param(premake(table="app.events_by_kind"), "not range-partitioned", id="premake-list-partitions"),
    # S3
    pytest.param(expire(prefix=""), "empty prefix expires the whole bucket", id="empty-prefix"),
    pytest.param(copy_delete(source_prefix=""), "archives the whole bucket", id="empty-archive-prefix"),
    pytest.param(policy(_set("s3_expiry.0.prefix", "")), "allow_whole_bucket", id="policy-empty-prefix"),
    pytest.param(
        expire(bucket="no-such-bucket-rel"), "'no-such-bucket-rel' does not exist", id="missing-bucket"
    ),
    pytest.param(
        copy_delete(dest_bucket="no-such-archive-rel"),
        "'no-such-archive-rel' does not exist",
        id="missing-dest-bucket",
    ),
    pytest.param(
        lifecycle([TIERS], bucket="no-such-tiers-rel"), "does not exist", id="missing-lifecycle-bucket"
    ),
    pytest.param(copy_delete(storage_class="STANDARD"), "not an archive class", id="invalid-archive-class"),
    pytest.param(
        lifecycle([{**TIERS, "transitions": [{"days": 30, "storage_class": "REDUCED_REDUNDANCY"}]}]),
        "unknown storage class",
        id="invalid-transition-class",
    ),
    pytest.param(
        lifecycle([{**TIERS, "transitions": [{"days": 10, "storage_class": "STANDARD_IA"}]}]),
        "STANDARD_IA after 10 days",
        id="ia-under-30-days",
    ),
    pytest.param(policy(_ia_after_10_days), "STANDARD_IA after 10 days", id="policy-ia-under-30-days"),
    pytest.param(
        lifecycle([TIERS, TIERS]), "'logs-tiers' is defined more than once", id="duplicate-lifecycle-ids"
    ),
    pytest.param(policy(_duplicate_expiry_id), "duplicate rule id 'upload_tmp'", id="policy-duplicate-ids"),
    pytest.param(
        delete(archive={"bucket": "Not_A_Bucket", "prefix": "x"}),
        "not a valid S3 bucket name",
        id="bad-archive-bucket",
    ),
    pytest.param(expire(dry_run="maybe"), "dry_run must be true or false", id="dry-run-not-a-bool"),
    # policy files
    pytest.param(
        policy(text="version: 1\nexpired_sessions: [\n"), "not valid YAML", id="policy-malformed-yaml"
    ),
    pytest.param(
        policy(_rename("expired_sessions.0.max_runtime_minutes", "max_runtime_minuts")),
        "field 'max_runtime_minuts': is not a known field",
        id="policy-unknown-key",
    ),
    pytest.param(
        policy(_set("object_archives.0.storage_class", "GLACIER_DEEP")),
        "storage_class",
        id="policy-bad-storage-class",
    ),
]

ERASURE_CASES = [
    pytest.param({**GOOD_ERASURE, "dry_run": "no"}, "dry_run", id="erasure-dry-run-word"),
    pytest.param(
        {k: v for k, v in GOOD_ERASURE.items() if k != "request_id"},
        "request_id",
        id="erasure-request-id-missing",
    ),
    pytest.param(
        {**GOOD_ERASURE, "request_id": "x; DROP TABLE app.users"}, "request_id", id="erasure-bad-request-id"
    ),
]


@pytest.mark.parametrize(("action", "message"), CASES)
def test_bad_input_is_refused_before_any_write(
    action: Callable[[Estate], Any], message: str, estate: Estate
) -> None:
    before = estate.snapshot()

    with pytest.raises(LifecycleConfigError, match=message):
        action(estate)

    assert estate.snapshot() == before


@pytest.mark.parametrize(("conf", "param"), ERASURE_CASES)
def test_bad_erasure_params_are_refused_before_any_write(
    conf: dict[str, Any], param: str, estate: Estate
) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    before = estate.snapshot()
    ledger = estate.pg.execute("SELECT count(*) FROM app.erasure_ledger").fetchone()

    with pytest.raises(ParamValidationError, match=param):
        erasure_params(conf)(estate)

    assert estate.snapshot() == before
    assert estate.pg.execute("SELECT count(*) FROM app.erasure_ledger").fetchone() == ledger


def test_good_erasure_params_pass_the_same_check(estate: Estate) -> None:
    """The check above refuses bad values, not everything."""
    validated = erasure_params(GOOD_ERASURE)(estate)
    assert validated["request_id"] == "DSR-2027-0001"
