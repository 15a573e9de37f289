"""SIGKILL the erase steps of ``erase_user_data`` (tables in keyset batches, then every S3 version of
the subject) at a random point, rerun them, and check: the subject's data is gone everywhere,
nobody else's row or object was touched, and a second rerun changes nothing.
"""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.erasure.conftest import (
    CONNS,
    OTHER_IDS,
    SUBJECT_ID,
    object_versions,
    seed_objects,
    seed_users,
    write_map,
)
from tests.reliability.data import ANCHOR
from tests.reliability.harness import ChildSpec, erase_subject, run_child, wait_backends_gone

SEEDS = [5, 17, 29]
SUBJECT_FILES = 12
TABLES = ("app.sessions", "app.user_uploads", "app.student_progress", "app.app_logs", "app.users")

pytestmark = pytest.mark.slow


def _snapshot(pg: psycopg.Connection[Any], s3: Any, bucket: str) -> dict[str, Any]:
    """Every row of every mapped table (as text) and every object version, by owner."""
    out: dict[str, Any] = {}
    for table in TABLES:
        rows = pg.execute(f"SELECT t::text FROM {table} t ORDER BY 1").fetchall()
        out[table] = [r[0] for r in rows]
    out["s3"] = sorted(object_versions(s3, bucket))
    return out


def _others(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The part of a snapshot that does not belong to the subject."""
    mine = str(SUBJECT_ID)
    out: dict[str, Any] = {}
    for name, items in snapshot.items():
        if name == "s3":
            out[name] = [v for v in items if not v[0].startswith(f"user_{mine}/")]
        elif name == "app.app_logs":
            # Log rows stay; only the link to the subject is cut. Compare them without user_id.
            out[name] = sorted(r.replace(f",{mine},)", ",,)") for r in items)
        else:
            out[name] = [r for r in items if f",{mine}," not in r and not r.startswith(f"({mine},")]
    return out


@pytest.fixture
def subject_bucket(make_bucket: Any, tmp_path: Path) -> tuple[str, Path]:
    """A versioned uploads bucket and a subject map (batches of two rows) that names it."""
    bucket = make_bucket("erase-kill", versioned=True)
    return bucket, write_map(tmp_path / "subject_map.yaml", bucket)


@pytest.mark.parametrize("seed", SEEDS)
def test_rerun_after_kill_erases_the_subject_and_nothing_else(
    seed: int, pg: psycopg.Connection[Any], pg_database: str, s3_client: Any, subject_bucket: tuple[str, Path]
) -> None:
    bucket, map_path = subject_bucket
    seed_users(pg, (SUBJECT_ID, *OTHER_IDS), sessions=40)
    seed_objects(s3_client, bucket, (SUBJECT_ID, *OTHER_IDS))
    for i in range(SUBJECT_FILES):
        for version in (b"v1", b"v2"):
            s3_client.put_object(Bucket=bucket, Key=f"user_{SUBJECT_ID}/doc_{i:02d}.pdf", Body=version)
    before = _snapshot(pg, s3_client, bucket)
    kwargs = {
        "map_path": str(map_path),
        "user_id": SUBJECT_ID,
        "request_id": f"DSR-KILL-{seed}",
        "conns": dataclasses.asdict(CONNS),
    }

    delay = random.Random(seed).uniform(0.05, 1.2)
    outcome = run_child(
        ChildSpec(
            operator="tests.reliability.harness:erase_subject",
            kwargs=kwargs,
            anchor=ANCHOR,
            env={"AIRFLOW_CONN_LIFECYCLE_POSTGRES": os.environ["AIRFLOW_CONN_LIFECYCLE_POSTGRES"]},
            patches={"data_lifecycle.erasure.s3_purge:DELETE_OBJECTS_MAX_KEYS": 2},
            s3_delays={"DeleteObjects": 0.1, "ListObjectVersions": 0.05},
        ),
        kill_after=delay,
    )
    assert outcome.killed, f"the erasure finished before the kill at {delay:.2f}s: {outcome.result()}"
    wait_backends_gone(pg_database, "data_lifecycle:erasure")
    assert _others(_snapshot(pg, s3_client, bucket)) == _others(before), "another user's data changed"

    result = erase_subject(ANCHOR, **kwargs)
    assert all(v == 0 for v in result["left"].values()), result
    after = _snapshot(pg, s3_client, bucket)
    assert _others(after) == _others(before)
    assert not [v for v in after["s3"] if v[0].startswith(f"user_{SUBJECT_ID}/")]
    assert pg.execute("SELECT count(*) FROM app.users WHERE id = %s", (SUBJECT_ID,)).fetchone() == (0,)
    assert pg.execute("SELECT count(*) FROM app.app_logs WHERE user_id = %s", (SUBJECT_ID,)).fetchone() == (
        0,
    )

    again = erase_subject(ANCHOR, **kwargs)
    assert sum(again["tables"].values()) == 0
    assert all(c["versions"] == c["delete_markers"] == 0 for c in again["s3"].values())
    assert _snapshot(pg, s3_client, bucket) == after
