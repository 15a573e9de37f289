"""
### replay_erasures

Keeps erased data erased after a database restore: re-applies every erasure the ledger records as
completed since the time given (the backup's time), idempotently.

- **When**: by hand, right after restoring a backup of the application database, before the
  application writes again (so no new account can reuse a restored id).
- **How**: the ledger keeps each subject as an HMAC and a Fernet token sealed with a key derived
  from the erasure HMAC key; the replay unseals the id, checks it against the HMAC, and runs the
  same plan → tables → S3 → verify steps as `erase_user_data`, one mapped task per request.
- **Ledger**: `replayed` with counts when the restore brought data back, `noop` when nothing was
  left, `failed` with the reason otherwise. A restored account created after the erasure (a reused
  id) is refused for manual review.
- **Params**: `since` (required, ISO 8601 with timezone); `dry_run` is on by default.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import dag, task

from data_lifecycle.alerts import kill_switch_guard
from data_lifecycle.dag_common import POSTGRES_POOL, lifecycle_dag_kwargs
from data_lifecycle.erasure.params import Connections, replay_params
from data_lifecycle.erasure.subject_map import load_subject_map
from data_lifecycle.policy import load_policy

DAG_ID = "replay_erasures"
POLICY = load_policy()
SUBJECT_MAP = load_subject_map()
CONNS = Connections.from_policy(POLICY, SUBJECT_MAP)

dag_kwargs = lifecycle_dag_kwargs(
    POLICY,
    dag_id=DAG_ID,
    tags=["erasure", "compliance"],
    task_kind="postgres_delete",
    doc_md=__doc__,
    retention_override=False,
    params=replay_params(),
)


@dag(schedule=None, **dag_kwargs)
def replay_erasures() -> None:
    @task
    def check_coverage() -> dict[str, Any]:
        from data_lifecycle.erasure.steps import coverage_report

        return coverage_report(CONNS)

    @task
    def find_completed_erasures(**context: Any) -> list[dict[str, Any]]:
        from data_lifecycle.erasure.steps import completed_erasures

        return completed_erasures(load_subject_map(), CONNS, context["params"]["since"])

    @task(pre_execute=kill_switch_guard, pool=POSTGRES_POOL, map_index_template="{{ entry.request_id }}")
    def replay_erasure(entry: dict[str, Any], **context: Any) -> dict[str, Any]:
        from data_lifecycle.erasure.steps import replay_entry, subject_keys

        smap = load_subject_map()
        return replay_entry(
            smap,
            CONNS,
            subject_keys(smap),
            entry,
            dry_run=bool(context["params"]["dry_run"]),
            dag_id=context["ti"].dag_id,
            run_id=context["run_id"],
        )

    @task(task_id="run_summary", trigger_rule="all_done", retries=0)
    def run_summary(entries: list[dict[str, Any]] | None, **context: Any) -> list[dict[str, Any]]:
        from data_lifecycle.erasure.steps import replay_summary

        return replay_summary(load_subject_map(), CONNS, DAG_ID, context["run_id"], entries)

    entries = find_completed_erasures()
    check_coverage() >> entries
    replayed = replay_erasure.expand(entry=entries)
    replayed >> run_summary(entries)


replay_erasures()
