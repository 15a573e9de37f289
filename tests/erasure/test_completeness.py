"""Erasure covers every copy our DAGs make (issue 15): archived rows, copied prefixes, a ledger
that survives restores, reference columns by name pattern, and steps that re-check coverage."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from data_lifecycle.archive import read_archive_rows, restore_archive
from data_lifecycle.erasure.archives import archive_destinations, check_archive_coverage, pseudonym
from data_lifecycle.erasure.coverage import check_full_coverage, coverage_gaps
from data_lifecycle.erasure.ledger import Status
from data_lifecycle.erasure.params import Connections
from data_lifecycle.erasure.steps import completed_erasures
from data_lifecycle.erasure.subject_map import load_subject_map, parse_subject_map
from data_lifecycle.exceptions import LifecycleConfigError, VerificationFailed
from data_lifecycle.policy import DEFAULT_POLICY_FILE, POLICY_FILE_ENV, load_policy
from devstack.dag_runner import test_run as run_fresh
from tests.erasure.conftest import CONNS, SUBJECT_EMAIL, SUBJECT_ID, object_versions, write_map

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
SUBJECT_IP = "203.0.113.77"
SHIPPED_MAP = Path(DEFAULT_POLICY_FILE).parent / "erasure_subject_map.yaml"


def _policy_file(tmp_path: Path, token: str, **sections: Any) -> Path:
    """The shipped policy with the module's bucket names, short retry delays and extra sections."""
    text = DEFAULT_POLICY_FILE.read_text().replace("dreamseed-", f"dreamseed-{token}-")
    text = text.replace("retry_delay_seconds: 300", "retry_delay_seconds: 1")
    text = text.replace("max_retry_delay_seconds: 3600", "max_retry_delay_seconds: 2")
    doc = yaml.safe_load(text)
    doc.update(sections)
    path = tmp_path / "lifecycle.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _map_doc(**overrides: Any) -> dict[str, Any]:
    doc = yaml.safe_load(SHIPPED_MAP.read_text())
    doc.update(overrides)
    return doc


def _app_logs_target(doc: dict[str, Any]) -> dict[str, Any]:
    return next(t for t in doc["tables"] if t["table"] == "app.app_logs")


