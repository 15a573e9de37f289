"""
### archive_app_logs

The weekly recycling run, Sundays 03:00 UTC: application log rows older than the policy's
retention (7 days) are written to the logs bucket as gzip JSON lines, verified there (size,
checksum, row count), and only then deleted from PostgreSQL. The logs bucket's storage-tier
rules are applied in the same run.

- **Targets**: `app_logs` and the `storage_tiers` entries of the archive buckets in
  `include/policies/lifecycle.yaml`.
- **Safety**: an archive file is written under a key derived from table, cutoff and key range, so a
  rerun after a crash overwrites it; no row is deleted before its archive is verified.
- **Manual runs**: `dry_run`, `retention_days` (with a floor).
"""

from __future__ import annotations

from airflow.sdk import CronTriggerTimetable, dag

from data_lifecycle.dag_common import (
    batched_delete_kwargs,
    in_interval_order,
    lifecycle_dag_kwargs,
    lifecycle_kwargs,
    run_summary,
)
from data_lifecycle.operators.postgres import PostgresBatchedDeleteOperator
from data_lifecycle.operators.s3 import S3ApplyLifecycleOperator
from data_lifecycle.policy import load_policy

POLICY = load_policy()
ARCHIVE_BUCKETS = {rule.archive.bucket for rule in POLICY.app_logs if rule.archive}


@dag(
    schedule=CronTriggerTimetable("0 3 * * 0", timezone="UTC"),
    **lifecycle_dag_kwargs(
        POLICY,
        dag_id="archive_app_logs",
        tags=["lifecycle", "postgres", "s3", "archive"],
        task_kind="postgres_delete",
        doc_md=__doc__,
    ),
)
def archive_app_logs() -> None:
    archives = [
        PostgresBatchedDeleteOperator(**batched_delete_kwargs(POLICY, rule)) for rule in POLICY.app_logs
    ]
    tiers = [
        S3ApplyLifecycleOperator(**lifecycle_kwargs(POLICY, entry))
        for entry in POLICY.storage_tiers
        if entry.bucket in ARCHIVE_BUCKETS
    ]
    targets = [*archives, *tiers]
    in_interval_order(targets) >> run_summary(
        POLICY, dag_id="archive_app_logs", target_task_ids=[t.task_id for t in targets]
    )


archive_app_logs()
