"""What every lifecycle DAG shares: DAG arguments, Params, table assets and the run summary task.

A DAG file calls ``lifecycle_dag_kwargs(...)`` for its ``@dag`` arguments, wires one task per
policy target behind ``in_interval_order(...)`` (a run's targets start only when the run of the
previous interval is no longer running), and ends with ``run_summary(...)``, which runs whatever
happened upstream (``all_done``), records every target in the audit table (failed ones too), reports
it, posts the optional success summary to Slack, and fails the run if any target failed, so a run
is never green with residue left.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Asset, Param, task

from data_lifecycle.alerts import (
    APPROVED_TAGS,
    deadline_alert,
    effective_dry_run,
    kill_switch_guard,
    lifecycle_default_args,
)
from data_lifecycle.config_fields import MAX_DAYS
from data_lifecycle.exceptions import LifecycleConfigError
from data_lifecycle.facts import (
    BYTES_BEFORE_XCOM,
    bound_waits,
    record_bytes_before,
    s3_rows,
    write_run_facts,
)
from data_lifecycle.policy import Policy
from data_lifecycle.slack import post_to_slack

log = logging.getLogger(__name__)

# Every lifecycle DAG's first possible run; schedules never catch up before deployment.
START_DATE = datetime(2026, 1, 1, tzinfo=UTC)
AUDIT_TABLE = "app.cleanup_audit"
# Pools declared in airflow_settings.yaml (created by the local stack and by `astro dev`).
POSTGRES_POOL = "lifecycle_postgres_heavy"
S3_POOL = "lifecycle_s3_writes"
FAILED_STATES = frozenset({"failed", "upstream_failed"})
IN_ORDER_TASK_ID = "wait_for_earlier_runs"
# How often a run waiting for the previous interval's run looks again (LIFECYCLE_IN_ORDER_POKE_SECONDS,
# 1 to 600), and how long it waits at most.
IN_ORDER_POKE_ENV = "LIFECYCLE_IN_ORDER_POKE_SECONDS"
IN_ORDER_POKE_SECONDS = 10
IN_ORDER_TIMEOUT = timedelta(hours=24)


def table_asset(conn_id: str, table: str) -> Asset:
    """The asset a delete task emits when it changed ``table``; the vacuum DAG is scheduled on it.

    Named without a URI scheme on purpose: a scheme makes Airflow load every provider's URI
    handlers at parse time, which costs seconds.
    """
    return Asset(name=f"lifecycle_table/{conn_id}/{table}")


def lifecycle_params(*, retention_rules: Sequence[Any] | None) -> dict[str, Param]:
    """Params for manual runs: a dry run switch (ticked) and, where it makes sense, a bounded retention.

    The override may keep data longer than a rule says, never shorter than the rule's
    ``override_floor_days`` (its own retention unless the policy declares less). One override applies
    to every rule of the DAG, so the form's minimum is the highest of their floors; the form lists
    each rule's bound, and the task refuses again before it deletes anything.
    """
    params = {
        "dry_run": Param(
            True,
            type="boolean",
            title="Dry run",
            description="Manual runs count and log what would be removed and change nothing unless "
            "this is unticked. Scheduled runs, backfills and clears without it do the real work.",
        ),
    }
    if retention_rules:
        floor = max(_override_floor(rule) for rule in retention_rules)
        bounds = "; ".join(
            f"`{rule.id}`: policy {rule.retention_days}, at least {_override_floor(rule)}"
            for rule in retention_rules
        )
        params["retention_days"] = Param(
            None,
            type=["null", "integer"],
            minimum=floor,
            maximum=MAX_DAYS,
            title="Retention override (days)",
            description=f"Keep this many days instead of the policy's (at least {floor}). "
            f"Per rule (days): {bounds}.",
        )
    return params


def _override_floor(rule: Any) -> int:
    return int(rule.override_floor_days or rule.retention_days)


def retention_template(rule: Any) -> str:
    """Templated retention: the run's override if given and allowed for ``rule``, else the policy's."""
    return (
        f"{{{{ lifecycle_retention_days(params.retention_days, {int(rule.retention_days):d}, "
        f"{_override_floor(rule):d}, '{rule.id}') }}}}"
    )


def override_retention_days(override: Any, policy_days: int, floor_days: int, rule_id: str) -> int:
    """The retention a run uses; an override below the rule's floor is refused before any write.

    The trigger form already refuses it; this catches every other way a run gets its conf.
    """
    if override is None:
        return policy_days
    if isinstance(override, bool) or not isinstance(override, int):
        raise LifecycleConfigError(
            f"retention_days override must be a whole number of days, got {override!r}"
        )
    if override < floor_days:
        raise LifecycleConfigError(
            f"retention_days={override} is below the floor of rule '{rule_id}' ({floor_days} days; the "
            f"policy keeps {policy_days}). Lower the rule's override_floor_days in the policy to allow it."
        )
    if override > MAX_DAYS:
        raise LifecycleConfigError(f"retention_days={override} is above {MAX_DAYS} days")
    return override


DRY_RUN_TEMPLATE = "{{ lifecycle_dry_run(dag_run, params) }}"
MACROS = {"lifecycle_dry_run": effective_dry_run, "lifecycle_retention_days": override_retention_days}


def lifecycle_dag_kwargs(
    policy: Policy,
    *,
    dag_id: str,
    tags: Sequence[str],
    task_kind: str,
    doc_md: str | None,
    retention_override: bool = True,
    params: dict[str, Param] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``@dag`` (all but ``schedule``, which each DAG states itself).

    ``params`` replaces the standard ones (``dry_run`` and the retention override) for DAGs whose
    runs need their own form, such as an erasure request.
    """
    unknown = set(tags) - APPROVED_TAGS
    if unknown:
        raise LifecycleConfigError(f"{dag_id}: tags {sorted(unknown)} are not in the approved set")
    settings = policy.dag(dag_id)
    return {
        "dag_id": dag_id,
        "start_date": START_DATE,
        "catchup": False,
        "max_active_runs": 1,
        "tags": list(tags),
        "doc_md": doc_md,
        "render_template_as_native_obj": True,
        "default_args": lifecycle_default_args(
            task_kind,
            retries=settings.retries,
            retry_delay=timedelta(seconds=settings.retry_delay_seconds),
            max_retry_delay=timedelta(seconds=settings.max_retry_delay_seconds),
            slack_conn_id=policy.slack_conn_id,
        ),
        "deadline": deadline_alert(
            timedelta(minutes=settings.deadline_minutes), slack_conn_id=policy.slack_conn_id
        ),
        "params": params
        if params is not None
        else lifecycle_params(retention_rules=policy.retention_rules(dag_id) if retention_override else None),
        "user_defined_macros": dict(MACROS),
    }


