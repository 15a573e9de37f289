"""The deadline alert's callback: post the notice to Slack from the triggerer.

Deadline callbacks are referenced by the DAG (``AsyncCallback``), and Airflow imports the callable
when the DAG is parsed to check that it is awaitable. So this module stays light: the Slack
provider (slack_sdk, aiohttp) is imported only when a deadline is missed and the notice is sent.
"""

from __future__ import annotations

from typing import Any


async def post_deadline_notice(
    *, slack_webhook_conn_id: str, text: str, timeout: int, context: Any = None
) -> None:
    """Render ``text`` with the deadline's context (``dag_run``, ``deadline``) and post it.

    :param slack_webhook_conn_id: the ``slackwebhook`` connection to post to.
    :param text: the notice, a Jinja template.
    :param timeout: seconds before the post gives up (no retry).
    :param context: the small context the triggerer passes to deadline callbacks.
    """
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

    # A fresh notifier per notice: a notifier renders its templates in place.
    notifier = SlackWebhookNotifier(
        slack_webhook_conn_id=slack_webhook_conn_id,
        text=text,
        timeout=timeout,
        retry_handlers=[],
        context=context or {},
    )
    await notifier
