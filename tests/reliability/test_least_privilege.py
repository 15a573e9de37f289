"""The cleanup role of include/sql/cleanup_role.sql: the operators work with it, and it can do nothing
else (no DROP or DELETE on tables it does not clean, no change to audit or ledger rows).

Also checks include/iam/lifecycle_s3_policy.json against the S3 calls the code makes.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from data_lifecycle.erasure.ledger import Status
from data_lifecycle.exceptions import LifecycleConfigError
from data_lifecycle.operators.postgres import (
    PostgresBatchedDeleteOperator,
    PostgresPartitionPremakeOperator,
    PostgresPartitionRetentionOperator,
    PostgresVacuumAnalyzeOperator,
)
from tests.conftest import admin_connect
from tests.erasure.conftest import SUBJECT_ID, world  # noqa: F401 - the erasure fixture
from tests.reliability.data import ANCHOR, load_monthly_progress, load_sessions, month
from tests.reliability.harness import connect, postgres_conn_json, run_context, scratch_database
from tests.reliability.invariants import assert_deleted_rows_archived, table_rows, verified_archive

ROOT = Path(__file__).resolve().parents[2]
ROLE_SQL = ROOT / "include" / "sql" / "cleanup_role.sql"
IAM_POLICY = ROOT / "include" / "iam" / "lifecycle_s3_policy.json"
LOGIN = "lifecycle_cleanup_login"
CUTOFF = ANCHOR - timedelta(days=30)


def _prepare(pg: psycopg.Connection[Any]) -> None:
    """Data loaded by the owner, then the role script applied (twice: it is idempotent)."""
    load_sessions(pg, cutoff=CUTOFF, due=120, kept=30)
    load_monthly_progress(pg, first=2026 * 12 + 6, months=9, per_month=10)
    pg.execute(
        "INSERT INTO app.app_logs (created_at, level, logger, message, context)"
        " SELECT %s - g * interval '1 hour', 'INFO', 'app', 'm ' || g, jsonb_build_object('g', g)"
        " FROM generate_series(1, 60) g",
        (ANCHOR - timedelta(days=7),),
    )
    pg.execute("CREATE TABLE app.payments (id bigint PRIMARY KEY, amount numeric, paid_at timestamptz)")
    pg.execute(
        "INSERT INTO app.payments SELECT g, g * 10, %s FROM generate_series(1, 5) g",
        (CUTOFF - timedelta(days=99),),
    )
    pg.execute(
        "INSERT INTO app.cleanup_audit (dag_id, run_id, task_id, target, action)"
        " VALUES ('d', 'r', 't', 'x', 'delete')"
    )
    pg.execute(
        "INSERT INTO app.erasure_ledger (request_id, subject_hash, status, dry_run, dag_id, run_id)"
        " VALUES ('REQ-1', repeat('a', 64), 'completed', false, 'erase_user_data', 'r')"
    )
    pg.execute(ROLE_SQL.read_text())  # type: ignore[arg-type]
    pg.execute(ROLE_SQL.read_text())  # type: ignore[arg-type]


@pytest.fixture
def as_cleanup_role(pg: psycopg.Connection[Any], pg_database: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database prepared as above; ``lifecycle_postgres`` logs in as the cleanup role."""
    _prepare(pg)
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_POSTGRES", postgres_conn_json(pg_database, LOGIN))
    return pg_database


@pytest.fixture(scope="module")
def role_db(local_stack: Any) -> Iterator[tuple[str, psycopg.Connection[Any]]]:
    """One prepared database shared by the refusal table (refused statements change nothing)."""
    with scratch_database("t_role") as dbname, admin_connect(dbname) as pg:
        _prepare(pg)
        yield dbname, pg


def _as_role(dbname: str) -> psycopg.Connection[Any]:
    return connect(dbname, user=LOGIN)


