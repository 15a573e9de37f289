"""Erasure fixtures: a small DreamSeed population, a versioned uploads bucket and a test subject map."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from data_lifecycle.erasure.keys import SubjectKeys, load_subject_keys
from data_lifecycle.erasure.params import Connections
from data_lifecycle.erasure.steps import Request, Run
from data_lifecycle.erasure.subject_map import (
    DEFAULT_SUBJECT_MAP_FILE,
    SUBJECT_MAP_FILE_ENV,
    load_subject_map,
)

# A distinctive id, so a leak is visible in any text dump.
SUBJECT_ID = 7_340_219
SUBJECT_EMAIL = "erasure.subject.7340219@dreamseed.example"
# The last one starts with the subject's digits: its keys (user_73402190/) must survive.
OTHER_IDS = (1, 2, 73_402_190)
CONNS = Connections(
    postgres="lifecycle_postgres", aws="lifecycle_aws", slack="slack_alerts", ledger="erasure_ledger"
)
TABLES = ("app.sessions", "app.user_uploads", "app.student_progress", "app.app_logs", "app.users")


@dataclass
class ErasureWorld:
    pg: Any
    s3: Any
    bucket: str
    map_path: Path
    keys: SubjectKeys
    ledger_pg: Any

    @property
    def smap(self) -> Any:
        return load_subject_map(self.map_path)

    def run(
        self, request_id: str = "REQ-0001", *, dry_run: bool = False, run_id: str = "manual__test"
    ) -> Run:
        request = Request(
            user_id=SUBJECT_ID, request_id=request_id, requested_by="privacy-team", dry_run=dry_run
        )
        return Run(self.smap, CONNS, self.keys, request, dag_id="erase_user_data", run_id=run_id)

    def register(self, user_id: int = SUBJECT_ID, requested_by: str = "privacy-team") -> str:
        """Register an erasure request as the intake command does; returns its request id."""
        from data_lifecycle.erasure.intake import register

        return register(self.ledger_pg, "app.erasure_requests", self.keys, user_id, requested_by=requested_by)

    def snapshot(self) -> dict[str, Any]:
        """Full row counts per table and per user, and every object version in the bucket."""
        out: dict[str, Any] = {}
        for table in TABLES:
            column = "id" if table == "app.users" else "user_id"
            out[table] = self.pg.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for uid in (SUBJECT_ID, *OTHER_IDS):
                out[f"{table}:{uid}"] = self.pg.execute(
                    f"SELECT count(*) FROM {table} WHERE {column} = %s", (uid,)
                ).fetchone()[0]
        out["app_logs_null_user"] = self.pg.execute(
            "SELECT count(*) FROM app.app_logs WHERE user_id IS NULL"
        ).fetchone()[0]
        out["s3"] = sorted(object_versions(self.s3, self.bucket))
        return out

    def ledger_text(self) -> str:
        rows = self.ledger_pg.execute("SELECT t::text FROM app.erasure_ledger AS t ORDER BY id").fetchall()
        return "\n".join(r[0] for r in rows)

    def ledger(self) -> list[dict[str, Any]]:
        cur = self.ledger_pg.execute("SELECT * FROM app.erasure_ledger ORDER BY id")
        names = [d.name for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def object_versions(s3: Any, bucket: str, prefix: str = "") -> list[tuple[str, str, bool]]:
    out = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        out += [(v["Key"], v["VersionId"], False) for v in page.get("Versions", [])]
        out += [(m["Key"], m["VersionId"], True) for m in page.get("DeleteMarkers", [])]
    return out


def seed_users(pg: Any, user_ids: tuple[int, ...], *, sessions: int = 3, anonymous_log: bool = True) -> None:
    """Rows for each user in every mapped table (two progress partitions), plus one anonymous log."""
    pg.execute(
        "CREATE TABLE IF NOT EXISTS app.student_progress_2026_01 PARTITION OF app.student_progress "
        "FOR VALUES FROM ('2026-01-01') TO ('2026-02-01')"
    )
    pg.execute(
        "CREATE TABLE IF NOT EXISTS app.student_progress_2026_02 PARTITION OF app.student_progress "
        "FOR VALUES FROM ('2026-02-01') TO ('2026-03-01')"
    )
    ids = list(user_ids)
    pg.execute(
        "INSERT INTO app.users (id, email, display_name, created_at) "
        "SELECT u, CASE WHEN u = %(subject)s THEN %(email)s ELSE 'learner' || u || '@dreamseed.example' END, "
        "'Learner ' || u, '2025-06-01Z' FROM unnest(%(ids)s::bigint[]) AS u",
        {"ids": ids, "subject": SUBJECT_ID, "email": SUBJECT_EMAIL},
    )
    pg.execute(
        "INSERT INTO app.sessions (user_id, token, created_at, expires_at) "
        "SELECT u, md5(random()::text), '2026-01-05Z', '2026-01-19Z' "
        "FROM unnest(%s::bigint[]) AS u, generate_series(1, %s)",
        (ids, sessions),
    )
    pg.execute(
        "INSERT INTO app.user_uploads (user_id, s3_key, size_bytes, uploaded_at) "
        "SELECT u, 'user_' || u || '/file_' || i || '.bin', 10, '2026-01-05Z' "
        "FROM unnest(%s::bigint[]) AS u, generate_series(1, 2) AS i",
        (ids,),
    )
    pg.execute(
        "INSERT INTO app.student_progress (user_id, lesson_id, score, recorded_at) "
        "SELECT u, 1, 90, make_timestamptz(2026, m, 10, 0, 0, 0, 'UTC') "
        "FROM unnest(%s::bigint[]) AS u, unnest(ARRAY[1, 1, 2, 2]) AS m",
        (ids,),
    )
    pg.execute(
        "INSERT INTO app.app_logs (created_at, level, logger, message, user_id) "
        "SELECT '2026-01-05Z', 'INFO', 'dreamseed.api', 'request ' || i || ' handled', u "
        "FROM unnest(%s::bigint[]) AS u, generate_series(1, 3) AS i",
        (ids,),
    )
    if anonymous_log:
        pg.execute(
            "INSERT INTO app.app_logs (created_at, level, logger, message) VALUES ('2026-01-05Z', 'INFO', 'x', 'anon')"
        )


def seed_objects(s3: Any, bucket: str, user_ids: tuple[int, ...]) -> None:
    """Per user: a file with two versions, and a deleted file (a version plus a delete marker)."""
    for uid in user_ids:
        s3.put_object(Bucket=bucket, Key=f"user_{uid}/a.bin", Body=b"v1")
        s3.put_object(Bucket=bucket, Key=f"user_{uid}/a.bin", Body=b"v2")
        s3.put_object(Bucket=bucket, Key=f"user_{uid}/gone.bin", Body=b"x")
        s3.delete_object(Bucket=bucket, Key=f"user_{uid}/gone.bin")
    s3.put_object(Bucket=bucket, Key="tmp/shared.bin", Body=b"shared")


def write_map(path: Path, bucket: str, **overrides: Any) -> Path:
    doc = yaml.safe_load(DEFAULT_SUBJECT_MAP_FILE.read_text())
    doc["buckets"][0]["bucket"] = bucket
    doc["batch"]["size"] = 2  # several batches per target even with a handful of rows
    doc.update(overrides)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def world(  # noqa: PLR0917 - pytest fixtures are positional
    pg: Any,
    ledger_pg: Any,
    s3_client: Any,
    make_bucket: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[ErasureWorld]:
    """Subject and four other users in PostgreSQL and in a versioned, lock-enabled bucket."""
    bucket = make_bucket("uploads", versioned=True, object_lock=True)
    map_path = write_map(tmp_path / "subject_map.yaml", bucket)
    monkeypatch.setenv(SUBJECT_MAP_FILE_ENV, str(map_path))
    seed_users(pg, (SUBJECT_ID, *OTHER_IDS))
    seed_objects(s3_client, bucket, (SUBJECT_ID, *OTHER_IDS))
    keys = load_subject_keys("erasure_hmac", "app.users")
    yield ErasureWorld(pg=pg, s3=s3_client, bucket=bucket, map_path=map_path, keys=keys, ledger_pg=ledger_pg)