def destructive(**kwargs: Any) -> dict[str, Any]:
    """Task arguments of a task that deletes (or, as a lifecycle rule, makes S3 delete): the kill
    switch runs before it (its loops read it again), and a PostgreSQL task measures the tables it
    may change (the run summary measures them again afterwards). Callers pass
    ``dry_run=DRY_RUN_TEMPLATE`` (the integrity test checks both)."""
    guard: Any = kill_switch_guard
    if "postgres_conn_id" in kwargs and "table" in kwargs:
        children = [c["table"] for c in kwargs.get("children") or []]
        guard = functools.partial(
            _guard_and_measure, conn_id=kwargs["postgres_conn_id"], tables=[*children, kwargs["table"]]
        )
    return {"pre_execute": guard, **kwargs}


def _guard_and_measure(context: Any, *, conn_id: str, tables: list[str]) -> None:
    kill_switch_guard(context)
    record_bytes_before(context, conn_id=conn_id, tables=tables)


def in_interval_order(targets: Sequence[Any]) -> Sequence[Any]:
    """Put a gate in front of ``targets``: they start only once no earlier interval's run is running.

    Every cutoff deletes all that is older, so runs of one DAG must act in logical-date order for
    each to delete (and record) exactly what fell due in its own interval. A backfill runs up to
    ``--max-active-runs`` (default 10) runs at once, in reverse with ``--run-backwards``; the
    scheduler's ``max_active_runs=1`` does not apply to it. The gate (a sensor in reschedule mode,
    holding no worker slot while it waits) waits while the previous run by logical date is running,
    and refuses to start (fails without retry, nothing deleted) while that run is still queued: it
    could only start after this one, so waiting would never end. Runs without a logical date
    (manual runs) pass at once. A failed previous run does not hold later runs back.
    """

    @task.sensor(
        task_id=IN_ORDER_TASK_ID,
        mode="reschedule",
        poke_interval=in_order_poke_seconds(),
        timeout=IN_ORDER_TIMEOUT.total_seconds(),
        execution_timeout=timedelta(minutes=5),  # one look, not the whole wait
    )
    def wait_for_earlier_runs(**context: Any) -> bool:
        from airflow.sdk.exceptions import AirflowFailException

        previous = context["ti"].get_previous_dagrun()
        if previous is None:
            return True
        state = str(getattr(previous.state, "value", previous.state))
        if state == "queued":
            raise AirflowFailException(
                f"The run of the previous interval ({previous.run_id}) is still queued and could only "
                "start after this one; nothing was deleted. Clear this run once that one has finished."
            )
        if state == "running":
            log.info("Waiting for the run of the previous interval (%s) to finish", previous.run_id)
            return False
        return True

    gate = wait_for_earlier_runs()
    gate >> list(targets)
    return targets


