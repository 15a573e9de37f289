"""Helpers shared by the benchmarks: where the services are, fresh databases, WAL, request counts.

PostgreSQL and S3 are found through the same Airflow connections the DAGs use
(``AIRFLOW_CONN_LIFECYCLE_POSTGRES`` / ``AIRFLOW_CONN_LIFECYCLE_AWS``), so the suite runs against the
local stack or an external server alike. Each measured run gets its own database, copied from a
prepared template (``CREATE DATABASE ... TEMPLATE``), and the operators are pointed at it by
rewriting the connection's database name in the environment.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import psycopg
from psycopg import sql

POSTGRES_CONN_ID = "lifecycle_postgres"
AWS_CONN_ID = "lifecycle_aws"
POSTGRES_CONN_ENV = "AIRFLOW_CONN_LIFECYCLE_POSTGRES"
# The anchor (logical date) every PostgreSQL benchmark runs its operators at; the data is made
# relative to it, so the same rows are due whatever day the suite runs.
ANCHOR = datetime(2027, 3, 1, 5, 0, tzinfo=UTC)
BENCH_DB_PREFIX = "lifecycle_bench"


@dataclass(frozen=True)
class Scale:
    """Sizes for a scale factor; 1 is the default run (2M-row table, 5,000 objects)."""

    factor: float = 1.0

    def n(self, base: int, minimum: int = 1) -> int:
        return max(minimum, int(base * self.factor))

    @property
    def is_small(self) -> bool:
        return self.factor < 0.05


def run_context(anchor: datetime) -> dict[str, Any]:
    """The part of an Airflow task context the operators read."""
    return {"data_interval_end": anchor, "dag_run": SimpleNamespace(run_after=anchor)}


def s3_run_anchor() -> datetime:
    """An anchor two days ahead: objects written now are then older than a one-day retention."""
    return datetime.now(UTC) + timedelta(days=2)


def postgres_params() -> dict[str, Any]:
    """Host, port, user, password and database of the ``lifecycle_postgres`` connection."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    conn = PostgresHook.get_connection(POSTGRES_CONN_ID)
    params = {"host": conn.host, "port": conn.port or 5432, "user": conn.login, "dbname": conn.schema}
    if conn.password:
        params["password"] = conn.password
    return params


def connect(dbname: str | None = None, *, application_name: str = "lifecycle_bench") -> psycopg.Connection:
    params = postgres_params()
    if dbname:
        params["dbname"] = dbname
    return psycopg.connect(**params, autocommit=True, application_name=application_name)


def conninfo(dbname: str) -> str:
    """A libpq connection string for ``dbname`` (for child processes)."""
    params = {**postgres_params(), "dbname": dbname}
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})


@contextmanager
def operators_use(dbname: str) -> Iterator[None]:
    """Point the ``lifecycle_postgres`` connection (and so every operator) at ``dbname``."""
    before = os.environ.get(POSTGRES_CONN_ENV)
    params = postgres_params()
    value = {
        "conn_type": "postgres",
        "host": params["host"],
        "port": params["port"],
        "login": params["user"],
        "schema": dbname,
    }
    if "password" in params:
        value["password"] = params["password"]
    os.environ[POSTGRES_CONN_ENV] = json.dumps(value)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(POSTGRES_CONN_ENV, None)
        else:
            os.environ[POSTGRES_CONN_ENV] = before


@contextmanager
def fresh_database(template: str, label: str) -> Iterator[str]:
    """A database copied from ``template``, dropped afterwards."""
    name = f"{BENCH_DB_PREFIX}_{label}_{uuid.uuid4().hex[:8]}"
    with connect() as admin:
        try:
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        except psycopg.errors.SyntaxError:  # PostgreSQL before 15 has no STRATEGY
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
    try:
        yield name
    finally:
        with connect() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def checkpoint(conn: psycopg.Connection) -> bool:
    """CHECKPOINT so each measured run starts from the same full-page-write state (needs the right)."""
    try:
        conn.execute("CHECKPOINT")
        return True
    except psycopg.errors.InsufficientPrivilege:
        return False


def wal_lsn(conn: psycopg.Connection) -> str:
    return str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])


def wal_bytes_since(conn: psycopg.Connection, start: str) -> int:
    """WAL written by the whole server since ``start`` (pg_current_wal_lsn difference)."""
    return int(conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (start,)).fetchone()[0])


def server_version(conn: psycopg.Connection) -> str:
    return str(conn.execute("SHOW server_version").fetchone()[0])


class RequestCounter:
    """Counts the HTTP requests a boto3 client sends, by operation (botocore ``before-send`` event)."""

    def __init__(self) -> None:
        self.by_operation: Counter[str] = Counter()
        self._lock = threading.Lock()

    def attach(self, client: Any) -> Any:
        client.meta.events.register("before-send.s3", self._count)
        return client

    def _count(self, event_name: str, **_: Any) -> None:
        with self._lock:
            self.by_operation[event_name.rsplit(".", 1)[-1]] += 1

    @property
    def total(self) -> int:
        return sum(self.by_operation.values())


def s3_client(conn_id: str = AWS_CONN_ID) -> Any:
    """A fresh boto3 S3 client for an AWS connection (not counted unless attached)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from botocore.config import Config

    hook = S3Hook(aws_conn_id=conn_id)
    hook.conn_config.botocore_config = Config(max_pool_connections=32)
    return hook.get_conn()


def new_bucket(client: Any, stem: str) -> str:
    name = f"bench-{stem}-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=name)
    return name


def remove_bucket(client: Any, bucket: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    client.delete_bucket(Bucket=bucket)


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by the inclusive method; 0.0 for no values."""
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q) - 1))]
