"""Retries, timeouts, Slack failure notices, deadline alerts and the kill switch, shared by every DAG.

Wired in once here so that each DAG file only says ``default_args=lifecycle_default_args(...)`` and
``deadline=deadline_alert(...)``. Everything uses Airflow's own mechanisms: task retries with
exponential backoff, ``execution_timeout``, task-level ``on_retry_callback`` and ``on_failure_callback``
built on the slack provider's ``SlackWebhookNotifier`` (one notice per failed try), and
``DeadlineAlert`` with an ``AsyncCallback``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import ExceptionRetryPolicy, RetryAction, RetryRule

# Deadline classes by their defining modules: airflow.sdk exports them lazily, invisible to mypy.
from airflow.sdk.definitions.callback import AsyncCallback
from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

from data_lifecycle.deadline_notice import post_deadline_notice
from data_lifecycle.exceptions import GuardrailTripped, LifecycleConfigError
from data_lifecycle.kill_switch import KILL_SWITCH_VARIABLE, is_off, read_switch
from data_lifecycle.slack import SLACK_TIMEOUT_SECONDS

log = logging.getLogger(__name__)

OWNER = "data-platform"
SLACK_CONN_ID = "slack_alerts"

# Every DAG's tags come from this set (the integrity test enforces it).
APPROVED_TAGS = frozenset(
    {"lifecycle", "postgres", "s3", "archive", "partitions", "maintenance", "erasure", "compliance"}
)

# How long one task may run, by the kind of work it does.
EXECUTION_TIMEOUTS: Mapping[str, timedelta] = {
    "postgres_delete": timedelta(hours=2),
    "postgres_ddl": timedelta(minutes=30),
    "vacuum": timedelta(hours=3),
    "s3": timedelta(hours=3),
    "report": timedelta(minutes=10),
}

# A message that is true whether the run is still going or already failed: a deadline is
# cancelled only by success in time, so it also fires for runs that failed early.
FAILURE_TEXT = (
    ":red_circle: *{{ dag.dag_id }}* task `{{ ti.task_id }}` failed (try {{ ti.try_number }})\n"
    "Run: `{{ run_id }}` (run after {{ dag_run.run_after }})\n"
    "__NEXT__\n"
    "Error: {{ exception | string | truncate(400) }}\n"
    "Log: {{ ti.log_url }}"
)
DEADLINE_TEXT = (
    ":hourglass: *{{ dag_run.dag_id }}* run `{{ dag_run.dag_run_id }}` has not succeeded "
    "__INTERVAL__ after it was queued (deadline {{ deadline.deadline_time }}). "
    "It is still running or has failed: check the run and clear failed tasks."
)

# Wrong configuration or a tripped guardrail will not fix itself: fail at once instead of retrying.
NO_RETRY_POLICY = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception=[LifecycleConfigError, GuardrailTripped],
            action=RetryAction.FAIL,
            reason="configuration or guardrail errors do not go away on retry",
        )
    ]
)


class SlackFailureNotice:
    """``on_failure_callback`` / ``on_retry_callback`` that posts one Slack message per failed try.

    A notifier renders its templates in place, so it builds a fresh ``SlackWebhookNotifier`` for
    every call. A Slack outage is logged and never changes the task's own outcome.

    :param slack_conn_id: the ``slackwebhook`` connection to post to.
    :param retrying: True for ``on_retry_callback`` (a retry follows), False for the last try.
    """

    def __init__(self, slack_conn_id: str = SLACK_CONN_ID, *, retrying: bool = False) -> None:
        self.slack_conn_id = slack_conn_id
        self.retrying = retrying

    def __call__(self, context: Any) -> None:
        from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

        text = FAILURE_TEXT.replace("__NEXT__", next_try_text(context, retrying=self.retrying))
        notifier = SlackWebhookNotifier(
            slack_webhook_conn_id=self.slack_conn_id,
            text=text,
            timeout=SLACK_TIMEOUT_SECONDS,
            retry_handlers=[],
        )
        try:
            notifier(context)
        except Exception:
            log.exception("Could not post the failure notice to Slack (%s)", self.slack_conn_id)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SlackFailureNotice)
            and other.slack_conn_id == self.slack_conn_id
            and other.retrying == self.retrying
        )

    def __hash__(self) -> int:
        return hash((type(self), self.slack_conn_id, self.retrying))


def next_try_text(context: Any, *, retrying: bool) -> str:
    """What happens next, for the notice: when the retry comes, or that none follows.

    The window is the scheduler's: ``retry_delay * backoff ** (try - 1)`` (with up to as much again
    of per-task jitter) after the try ended, capped at ``max_retry_delay``.
    """
    ti = context["ti"]
    try_number = int(getattr(ti, "try_number", 0) or 0)
    max_tries = getattr(ti, "max_tries", None)
    total = f" of {int(max_tries) + 1}" if max_tries is not None else ""
    if not retrying:
        return f"No retry follows: try {try_number}{total} was the last."
    task = context.get("task") or getattr(ti, "task", None)
    delay = getattr(task, "retry_delay", None) or timedelta(minutes=5)
    if not isinstance(delay, timedelta):
        delay = timedelta(seconds=float(delay))
    backoff = float(getattr(task, "retry_exponential_backoff", 0) or 1.0)
    low = high = delay
    if backoff > 0 and backoff != 1.0:
        low = timedelta(seconds=max(math.ceil(delay.total_seconds() * backoff ** max(try_number - 1, 0)), 1))
        high = low * 2
    cap = getattr(task, "max_retry_delay", None)
    if isinstance(cap, timedelta):
        low, high = min(low, cap), min(high, cap)
    ended = getattr(ti, "end_date", None) or datetime.now(UTC)
    earliest = (ended + low).strftime("%H:%M:%S UTC")
    window = _human_seconds(low) if low == high else f"{_human_seconds(low)} to {_human_seconds(high)}"
    return f"Retry follows: try {try_number + 1}{total} not before {earliest} (in {window})."


def lifecycle_default_args(
    task_kind: str,
    *,
    retries: int = 3,
    retry_delay: timedelta = timedelta(minutes=5),
    max_retry_delay: timedelta = timedelta(hours=1),
    slack_conn_id: str = SLACK_CONN_ID,
) -> dict[str, Any]:
    """``default_args`` for a lifecycle DAG whose tasks do ``task_kind`` work.

    :param task_kind: a key of ``EXECUTION_TIMEOUTS``.
    :param retries: retries per task (at least 2 for scheduled cleanup).
    :param retry_delay: first retry delay; doubled on each retry up to ``max_retry_delay``.
    :param max_retry_delay: cap of the exponential backoff.
    :param slack_conn_id: where failure notices go.
    """
    if task_kind not in EXECUTION_TIMEOUTS:
        raise LifecycleConfigError(f"Unknown task kind {task_kind!r}; known: {sorted(EXECUTION_TIMEOUTS)}")
    return {
        "owner": OWNER,
        "retries": retries,
        "retry_delay": retry_delay,
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": max_retry_delay,
        "retry_policy": NO_RETRY_POLICY,
        "execution_timeout": EXECUTION_TIMEOUTS[task_kind],
        "on_retry_callback": SlackFailureNotice(slack_conn_id, retrying=True),
        "on_failure_callback": SlackFailureNotice(slack_conn_id),
    }


def deadline_alert(interval: timedelta, *, slack_conn_id: str = SLACK_CONN_ID) -> DeadlineAlert:
    """A Slack alert when a run has not succeeded ``interval`` after it was queued.

    ``DAGRUN_QUEUED_AT`` (not the logical date) so manual runs without a logical date get one too.
    The callback runs in the triggerer (our plugins package is importable there). Airflow imports
    it at parse time to check it is awaitable, so it is ours, light, and loads Slack only when called.
    """
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=interval,
        callback=AsyncCallback(
            post_deadline_notice,
            kwargs={
                "slack_webhook_conn_id": slack_conn_id,
                "timeout": SLACK_TIMEOUT_SECONDS,
                "text": DEADLINE_TEXT.replace("__INTERVAL__", _human(interval)),
            },
        ),
    )


def effective_dry_run(dag_run: Any, params: Any) -> bool:
    """Whether a run only counts: the ``dry_run`` its conf gives, else true for manual runs only.

    A scheduled, backfill or asset-triggered run gets every Param's default too, so the form's
    ticked default must not make them dry: for those only an explicit ``dry_run`` in the conf counts.
    A clear keeps the run's type and conf, so it does what its first try did.
    """
    params = params or {}
    if dag_run is None:  # no run to look at (an operator called by hand): the params say it
        return bool(params.get("dry_run"))
    conf = (dag_run.get("conf") if isinstance(dag_run, dict) else getattr(dag_run, "conf", None)) or {}
    run_type = dag_run.get("run_type") if isinstance(dag_run, dict) else getattr(dag_run, "run_type", None)
    if "dry_run" in conf or str(getattr(run_type, "value", run_type)) == "manual":
        return bool(params.get("dry_run"))
    return False


def kill_switch_guard(context: Any) -> None:
    """``pre_execute`` hook of destructive tasks: skip them while the kill switch is off.

    The switch is the Airflow Variable ``lifecycle_destructive_enabled``; a missing variable means
    enabled. Dry runs change nothing and always proceed. The operators read it again between
    batches (see :mod:`data_lifecycle.kill_switch`).
    """
    from airflow.sdk.exceptions import AirflowSkipException

    if effective_dry_run(context.get("dag_run"), context.get("params")):
        return
    value = read_switch()
    if is_off(value):
        log.warning("Kill switch %s=%s: skipping destructive task", KILL_SWITCH_VARIABLE, value)
        raise AirflowSkipException(f"Kill switch {KILL_SWITCH_VARIABLE} is off; nothing was changed")


def _human(interval: timedelta) -> str:
    minutes = int(interval.total_seconds() // 60)
    if minutes % 60 == 0:
        hours = minutes // 60
        return f"{hours} hour{'s' if hours != 1 else ''}"
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def _human_seconds(delay: timedelta) -> str:
    seconds = int(delay.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    return f"{seconds // 60} min"