def in_order_poke_seconds() -> int:
    """``LIFECYCLE_IN_ORDER_POKE_SECONDS`` (1 to 600), else 10."""
    raw = os.environ.get(IN_ORDER_POKE_ENV, "").strip()
    if not raw:
        return IN_ORDER_POKE_SECONDS
    if not raw.isdigit() or not 1 <= int(raw) <= 600:
        raise LifecycleConfigError(f"{IN_ORDER_POKE_ENV} must be 1 to 600 seconds, got {raw!r}")
    return int(raw)


def run_summary(policy: Policy, *, dag_id: str, target_task_ids: Sequence[str]) -> Any:
    """The final task: report every target, audit it, optionally post to Slack, fail on failures."""

    # No failure notice of its own: when it fails, the failed target has already posted one.
    @task(task_id="run_summary", trigger_rule="all_done", retries=0, on_failure_callback=None)
    def summarize(**context: Any) -> dict[str, Any]:
        ti = context["ti"]
        run_id = context["run_id"]
        states = _task_states(dag_id, run_id, list(target_task_ids))
        results: dict[str, Any] = {}
        for task_id in target_task_ids:
            state = states.get(task_id, "unknown")
            result = None if state in FAILED_STATES else ti.xcom_pull(task_ids=task_id)
            results[task_id] = {"state": state, "result": result}
        # The audit first: whatever happens after it, every target that ran or failed is on record.
        _write_audit(policy, dag_id=dag_id, run_id=run_id, results=results, context=context)
        for task_id, entry in results.items():
            log.info("%s: %s %s", task_id, entry["state"], json.dumps(entry["result"], default=str))
        _write_facts(policy, dag_id=dag_id, run_id=run_id, results=results, context=context)
        failed = sorted(t for t, e in results.items() if e["state"] in FAILED_STATES)
        settings = policy.dag(dag_id)
        if settings.notify_success and not failed:
            _post_summary(policy, dag_id, run_id, results)
        if failed:
            raise RuntimeError(f"{len(failed)} target(s) failed: {', '.join(failed)}")
        return results

    return summarize()


def _task_states(dag_id: str, run_id: str, task_ids: list[str]) -> dict[str, str]:
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    by_run = RuntimeTaskInstance.get_task_states(dag_id=dag_id, task_ids=task_ids, run_ids=[run_id])
    return {task_id: str(state) for task_id, state in (by_run.get(run_id) or {}).items()}


def _write_audit(policy: Policy, *, dag_id: str, run_id: str, results: dict[str, Any], context: Any) -> None:
    """One audit row per target that ran or failed, in the database the policy cleans.

    A failed target records action ``failed`` with its state; what it committed before failing
    is in its task log (batches commit one by one), and the next run deletes the rest.
    """
    rows = []
    for task_id, entry in results.items():
        summary = entry["result"]
        if entry["state"] in FAILED_STATES:
            state = json.dumps({"state": entry["state"]})
            rows.append((dag_id, run_id, task_id, task_id, "failed", None, 0, state))
            continue
        if not isinstance(summary, dict):
            continue
        rows.append(
            (
                dag_id,
                run_id,
                task_id,
                str(summary.get("table") or summary.get("bucket") or task_id),
                _action(summary),
                summary.get("cutoff"),
                int(summary.get("deleted") or summary.get("objects") or summary.get("dropped_count") or 0),
                json.dumps(summary, default=str),
            )
        )
    if not rows:
        return
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(postgres_conn_id=policy.postgres_conn_id)
    with hook.get_conn() as conn, conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {AUDIT_TABLE} (dag_id, run_id, task_id, target, action, cutoff, "
            "rows_affected, summary) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb)",
            rows,
        )


