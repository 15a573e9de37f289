"""
### maintain_partitions

Daily 01:00 UTC, for every monthly range-partitioned table in the policy: first premake the next
months (default 3), then, as a separate task, detach and drop the partitions whose upper bound is
older than the retention (default 13 months). A retention failure never undoes the premake.

- **Targets**: `partitions` in `include/policies/lifecycle.yaml`.
- **How**: bounds are read from the catalog, never from names; detach is `CONCURRENTLY` when the
  parent has no DEFAULT partition; a detach left pending by a crash is finalized on the next run;
  a partition still holding in-retention rows, or the last partition, is never dropped.
- **Manual runs**: `dry_run` lists what would be created and dropped.
"""

from __future__ import annotations

from airflow.sdk import CronTriggerTimetable, dag

from data_lifecycle.dag_common import (
    in_interval_order,
    lifecycle_dag_kwargs,
    partition_premake_kwargs,
    partition_retention_kwargs,
    run_summary,
)
from data_lifecycle.operators.postgres import (
    PostgresPartitionPremakeOperator,
    PostgresPartitionRetentionOperator,
)
from data_lifecycle.policy import load_policy

POLICY = load_policy()


@dag(
    schedule=CronTriggerTimetable("0 1 * * *", timezone="UTC"),
    **lifecycle_dag_kwargs(
        POLICY,
        dag_id="maintain_partitions",
        tags=["lifecycle", "postgres", "partitions"],
        task_kind="postgres_ddl",
        doc_md=__doc__,
        retention_override=False,
    ),
)
def maintain_partitions() -> None:
    targets = []
    for rule in POLICY.partitions:
        premake = PostgresPartitionPremakeOperator(**partition_premake_kwargs(POLICY, rule))
        retention = PostgresPartitionRetentionOperator(**partition_retention_kwargs(POLICY, rule))
        premake >> retention
        targets += [premake, retention]
    in_interval_order(targets) >> run_summary(
        POLICY, dag_id="maintain_partitions", target_task_ids=[t.task_id for t in targets]
    )


maintain_partitions()
