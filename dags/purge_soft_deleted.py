"""
### purge_soft_deleted

The monthly incinerator, 1st of the month 04:00 UTC: rows soft-deleted (`deleted_at`) longer ago
than the grace period (30 days) are removed for good. Rows of child tables that reference them are
deleted first, in the same transaction as their parents, so nothing is orphaned and no foreign key
fails. Every purge is recorded in `app.cleanup_audit` by the summary task.

- **Targets**: `soft_deleted` in `include/policies/lifecycle.yaml` (table, children, grace period).
- **Objects**: for the subject table of the erasure map (`app.users`), every object version under
  the map's prefixes (`user_{user_id}/`) of each user being purged is deleted first, in the same
  run: `app.user_uploads`, the only index of those objects, goes with the rows. A version under
  legal hold fails that task, and the rows wait.
- **Guardrail**: a run that would remove more than `max_delete_fraction` of a table is refused.
- **Manual runs**: `dry_run`, `retention_days` (with a floor).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import CronTriggerTimetable, dag, task

from data_lifecycle.dag_common import (
    S3_POOL,
    batched_delete_kwargs,
    destructive,
    in_interval_order,
    lifecycle_dag_kwargs,
    retention_template,
    run_summary,
)
from data_lifecycle.erasure.subject_map import load_subject_map
from data_lifecycle.operators.postgres import PostgresBatchedDeleteOperator
from data_lifecycle.policy import load_policy

POLICY = load_policy()
SUBJECT_MAP = load_subject_map()


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
    purges, object_purges = [], []
    for rule in POLICY.soft_deleted:
        purge = PostgresBatchedDeleteOperator(**batched_delete_kwargs(POLICY, rule))
        if rule.table == SUBJECT_MAP.subject.table and SUBJECT_MAP.buckets:
            objects = task(task_id=f"purge_objects_{rule.id}", **destructive(pool=S3_POOL))(_purge_objects)
            purge_objects = objects(rule_id=rule.id, retention_days=retention_template(rule))
            purge_objects >> purge
            object_purges.append(purge_objects)
        purges.append(purge)
    # Object purges delete too: they wait for earlier intervals like the row purges.
    in_interval_order([*object_purges, *purges])
    purges >> run_summary(POLICY, dag_id="purge_soft_deleted", target_task_ids=[p.task_id for p in purges])


def _purge_objects(rule_id: str, retention_days: str, **context: Any) -> dict[str, Any]:
    from data_lifecycle.alerts import effective_dry_run
    from data_lifecycle.erasure.soft_deleted import purge_objects_of_due_subjects

    rule = next(r for r in POLICY.soft_deleted if r.id == rule_id)
    return purge_objects_of_due_subjects(
        SUBJECT_MAP,
        rule,
        context,
        postgres_conn_id=POLICY.postgres_conn_id,
        aws_conn_id=POLICY.aws_conn_id,
        retention_days=retention_days,
        dry_run=effective_dry_run(context.get("dag_run"), context["params"]),
    )


purge_soft_deleted()
