"""
### purge_soft_deleted

The monthly incinerator, 1st of the month 04:00 UTC: rows soft-deleted (`deleted_at`) longer ago
than the grace period (30 days) are removed for good. Rows of child tables that reference them are
deleted first, in the same transaction as their parents, so nothing is orphaned and no foreign key
fails. Every purge is recorded in `app.cleanup_audit` by the summary task.

- **Targets**: `soft_deleted` in `include/policies/lifecycle.yaml` (table, children, grace period).
- **Guardrail**: a run that would remove more than `max_delete_fraction` of a table is refused.
- **Manual runs**: `dry_run`, `retention_days` (with a floor).
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
    schedule=CronTriggerTimetable("0 4 1 * *", timezone="UTC"),
    **lifecycle_dag_kwargs(
        POLICY,
        dag_id="purge_soft_deleted",
        tags=["lifecycle", "postgres"],
        task_kind="postgres_delete",
        doc_md=__doc__,
    ),
)
def purge_soft_deleted() -> None:
    purges = [
        PostgresBatchedDeleteOperator(**batched_delete_kwargs(POLICY, rule)) for rule in POLICY.soft_deleted
    ]
    in_interval_order(purges) >> run_summary(
        POLICY, dag_id="purge_soft_deleted", target_task_ids=[p.task_id for p in purges]
    )


purge_soft_deleted()
