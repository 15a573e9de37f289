"""
### apply_storage_tiers

The recycling centre, daily 05:30 UTC: each declared bucket gets its storage-tier lifecycle rules
(hot STANDARD → warm STANDARD_IA at 30 days → cold GLACIER at 90 → deep DEEP_ARCHIVE at 365),
merged by rule ID with whatever else the bucket has. Where the policy asks for cross-bucket
archiving, old objects are copied to the archive bucket in a cold class, verified (size and
SHA-256), and only then deleted from the source; an archive object is never replaced, versioned
sources are refused, and the archive bucket's own rules (declared in the policy) expire archives.

- **Targets**: `storage_tiers` and `object_archives` in `include/policies/lifecycle.yaml`.
- **No-op runs**: when a bucket's rules are already right, no PUT is made.
- **Manual runs**: `dry_run` shows the rule diff and the objects that would move.
"""

from __future__ import annotations

from airflow.sdk import CronTriggerTimetable, dag

from data_lifecycle.dag_common import (
    in_interval_order,
    lifecycle_dag_kwargs,
    lifecycle_kwargs,
    object_archive_kwargs,
    run_summary,
)
from data_lifecycle.operators.s3 import S3ApplyLifecycleOperator, S3GlacierCopyThenDeleteOperator
from data_lifecycle.policy import load_policy

POLICY = load_policy()


@dag(
    schedule=CronTriggerTimetable("30 5 * * *", timezone="UTC"),
    **lifecycle_dag_kwargs(
        POLICY,
        dag_id="apply_storage_tiers",
        tags=["lifecycle", "s3", "archive"],
        task_kind="s3",
        doc_md=__doc__,
    ),
)
def apply_storage_tiers() -> None:
    tiers = [S3ApplyLifecycleOperator(**lifecycle_kwargs(POLICY, entry)) for entry in POLICY.storage_tiers]
    archives = [
        S3GlacierCopyThenDeleteOperator(**object_archive_kwargs(POLICY, rule))
        for rule in POLICY.object_archives
    ]
    targets = [*tiers, *archives]
    in_interval_order(targets) >> run_summary(
        POLICY, dag_id="apply_storage_tiers", target_task_ids=[t.task_id for t in targets]
    )


apply_storage_tiers()
