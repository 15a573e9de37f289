"""Issue 15's end-to-end check: a user with rows in every mapped table, log rows archived to S3,
uploads with several versions, and exports copied to an archive bucket by copy-then-delete, is erased; then no table, no object
version in any bucket the policy touches, no dag_run.conf, XCom, task log or Slack message holds
the user's id, email or IP address. A restore of the database to before the erasure, followed by
replay_erasures, leaves no trace again (the ledger lives in its own database)."""

from __future__ import annotations

import gzip
import json
import logging
import re
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from data_lifecycle.policy import DEFAULT_POLICY_FILE, POLICY_FILE_ENV
from devstack.dag_runner import test_run as run_fresh
from devstack.postgres import find_bindir
from devstack.settings import HOST, POSTGRES_PORT, POSTGRES_USER
from tests.erasure.conftest import SUBJECT_EMAIL, SUBJECT_ID, object_versions, write_map

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
SUBJECT_IP = "198.51.100.23"
# The id as a whole number: user 73402190's keys and rows must not count as a trace.
ID_RE = re.compile(rf"(?<!\d){SUBJECT_ID}(?!\d)")


def traces(text: str) -> list[str]:
    found = ["id"] if ID_RE.search(text) else []
    return found + [name for name, value in (("email", SUBJECT_EMAIL), ("ip", SUBJECT_IP)) if value in text]


def table_traces(pg: Any) -> dict[str, list[str]]:
    """Every row of every table of the database, as text."""
    tables = pg.execute(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
    ).fetchall()
    out = {}
    for (table,) in tables:
        text = "\n".join(r[0] for r in pg.execute(f"SELECT t::text FROM {table} t").fetchall())
        if traces(text):
            out[table] = traces(text)
    return out


def bucket_traces(s3: Any, buckets: list[str]) -> dict[str, list[str]]:
    """Every object version's key and body in the buckets."""
    out = {}
    for bucket in buckets:
        for key, version_id, marker in object_versions(s3, bucket):
            text = key
            if not marker:
                body = s3.get_object(Bucket=bucket, Key=key, VersionId=version_id)["Body"].read()
                if body[:2] == b"\x1f\x8b":
                    body = gzip.decompress(body)
                text += "\n" + body.decode("utf-8", errors="replace")
            if traces(text):
                out[f"s3://{bucket}/{key}@{version_id}"] = traces(text)
    return out


def airflow_traces(dr: Any, caplog: Any, capfd: Any, slack_sink: Any) -> dict[str, list[str]]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        xcoms = session.query(XComModel).filter_by(dag_id=dr.dag_id, run_id=dr.run_id).all()
    texts = {
        "conf": json.dumps(dr.conf),
        "xcom": json.dumps([x.value for x in xcoms], default=str),
        "logs": "\n".join(r.getMessage() for r in caplog.records) + capfd.readouterr().out,
        "slack": "\n".join(slack_sink.texts()),
    }
    assert all(texts.values()), "each place was read and has content"
    return {where: traces(text) for where, text in texts.items() if traces(text)}


def pg_tool(name: str, *args: str) -> None:
    cmd = [str(find_bindir() / name), "-h", HOST, "-p", str(POSTGRES_PORT), "-U", POSTGRES_USER, *args]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def estate(world: Any, make_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The policy and map of a small estate: logs bucket (rows archived to db-archive/), the
    uploads bucket of the world, and an archive bucket the uploads' user prefixes are copied to."""
    token = uuid.uuid4().hex[:6]
    text = DEFAULT_POLICY_FILE.read_text().replace("dreamseed-", f"dreamseed-{token}-")
    text = text.replace("retry_delay_seconds: 300", "retry_delay_seconds: 1")
    text = text.replace("max_retry_delay_seconds: 3600", "max_retry_delay_seconds: 2")
    policy = yaml.safe_load(text)
    logs, log_archive = f"dreamseed-{token}-logs", f"dreamseed-{token}-log-archive"
    upload_archive = make_bucket("upload-archive", versioned=True)
    # Copy-then-delete archives unversioned buckets only: the users' exports live in one.
    exports = make_bucket("exports")
    for bucket in (logs, log_archive):
        world.s3.create_bucket(Bucket=bucket)
    # The exports' user_ prefix is archived by copy-then-delete; the archive bucket declares its
    # lifecycle, as every archive must.
    policy["storage_tiers"] = [t for t in policy["storage_tiers"] if t["bucket"] in (logs, log_archive)]
    policy["storage_tiers"].append(
        {
            "id": "upload_archive",
            "bucket": upload_archive,
            "rules": [{"id": "lifecycle-upload-archive", "prefix": "uploads/user_", "expiration_days": 3650}],
        }
    )
    policy["object_archives"].append(
        {
            "id": "uploads_to_archive",
            "source_bucket": exports,
            "source_prefix": "user_",
            "dest_bucket": upload_archive,
            "dest_prefix": "uploads/user_",
            "storage_class": "GLACIER_IR",
            "retention_days": 30,
        }
    )
    policy_path = tmp_path / "lifecycle.yaml"
    policy_path.write_text(yaml.safe_dump(policy, sort_keys=False))
    monkeypatch.setenv(POLICY_FILE_ENV, str(policy_path))
    doc = yaml.safe_load(world.map_path.read_text())
    doc["buckets"].append({"bucket": exports, "prefixes": ["user_{user_id}/"]})
    doc["buckets"].append({"bucket": upload_archive, "prefixes": ["uploads/user_{user_id}/"]})
    world.map_path = write_map(tmp_path / "map.yaml", world.bucket, buckets=doc["buckets"])
    monkeypatch.setenv("ERASURE_SUBJECT_MAP_FILE", str(world.map_path))
    return {
        "buckets": [world.bucket, exports, logs, log_archive, upload_archive],
        "logs": logs,
        "exports": exports,
    }


def _dag(dag_id: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER / f"{dag_id}.py"), safe_mode=False).dags[dag_id]


