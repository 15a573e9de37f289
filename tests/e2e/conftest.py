"""End-to-end fixtures: the real DAGs from dags/, run with ``dag.test()`` against the local stack.

Each test module gets its own copy of the shipped policy whose bucket names carry a unique token
(so S3 state never leaks between modules or into the demo), and each test its own PostgreSQL
database loaded with a small DreamSeed data set relative to ``ANCHOR``. S3 stamps objects with the
time they are written, so the anchor lies months ahead: the objects are old by then.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from data_lifecycle.erasure.subject_map import DEFAULT_SUBJECT_MAP_FILE, SUBJECT_MAP_FILE_ENV
from data_lifecycle.policy import DEFAULT_POLICY_FILE, POLICY_FILE_ENV, Policy, load_policy
from devstack.dag_runner import test_run
from include.dreamseed.demo import demo_anchor
from include.dreamseed.generate import Sizes, load_postgres, load_s3

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
# As in the demo: months ahead, at this session's time of day, so each test session's runs are new.
ANCHOR = demo_anchor()
E2E_SIZES = Sizes(0.02)


@dataclass
class LifecycleEnv:
    policy: Policy
    token: str

    def bucket(self, demo_name: str) -> str:
        """The module's own name for a demo bucket (``dreamseed-logs`` -> ``dreamseed-<token>-logs``)."""
        return demo_name.replace("dreamseed-", f"dreamseed-{self.token}-", 1)


@pytest.fixture(scope="module")
def lifecycle_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LifecycleEnv]:
    token = uuid.uuid4().hex[:6]
    text = DEFAULT_POLICY_FILE.read_text().replace("dreamseed-", f"dreamseed-{token}-")
    # dag.test() waits out retry delays: keep them short (retries themselves stay as configured).
    text = text.replace("retry_delay_seconds: 300", "retry_delay_seconds: 1")
    text = text.replace("max_retry_delay_seconds: 3600", "max_retry_delay_seconds: 2")
    path = tmp_path_factory.mktemp("policy") / "lifecycle.yaml"
    path.write_text(text)
    # The erasure map names the same buckets (purge_soft_deleted purges the users' prefixes).
    map_path = path.with_name("erasure_subject_map.yaml")
    map_path.write_text(DEFAULT_SUBJECT_MAP_FILE.read_text().replace("dreamseed-", f"dreamseed-{token}-"))
    saved = {env: os.environ.get(env) for env in (POLICY_FILE_ENV, SUBJECT_MAP_FILE_ENV)}
    os.environ[POLICY_FILE_ENV] = str(path)
    os.environ[SUBJECT_MAP_FILE_ENV] = str(map_path)
    try:
        yield LifecycleEnv(policy=load_policy(path), token=token)
    finally:
        for env, value in saved.items():
            if value is None:
                os.environ.pop(env, None)
            else:
                os.environ[env] = value


@pytest.fixture(scope="module")
def dagbag(lifecycle_env: LifecycleEnv) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER), safe_mode=False)
    assert bag.import_errors == {}
    return bag


class DemoS3:
    """The demo buckets under the module's names, loaded with the demo objects."""

    def __init__(self, client: Any, env: LifecycleEnv) -> None:
        self.client = client
        self.env = env

    def load(self) -> None:
        renamed = _RenamedBuckets(self.client, self.env)
        load_s3(renamed, E2E_SIZES)

    def keys(self, demo_bucket: str, prefix: str = "") -> dict[str, str]:
        """key -> storage class of every current object in the bucket."""
        out: dict[str, str] = {}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.env.bucket(demo_bucket), Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = obj.get("StorageClass") or "STANDARD"
        return out


class _RenamedBuckets:
    """A boto3 client wrapper that maps the demo bucket names to the module's names."""

    def __init__(self, client: Any, env: LifecycleEnv) -> None:
        self._client = client
        self._env = env
        self.exceptions = client.exceptions

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if "Bucket" in kwargs:
                kwargs["Bucket"] = self._env.bucket(kwargs["Bucket"])
            return method(*args, **kwargs)

        return call

    def get_paginator(self, name: str) -> Any:
        paginator = self._client.get_paginator(name)
        env = self._env

        class _Paginator:
            def paginate(self, **kwargs: Any) -> Any:
                kwargs["Bucket"] = env.bucket(kwargs["Bucket"])
                return paginator.paginate(**kwargs)

        return _Paginator()


@pytest.fixture
def dreamseed(pg: Any, s3_client: Any, lifecycle_env: LifecycleEnv) -> DemoS3:
    """The test's database and the module's buckets, loaded with DreamSeed data."""
    with pg.transaction():
        load_postgres(pg, ANCHOR, E2E_SIZES)
    s3 = DemoS3(s3_client, lifecycle_env)
    s3.load()
    return s3


def run_dag(
    dagbag: Any,
    dag_id: str,
    logical_date: datetime | None = ANCHOR,
    conf: dict[str, Any] | None = None,
    *,
    run_type: str = "scheduled",
    run_after: datetime | None = None,
) -> Any:
    """Run one DAG with ``dag.test()``, by default as the scheduler would (a scheduled run).

    A manual run is triggered at ``run_after`` (default: its logical date, a run "at" that day).
    Returns the DagRun (its ``state`` is checked by the caller).
    """
    return test_run(
        dagbag.dags[dag_id],
        logical_date=logical_date,
        conf=conf,
        run_type=run_type,
        run_after=run_after or logical_date,
    )


def count(pg: Any, query: str, *params: Any) -> int:
    row = pg.execute(query, params or None).fetchone()
    return int(row[0]) if row else 0
