"""
### cleanup_expired_sessions

The daily garbage truck: at 02:00 UTC it removes login sessions whose `expires_at` is older than
the policy's grace period before the run's data interval end.

- **Targets**: `expired_sessions` in `include/policies/lifecycle.yaml`, one task per table.
- **How**: `PostgresBatchedDeleteOperator`, keyset batches of ~0.5 s, each its own short transaction
  with lock and statement timeouts. A rerun or backfill of the same date deletes nothing more.
- **Manual runs**: `dry_run` counts without deleting; `retention_days` overrides the policy (with a floor).
- **On failure**: Slack notice per failed try; a deadline alert if the run has not succeeded in time.
"""

from __future__ import annotations

from airflow.sdk import CronTriggerTimetable, dag

from data_lifecycle.dag_common import (
    batched_delete_kwargs,
    in_interval_order,
    lifecycle_dag_kwargs,
    run_summary,
)
from data_lifecycle.operators.postgres import PostgresBatchedDeleteOperator
from data_lifecycle.policy import load_policy

POLICY = load_policy()


@dag(
    schedule=CronTriggerTimetable("0 2 * * *", timezone="UTC"),
    **lifecycle_dag_kwargs(
        POLICY,
        dag_id="cleanup_expired_sessions",
        tags=["lifecycle", "postgres"],
        task_kind="postgres_delete",
        doc_md=__doc__,
    ),
)
def cleanup_expired_sessions() -> None:
    deletes = [
        PostgresBatchedDeleteOperator(**batched_delete_kwargs(POLICY, rule))
        for rule in POLICY.expired_sessions
    ]
    in_interval_order(deletes) >> run_summary(
        POLICY, dag_id="cleanup_expired_sessions", target_task_ids=[d.task_id for d in deletes]
    )


cleanup_expired_sessions()
