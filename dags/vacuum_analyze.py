"""
### vacuum_analyze

The sewage plant: after the delete DAGs have changed tables (their tasks emit each table's asset),
and in any case daily at 06:30 UTC, `VACUUM (ANALYZE, SKIP_LOCKED)` runs on the tables whose dead
tuples pass `dead_tuple_threshold + scale_factor * rows` (autovacuum's formula, with our settings),
skipping tables autovacuum is already working on. VACUUM FULL is never run from here.

- **Targets**: `vacuum` in `include/policies/lifecycle.yaml` (schemas, or an explicit table list).
- **Reports**: dead tuples and table size before and after, and tables with autovacuum disabled.
- **Manual runs**: `dry_run` lists the tables that would be vacuumed.
"""

from __future__ import annotations

from functools import reduce
from operator import or_

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag

from data_lifecycle.dag_common import DRY_RUN_TEMPLATE, lifecycle_dag_kwargs, run_summary, table_asset
from data_lifecycle.operators.postgres import PostgresVacuumAnalyzeOperator
from data_lifecycle.policy import load_policy

POLICY = load_policy()
CHANGED_TABLES = reduce(or_, [table_asset(POLICY.postgres_conn_id, t) for t in POLICY.tables_with_deletes()])


@dag(
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("30 6 * * *", timezone="UTC"),
        assets=CHANGED_TABLES,
    ),
    **lifecycle_dag_kwargs(
        POLICY,
        dag_id="vacuum_analyze",
        tags=["lifecycle", "postgres", "maintenance"],
        task_kind="vacuum",
        doc_md=__doc__,
        retention_override=False,
    ),
)
def vacuum_analyze() -> None:
    vacuum = PostgresVacuumAnalyzeOperator(
        task_id="vacuum_analyze_tables",
        postgres_conn_id=POLICY.postgres_conn_id,
        schemas=list(POLICY.vacuum.schemas),
        tables=list(POLICY.vacuum.tables) or None,
        threshold=POLICY.vacuum.dead_tuple_threshold,
        scale_factor=POLICY.vacuum.scale_factor,
        dry_run=DRY_RUN_TEMPLATE,
        pool="lifecycle_postgres_heavy",
    )
    vacuum >> run_summary(POLICY, dag_id="vacuum_analyze", target_task_ids=[vacuum.task_id])


vacuum_analyze()