class TestArchiveCoverage:
    """Pure checks of the policy's archive destinations against the map (no database)."""

    def test_the_shipped_policy_and_map_cover_every_archive(self) -> None:
        smap = load_subject_map(SHIPPED_MAP)
        listed = check_archive_coverage(load_policy(DEFAULT_POLICY_FILE), smap)
        assert listed == [
            "s3://dreamseed-logs/db-archive/app.app_logs/ <- app.app_logs: pseudonymised as archived"
        ]

    def test_an_archived_table_without_pseudonymisation_fails_naming_the_destination(self) -> None:
        doc = _map_doc()
        del _app_logs_target(doc)["archive"]
        smap = parse_subject_map(doc, "m.yaml")
        with pytest.raises(LifecycleConfigError) as err:
            check_archive_coverage(load_policy(DEFAULT_POLICY_FILE), smap)
        assert (
            "s3://dreamseed-logs/db-archive/app.app_logs/ (copies of app.app_logs, by app_logs 'app_logs')"
            in str(err.value)
        )
        assert "nothing was erased" in str(err.value)

    def test_partitions_archived_to_s3_are_destinations_too(self, tmp_path: Path) -> None:
        path = _policy_file(
            tmp_path,
            "t",
            partitions=[
                {
                    "id": "student_progress",
                    "table": "app.student_progress",
                    "retention_months": 13,
                    "mode": "s3",
                    "archive": {"bucket": "dreamseed-t-logs", "prefix": "partitions"},
                }
            ],
        )
        smap = load_subject_map(SHIPPED_MAP)
        with pytest.raises(
            LifecycleConfigError, match=r"s3://dreamseed-t-logs/partitions/app.student_progress/"
        ):
            check_archive_coverage(load_policy(path), smap)
        doc = _map_doc()
        next(t for t in doc["tables"] if t["table"] == "app.student_progress")["archive"] = "pseudonymise"
        check_archive_coverage(load_policy(path), parse_subject_map(doc, "m.yaml"))

    def test_a_copied_user_prefix_must_be_purged_in_the_archive_bucket(self, tmp_path: Path) -> None:
        rule = {
            "id": "uploads_to_glacier",
            "source_bucket": "dreamseed-t-uploads",
            "source_prefix": "user_",
            "dest_bucket": "dreamseed-t-upload-archive",
            "dest_prefix": "uploads/user_",
            "storage_class": "GLACIER",
            "retention_days": 400,
        }
        shipped = yaml.safe_load(DEFAULT_POLICY_FILE.read_text().replace("dreamseed-", "dreamseed-t-"))
        tiers = [t for t in shipped["storage_tiers"] if t["bucket"] != "dreamseed-t-uploads"]
        tiers.append(
            {
                "id": "upload_archive",
                "bucket": "dreamseed-t-upload-archive",
                "rules": [
                    {"id": "lifecycle-upload-archive", "prefix": "uploads/user_", "expiration_days": 3650}
                ],
            }
        )
        path = _policy_file(
            tmp_path, "t", object_archives=[*shipped["object_archives"], rule], storage_tiers=tiers
        )
        doc = _map_doc(buckets=[{"bucket": "dreamseed-t-uploads", "prefixes": ["user_{user_id}/"]}])
        policy = load_policy(path)
        with pytest.raises(LifecycleConfigError) as err:
            check_archive_coverage(policy, parse_subject_map(doc, "m.yaml"))
        assert "s3://dreamseed-t-upload-archive/uploads/user_{user_id}/" in str(err.value)
        doc["buckets"].append(
            {"bucket": "dreamseed-t-upload-archive", "prefixes": ["uploads/user_{user_id}/"]}
        )
        dests = archive_destinations(policy, parse_subject_map(doc, "m.yaml"))
        assert [(d.location, d.covered) for d in dests if d.source.startswith("s3://")] == [
            ("s3://dreamseed-t-upload-archive/uploads/user_{user_id}/", "purged")
        ]

    def test_an_ignored_destination_needs_a_reason(self) -> None:
        doc = _map_doc()
        del _app_logs_target(doc)["archive"]
        doc["ignore"] = [{"archive": "s3://dreamseed-logs/db-archive/", "reason": ""}]
        with pytest.raises(LifecycleConfigError, match=r"ignore\[0\], field 'reason'"):
            parse_subject_map(doc, "m.yaml")
        doc["ignore"] = [
            {"archive": "s3://dreamseed-logs/db-archive/", "reason": "rewritten by the DPO tool"}
        ]
        check_archive_coverage(load_policy(DEFAULT_POLICY_FILE), parse_subject_map(doc, "m.yaml"))


