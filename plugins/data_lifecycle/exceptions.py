"""Errors with messages that tell an on-call engineer what is wrong and what was left untouched."""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException


class LifecycleError(AirflowException):
    """Base class of every error raised by this package."""


class LifecycleConfigError(LifecycleError):
    """A policy, parameter or name is invalid. Raised before anything is written or deleted."""


class GuardrailTripped(LifecycleError):
    """A safety limit (share of a table, object count, in-retention rows) refused the run."""


class VerificationFailed(LifecycleError):
    """A copy or archive could not be verified, so its source was kept."""


class LockTimeoutExhausted(LifecycleError):
    """Batches kept timing out on locks held by other sessions; the run stopped within budget."""


class ResidueLeft(LifecycleError):
    """A delete run ended, not stopped by a budget, with due rows still in the table."""


class KillSwitchStopped(LifecycleError):
    """An erasure step stopped between targets because the kill switch was turned off.

    Cleanup operators return ``stopped_by: kill_switch`` instead; an erasure is all or nothing, so
    its step fails (recorded in the ledger) and is cleared once the switch is back on.
    """
