"""The PostgreSQL cleanup DAGs, end to end: only due rows go, archives verify, reruns do nothing."""

from __future__ import annotations

from datetime import timedelta

from data_lifecycle.archive import read_archive_rows
from tests.e2e.conftest import ANCHOR, count, run_dag

SESSIONS_DUE = "SELECT count(*) FROM app.sessions WHERE expires_at < %s"


class TestCleanupExpiredSessions:
    def test_deletes_only_due_sessions_and_rerun_changes_nothing(self, dagbag, dreamseed, pg):
        cutoff = ANCHOR - timedelta(days=1)
        total = count(pg, "SELECT count(*) FROM app.sessions")
        due = count(pg, SESSIONS_DUE, cutoff)
        assert 0 < due < total

        run = run_dag(dagbag, "cleanup_expired_sessions")
        assert run.state == "success"
        assert count(pg, SESSIONS_DUE, cutoff) == 0
        assert count(pg, "SELECT count(*) FROM app.sessions") == total - due
        # Rows exactly at or after the cutoff are kept.
        assert count(pg, "SELECT count(*) FROM app.sessions WHERE expires_at >= %s", cutoff) == total - due

        again = run_dag(dagbag, "cleanup_expired_sessions")
        assert again.state == "success"
        assert count(pg, "SELECT count(*) FROM app.sessions") == total - due
        audit = pg.execute(
            "SELECT rows_affected FROM app.cleanup_audit WHERE dag_id = 'cleanup_expired_sessions' ORDER BY id"
        ).fetchall()
        assert [r[0] for r in audit] == [due, 0]

    def test_backfill_of_three_days_deletes_what_was_due_at_each_interval_end(self, dagbag, dreamseed, pg):
        days = [ANCHOR - timedelta(days=3), ANCHOR - timedelta(days=2), ANCHOR - timedelta(days=1)]
        not_due = "SELECT count(*) FROM app.sessions WHERE expires_at >= %s"
        total = 0
        for day in days:
            cutoff = day - timedelta(days=1)
            assert count(pg, SESSIONS_DUE, cutoff) > 0, "each interval must find new rows due"
            expected = count(pg, not_due, cutoff)
            assert run_dag(dagbag, "cleanup_expired_sessions", logical_date=day).state == "success"
            # Exactly the rows due at this interval's end are gone; nothing due later was touched.
            assert count(pg, SESSIONS_DUE, cutoff) == 0
            total = count(pg, "SELECT count(*) FROM app.sessions")
            assert total == expected
        # Clearing the middle run re-does nothing.
        assert run_dag(dagbag, "cleanup_expired_sessions", logical_date=days[1]).state == "success"
        assert count(pg, "SELECT count(*) FROM app.sessions") == total


class TestArchiveAppLogs:
    def test_archives_then_deletes_old_logs(self, dagbag, dreamseed, pg, s3_client, lifecycle_env):
        cutoff = ANCHOR - timedelta(days=7)
        due_ids = {r[0] for r in pg.execute("SELECT id FROM app.app_logs WHERE created_at < %s", (cutoff,))}
        kept = count(pg, "SELECT count(*) FROM app.app_logs WHERE created_at >= %s", cutoff)
        assert due_ids and kept

        assert run_dag(dagbag, "archive_app_logs").state == "success"
        assert count(pg, "SELECT count(*) FROM app.app_logs") == kept

        bucket = lifecycle_env.bucket("dreamseed-logs")
        archived_ids: set[int] = set()
        pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="db-archive/")
        keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
        assert keys
        for key in keys:
            archived_ids |= {int(row["id"]) for row in read_archive_rows(s3_client, bucket, key)}
        assert archived_ids == due_ids

        rules = s3_client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        assert "lifecycle-db-archive-tiers" in {r["ID"] for r in rules}

        assert run_dag(dagbag, "archive_app_logs").state == "success"
        assert count(pg, "SELECT count(*) FROM app.app_logs") == kept


class TestPurgeSoftDeleted:
    def test_purges_users_and_their_children_and_audits(self, dagbag, dreamseed, pg):
        cutoff = ANCHOR - timedelta(days=30)
        doomed = [r[0] for r in pg.execute("SELECT id FROM app.users WHERE deleted_at < %s", (cutoff,))]
        recent = count(pg, "SELECT count(*) FROM app.users WHERE deleted_at >= %s", cutoff)
        users = count(pg, "SELECT count(*) FROM app.users")
        assert doomed and recent
        other_sessions = count(pg, "SELECT count(*) FROM app.sessions WHERE user_id <> ALL(%s)", doomed)

        assert run_dag(dagbag, "purge_soft_deleted").state == "success"
        assert count(pg, "SELECT count(*) FROM app.users") == users - len(doomed)
        assert count(pg, "SELECT count(*) FROM app.users WHERE deleted_at >= %s", cutoff) == recent
        for child in ("app.sessions", "app.user_uploads", "app.student_progress"):
            assert count(pg, f"SELECT count(*) FROM {child} WHERE user_id = ANY(%s)", doomed) == 0
        assert count(pg, "SELECT count(*) FROM app.sessions") == other_sessions
        audit = pg.execute(
            "SELECT target, rows_affected FROM app.cleanup_audit WHERE dag_id = 'purge_soft_deleted'"
        ).fetchall()
        assert audit == [("app.users", len(doomed))]

        assert run_dag(dagbag, "purge_soft_deleted").state == "success"
        assert count(pg, "SELECT count(*) FROM app.users") == users - len(doomed)