def _write_facts(policy: Policy, *, dag_id: str, run_id: str, results: dict[str, Any], context: Any) -> None:
    """Table sizes around each PostgreSQL task and S3 bytes per class of each S3 task, for the page.

    Facts are a report, not the cleanup: a failure to record them is logged, never fails the run.
    """
    ti, dag = context["ti"], context["dag"]
    before: dict[str, Any] = {}
    s3: dict[str, Any] = {}
    for task_id, entry in results.items():
        summary = entry["result"]
        if not isinstance(summary, dict) or summary.get("dry_run"):
            continue
        sizes = ti.xcom_pull(task_ids=task_id, key=BYTES_BEFORE_XCOM)
        if isinstance(sizes, dict):
            before[task_id] = sizes
        rows = s3_rows(dag.get_task(task_id), summary)
        if rows:
            s3[task_id] = rows
    if not before and not s3:
        return
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    try:
        with PostgresHook(postgres_conn_id=policy.postgres_conn_id).get_conn() as conn:
            bound_waits(conn)
            write_run_facts(conn, dag_id=dag_id, run_id=run_id, before=before, s3=s3)
    except Exception:
        log.exception("Could not record table sizes and S3 bytes of %s %s", dag_id, run_id)


def _action(summary: dict[str, Any]) -> str:
    if summary.get("dry_run"):
        return "dry_run"
    if summary.get("archived_files") or summary.get("storage_class"):
        return "archive"
    return "delete"


def _post_summary(policy: Policy, dag_id: str, run_id: str, results: dict[str, Any]) -> None:
    lines = [f":white_check_mark: *{dag_id}* run `{run_id}` finished"]
    for task_id, entry in results.items():
        summary = entry["result"] if isinstance(entry["result"], dict) else {}
        count = summary.get("deleted", summary.get("objects", "-"))
        lines.append(f"• `{task_id}`: {entry['state']}, {count} removed")
    post_to_slack(policy.slack_conn_id, "\n".join(lines), what="run summary")


def batched_delete_kwargs(policy: Policy, rule: Any) -> dict[str, Any]:
    """``PostgresBatchedDeleteOperator`` arguments for a policy ``TableRule``."""
    kwargs: dict[str, Any] = {
        "task_id": f"delete_{rule.id}",
        "postgres_conn_id": policy.postgres_conn_id,
        "table": rule.table,
        "timestamp_column": rule.timestamp_column,
        "retention_days": retention_template(rule),
        "children": [{"table": c.table, "column": c.column} for c in rule.children],
        "target_batch_seconds": rule.batch.target_seconds,
        "min_batch_size": rule.batch.min_size,
        "max_batch_size": rule.batch.max_size,
        "sleep_between_batches": rule.batch.sleep_seconds,
        "max_load_p99_factor": rule.batch.max_load_p99_factor,
        "max_replica_lag_seconds": rule.batch.max_replica_lag_seconds,
        "lock_timeout": timedelta(milliseconds=rule.batch.lock_timeout_ms),
        "statement_timeout": timedelta(milliseconds=rule.batch.statement_timeout_ms),
        "max_rows": rule.max_rows,
        "max_delete_fraction": rule.max_delete_fraction,
        "allow_large_delete": rule.allow_large_delete,
        "timezone": rule.timezone,
        "naive_is_utc": rule.naive_is_utc,
        "dry_run": DRY_RUN_TEMPLATE,
        "outlets": [
            table_asset(policy.postgres_conn_id, t) for t in (*(c.table for c in rule.children), rule.table)
        ],
        "pool": POSTGRES_POOL,
    }
    if rule.max_runtime_minutes:
        kwargs["max_runtime"] = timedelta(minutes=rule.max_runtime_minutes)
    if rule.archive is not None:
        kwargs["archive"] = {
            "bucket": rule.archive.bucket,
            "prefix": rule.archive.prefix,
            "aws_conn_id": policy.aws_conn_id,
            "min_object_bytes": rule.archive.min_object_bytes,
        }
        kwargs["archive_row_transform"] = archive_row_transform(rule.table)
    return destructive(**kwargs)