class TestOperatorsRunAsTheCleanupRole:
    def test_batched_delete_with_audit(self, as_cleanup_role: str, pg: psycopg.Connection[Any]) -> None:
        summary = PostgresBatchedDeleteOperator(
            task_id="delete_sessions",
            table="app.sessions",
            timestamp_column="expires_at",
            retention_days=30,
            audit_table="app.cleanup_audit",
            max_delete_fraction=1.0,
            batch_size=50,
        ).execute(run_context(ANCHOR))
        assert (summary["deleted"], summary["remaining"]) == (120, 0)
        assert pg.execute("SELECT count(*) FROM app.sessions").fetchone() == (30,)
        assert pg.execute(
            "SELECT count(*) FROM app.cleanup_audit WHERE target = 'app.sessions'"
        ).fetchone() == (1,)

    def test_purge_with_children_and_archive_mode(
        self, as_cleanup_role: str, pg: psycopg.Connection[Any], s3_client: Any, make_bucket: Any
    ) -> None:
        pg.execute("UPDATE app.users SET deleted_at = %s", (CUTOFF - timedelta(days=1),))
        purge = PostgresBatchedDeleteOperator(
            task_id="purge_users",
            table="app.users",
            timestamp_column="deleted_at",
            retention_days=30,
            children=[
                {"table": "app.sessions", "column": "user_id"},
                {"table": "app.user_uploads", "column": "user_id"},
                {"table": "app.student_progress", "column": "user_id"},
            ],
            max_delete_fraction=1.0,
        ).execute(run_context(ANCHOR))
        assert purge["deleted"] == 2 and purge["children"]["app.sessions"] == 150
        assert pg.execute("SELECT count(*) FROM app.student_progress").fetchone() == (0,)

        bucket = make_bucket("role-archive")
        before = table_rows(pg, "app.app_logs")
        PostgresBatchedDeleteOperator(
            task_id="archive_logs",
            table="app.app_logs",
            timestamp_column="created_at",
            retention_days=7,
            archive={"bucket": bucket, "prefix": "db-archive"},
            max_delete_fraction=1.0,
        ).execute(run_context(ANCHOR))
        after = table_rows(pg, "app.app_logs")
        deleted = assert_deleted_rows_archived(
            before, after, verified_archive(s3_client, bucket, ""), due=set(before)
        )
        assert len(deleted) == 60

    def test_partition_premake_retention_and_vacuum(
        self, as_cleanup_role: str, pg: psycopg.Connection[Any]
    ) -> None:
        made = PostgresPartitionPremakeOperator(
            task_id="premake", table="app.student_progress", months_ahead=2
        ).execute(run_context(ANCHOR))
        assert made["created"] == [
            f"app.student_progress_{month(ANCHOR.year * 12 + ANCHOR.month - 1 + 1):%Y_%m}",
            f"app.student_progress_{month(ANCHOR.year * 12 + ANCHOR.month - 1 + 2):%Y_%m}",
        ]
        dropped = PostgresPartitionRetentionOperator(
            task_id="retention", table="app.student_progress", retention_months=3
        ).execute(run_context(ANCHOR))
        assert len(dropped["dropped"]) == 5
        vacuumed = PostgresVacuumAnalyzeOperator(task_id="vacuum", tables=["app.student_progress"]).execute(
            run_context(ANCHOR)
        )
        assert vacuumed["tables"][0]["table"] == "app.student_progress"
        assert not vacuumed["tables"][0]["skipped_locked"]


DENIED = [
    pytest.param("DROP TABLE app.payments", id="drop-undeclared-table"),
    pytest.param("DROP TABLE app.sessions", id="drop-cleaned-table"),
    pytest.param("TRUNCATE app.sessions", id="truncate-cleaned-table"),
    pytest.param("DELETE FROM app.payments", id="delete-undeclared-table"),
    pytest.param("SELECT * FROM app.payments", id="read-undeclared-table"),
    pytest.param(
        "INSERT INTO app.sessions (user_id, token, created_at, expires_at) VALUES (1, 'x', now(), now())",
        id="insert-cleaned-table",
    ),
    pytest.param("UPDATE app.sessions SET expires_at = now() - interval '1 year'", id="backdate-rows"),
    pytest.param("UPDATE app.cleanup_audit SET rows_affected = 0", id="update-audit"),
    pytest.param("DELETE FROM app.cleanup_audit", id="delete-audit"),
    pytest.param("SELECT * FROM app.cleanup_audit", id="read-audit"),
    pytest.param("UPDATE app.erasure_ledger SET status = 'failed'", id="update-ledger"),
    pytest.param("DELETE FROM app.erasure_ledger", id="delete-ledger"),
    pytest.param("TRUNCATE app.erasure_ledger", id="truncate-ledger"),
    pytest.param("ALTER TABLE app.users ADD COLUMN x int", id="alter-cleaned-table"),
    pytest.param("CREATE ROLE sneaky", id="create-role"),
]


@pytest.mark.parametrize("statement", DENIED)
def test_the_cleanup_role_is_refused(statement: str, role_db: tuple[str, psycopg.Connection[Any]]) -> None:
    dbname, pg = role_db
    counts = {
        t: pg.execute(f"SELECT count(*) FROM app.{t}").fetchone()
        for t in ("payments", "sessions", "cleanup_audit", "erasure_ledger")
    }
    with _as_role(dbname) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute(statement)
    assert counts == {t: pg.execute(f"SELECT count(*) FROM app.{t}").fetchone() for t in counts}
    assert pg.execute("SELECT to_regclass('app.payments') IS NOT NULL").fetchone() == (True,)