@pytest.fixture
def logs_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A policy whose log archive goes to a fresh bucket; returns that bucket."""
    token = uuid.uuid4().hex[:6]
    path = _policy_file(tmp_path, token)
    monkeypatch.setenv(POLICY_FILE_ENV, str(path))
    yield f"dreamseed-{token}-logs"


def test_archived_log_rows_hold_no_subject_id_or_ip(world: Any, logs_policy: str) -> None:
    """archive_app_logs writes the subject's log rows pseudonymised: after a week in S3 nothing in
    the archive points at the person, so the erasure that masks PostgreSQL leaves nothing behind."""
    world.s3.create_bucket(Bucket=logs_policy)
    world.pg.execute(
        "UPDATE app.app_logs SET context = jsonb_build_object('ip', %s::text) WHERE user_id = %s",
        (SUBJECT_IP, SUBJECT_ID),
    )
    # Newer rows keep the run under the policy's max_delete_fraction.
    world.pg.execute(
        "INSERT INTO app.app_logs (created_at, level, logger, message) "
        "SELECT '2026-01-31Z', 'INFO', 'x', 'recent' FROM generate_series(1, 20)"
    )
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(DAGS_FOLDER / "archive_app_logs.py"), safe_mode=False).dags[
        "archive_app_logs"
    ]
    dr = run_fresh(dag, logical_date=datetime(2026, 2, 1, 3, tzinfo=UTC), run_type="scheduled")
    assert str(dr.state) == "success"

    keys = [k for k, _v, marker in object_versions(world.s3, logs_policy, "db-archive/") if not marker]
    rows = [r for k in keys for r in read_archive_rows(world.s3, logs_policy, k)]
    assert rows
    text = json.dumps(rows)
    assert str(SUBJECT_ID) not in text and SUBJECT_IP not in text and SUBJECT_EMAIL not in text
    subject_pseudonym = pseudonym(world.keys, f"app.app_logs.user_id:{SUBJECT_ID}", "bigint")
    assert int(subject_pseudonym) < 0  # restorable into the bigint column, never a real id
    mine = [r for r in rows if r["user_id"] == subject_pseudonym]
    assert len(mine) == 3 and all(r["context"] is None for r in mine)
    # Other users' rows are pseudonymised the same way; anonymous rows are archived unchanged.
    assert {r["user_id"] for r in rows} >= {pseudonym(world.keys, "app.app_logs.user_id:1", "bigint"), None}
    # A pseudonymised archive still restores into its own table, types intact, without the person.
    restored = sum(restore_archive(world.pg, world.s3, logs_policy, k) for k in keys)
    assert restored == len(rows)
    assert world.pg.execute(
        "SELECT count(*) FROM app.app_logs WHERE user_id = %s", (int(subject_pseudonym),)
    ).fetchone() == (3,)
    assert world.pg.execute(
        "SELECT count(*) FROM app.app_logs WHERE user_id = %s", (SUBJECT_ID,)
    ).fetchone() == (0,)


class TestLedgerSurvivesRestore:
    def test_a_ledger_on_the_erased_database_is_refused_at_parse_time(self) -> None:
        policy = load_policy(DEFAULT_POLICY_FILE)
        doc = _map_doc()
        doc["connections"]["ledger"] = "lifecycle_postgres"
        with pytest.raises(LifecycleConfigError, match="connection of an erased database"):
            Connections.from_policy(policy, parse_subject_map(doc, "m.yaml"))
        del doc["connections"]["ledger"]
        with pytest.raises(LifecycleConfigError, match="connection of an erased database"):
            Connections.from_policy(policy, parse_subject_map(doc, "m.yaml"))
        doc["connections"]["ledger"] = "lifecycle_postgres"
        doc["ledger_survives_restore"] = "acknowledged"
        assert (
            Connections.from_policy(policy, parse_subject_map(doc, "m.yaml")).ledger == "lifecycle_postgres"
        )
        doc["ledger_survives_restore"] = "yes"
        with pytest.raises(LifecycleConfigError, match="ledger_survives_restore"):
            parse_subject_map(doc, "m.yaml")

    def test_the_shipped_ledger_has_its_own_database(self) -> None:
        conns = Connections.from_policy(load_policy(DEFAULT_POLICY_FILE), load_subject_map(SHIPPED_MAP))
        assert conns.ledger == "erasure_ledger" and conns.postgres != conns.ledger
        settings = yaml.safe_load((DAGS_FOLDER.parent / "airflow_settings.yaml").read_text())
        by_id = {c["conn_id"]: c for c in settings["airflow"]["connections"]}
        assert by_id["erasure_ledger"]["conn_schema"] != by_id["lifecycle_postgres"]["conn_schema"]

    def test_the_local_stack_ships_the_ledger_database(self, local_stack: Any) -> None:
        from tests.conftest import admin_connect

        with admin_connect("erasure_ledger") as conn:
            assert conn.execute("SELECT to_regclass('app.erasure_ledger') IS NOT NULL").fetchone() == (True,)

    def test_replay_fails_when_the_ledger_was_rewound_with_the_database(self, world: Any) -> None:
        # An erasure before the backup; the restore rewound the ledger to it, and accounts created
        # after it are in the database: the erasures after the backup are missing from the ledger.
        world.ledger_pg.execute(
            "INSERT INTO app.erasure_ledger (request_id, subject_hash, subject_token, status, dry_run, "
            "dag_id, run_id, recorded_at) VALUES ('DSR-OLD', %s, %s, 'completed', false, 'e', 'r', "
            "'2025-07-01Z')",
            (world.keys.subject_hash(1), world.keys.seal(1)),
        )
        world.pg.execute("UPDATE app.users SET created_at = '2025-08-20Z' WHERE id = 2")
        with pytest.raises(VerificationFailed, match="looks rewound"):
            completed_erasures(world.smap, CONNS, "2025-09-01T00:00:00+00:00")
        # With since at or before the ledger's newest entry the replay goes ahead (and re-checks it).
        assert [
            e["request_id"] for e in completed_erasures(world.smap, CONNS, "2025-07-01T00:00:00+00:00")
        ] == ["DSR-OLD"]

    def test_a_ledger_newer_than_since_replays_nothing_and_passes(self, world: Any) -> None:
        since = datetime.now(UTC) - timedelta(hours=1)
        world.run().record(Status.STARTED)
        assert completed_erasures(world.smap, CONNS, since.isoformat()) == []


class TestReferenceColumns:
    def test_an_owner_id_without_foreign_key_is_a_gap(self, world: Any) -> None:
        world.pg.execute("CREATE TABLE app.badges (id bigint PRIMARY KEY, owner_id text, title text)")
        world.pg.execute(
            "INSERT INTO app.badges VALUES (1, %s, 'gold'), (2, 'other@x.example', 'tin')", (SUBJECT_EMAIL,)
        )
        gaps = coverage_gaps(world.pg, world.smap)
        assert [(g.table, g.column, g.reasons) for g in gaps] == [
            ("app.badges", "owner_id", ("column named owner_id",))
        ]

    def test_a_mapped_owner_id_holding_the_email_is_erased(self, world: Any, tmp_path: Path) -> None:
        world.pg.execute("CREATE TABLE app.badges (id bigint PRIMARY KEY, owner_id text, title text)")
        world.pg.execute(
            "INSERT INTO app.badges VALUES (1, %s, 'gold'), (2, 'other@x.example', 'tin')", (SUBJECT_EMAIL,)
        )
        doc = yaml.safe_load(world.map_path.read_text())
        doc["tables"].insert(
            0,
            {
                "table": "app.badges",
                "column": "owner_id",
                "via": [{"table": "app.users", "key": "email", "column": "id"}],
            },
        )
        world.map_path = write_map(tmp_path / "m2.yaml", world.bucket, tables=doc["tables"])
        run = world.run()
        run.plan()
        assert run.erase_tables()["app.badges"] == 1
        run.purge_objects()
        run.verify()
        assert world.pg.execute("SELECT owner_id FROM app.badges").fetchall() == [("other@x.example",)]

    def test_patterns_are_configurable(self, world: Any, tmp_path: Path) -> None:
        world.pg.execute("CREATE TABLE app.referrals (id bigint PRIMARY KEY, referrer_user_id bigint)")
        assert [g.column for g in coverage_gaps(world.pg, world.smap)] == ["referrer_user_id"]
        doc = yaml.safe_load(world.map_path.read_text())
        doc["subject"]["reference_columns"] = ["user_id"]
        world.map_path = write_map(tmp_path / "m2.yaml", world.bucket, subject=doc["subject"])
        assert coverage_gaps(world.pg, world.smap) == []

    @pytest.mark.parametrize(
        "entry",
        [
            pytest.param({"table": "app.badges", "column": "owner_id"}, id="no-reason"),
            pytest.param({"table": "app.badges", "column": "owner_id", "reason": " "}, id="blank-reason"),
        ],
    )
    def test_an_ignore_entry_needs_a_reason(self, entry: dict[str, Any]) -> None:
        with pytest.raises(LifecycleConfigError, match=r"ignore\[0\], field 'reason'"):
            parse_subject_map(_map_doc(ignore=[entry]), "m.yaml")


class TestStepsRecheckCoverage:
    def test_erase_tables_called_alone_refuses_an_unmapped_table_before_any_write(self, world: Any) -> None:
        world.pg.execute("CREATE TABLE app.exports (id bigint PRIMARY KEY, user_id bigint)")
        before = world.snapshot()
        with pytest.raises(LifecycleConfigError, match=r"app.exports.user_id"):
            world.run().erase_tables()
        assert world.snapshot() == before

    def test_purge_objects_called_alone_refuses_an_uncovered_archive(
        self, world: Any, tmp_path: Path
    ) -> None:
        doc = yaml.safe_load(world.map_path.read_text())
        del _app_logs_target(doc)["archive"]
        world.map_path = write_map(tmp_path / "m2.yaml", world.bucket, tables=doc["tables"])
        before = world.snapshot()
        with pytest.raises(LifecycleConfigError, match=r"db-archive/app.app_logs/"):
            world.run().purge_objects()
        with pytest.raises(LifecycleConfigError, match=r"db-archive/app.app_logs/"):
            world.run().erase_tables()
        assert world.snapshot() == before

    def test_the_coverage_task_checks_archives_too(self, world: Any) -> None:
        report = check_full_coverage(world.pg, world.smap)
        assert report["archives"] and report["gaps"] == []


class TestPurgeSoftDeletedTakesTheObjects:
    """purge_soft_deleted deletes app.user_uploads, the only index of a user's objects: the objects
    under the user's prefix go in the same run (every version), or the rows wait."""

    @pytest.fixture
    def purge_dag(self, world: Any) -> Any:
        from airflow.dag_processing.dagbag import DagBag

        # Enough other accounts to stay under the policy's max_delete_fraction (10%).
        from tests.erasure.conftest import seed_users

        seed_users(world.pg, tuple(range(100, 112)), anonymous_log=False)
        world.pg.execute("UPDATE app.users SET deleted_at = '2025-12-01Z' WHERE id = %s", (SUBJECT_ID,))
        bag = DagBag(dag_folder=str(DAGS_FOLDER / "purge_soft_deleted.py"), safe_mode=False)
        return bag.dags["purge_soft_deleted"]

    def test_the_purged_users_objects_go_in_the_same_run(self, world: Any, purge_dag: Any) -> None:
        before = object_versions(world.s3, world.bucket)
        dr = run_fresh(purge_dag, logical_date=datetime(2026, 2, 1, 4, tzinfo=UTC), run_type="scheduled")
        assert str(dr.state) == "success"
        assert world.snapshot()[f"app.users:{SUBJECT_ID}"] == 0
        after = object_versions(world.s3, world.bucket)
        mine = f"user_{SUBJECT_ID}/"
        assert [v for v in after if v[0].startswith(mine)] == []
        assert sorted(after) == sorted(v for v in before if not v[0].startswith(mine))

    def test_a_legal_hold_keeps_objects_and_rows(self, world: Any, purge_dag: Any) -> None:
        held = next(v for v in object_versions(world.s3, world.bucket, f"user_{SUBJECT_ID}/") if not v[2])
        world.s3.put_object_legal_hold(
            Bucket=world.bucket, Key=held[0], VersionId=held[1], LegalHold={"Status": "ON"}
        )
        before = object_versions(world.s3, world.bucket)
        dr = run_fresh(purge_dag, logical_date=datetime(2026, 2, 1, 4, tzinfo=UTC), run_type="scheduled")
        assert str(dr.state) == "failed"
        tis = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
        assert tis["purge_objects_users"] == "failed" and tis["delete_users"] == "upstream_failed"
        assert sorted(object_versions(world.s3, world.bucket)) == sorted(before)
        assert world.snapshot()[f"app.users:{SUBJECT_ID}"] == 1


def test_the_intake_command_prints_a_request_id_and_stores_the_id_sealed(world: Any, capsys: Any) -> None:
    from data_lifecycle.erasure.intake import lookup, main

    assert main(["register", "--user-id", str(SUBJECT_ID), "--requested-by", "privacy-team"]) == 0
    request_id = capsys.readouterr().out.strip()
    assert request_id.startswith("DSR-") and str(SUBJECT_ID) not in request_id
    stored = world.ledger_pg.execute("SELECT t::text FROM app.erasure_requests t").fetchall()
    assert len(stored) == 1 and str(SUBJECT_ID) not in stored[0][0]
    assert lookup(world.ledger_pg, "app.erasure_requests", world.keys, request_id).user_id == SUBJECT_ID
    assert main(["register", "--user-id", "0"]) == 2
