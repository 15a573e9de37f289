"""The page's queries on recorded facts: a rerun of a run's summary records rows again, counted once."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from data_lifecycle.facts import write_run_facts
from data_lifecycle.ui import queries

NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)


def test_a_rerun_summary_counts_once(pg: Any) -> None:
    pg.execute("CREATE TABLE app.t (x int)")
    pg.execute("INSERT INTO app.t SELECT generate_series(1, 1000)")
    for _ in range(2):  # run_summary cleared and run again: the same facts recorded twice
        write_run_facts(
            pg,
            dag_id="d",
            run_id="r",
            before={"delete_t": {"app.t": 10_000_000}},
            s3={"expire_x": [("b", "tmp/", "removed", "STANDARD", None, 700)]},
        )
        pg.execute(
            "INSERT INTO app.cleanup_audit (dag_id, run_id, task_id, target, action, rows_affected, summary)"
            " VALUES ('d', 'r', 'delete_t', 'app.t', 'delete', 5, '{\"deleted\": 5}')"
        )
    size = pg.execute("SELECT pg_total_relation_size('app.t')").fetchone()[0]
    tables = queries.postgres_bytes(pg)["tables"]
    assert tables == [{"table": "app.t", "measurements": 1, "freed": 10_000_000 - size, "size_now": size}]
    s3 = queries.s3_bytes(pg, NOW)
    assert s3["removed_total"] == 700
    assert [c["bytes"] for c in queries.s3_changes_by_day(pg)] == [700]
    removals = queries.removals_per_day(pg, pg.execute("SELECT now()").fetchone()[0])
    assert sum(removals["rows"]) == 5


def test_open_erasure_requests_show_ids_and_deadlines_only(pg: Any) -> None:
    pg.execute(
        "INSERT INTO app.erasure_ledger (request_id, subject_hash, status, dry_run, dag_id, run_id, requested_at)"
        " VALUES ('REQ-open', repeat('c', 64), 'started', false, 'e', 'r', '2026-11-01'),"
        " ('REQ-done', repeat('d', 64), 'started', false, 'e', 'r', '2026-11-20'),"
        " ('REQ-done', repeat('d', 64), 'completed', false, 'e', 'r', '2026-11-20'),"
        " ('REQ-dry', repeat('e', 64), 'completed', true, 'e', 'r', '2026-11-28')"
    )
    out = queries.erasure_requests(pg, "app.erasure_ledger", 30, NOW)
    assert (out["open"], out["overdue"], out["due_within_7_days"]) == (2, 1, 0)
    assert [r["request_id"] for r in out["requests"]] == ["REQ-open", "REQ-dry"]
    assert out["requests"][0]["deadline"].startswith(date(2026, 12, 1).isoformat())
    assert "c" * 16 not in repr(out) and "e" * 16 not in repr(out)