def test_the_cleanup_role_may_append_to_audit_and_ledger(
    as_cleanup_role: str, pg: psycopg.Connection[Any]
) -> None:
    with _as_role(as_cleanup_role) as conn:
        conn.execute(
            "INSERT INTO app.cleanup_audit (dag_id, run_id, task_id, target, action) VALUES ('d', 'r2', 't', 'x', 'delete')"
        )
        conn.execute(
            "INSERT INTO app.erasure_ledger (request_id, subject_hash, status, dry_run, dag_id, run_id)"
            " VALUES ('REQ-2', repeat('b', 64), 'started', false, 'erase_user_data', 'r2')"
        )
        assert conn.execute("SELECT count(*) FROM app.erasure_ledger").fetchone() == (2,)
    assert pg.execute("SELECT count(*) FROM app.cleanup_audit").fetchone() == (2,)


def test_the_cleanup_role_records_sizes_and_replaces_a_days_inventory(
    as_cleanup_role: str, pg: psycopg.Connection[Any]
) -> None:
    from datetime import date

    from data_lifecycle.facts import write_run_facts
    from data_lifecycle.inventory import write_snapshot

    rows = [{"prefix": "app/", "storage_class": "STANDARD", "objects": 2, "bytes": 10, "age_histogram": {}}]
    with _as_role(as_cleanup_role) as conn:
        write_run_facts(
            conn,
            dag_id="d",
            run_id="r",
            before={"t": {"app.sessions": 123, "app.student_progress": 456}},
            s3={"t": [("b", "p/", "removed", "STANDARD", None, 5)]},
        )
        for _ in range(2):
            write_snapshot(conn, day=date(2026, 1, 2), bucket="b", source="listing", rows=rows)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("DELETE FROM app.cleanup_table_sizes")
    assert pg.execute("SELECT count(*) FROM app.cleanup_table_sizes").fetchone() == (2,)
    assert pg.execute("SELECT count(*), sum(bytes) FROM app.s3_inventory").fetchone() == (1, 10)


REPORT_LOGIN = "lifecycle_report_login"


@pytest.fixture(scope="module")
def report_login(role_db: tuple[str, psycopg.Connection[Any]]) -> str:
    dbname, pg = role_db
    pg.execute(
        f"DO $$ BEGIN CREATE ROLE {REPORT_LOGIN} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END; $$"
    )
    pg.execute(f"GRANT lifecycle_report TO {REPORT_LOGIN}")
    return dbname


def test_the_report_role_reads_what_the_page_shows(report_login: str) -> None:
    from data_lifecycle.ui import queries

    now = ANCHOR
    with connect(report_login, user=REPORT_LOGIN) as conn:
        assert queries.targets(conn)[0]["dag_id"] == "d"
        queries.removals_per_day(conn, now)
        queries.postgres_bytes(conn)
        queries.s3_bytes(conn, now)
        erasure = queries.erasure_requests(conn, "app.erasure_ledger", 30, now)
    assert erasure["open"] == 0  # REQ-1 is completed


@pytest.mark.parametrize(
    "statement",
    [
        pytest.param("SELECT subject_hash FROM app.erasure_ledger", id="subject-hash"),
        pytest.param("SELECT subject_token FROM app.erasure_ledger", id="subject-token"),
        pytest.param("SELECT * FROM app.sessions", id="estate-table"),
        pytest.param(
            "INSERT INTO app.s3_inventory VALUES (now(), 'b', '', 'X', 1, 1, '{}', 'listing')", id="write"
        ),
        pytest.param("DELETE FROM app.cleanup_audit", id="delete-audit"),
    ],
)
def test_the_report_role_is_refused(statement: str, report_login: str) -> None:
    with connect(report_login, user=REPORT_LOGIN) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute(statement)


# -- the IAM policy -------------------------------------------------------------------------------

