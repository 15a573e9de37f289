"""
### erasure_deadline_check

Daily watch over the legal deadline of erasure requests (30 days by default, set in
`include/policies/erasure_subject_map.yaml`).

- **What**: every request in the erasure ledger with no real `completed` or `noop` entry whose
  request time (the `requested_at` param, else its first `started` entry) is `alert_after_days` or
  more before the run's data interval end.
- **Alert**: one Slack message listing request ids, subject hash prefixes, age and deadline, with
  overdue requests first. Nothing is sent when all requests are on time.
- **Never the wall clock**: ages are measured from the run's data interval end, so a rerun of a day
  reports the same requests.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import CronTriggerTimetable, dag, task

from data_lifecycle.dag_common import lifecycle_dag_kwargs
from data_lifecycle.erasure.params import Connections
from data_lifecycle.erasure.subject_map import load_subject_map
from data_lifecycle.policy import load_policy

DAG_ID = "erasure_deadline_check"
POLICY = load_policy()
CONNS = Connections.from_policy(POLICY, load_subject_map())


@dag(
    schedule=CronTriggerTimetable("30 7 * * *", timezone="UTC"),
    **lifecycle_dag_kwargs(
        POLICY,
        dag_id=DAG_ID,
        tags=["erasure", "compliance"],
        task_kind="report",
        doc_md=__doc__,
        retention_override=False,
    ),
)
def erasure_deadline_check() -> None:
    @task
    def check_open_requests(**context: Any) -> list[dict[str, Any]]:
        from data_lifecycle.cutoff import run_anchor
        from data_lifecycle.erasure.steps import alert_due_requests

        return alert_due_requests(load_subject_map(), CONNS, run_anchor(context))

    check_open_requests()


erasure_deadline_check()
