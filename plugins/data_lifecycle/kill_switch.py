"""The kill switch: the Airflow Variable that stops destructive work, read again while a task runs.

``alerts.kill_switch_guard`` reads it once before a destructive task starts (and skips the task).
The loops of the operators and erasure steps hold a :class:`KillSwitch` and ask it between batches,
listing pages and partitions; once it reads "off" they finish or roll back the batch in hand, delete
nothing more and return with ``stopped_by: "kill_switch"`` (the next run resumes).

Reads are rate-limited (at most one per ``LIFECYCLE_KILL_SWITCH_RECHECK_SECONDS``, 5 s by default),
so a loop of many small batches costs one Variable read every few seconds, not one per batch; the
switch takes effect within that interval plus one batch. A read that raises (access denied, a
secrets backend that fails) counts as "off": stopping is safe, deleting on without being able to
hear the switch is not. A missing Variable means enabled; note that Airflow's task-side client
reports some transient API errors as "not found", which therefore read as enabled too.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable

from data_lifecycle.exceptions import LifecycleConfigError

log = logging.getLogger(__name__)

KILL_SWITCH_VARIABLE = "lifecycle_destructive_enabled"
OFF_VALUES = frozenset({"false", "0", "off", "no"})
RECHECK_ENV = "LIFECYCLE_KILL_SWITCH_RECHECK_SECONDS"
DEFAULT_RECHECK_SECONDS = 5.0
MAX_RECHECK_SECONDS = 300.0
STOPPED_BY = "kill_switch"
_NUMBER = re.compile(r"^\d+(\.\d+)?$")


def is_off(value: object) -> bool:
    return str(value).strip().lower() in OFF_VALUES


def read_switch() -> str:
    """The Variable's value ("true" when it is not set); raises when it cannot be read."""
    from airflow.sdk import Variable

    return str(Variable.get(KILL_SWITCH_VARIABLE, default="true"))


def recheck_seconds() -> float:
    """``LIFECYCLE_KILL_SWITCH_RECHECK_SECONDS`` (0 to 300; 0 reads before every batch), else 5."""
    raw = os.environ.get(RECHECK_ENV)
    if raw is None or raw == "":
        return DEFAULT_RECHECK_SECONDS
    if not _NUMBER.match(raw) or float(raw) > MAX_RECHECK_SECONDS:
        raise LifecycleConfigError(
            f"{RECHECK_ENV} must be 0 to {MAX_RECHECK_SECONDS:.0f} seconds, got {raw!r}"
        )
    return float(raw)


class KillSwitch:
    """Asked between batches: ``if switch.tripped(): stop``. Once tripped it stays tripped.

    :param where: what the loop works on, for the log line.
    :param interval: seconds between reads; defaults to :func:`recheck_seconds`.
    :param clock: a monotonic clock.
    """

    def __init__(
        self, where: str, *, interval: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.where = where
        self.interval = recheck_seconds() if interval is None else interval
        self.clock = clock
        self.reads = 0
        self.is_tripped = False
        self._last: float | None = None

    def tripped(self) -> bool:
        if self.is_tripped:
            return True
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        self.reads += 1
        try:
            value = read_switch()
        except Exception as exc:
            log.warning(
                "%s: could not read the kill switch %s (%s: %s); stopping as if it were off",
                self.where,
                KILL_SWITCH_VARIABLE,
                type(exc).__name__,
                exc,
            )
            self.is_tripped = True
            return True
        if is_off(value):
            log.warning(
                "%s: kill switch %s=%s; stopping after the batch in hand, nothing more is deleted",
                self.where,
                KILL_SWITCH_VARIABLE,
                value,
            )
            self.is_tripped = True
        return self.is_tripped