S3_CODE = [
    *sorted((ROOT / "plugins" / "data_lifecycle" / "operators" / "s3").glob("*.py")),
    ROOT / "plugins" / "data_lifecycle" / "archive.py",
    ROOT / "plugins" / "data_lifecycle" / "inventory.py",
    *sorted((ROOT / "plugins" / "data_lifecycle" / "erasure").glob("*.py")),
]
# The IAM actions each S3 client call needs (Amazon S3 "Actions, resources and condition keys").
ACTIONS_OF_CALL = {
    "head_bucket": {"s3:ListBucket"},
    "get_bucket_versioning": {"s3:GetBucketVersioning"},
    "list_objects_v2": {"s3:ListBucket"},
    "list_object_versions": {"s3:ListBucketVersions"},
    "head_object": {"s3:GetObject", "s3:GetObjectVersion"},
    "get_object": {"s3:GetObject", "s3:GetObjectVersion"},
    "put_object": {"s3:PutObject"},
    "copy_object": {"s3:GetObject", "s3:GetObjectVersion", "s3:PutObject"},
    # The managed multipart copy: CreateMultipartUpload, UploadPartCopy, Complete/AbortMultipartUpload.
    "copy": {"s3:GetObject", "s3:GetObjectVersion", "s3:PutObject", "s3:AbortMultipartUpload"},
    "delete_objects": {"s3:DeleteObject", "s3:DeleteObjectVersion"},
    "restore_object": {"s3:RestoreObject"},
    "get_bucket_lifecycle_configuration": {"s3:GetLifecycleConfiguration"},
    "put_bucket_lifecycle_configuration": {"s3:PutLifecycleConfiguration"},
    "delete_bucket_lifecycle": {"s3:PutLifecycleConfiguration"},
    "get_object_legal_hold": {"s3:GetObjectLegalHold"},
    "get_object_lock_configuration": {"s3:GetBucketObjectLockConfiguration"},
}
# HEAD shows Object Lock retention only with this permission; the erasure checks it before deleting.
EXTRA_ACTIONS = {"s3:GetObjectRetention"}


def _s3_calls() -> set[str]:
    import boto3
    from botocore import xform_name

    model = boto3.client("s3", region_name="us-east-1").meta.service_model
    operations = {xform_name(op) for op in model.operation_names}
    calls: set[str] = set()
    for path in S3_CODE:
        text = path.read_text()
        calls |= {m for m in re.findall(r"\.([a-z_0-9]+)\(", text) if m in operations}
        calls |= set(re.findall(r"get_paginator\(\"([a-z_0-9]+)\"\)", text))
        if re.search(r"client\.copy\(\s*copy_source", text):
            calls.add("copy")
    return calls


def test_iam_policy_grants_exactly_the_actions_the_code_uses() -> None:
    policy = json.loads(IAM_POLICY.read_text())
    assert policy["Version"] == "2012-10-17"
    granted: set[str] = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow" and statement.get("Sid")
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = (
            statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        )
        assert all("*" not in a for a in actions), f"wildcard action in {statement['Sid']}"
        assert all(r.startswith("arn:aws:s3:::dreamseed-") for r in resources), (
            f"broad resource in {statement['Sid']}"
        )
        granted |= set(actions)
    calls = _s3_calls()
    unknown = calls - set(ACTIONS_OF_CALL)
    assert not unknown, f"S3 calls with no known IAM action (add them here and to the policy): {unknown}"
    needed = set().union(*(ACTIONS_OF_CALL[c] for c in calls)) | EXTRA_ACTIONS
    assert needed - granted == set(), "actions the code needs but the policy lacks"
    assert granted - needed == set(), "actions the policy grants but the code never uses"


# -- the erasure role -----------------------------------------------------------------------------

ERASURE_ROLE_SQL = ROOT / "include" / "sql" / "erasure_role.sql"
ERASURE_LOGIN = "lifecycle_erasure_login"