def archive_row_transform(table: str) -> Any:
    """The erasure map's pseudonymisation of ``table``'s archived rows (None when it has none)."""
    from data_lifecycle.erasure.archives import archive_row_transform as transform
    from data_lifecycle.erasure.subject_map import load_subject_map

    return transform(load_subject_map(), table)


def expiry_kwargs(policy: Policy, rule: Any) -> dict[str, Any]:
    """``S3ExpireObjectsOperator`` arguments for a policy ``ExpiryRule``."""
    return destructive(
        task_id=f"expire_{rule.id}",
        aws_conn_id=policy.aws_conn_id,
        bucket=rule.bucket,
        prefix=rule.prefix,
        retention_days=retention_template(rule),
        include_versions=rule.include_versions,
        max_objects=rule.max_objects,
        allow_whole_bucket=rule.allow_whole_bucket,
        dry_run=DRY_RUN_TEMPLATE,
        pool=S3_POOL,
    )


def object_archive_kwargs(policy: Policy, rule: Any) -> dict[str, Any]:
    """``S3GlacierCopyThenDeleteOperator`` arguments for a policy ``ObjectArchiveRule``."""
    return destructive(
        task_id=f"archive_{rule.id}",
        aws_conn_id=policy.aws_conn_id,
        source_bucket=rule.source_bucket,
        source_prefix=rule.source_prefix,
        dest_bucket=rule.dest_bucket,
        dest_prefix=rule.dest_prefix,
        storage_class=rule.storage_class,
        retention_days=retention_template(rule),
        dry_run=DRY_RUN_TEMPLATE,
        pool=S3_POOL,
    )


def lifecycle_kwargs(policy: Policy, tiers: Any) -> dict[str, Any]:
    """``S3ApplyLifecycleOperator`` arguments for a policy ``BucketTiers`` entry.

    Destructive too: a rule it adds can expire objects, and one it removes can stop protecting them.
    """
    return destructive(
        task_id=f"tiers_{tiers.id}",
        aws_conn_id=policy.aws_conn_id,
        bucket=tiers.bucket,
        rules=[dict(rule) for rule in tiers.rules],
        dry_run=DRY_RUN_TEMPLATE,
        pool=S3_POOL,
    )


def partition_premake_kwargs(policy: Policy, rule: Any) -> dict[str, Any]:
    """``PostgresPartitionPremakeOperator`` arguments for a policy ``PartitionRule``."""
    return {
        "task_id": f"premake_{rule.id}",
        "postgres_conn_id": policy.postgres_conn_id,
        "table": rule.table,
        "months_ahead": rule.premake_months,
        "interval": rule.interval,
        "dry_run": DRY_RUN_TEMPLATE,
        "pool": POSTGRES_POOL,
    }


def partition_retention_kwargs(policy: Policy, rule: Any) -> dict[str, Any]:
    """``PostgresPartitionRetentionOperator`` arguments for a policy ``PartitionRule``."""
    kwargs: dict[str, Any] = {
        "task_id": f"retention_{rule.id}",
        "postgres_conn_id": policy.postgres_conn_id,
        "table": rule.table,
        "retention_months": rule.retention_months,
        "mode": rule.mode,
        "delete_default_rows": rule.default_partition_rows == "delete",
        "dry_run": DRY_RUN_TEMPLATE,
        "pool": POSTGRES_POOL,
        "outlets": [table_asset(policy.postgres_conn_id, rule.table)],
    }
    if rule.mode == "archive_schema":
        kwargs["archive_schema"] = rule.archive_schema
    if rule.archive is not None:
        kwargs["archive"] = {
            "bucket": rule.archive.bucket,
            "prefix": rule.archive.prefix,
            "aws_conn_id": policy.aws_conn_id,
        }
        kwargs["archive_row_transform"] = archive_row_transform(rule.table)
    return destructive(**kwargs)
