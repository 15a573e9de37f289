"""Erasure steps against the real local PostgreSQL and moto S3 server, without Airflow runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from data_lifecycle.erasure.coverage import check_coverage, coverage_gaps
from data_lifecycle.erasure.ledger import Status
from data_lifecycle.erasure.s3_purge import ErasureBlocked
from data_lifecycle.erasure.steps import alert_due_requests, replay_entry
from data_lifecycle.exceptions import GuardrailTripped, LifecycleConfigError, LifecycleError
from tests.erasure.conftest import CONNS, OTHER_IDS, SUBJECT_EMAIL, SUBJECT_ID, object_versions, write_map


def _erase(run):
    plan = run.plan()
    run.record(Status.STARTED, counts={"planned": plan})
    tables = run.erase_tables()
    objects = run.purge_objects()
    run.verify()
    run.record(Status.COMPLETED, counts={"tables": tables, "s3": objects})
    return plan, tables, objects


class TestCoverage:
    def test_the_dreamseed_schema_is_fully_mapped(self, world):
        assert coverage_gaps(world.pg, world.smap) == []
        assert "app.app_logs.user_id" in check_coverage(world.pg, world.smap)["references"]

    def test_a_new_table_referencing_users_fails_naming_it(self, world):
        world.pg.execute(
            "CREATE TABLE app.badges (id bigint PRIMARY KEY, owner bigint REFERENCES app.users (id))"
        )
        world.pg.execute("CREATE TABLE app.exports (id bigint PRIMARY KEY, user_id bigint)")
        with pytest.raises(LifecycleConfigError) as err:
            check_coverage(world.pg, world.smap)
        message = str(err.value)
        assert "app.badges.owner (foreign key badges_owner_fkey)" in message
        assert "app.exports.user_id (column named user_id)" in message
        assert "nothing was erased" in message

    def test_an_exemption_with_a_reason_covers_a_column(self, world, tmp_path):
        world.pg.execute("CREATE TABLE app.exports (id bigint PRIMARY KEY, user_id bigint)")
        path = write_map(
            tmp_path / "m.yaml",
            world.bucket,
            ignore=[{"table": "app.exports", "column": "user_id", "reason": "holds only aggregate counts"}],
        )
        world.map_path = path
        assert coverage_gaps(world.pg, world.smap) == []


class TestTables:
    def test_erases_exactly_the_subject_rows_and_versions(self, world):
        before = world.snapshot()
        plan, tables, objects = _erase(world.run())
        after = world.snapshot()
        assert [t["target"] for t in plan["tables"]][-1] == "app.users"
        for table in ("app.sessions", "app.user_uploads", "app.student_progress", "app.users"):
            assert tables[table] == before[f"{table}:{SUBJECT_ID}"] > 0
            assert after[f"{table}:{SUBJECT_ID}"] == 0
            assert after[table] == before[table] - tables[table]
            for uid in OTHER_IDS:
                assert after[f"{table}:{uid}"] == before[f"{table}:{uid}"]
        assert after["app.app_logs"] == before["app.app_logs"]
        assert after["app_logs_null_user"] == before["app_logs_null_user"] + tables["app.app_logs"]
        prefix = f"user_{SUBJECT_ID}/"
        assert after["s3"] == [v for v in before["s3"] if not v[0].startswith(prefix)]
        assert any(v[0].startswith(f"user_{SUBJECT_ID}0/") for v in after["s3"])
        assert objects == {f"s3://{world.bucket}/user_{{user_id}}/": {"versions": 3, "delete_markers": 1}}
        # Nothing left: a second plan for the same subject is empty.
        again = world.run(run_id="run-2").plan()
        assert again["total_rows"] == 0 and again["total_objects"] == 0
        text = world.ledger_text()
        assert str(SUBJECT_ID) not in text and SUBJECT_EMAIL not in text

    def test_dry_run_changes_nothing(self, world):
        before = world.snapshot()
        run = world.run(dry_run=True)
        plan = run.plan()
        assert run.erase_tables() == {t["target"]: t["rows"] for t in plan["tables"]}
        assert run.purge_objects()[f"s3://{world.bucket}/user_{{user_id}}/"] == {
            "versions": 3,
            "delete_markers": 1,
        }
        run.verify()
        assert world.snapshot() == before

    def test_fixed_and_keyed_hash_masks_and_a_join_path(self, world, tmp_path):
        world.pg.execute(
            "CREATE TABLE app.support_tickets (id bigint PRIMARY KEY, user_id bigint REFERENCES app.users (id), "
            "contact text NOT NULL, body text NOT NULL)"
        )
        world.pg.execute(
            "CREATE TABLE app.upload_notes (id bigint PRIMARY KEY, upload_id bigint NOT NULL REFERENCES app.user_uploads (id))"
        )
        for uid, n in ((SUBJECT_ID, 1), (1, 2)):
            world.pg.execute(
                "INSERT INTO app.support_tickets VALUES (%s, %s, %s, 'my card number is ...')",
                (n, uid, f"{uid}@mail.example"),
            )
            world.pg.execute(
                "INSERT INTO app.upload_notes SELECT id * 10, id FROM app.user_uploads WHERE user_id = %s",
                (uid,),
            )
        import yaml

        from data_lifecycle.erasure.subject_map import DEFAULT_SUBJECT_MAP_FILE

        tables = yaml.safe_load(DEFAULT_SUBJECT_MAP_FILE.read_text())["tables"]
        tables.insert(
            0,
            {
                "table": "app.support_tickets",
                "column": "user_id",
                "action": "mask",
                "mask": [
                    {"column": "user_id", "strategy": "null"},
                    {"column": "contact", "strategy": "keyed_hash"},
                    {"column": "body", "strategy": "fixed", "value": "[erased]"},
                ],
            },
        )
        tables.append(
            {
                "table": "app.upload_notes",
                "column": "upload_id",
                "via": [{"table": "app.user_uploads", "key": "id", "column": "user_id"}],
            }
        )
        world.map_path = write_map(tmp_path / "m.yaml", world.bucket, tables=tables)

        _, counts, _ = _erase(world.run())

        assert counts["app.upload_notes"] == 2 and counts["app.support_tickets"] == 1
        rows = world.pg.execute(
            "SELECT id, user_id, contact, body FROM app.support_tickets ORDER BY id"
        ).fetchall()
        assert rows[0][1] is None and rows[0][3] == "[erased]"
        assert rows[0][2] == world.keys.label_hash(f"app.support_tickets.contact:{SUBJECT_ID}")
        assert rows[1] == (2, 1, "1@mail.example", "my card number is ...")
        assert world.pg.execute("SELECT count(*) FROM app.upload_notes").fetchone()[0] == 2

    def test_a_mask_that_does_not_fit_the_column_is_refused_before_any_change(self, world, tmp_path):
        import yaml

        from data_lifecycle.erasure.subject_map import DEFAULT_SUBJECT_MAP_FILE

        tables = yaml.safe_load(DEFAULT_SUBJECT_MAP_FILE.read_text())["tables"]
        tables[0] = {
            "table": "app.sessions",
            "column": "user_id",
            "action": "mask",
            "mask": [{"column": "user_id", "strategy": "null"}],
        }
        world.map_path = write_map(tmp_path / "m.yaml", world.bucket, tables=tables)
        before = world.snapshot()
        with pytest.raises(
            LifecycleConfigError,
            match=r"'app\.sessions': masks 'user_id' with null but the column is NOT NULL",
        ):
            world.run().plan()
        assert world.snapshot() == before


class TestObjects:
    def test_legal_hold_stops_the_s3_step_and_the_ledger_says_why(self, world):
        run = world.run()
        run.plan()
        run.record(Status.STARTED)
        run.erase_tables()
        prefix = f"user_{SUBJECT_ID}/"
        held = next(v for v in object_versions(world.s3, world.bucket, prefix) if not v[2])
        world.s3.put_object_legal_hold(
            Bucket=world.bucket, Key=held[0], VersionId=held[1], LegalHold={"Status": "ON"}
        )
        before = object_versions(world.s3, world.bucket)

        with pytest.raises(ErasureBlocked) as err, run.failures_recorded():
            run.purge_objects()

        assert "legal hold" in str(err.value) and "Nothing in this bucket was deleted" in str(err.value)
        assert str(SUBJECT_ID) not in str(err.value)
        assert object_versions(world.s3, world.bucket) == before
        last = world.ledger()[-1]
        assert (
            last["status"] == "failed"
            and "ErasureBlocked" in last["reason"]
            and "legal hold" in last["reason"]
        )


class TestLedger:
    def test_a_request_id_reused_for_another_subject_is_refused(self, world):
        run = world.run("REQ-SHARED")
        run.record(Status.STARTED)
        other = world.run("REQ-SHARED")
        object.__setattr__(other, "subject_hash", world.keys.subject_hash(1))
        with pytest.raises(LifecycleConfigError, match=r"already recorded .* for another subject"):
            other.plan()

    def test_an_error_carrying_the_id_is_redacted(self, world):
        run = world.run()
        with pytest.raises(LifecycleError) as err, run.failures_recorded():
            raise psycopg.errors.ForeignKeyViolation(f"Key (id)=({SUBJECT_ID}) is still referenced")
        assert str(SUBJECT_ID) not in str(err.value) and "Key (id)=(<subject>)" in str(err.value)
        assert str(SUBJECT_ID) not in world.ledger_text()

    def test_is_append_only_for_owner_and_role(self, world):
        world.run().record(Status.STARTED)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            world.ledger_pg.execute("UPDATE app.erasure_ledger SET status = 'completed'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            world.ledger_pg.execute("DELETE FROM app.erasure_ledger")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            world.ledger_pg.execute("TRUNCATE app.erasure_ledger")
        with world.ledger_pg.transaction(force_rollback=True):
            world.ledger_pg.execute("SET LOCAL ROLE lifecycle_erasure")
            assert world.ledger_pg.execute("SELECT count(*) FROM app.erasure_ledger").fetchone()[0] == 1
            world.ledger_pg.execute(
                "INSERT INTO app.erasure_ledger (request_id, subject_hash, status, dry_run, dag_id, run_id) "
                "VALUES ('REQ-2', repeat('a', 64), 'started', false, 'd', 'r')"
            )
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                world.ledger_pg.execute("UPDATE app.erasure_ledger SET reason = 'x'")


class TestReplay:
    def test_refuses_an_id_reused_by_a_newer_account(self, world):
        # The seeded account was created on 2025-06-01, after this (earlier) erasure completed.
        entry = {
            "request_id": "REQ-0001",
            "subject_hash": world.keys.subject_hash(SUBJECT_ID),
            "subject_token": world.keys.seal(SUBJECT_ID),
            "completed_at": datetime(2025, 1, 1, tzinfo=UTC).isoformat(),
        }
        with pytest.raises(GuardrailTripped, match="belongs to another account"):
            replay_entry(
                world.smap, CONNS, world.keys, entry, dry_run=False, dag_id="replay_erasures", run_id="r"
            )
        assert world.snapshot()[f"app.users:{SUBJECT_ID}"] == 1
        assert world.ledger()[-1]["status"] == "failed"


def test_deadline_alert_lists_only_open_requests_past_the_threshold(world, slack_sink):
    anchor = datetime(2026, 6, 30, tzinfo=UTC)
    for request_id, uid, status, days_ago in (
        ("DSR-LATE", SUBJECT_ID, "started", 31),
        ("DSR-SOON", 1, "started", 26),
        ("DSR-NEW", 2, "started", 3),
        ("DSR-BLOCKED", 73_402_190, "failed", 27),
        ("DSR-DONE", 3, "started", 40),
        ("DSR-DONE", 3, "noop", 39),
    ):
        world.ledger_pg.execute(
            "INSERT INTO app.erasure_ledger (request_id, subject_hash, status, dry_run, dag_id, run_id, recorded_at) "
            "VALUES (%s, %s, %s, false, 'erase_user_data', 'r', %s)",
            (request_id, world.keys.subject_hash(uid), status, anchor - timedelta(days=days_ago)),
        )
    due = alert_due_requests(world.smap, CONNS, anchor)
    assert [(d["request_id"], d["overdue"]) for d in due] == [
        ("DSR-LATE", True),
        ("DSR-BLOCKED", False),
        ("DSR-SOON", False),
    ]
    text = "\n".join(slack_sink.texts())
    assert "DSR-LATE" in text and "OVERDUE" in text and "DSR-NEW" not in text
    assert str(SUBJECT_ID) not in text


class TestKillSwitch:
    """The switch is read again between targets: turned off mid-step, the step stops, recorded."""

    @pytest.fixture
    def switch_env(self, monkeypatch):
        from data_lifecycle.kill_switch import KILL_SWITCH_VARIABLE, RECHECK_ENV

        name = f"AIRFLOW_VAR_{KILL_SWITCH_VARIABLE.upper()}"
        monkeypatch.setenv(name, "true")
        monkeypatch.setenv(RECHECK_ENV, "0")
        return name

    def test_erase_tables_stops_after_the_batch_in_hand(self, world, switch_env, pg_database):
        import os
        import threading
        import time

        from data_lifecycle.erasure.planner import prepare_targets
        from data_lifecycle.exceptions import KillSwitchStopped
        from tests.operators.test_postgres import connect

        run = world.run()
        run.plan()
        run.record(Status.STARTED)
        first = prepare_targets(world.pg, world.smap)[0].target.table
        before = world.snapshot()
        assert before[f"{first}:{SUBJECT_ID}"] > 2  # more than one batch (size 2 in the test map)
        holder = connect(pg_database)
        holder.execute(f"LOCK TABLE {first} IN ACCESS EXCLUSIVE MODE")

        def off_while_the_first_batch_waits() -> None:
            with connect(pg_database, autocommit=True) as watcher:
                for _ in range(500):
                    waiting = watcher.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock'"
                    ).fetchone()[0]
                    if waiting:
                        break
                    time.sleep(0.002)
            os.environ[switch_env] = "false"
            holder.commit()

        thread = threading.Thread(target=off_while_the_first_batch_waits)
        thread.start()
        try:
            with (
                pytest.raises(KillSwitchStopped, match=r"after 0 target.*2 row") as err,
                run.failures_recorded(),
            ):
                run.erase_tables()
        finally:
            thread.join(5)
            holder.close()

        assert str(SUBJECT_ID) not in str(err.value)
        after = world.snapshot()
        changed = {t.split(":")[0] for t in before if t != "s3" and before[t] != after[t]}
        assert changed == {first}, changed
        assert after[f"{first}:{SUBJECT_ID}"] == before[f"{first}:{SUBJECT_ID}"] - 2  # one batch
        last = world.ledger()[-1]
        assert last["status"] == "failed" and "KillSwitchStopped" in last["reason"]

        os.environ[switch_env] = "true"  # back on: the rerun finishes the erasure
        run.erase_tables()
        run.purge_objects()
        run.verify()

    def test_purge_objects_stops_before_a_bucket(self, world, switch_env, monkeypatch):
        run = world.run()
        before = object_versions(world.s3, world.bucket)
        monkeypatch.setenv(switch_env, "false")
        from data_lifecycle.exceptions import KillSwitchStopped

        with pytest.raises(KillSwitchStopped, match="after 0 target"):
            run.purge_objects()
        assert object_versions(world.s3, world.bucket) == before


class TestFutureAnchor:
    """Issue 12, defect 1, for the erasure steps: a run or request dated after the run's own
    run_after is refused when the step builds its run, before anything is read or written."""

    @staticmethod
    def _context(request_id, *, anchor, run_after):
        from types import SimpleNamespace

        return {
            "params": {"request_id": request_id, "dry_run": False},
            "data_interval_end": anchor,
            "dag_run": SimpleNamespace(run_after=run_after, conf={}),
            "ti": SimpleNamespace(dag_id="erase_user_data"),
            "run_id": "manual__future",
        }

    def test_a_run_dated_ahead_erases_nothing(self, world):
        from data_lifecycle.erasure.steps import run_from_context

        request_id = world.register()
        now = datetime.now(UTC)
        before = world.snapshot()
        with pytest.raises(LifecycleConfigError, match="is after the run's run_after"):
            run_from_context(
                self._context(request_id, anchor=now + timedelta(days=400), run_after=now), CONNS
            )
        assert world.snapshot() == before
        run = run_from_context(self._context(request_id, anchor=now, run_after=now), CONNS)
        assert run.request.request_id == request_id

    def test_a_request_dated_ahead_erases_nothing(self, world):
        from data_lifecycle.erasure.intake import register
        from data_lifecycle.erasure.steps import run_from_context

        now = datetime.now(UTC)
        request_id = register(
            world.ledger_pg,
            "app.erasure_requests",
            world.keys,
            SUBJECT_ID,
            requested_at=now + timedelta(days=30),
        )
        before = world.snapshot()
        with pytest.raises(LifecycleConfigError, match="requested_at"):
            run_from_context(self._context(request_id, anchor=None, run_after=now), CONNS)
        assert world.snapshot() == before