@pytest.fixture
def as_erasure_role(
    world: Any,  # noqa: F811 - the fixture imported above
    pg_database: str,
    ledger_database: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    """The erasure world, with both erasure connections logging in as the erasure role."""
    world.pg.execute(ERASURE_ROLE_SQL.read_text())
    world.pg.execute(ERASURE_ROLE_SQL.read_text())  # idempotent
    monkeypatch.setenv("AIRFLOW_CONN_ERASURE_POSTGRES", postgres_conn_json(pg_database, ERASURE_LOGIN))
    monkeypatch.setenv("AIRFLOW_CONN_ERASURE_LEDGER", postgres_conn_json(ledger_database, ERASURE_LOGIN))
    return world


def _erase_dag_run(conf: dict[str, Any]) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    from devstack.dag_runner import test_run as run_fresh

    dag = DagBag(dag_folder=str(ROOT / "dags" / "erase_user_data.py"), safe_mode=False).dags[
        "erase_user_data"
    ]
    return run_fresh(dag, logical_date=None, conf=conf)


class TestErasureRunsAsTheErasureRole:
    def test_the_whole_erasure_dag_succeeds_under_the_role(self, as_erasure_role: Any) -> None:
        erasure = as_erasure_role
        before = erasure.snapshot()
        dr = _erase_dag_run(erasure_conf(erasure))
        assert str(dr.state) == "success", {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
        after = erasure.snapshot()
        for table in ("app.sessions", "app.user_uploads", "app.student_progress", "app.users"):
            assert before[f"{table}:{SUBJECT_ID}"] > 0 and after[f"{table}:{SUBJECT_ID}"] == 0
        assert after[f"app.app_logs:{SUBJECT_ID}"] == 0
        assert [e["status"] for e in erasure.ledger()] == ["started", "completed"]

    def test_a_missing_grant_fails_the_plan_before_anything_is_erased(self, as_erasure_role: Any) -> None:
        erasure = as_erasure_role
        erasure.pg.execute("REVOKE UPDATE (context) ON app.app_logs FROM lifecycle_erasure")
        before = erasure.snapshot()
        dr = _erase_dag_run(erasure_conf(erasure))
        assert str(dr.state) == "failed"
        assert erasure.snapshot() == before
        ledger = erasure.ledger()
        assert [e["status"] for e in ledger] == ["failed"]
        assert "UPDATE (context) on app.app_logs" in ledger[0]["reason"]

    def test_the_cleanup_role_alone_cannot_start_an_erasure(
        self, as_erasure_role: Any, pg_database: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        erasure = as_erasure_role
        erasure.pg.execute(ROLE_SQL.read_text())
        monkeypatch.setenv("AIRFLOW_CONN_ERASURE_POSTGRES", postgres_conn_json(pg_database, LOGIN))
        before = erasure.snapshot()
        run = erasure.run("DSR-ROLE-3")
        run.conns = dataclasses.replace(run.conns, postgres="erasure_postgres")
        with pytest.raises(LifecycleConfigError, match=r"lacks .*UPDATE \(user_id\) on app.app_logs"):
            run.erase_tables()
        assert erasure.snapshot() == before

    @pytest.mark.parametrize(
        "statement",
        [
            pytest.param(
                "INSERT INTO app.users (email, display_name, created_at) VALUES ('x', 'x', now())",
                id="insert",
            ),
            pytest.param("UPDATE app.app_logs SET message = 'x'", id="update-unmasked-column"),
            pytest.param("UPDATE app.users SET email = 'x'", id="update-deleted-table"),
            pytest.param("TRUNCATE app.sessions", id="truncate"),
            pytest.param("DELETE FROM app.cleanup_audit", id="delete-audit"),
            pytest.param("DROP TABLE app.sessions", id="drop"),
        ],
    )
    def test_the_erasure_role_is_refused(
        self, statement: str, as_erasure_role: Any, pg_database: str
    ) -> None:
        with connect(pg_database, user=ERASURE_LOGIN) as conn, pytest.raises(errors.InsufficientPrivilege):
            conn.execute(statement)

    def test_the_ledger_is_append_only_for_the_role(self, as_erasure_role: Any, ledger_database: str) -> None:
        as_erasure_role.run("DSR-ROLE-4").record(Status.STARTED)
        with connect(ledger_database, user=ERASURE_LOGIN) as conn:
            for statement in ("UPDATE app.erasure_ledger SET reason = 'x'", "DELETE FROM app.erasure_ledger"):
                with pytest.raises(errors.InsufficientPrivilege):
                    conn.execute(statement)


def erasure_conf(erasure: Any) -> dict[str, Any]:
    """The trigger conf of a real erasure of the test subject: a registered request id only."""
    return {"request_id": erasure.register(), "dry_run": False}


def test_the_report_role_reads_request_ids_in_the_ledger_database(
    ledger_pg: psycopg.Connection[Any], ledger_database: str
) -> None:
    from data_lifecycle.ui import queries

    ledger_pg.execute(
        f"DO $$ BEGIN CREATE ROLE {REPORT_LOGIN} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END; $$"
    )
    ledger_pg.execute(f"GRANT lifecycle_report TO {REPORT_LOGIN}")
    ledger_pg.execute(
        "INSERT INTO app.erasure_requests (request_id, subject_hash, subject_token, requested_at)"
        " VALUES ('REQ-9', repeat('f', 64), 'sealed', %s)",
        (ANCHOR,),
    )
    with connect(ledger_database, user=REPORT_LOGIN) as conn:
        out = queries.erasure_requests(conn, "app.erasure_ledger", 30, ANCHOR)
        assert [(r["request_id"], r["last_status"]) for r in out["requests"]] == [("REQ-9", "registered")]
        for column in ("subject_hash", "subject_token"):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(f"SELECT {column} FROM app.erasure_requests")