def _run(dag_id: str, logical_date: datetime | None = None, conf: dict[str, Any] | None = None) -> Any:
    # Cleanup DAGs run as their schedule would (not dry, anchored at their interval); erasure manually.
    run_type = "scheduled" if logical_date is not None and conf is None else "manual"
    dr = run_fresh(_dag(dag_id), logical_date=logical_date, conf=conf, run_type=run_type)
    assert str(dr.state) == "success", {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
    return dr


@pytest.mark.slow
def test_erasure_leaves_no_trace_anywhere_even_after_a_restore(  # noqa: PLR0917 - fixtures
    world: Any,
    estate: dict[str, Any],
    slack_sink: Any,
    caplog: Any,
    capfd: Any,
    pg_database: str,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.INFO)
    pg, s3 = world.pg, world.s3
    # The subject's personal data: email (users), IP (log context), a file naming them, in versions.
    pg.execute(
        "UPDATE app.app_logs SET context = jsonb_build_object('ip', %s::text) WHERE user_id = %s",
        (SUBJECT_IP, SUBJECT_ID),
    )
    pg.execute(
        "INSERT INTO app.app_logs (created_at, level, logger, message) "
        "SELECT '2026-01-31Z', 'INFO', 'x', 'recent' FROM generate_series(1, 20)"
    )
    for body in (b"draft", f"CV of {SUBJECT_EMAIL}".encode()):
        s3.put_object(Bucket=world.bucket, Key=f"user_{SUBJECT_ID}/cv.txt", Body=body)
    for uid in (SUBJECT_ID, 1):
        s3.put_object(Bucket=estate["exports"], Key=f"user_{uid}/export.csv", Body=f"user {uid}".encode())
    s3.put_object(Bucket=estate["exports"], Key=f"user_{SUBJECT_ID}/letter.txt", Body=SUBJECT_EMAIL.encode())

    # Our DAGs copy the data: log rows to db-archive/, user prefixes to the archive bucket.
    _run("archive_app_logs", datetime(2026, 2, 1, 3, tzinfo=UTC))
    _run("apply_storage_tiers", datetime.now(UTC).replace(microsecond=0) + timedelta(days=60))
    assert object_versions(s3, estate["logs"], "db-archive/")
    assert object_versions(s3, estate["buckets"][4], f"uploads/user_{SUBJECT_ID}/")
    assert table_traces(pg) and bucket_traces(s3, estate["buckets"])  # the traces exist before

    # The backup, taken before the erasure.
    dump = tmp_path / "backup.dump"
    pg_tool("pg_dump", "-Fc", "-f", str(dump), pg_database)
    since = datetime.now(UTC)

    dr = _run("erase_user_data", conf={"request_id": world.register(), "dry_run": False})

    assert table_traces(pg) == {}
    assert bucket_traces(s3, estate["buckets"]) == {}
    assert airflow_traces(dr, caplog, capfd, slack_sink) == {}
    assert traces(world.ledger_text()) == []

    # Restore the application database to before the erasure: the subject's rows are back, the
    # ledger (its own database) is not rewound, and the replay erases them again.
    pg.execute("DROP SCHEMA app CASCADE")
    pg_tool("pg_restore", "-d", pg_database, str(dump))
    assert table_traces(pg)
    replay = _run("replay_erasures", conf={"since": since.isoformat(), "dry_run": False})

    assert table_traces(pg) == {}
    assert bucket_traces(s3, estate["buckets"]) == {}
    assert airflow_traces(replay, caplog, capfd, slack_sink) == {}
    assert world.ledger()[-1]["status"] == "replayed"
