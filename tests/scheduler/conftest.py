"""The real Airflow services over the local stack, driven only through the CLI and the REST API.

For each executor (LocalExecutor, then CeleryExecutor with Redis and a worker in a directory of its
own) the suite starts the api-server, scheduler, dag-processor and triggerer as separate processes
(``devstack.airflow_services``, what ``make airflow`` runs), with a metadata database of their own
(a copy of a migrated template, so they never meet the database the ``dag.test()`` tests use), a
DreamSeed database for the DAGs to clean, and a copy of the shipped policy with short retry delays,
a one-minute deadline and buckets of its own. Ports are the stack's (``LIFECYCLE_AIRFLOW_PORT``,
``LIFECYCLE_REDIS_PORT``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from data_lifecycle.erasure.subject_map import (
    DEFAULT_SUBJECT_MAP_FILE,
    SUBJECT_MAP_FILE_ENV,
    load_subject_map,
)
from data_lifecycle.policy import DEFAULT_POLICY_FILE, POLICY_FILE_ENV
from devstack.airflow_services import AirflowServices
from devstack.settings import (
    API_PORT,
    HOST,
    POSTGRES_PORT,
    POSTGRES_USER,
    S3_PORT,
    StackPaths,
    stack_environment,
)
from tests.conftest import (
    TEMPLATE_DB,
    _ensure_template,
    admin_connect,
    copy_database,
    drop_database,
    ensure_template,
)

META_TEMPLATE = "airflow_scheduler_template"
AIRFLOW = str(Path(sys.executable).parent / "airflow")
TERMINAL = {"success", "failed"}
# The policy changes the scenarios need: retries seconds apart, a deadline that can be missed.
POLICY_EDITS = {
    "retry_delay_seconds: 300": "retry_delay_seconds: 2",
    "max_retry_delay_seconds: 3600": "max_retry_delay_seconds: 4",
    "  purge_soft_deleted:\n    notify_success: true": "  purge_soft_deleted:\n    notify_success: true\n    deadline_minutes: 1",
    # Small batches with pauses: a backlog takes seconds, long enough for runs to overlap.
    "      min_size: 500\n      max_size: 50000": "      min_size: 100\n      max_size: 100\n"
    "      sleep_seconds: 0.2\n      lock_timeout_ms: 500",
}


def _meta_url(db: str) -> str:
    return f"postgresql+psycopg://{POSTGRES_USER}@{HOST}:{POSTGRES_PORT}/{db}"


def _ensure_meta_template(env: dict[str, str]) -> None:
    """A migrated metadata database with the project's pools, rebuilt when Airflow changes."""
    settings = StackPaths().root / "airflow_settings.yaml"
    key = env.get("AIRFLOW__CORE__FERNET_KEY", "")
    digest = hashlib.sha256(
        importlib.metadata.version("apache-airflow").encode() + settings.read_bytes() + key.encode()
    ).hexdigest()[:16]

    def build() -> None:
        migrate_env = {**env, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": _meta_url(META_TEMPLATE)}
        subprocess.run([AIRFLOW, "db", "migrate"], env=migrate_env, check=True, capture_output=True)
        subprocess.run(
            [sys.executable, "-m", "devstack.airflow_meta"], env=migrate_env, check=True, capture_output=True
        )

    ensure_template(META_TEMPLATE, digest, build)


def _create_buckets(smap: Any) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=f"http://{HOST}:{S3_PORT}",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    for entry in smap.buckets:
        client.create_bucket(Bucket=entry.bucket)


@dataclass
class Airflow:
    """The running services, and the commands and requests an on-call engineer would use."""

    executor: str
    env: dict[str, str]
    services: AirflowServices
    data_db: str
    token: str = ""
    # What was typed and requested, for the check that the README runbook's commands were run.
    commands: list[tuple[str, ...]] = field(default_factory=list)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``airflow <args>`` as typed in a shell, in the services' environment."""
        self.commands.append(args)
        done = subprocess.run(
            [AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=180, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"airflow {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One REST API v2 request; returns (status, decoded JSON body)."""
        if not self.token:
            self.token = self._request("GET", "/auth/token")[1]["access_token"]
        return self._request(method, f"/api/v2{path}", body)

    def _request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        self.requests.append((method, path.split("?", maxsplit=1)[0], body))
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://{HOST}:{API_PORT}{path}", data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        status, doc = self.api("GET", f"/dags/{dag_id}/dagRuns?limit=100&order_by=logical_date")
        assert status == 200, doc
        return list(doc["dag_runs"])

    def wait_for_runs(
        self, dag_id: str, run_ids: list[str] | None = None, *, count: int | None = None, timeout: float = 240
    ) -> list[dict[str, Any]]:
        """Wait until the given runs (or ``count`` runs matching ``run_ids=None``) are finished."""
        deadline = time.monotonic() + timeout
        while True:
            self.services.check_alive()
            runs = [r for r in self.runs(dag_id) if run_ids is None or r["dag_run_id"] in run_ids]
            done = [r for r in runs if r["state"] in TERMINAL]
            expected = len(run_ids) if run_ids is not None else count
            if expected is not None and len(runs) >= expected and len(done) == len(runs):
                return runs
            if time.monotonic() > deadline:
                raise AssertionError(f"{dag_id} runs not finished after {timeout:.0f} s: {runs}")
            time.sleep(0.5)

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        status, doc = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        assert status == 200, doc
        return {ti["task_id"]: ti["state"] for ti in doc["task_instances"]}

    def data(self) -> psycopg.Connection[Any]:
        """An autocommit connection to the database the DAGs clean."""
        return admin_connect(self.data_db)


@pytest.fixture(scope="package", params=["local", "celery"])
def airflow(
    request: pytest.FixtureRequest, local_stack: StackPaths, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Airflow]:
    executor = str(request.param)
    token = uuid.uuid4().hex[:8]
    home = tmp_path_factory.mktemp(f"airflow-{executor}")
    base = {**os.environ, **stack_environment(local_stack)}
    _ensure_meta_template(base)
    _ensure_template()
    meta_db, data_db = f"airflow_sched_{executor}_{token}", f"sched_{executor}_{token}"
    copy_database(META_TEMPLATE, meta_db)
    copy_database(TEMPLATE_DB, data_db)
    policy = DEFAULT_POLICY_FILE.read_text().replace("dreamseed-", f"dreamseed-{token}-")
    for old, new in POLICY_EDITS.items():
        assert old in policy, f"policy file changed: {old!r} not found"
        policy = policy.replace(old, new)
    (home / "lifecycle.yaml").write_text(policy)
    # The erasure map names the same buckets (purge_soft_deleted purges the users' objects too).
    subject_map = DEFAULT_SUBJECT_MAP_FILE.read_text().replace("dreamseed-", f"dreamseed-{token}-")
    (home / "erasure_subject_map.yaml").write_text(subject_map)
    _create_buckets(load_subject_map(home / "erasure_subject_map.yaml"))
    env = {
        **base,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": _meta_url(meta_db),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        POLICY_FILE_ENV: str(home / "lifecycle.yaml"),
        SUBJECT_MAP_FILE_ENV: str(home / "erasure_subject_map.yaml"),
        "AIRFLOW_CONN_LIFECYCLE_POSTGRES": json.dumps(
            {
                "conn_type": "postgres",
                "host": HOST,
                "port": POSTGRES_PORT,
                "login": POSTGRES_USER,
                "schema": data_db,
            }
        ),
        # The DAG files do not change during the suite: parse them once, not every 30 s.
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
        # A run waiting for the previous interval's run looks again every 2 s, not 10.
        "LIFECYCLE_IN_ORDER_POKE_SECONDS": "2",
    }
    services = AirflowServices(env=env, executor=executor, logs=home / "service-logs", work=home / "work")
    try:
        services.start()
        services.wait_ready()
        from devstack.airflow_services import airflow_environment

        yield Airflow(
            executor=executor, env=airflow_environment(env, executor), services=services, data_db=data_db
        )
    finally:
        services.stop()
        drop_database(meta_db)
        drop_database(data_db)
