"""
### lifecycle_inventory

The weighbridge, daily 06:00 UTC, after the tiers are applied: for every bucket the policy names,
objects and bytes per top-level prefix and storage class, and how old they are (0-29, 30-89,
90-179, 180-364, 365+ days), recorded in `app.s3_inventory` for the Data Lifecycle page.

- **Source**: a listing of the bucket, or its S3 Inventory report (CSV manifest) when
  `inventory.reports` in `include/policies/lifecycle.yaml` names one.
- **Ages** are counted at the run's data interval end: a rerun of a day records the same figures
  and replaces that day's rows.
- **Read only** on S3: nothing is deleted or moved.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import CronTriggerTimetable, dag, task

from data_lifecycle.dag_common import S3_POOL, lifecycle_dag_kwargs
from data_lifecycle.policy import load_policy

POLICY = load_policy()


@dag(
    schedule=CronTriggerTimetable("0 6 * * *", timezone="UTC"),
    **lifecycle_dag_kwargs(
        POLICY,
        dag_id="lifecycle_inventory",
        tags=["lifecycle", "s3"],
        task_kind="report",
        doc_md=__doc__,
        retention_override=False,
    ),
)
def lifecycle_inventory() -> None:
    for bucket in POLICY.buckets():

        @task(task_id=f"inventory_{bucket.replace('-', '_').replace('.', '_')}", pool=S3_POOL)
        def count_bucket(bucket: str = bucket, **context: Any) -> dict[str, Any]:
            from data_lifecycle.alerts import effective_dry_run
            from data_lifecycle.cutoff import run_anchor
            from data_lifecycle.inventory import take_inventory

            return take_inventory(
                bucket=bucket,
                report=POLICY.inventory.report_for(bucket),
                as_of=run_anchor(context),
                depth=POLICY.inventory.prefix_depth,
                aws_conn_id=POLICY.aws_conn_id,
                postgres_conn_id=POLICY.postgres_conn_id,
                dry_run=effective_dry_run(context.get("dag_run"), context["params"]),
            )

        count_bucket()


lifecycle_inventory()
