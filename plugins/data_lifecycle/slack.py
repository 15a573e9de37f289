"""Posting to Slack within a bound: a webhook that never answers cannot hold a task."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# Every Slack call gives up after this long (slack_sdk waits 30 s by default, and retries once):
# a webhook that accepts and never answers must not hold a task or the run summary.
SLACK_TIMEOUT_SECONDS = 5


def post_to_slack(slack_conn_id: str, text: str, *, what: str = "message") -> bool:
    """Post ``text`` within ``SLACK_TIMEOUT_SECONDS``; an outage is logged and returns False."""
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

    try:
        SlackWebhookHook(
            slack_webhook_conn_id=slack_conn_id, timeout=SLACK_TIMEOUT_SECONDS, retry_handlers=[]
        ).send(text=text)
        return True
    except Exception:
        log.exception("Could not post the %s to Slack (%s)", what, slack_conn_id)
        return False
