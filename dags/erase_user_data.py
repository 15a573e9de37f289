"""
### erase_user_data

The incinerator with an audit trail: erases one user's personal data everywhere it is mapped,
provably, within the legal deadline. Triggered by hand (or the API) per request.

- **Targets**: `include/policies/erasure_subject_map.yaml` - tables (delete, or mask with null /
  fixed / keyed hash) and S3 key prefixes such as `user_{user_id}/`.
- **Steps**: coverage check (fails on any unmapped column referencing `app.users`) → plan (rows and
  object versions per target, foreign-key order, Object Lock check) → ledger `started` → tables
  (children first, keyset batches in short transactions) → S3 (every version and delete marker;
  refused if a version is under legal hold or retention) → verify (every target re-queried) →
  ledger `completed` (or `noop` when nothing was left, or `failed` with the reason) → Slack summary.
- **Params**: `request_id` only (required, validated before the run is created): register the
  request first with `python -m data_lifecycle.erasure.intake register --user-id N`, which seals
  the id with the erasure key and prints the request id. `dry_run` is on by default: look at the
  plan first, then trigger again with it off.
- **Privacy**: the user id is never in `dag_run.conf`; the ledger, XCom, logs and Slack name the
  request id and a keyed-hash prefix of the subject, never the user id or email.
- **Rerun**: the same request again finds nothing, changes nothing and records `noop`.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import dag, task

from data_lifecycle.alerts import kill_switch_guard
from data_lifecycle.dag_common import POSTGRES_POOL, S3_POOL, lifecycle_dag_kwargs
from data_lifecycle.erasure.params import Connections, erasure_params
from data_lifecycle.erasure.subject_map import load_subject_map
from data_lifecycle.policy import load_policy

DAG_ID = "erase_user_data"
POLICY = load_policy()
SUBJECT_MAP = load_subject_map()
CONNS = Connections.from_policy(POLICY, SUBJECT_MAP)

dag_kwargs = lifecycle_dag_kwargs(
    POLICY,
    dag_id=DAG_ID,
    tags=["erasure", "compliance"],
    task_kind="postgres_delete",
    doc_md=__doc__,
    retention_override=False,
    params=erasure_params(),
)


@dag(schedule=None, **dag_kwargs)
def erase_user_data() -> None:
    @task
    def check_coverage() -> dict[str, Any]:
        from data_lifecycle.erasure.steps import coverage_report

        return coverage_report(CONNS)

    @task
    def plan_erasure(**context: Any) -> dict[str, Any]:
        from data_lifecycle.erasure.steps import run_from_context

        run = run_from_context(context, CONNS)
        with run.failures_recorded():
            return run.plan()

    @task
    def record_started(plan: dict[str, Any], **context: Any) -> dict[str, Any]:
        from data_lifecycle.erasure.ledger import Status
        from data_lifecycle.erasure.steps import run_from_context

        if plan["total_rows"] or plan["total_objects"]:
            run_from_context(context, CONNS).record(Status.STARTED, counts={"planned": plan})
        return {"work": bool(plan["total_rows"] or plan["total_objects"])}

    @task(pre_execute=kill_switch_guard, pool=POSTGRES_POOL)
    def erase_tables(**context: Any) -> dict[str, int]:
        from data_lifecycle.erasure.steps import run_from_context

        run = run_from_context(context, CONNS)
        with run.failures_recorded():
            return run.erase_tables()

    @task(pre_execute=kill_switch_guard, pool=S3_POOL)
    def purge_s3_versions(**context: Any) -> dict[str, Any]:
        from data_lifecycle.erasure.steps import run_from_context

        run = run_from_context(context, CONNS)
        with run.failures_recorded():
            return run.purge_objects()

    @task
    def verify_erasure(**context: Any) -> dict[str, int]:
        from data_lifecycle.erasure.steps import run_from_context

        run = run_from_context(context, CONNS)
        with run.failures_recorded():
            return run.verify()

    @task(trigger_rule="all_done")
    def record_outcome(**context: Any) -> dict[str, Any]:
        from data_lifecycle.erasure.steps import ERASE_STEPS, run_from_context
        from data_lifecycle.erasure.steps import record_outcome as record

        results = {step: context["ti"].xcom_pull(task_ids=step) for step in ERASE_STEPS}
        return record(run_from_context(context, CONNS), results)

    @task(task_id="run_summary", trigger_rule="all_done", retries=0)
    def run_summary(**context: Any) -> dict[str, Any] | None:
        from data_lifecycle.erasure.steps import post_slack, summary_text
        from data_lifecycle.exceptions import LifecycleError

        outcome = context["ti"].xcom_pull(task_ids="record_outcome")
        post_slack(CONNS.slack, summary_text(DAG_ID, context["run_id"], outcome, SUBJECT_MAP.deadline_days))
        if not outcome or outcome["status"] == "failed":
            raise LifecycleError(
                f"Erasure did not complete: {(outcome or {}).get('reason', 'outcome not recorded')}"
            )
        return outcome

    plan = plan_erasure()
    check_coverage() >> plan
    chain = record_started(plan) >> erase_tables() >> purge_s3_versions() >> verify_erasure()
    chain >> record_outcome() >> run_summary()


erase_user_data()
