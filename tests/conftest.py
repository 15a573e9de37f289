"""Shared fixtures: the real local stack (PostgreSQL, moto S3 server, Slack sink) and per-test state.

Each test that touches PostgreSQL gets a database of its own, created from a template with the
DreamSeed schema, so tests never see each other's rows (and can run while a demo is loaded).
Each S3 test gets buckets with unique names. The environment that points Airflow at the stack is
set before anything imports Airflow.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.settings import (
    HOST,
    POSTGRES_PORT,
    POSTGRES_USER,
    S3_PORT,
    StackPaths,
    stack_environment,
)

PATHS = StackPaths()
os.environ.update(stack_environment(PATHS))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from devstack import __main__ as devstack  # noqa: E402

TEMPLATE_DB = "dreamseed_test_template"
SCHEMA_SQL = PATHS.root / "include" / "sql" / "dreamseed_schema.sql"
LEDGER_SQL = PATHS.root / "include" / "sql" / "erasure_ledger.sql"
# Serialises template creation between concurrent pytest processes.
TEMPLATE_LOCK_KEY = 7_346_001


def admin_connect(dbname: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(host=HOST, port=POSTGRES_PORT, user=POSTGRES_USER, dbname=dbname, autocommit=True)


@pytest.fixture(scope="session", autouse=True)
def local_stack() -> Iterator[StackPaths]:
    """Start whatever part of the stack is not running; stop only that at the end."""
    started = devstack.up(PATHS)
    yield PATHS
    _close_airflow_sessions()
    devstack.down(PATHS, only=started)


def _close_airflow_sessions() -> None:
    """Close Airflow's pooled metadata connections before the server stops.

    Otherwise Airflow's ``atexit`` handler finds them cut by the shutdown and prints an
    ``AdminShutdown`` traceback after the test summary.
    """
    import sys

    settings = sys.modules.get("airflow.settings")
    if settings is not None:
        try:
            settings.dispose_orm()
        except Exception as exc:  # a pooled connection a restart test already cut: nothing to close
            print(f"closing Airflow's metadata connections: {exc.__class__.__name__}")


def ensure_template(name: str, digest: str, build: Callable[[], None]) -> None:
    """Create database ``name`` with ``build()`` unless it exists built from the same ``digest``.

    The digest is kept as the database's comment; an advisory lock serialises concurrent pytest
    processes, so one builds and the others wait and reuse it.
    """
    with admin_connect() as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (TEMPLATE_LOCK_KEY,))
        try:
            row = conn.execute(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                (name,),
            ).fetchone()
            if row and row[0] == digest:
                return
            if row:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            build()
            conn.execute(
                sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(digest))
            )
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (TEMPLATE_LOCK_KEY,))


def copy_database(template: str, name: str) -> None:
    """``CREATE DATABASE name TEMPLATE template`` (under the lock: nobody may be connected to it)."""
    with admin_connect() as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (TEMPLATE_LOCK_KEY,))
        try:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (TEMPLATE_LOCK_KEY,))


def drop_database(name: str) -> None:
    with admin_connect() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _ensure_template() -> None:
    """(Re)build the DreamSeed template database when the schema files changed."""

    def build() -> None:
        with admin_connect(TEMPLATE_DB) as conn:
            conn.execute(SCHEMA_SQL.read_text())  # type: ignore[arg-type]
            conn.execute(LEDGER_SQL.read_text())  # type: ignore[arg-type]

    digest = hashlib.sha256(SCHEMA_SQL.read_bytes() + LEDGER_SQL.read_bytes()).hexdigest()[:16]
    ensure_template(TEMPLATE_DB, digest, build)


@pytest.fixture
def pg_database(local_stack: StackPaths, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database with the DreamSeed schema (no rows); ``lifecycle_postgres`` points at it."""
    _ensure_template()
    name = f"t_{uuid.uuid4().hex[:12]}"
    copy_database(TEMPLATE_DB, name)
    conn_json = postgres_conn(name)
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_POSTGRES", conn_json)
    # The erasure DAGs' own connection, to the same database (as its owner; the least-privilege
    # tests log in as the erasure role instead).
    monkeypatch.setenv("AIRFLOW_CONN_ERASURE_POSTGRES", conn_json)
    yield name
    drop_database(name)


@pytest.fixture
def ledger_database(local_stack: StackPaths, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh erasure ledger database of its own; ``erasure_ledger`` points at it."""
    name = f"l_{uuid.uuid4().hex[:12]}"
    with admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with admin_connect(name) as conn:
        conn.execute(LEDGER_SQL.read_text())  # type: ignore[arg-type]
    monkeypatch.setenv("AIRFLOW_CONN_ERASURE_LEDGER", postgres_conn(name))
    yield name
    drop_database(name)


@pytest.fixture
def ledger_pg(ledger_database: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test's ledger database."""
    with admin_connect(ledger_database) as conn:
        yield conn


def postgres_conn(dbname: str, login: str = POSTGRES_USER) -> str:
    """``AIRFLOW_CONN_*`` JSON of a local-stack PostgreSQL connection to ``dbname``."""
    return json.dumps(
        {"conn_type": "postgres", "host": HOST, "port": POSTGRES_PORT, "login": login, "schema": dbname}
    )


@pytest.fixture
def pg(pg_database: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test's own database, for setup and assertions."""
    with admin_connect(pg_database) as conn:
        yield conn


@pytest.fixture(scope="session")
def s3_client(local_stack: StackPaths) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=f"http://{HOST}:{S3_PORT}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def make_bucket(s3_client: Any) -> Callable[..., str]:
    """Create a bucket with a unique name: ``make_bucket("logs", versioned=True)``."""

    def _make(stem: str = "b", *, versioned: bool = False, object_lock: bool = False) -> str:
        name = f"{stem}-{uuid.uuid4().hex[:10]}".lower()
        kwargs: dict[str, Any] = {"Bucket": name}
        if object_lock:
            kwargs["ObjectLockEnabledForBucket"] = True
        s3_client.create_bucket(**kwargs)
        if versioned:
            s3_client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    return _make


class SlackSink:
    """Reads what the Slack sink received since the test started."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def messages(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open(encoding="utf-8") as fh:
            fh.seek(self.offset)
            return [json.loads(line) for line in fh if line.strip()]

    def texts(self) -> list[str]:
        return [json.dumps(m["body"]) for m in self.messages()]


@pytest.fixture
def slack_sink(local_stack: StackPaths) -> SlackSink:
    return SlackSink(local_stack.slack_messages)


@pytest.fixture
def real_s3(s3_client: Any) -> Iterator[None]:
    """S3 clients created in the test answer conditional requests as S3 does (412 on a stale ETag in
    DeleteObjects, on IfNoneMatch onto an existing key), where the moto server ignores them."""
    from tests.reliability.harness import real_s3_conditions, s3_faults

    with s3_faults(*real_s3_conditions(s3_client)):
        yield
