"""``make demo``: load DreamSeed data, run every DAG once at a date where data is due, report.

The DAGs run in-process with ``dag.test()`` against the local stack, at one logical date (the
"anchor") a few months ahead: S3 stamps objects with the time they are written, so only a run
that far ahead finds the demo objects old enough to archive and expire. PostgreSQL rows are
generated relative to the same anchor.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from include.dreamseed.generate import Sizes, add_months, load_postgres, load_s3, month_start
from include.dreamseed.report import render_report, slack_file, slack_texts_since, take_snapshot

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
# Order matters only for the story: deletes first, then the vacuum that follows them.
RUN_ORDER = (
    "cleanup_expired_sessions",
    "archive_app_logs",
    "purge_soft_deleted",
    "cleanup_s3_objects",
    "apply_storage_tiers",
    "lifecycle_inventory",
    "maintain_partitions",
    "vacuum_analyze",
    "erase_user_data",
    "erasure_deadline_check",
    "replay_erasures",
)


def run_conf(dag_id: str, started: datetime) -> dict[str, Any] | None:
    """Parameters of the manual-only DAGs: erase one (not soft-deleted) user for real, then replay
    the erasures completed since the demo started, as after a backup restore."""
    if dag_id == "erase_user_data":
        from data_lifecycle.erasure.intake import register_request

        # Registered first (the id sealed with the erasure key); the run's conf names the request only.
        return {"request_id": register_request(42, requested_by="demo"), "dry_run": False}
    if dag_id == "replay_erasures":
        return {"since": started.isoformat(), "dry_run": False}
    return None


def demo_anchor(now: datetime | None = None) -> datetime:
    """The first of the month five months ahead, at the current time of day (UTC).

    Every demo object is 120+ days old then. The time of day makes each demo's logical date new,
    so its DAG runs never collide with an earlier demo's runs in the metadata DB.
    """
    now = now or datetime.now(UTC)
    return add_months(month_start(now), 5) + (now - now.replace(hour=0, minute=0, second=0, microsecond=0))


def anchor_note(anchor: datetime) -> str:
    """Why the Airflow UI shows the demo's runs in the future, with negative durations."""
    return (
        f"\nThe demo's runs are dated {anchor:%Y-%m-%d %H:%M} UTC (logical date and data interval), months"
        " ahead so that the S3 objects written now are old enough by then. The Airflow UI measures"
        " some durations from that date, so it shows these runs in the future with negative"
        " durations; their real run times are the seconds listed above. Scheduled runs and"
        " backfills read normally."
    )


def use_demo_policy() -> None:
    """The shipped policy with retry delays cut to seconds, so a failing task shows in the report
    at once instead of after three backoff waits of five minutes and more."""
    from data_lifecycle.policy import DEFAULT_POLICY_FILE, POLICY_FILE_ENV

    text = DEFAULT_POLICY_FILE.read_text()
    text = text.replace("retry_delay_seconds: 300", "retry_delay_seconds: 1")
    text = text.replace("max_retry_delay_seconds: 3600", "max_retry_delay_seconds: 2")
    path = Path(".local") / "demo_policy.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    os.environ[POLICY_FILE_ENV] = str(path.resolve())


def run_dags(anchor: datetime) -> dict[str, str]:
    from airflow.dag_processing.dagbag import DagBag

    from devstack.dag_runner import test_run

    bag = DagBag(dag_folder=str(DAGS_FOLDER), safe_mode=False)
    if bag.import_errors:
        for path, err in bag.import_errors.items():
            print(f"IMPORT ERROR {path}:\n{err}")
        raise SystemExit("DAG files failed to import; fix them before the demo")
    order = [d for d in RUN_ORDER if d in bag.dags] + sorted(set(bag.dags) - set(RUN_ORDER))
    results: dict[str, str] = {}
    started_at = datetime.now(UTC)
    if "lifecycle_inventory" in bag.dags:
        # The day before: the estate as it was before this cleanup, for the page's storage chart.
        print("--> running lifecycle_inventory the day before, as the baseline", flush=True)
        baseline = anchor - timedelta(days=1)
        test_run(
            bag.dags["lifecycle_inventory"], logical_date=baseline, run_type="scheduled", run_after=baseline
        )
    for dag_id in order:
        started = time.monotonic()
        print(f"--> running {dag_id} at {anchor.isoformat()}", flush=True)
        dag = bag.dags[dag_id]
        # Scheduled DAGs run as the scheduler runs them; the manual-only ones as a person would.
        run_type = "manual" if dag.schedule is None else "scheduled"
        # The demo plays a day months ahead, so its runs start then (run_after), as the scheduler's would.
        dag_run = test_run(
            dag, logical_date=anchor, conf=run_conf(dag_id, started_at), run_type=run_type, run_after=anchor
        )
        state = str(getattr(dag_run, "state", "unknown"))
        results[dag_id] = f"{state} ({time.monotonic() - started:.1f} s)"
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="data size factor (1 = demo size)")
    args = parser.parse_args()

    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    anchor = demo_anchor()
    conn = PostgresHook(postgres_conn_id="lifecycle_postgres").get_conn()
    conn.autocommit = True
    s3 = S3Hook(aws_conn_id="lifecycle_aws").get_conn()

    started = time.monotonic()
    print(
        f"Loading DreamSeed demo data (scale {args.scale}) relative to {anchor.isoformat()} ...", flush=True
    )
    with conn.transaction():
        load_postgres(conn, anchor, Sizes(args.scale))
    load_s3(s3, Sizes(args.scale))
    print(f"loaded in {time.monotonic() - started:.1f} s", flush=True)

    use_demo_policy()
    sink = slack_file()
    offset = sink.stat().st_size if sink.exists() else 0
    before = take_snapshot(conn, s3, sink)
    results = run_dags(anchor)
    after = take_snapshot(conn, s3, sink)
    print()
    print(render_report(before, after, slack_texts_since(sink, offset), results))
    print(anchor_note(anchor))
    print(f"\nDemo finished in {time.monotonic() - started:.1f} s")
    failed = [d for d, state in results.items() if not state.startswith("success")]
    if failed:
        raise SystemExit(f"DAG runs that did not succeed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
