"""
### cleanup_s3_objects

The monthly S3 garbage truck, 1st of the month 05:00 UTC: objects under the declared temporary
and export prefixes whose `LastModified` is older than the retention (90 days) are deleted.

- **Targets**: `s3_expiry` in `include/policies/lifecycle.yaml`, one task per bucket prefix.
- **Guardrails**: an empty prefix (the whole bucket) is refused unless the rule allows it;
  `max_objects` caps one run; versions and delete markers go only when the rule asks.
- **Manual runs**: `dry_run`, `retention_days` (with a floor).
"""

from __future__ import annotations

from airflow.sdk import CronTriggerTimetable, dag

from data_lifecycle.dag_common import expiry_kwargs, in_interval_order, lifecycle_dag_kwargs, run_summary
from data_lifecycle.operators.s3 import S3ExpireObjectsOperator
from data_lifecycle.policy import load_policy

POLICY = load_policy()


@dag(
    schedule=CronTriggerTimetable("0 5 1 * *", timezone="UTC"),
    **lifecycle_dag_kwargs(
        POLICY,
        dag_id="cleanup_s3_objects",
        tags=["lifecycle", "s3"],
        task_kind="s3",
        doc_md=__doc__,
    ),
)
def cleanup_s3_objects() -> None:
    expiries = [S3ExpireObjectsOperator(**expiry_kwargs(POLICY, rule)) for rule in POLICY.s3_expiry]
    in_interval_order(expiries) >> run_summary(
        POLICY, dag_id="cleanup_s3_objects", target_task_ids=[e.task_id for e in expiries]
    )


cleanup_s3_objects()
