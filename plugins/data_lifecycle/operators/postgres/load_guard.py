"""Load-aware pauses between batches: measure the cost a batch imposes, pause to stay in a budget.

After each batch :class:`LoadGovernor` looks at three signals, all from the server:

* **our slowdown**: the batch's time per row against the fastest batch of the run of about the
  same size (the baseline; sizes grouped by powers of two, since a small batch pays its round
  trip and commit over fewer rows). A server busy with other work makes our batches slower; it
  makes theirs slower too.
* **sessions we block**: other sessions waiting for a lock the batch holds, counted inside the
  batch's transaction just before it commits (``pg_blocking_pids``). Each of them waited for us.
* **replica lag**: the largest ``replay_lag`` in ``pg_stat_replication`` (only where a replica is
  attached; none means no lag).

The pause is a share of the batch's own time (a duty cycle, as in GitLab's batched background
migrations): it doubles (from ``1 / (max_load_p99_factor - 1)`` of the batch) while our slowdown is
over ``max_load_p99_factor`` or a session waited for us, and decays by a third after each batch
within budget, never more than ``MAX_PAUSE_RATIO`` times the batch nor ``MAX_PAUSE_SECONDS``. Over
budget the batches also get shorter (``target_batch_seconds`` halved per batch, down to
``MIN_BATCH_SCALE`` of it), so a session that meets one waits less; within budget they grow back.
While a replica lags more than ``max_replica_lag_seconds`` the loop waits (polling), like
pt-archiver's ``--max-lag``, at most ``MAX_LAG_WAIT_SECONDS`` per batch; the run then stops cleanly
(``stopped_by``) for the next run to resume.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

# The pause never exceeds this many times the batch's time, nor this many seconds.
MAX_PAUSE_RATIO = 8.0
MAX_PAUSE_SECONDS = 5.0
# Each batch within budget shrinks the pause ratio by this factor (down to none).
PAUSE_DECAY = 2 / 3
# Polling interval and the longest wait for a lagging replica before the run stops.
LAG_POLL_SECONDS = 0.5
MAX_LAG_WAIT_SECONDS = 300.0
# Over budget, the batch's target time shrinks by half per batch, down to this share; within
# budget it grows back. Shorter batches keep a waiting session's wait and our CPU bursts short.
MIN_BATCH_SCALE = 1 / 16
# Batches shorter than this are too noisy to be a baseline (timer and round-trip dominated).
MIN_BASELINE_SECONDS = 0.002

BLOCKED_SQL = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE pid <> pg_backend_pid() AND pg_backend_pid() = ANY(pg_blocking_pids(pid))"
)
LAG_SQL = "SELECT max(extract(epoch FROM replay_lag))::float8 FROM pg_stat_replication"


class ReplicaLagging(Exception):
    """A replica stayed further behind than ``max_replica_lag_seconds`` for longer than the wait."""


@dataclass
class LoadGovernor:
    conn: Any
    max_load_factor: float | None
    max_replica_lag: float | None
    ratio: float = 0.0
    batch_scale: float = 1.0  # applied to target_batch_seconds by the loop
    best_per_row: dict[int, float] = field(default_factory=dict)  # by rows.bit_length()
    paused_seconds: float = 0.0
    lag_wait_seconds: float = 0.0
    pauses: int = 0
    blocked_total: int = 0
    over_budget: int = 0
    peak_lag: float = 0.0
    _lag_supported: bool = field(default=True, repr=False)

    @classmethod
    def from_settings(cls, op: Any, conn: Any) -> LoadGovernor | None:
        factor = getattr(op, "max_load_p99_factor", None)
        lag = getattr(op, "max_replica_lag_seconds", None)
        if factor is None and lag is None:
            return None
        return cls(conn, factor, lag)

    @property
    def start_ratio(self) -> float:
        assert self.max_load_factor is not None
        return min(MAX_PAUSE_RATIO, 1.0 / max(self.max_load_factor - 1.0, 1e-3))

    def blocked_by_us(self) -> int:
        """Sessions waiting for our locks right now (call inside the batch's transaction)."""
        if self.max_load_factor is None:
            return 0
        row = self.conn.execute(BLOCKED_SQL).fetchone()
        return int(row[0]) if row else 0

    def pause_after(self, took: float, rows: int, blocked: int) -> float:
        """Seconds to pause after a batch of ``rows`` rows that took ``took`` seconds.

        Waits for a lagging replica here (raises ReplicaLagging after ``MAX_LAG_WAIT_SECONDS``).
        """
        self._wait_for_replica()
        if self.max_load_factor is None:
            return 0.0
        self.blocked_total += blocked
        slowdown = 1.0
        if rows > 0 and took >= MIN_BASELINE_SECONDS:
            per_row, size = took / rows, rows.bit_length()
            best = self.best_per_row.setdefault(size, per_row)
            if per_row < best:
                self.best_per_row[size] = best = per_row
            slowdown = per_row / best
        if blocked or slowdown > self.max_load_factor:
            self.over_budget += 1
            self.ratio = min(MAX_PAUSE_RATIO, max(self.start_ratio, self.ratio * 2))
            self.batch_scale = max(MIN_BATCH_SCALE, self.batch_scale / 2)
        else:
            self.batch_scale = min(1.0, self.batch_scale * 2)
            self.ratio *= PAUSE_DECAY
            if self.ratio < 0.05:
                self.ratio = 0.0
        pause = min(MAX_PAUSE_SECONDS, took * self.ratio)
        if pause > 0:
            self.pauses += 1
            self.paused_seconds += pause
        return pause

    def _wait_for_replica(self) -> None:
        if self.max_replica_lag is None or not self._lag_supported:
            return
        waited = 0.0
        while True:
            lag = self._replica_lag()
            self.peak_lag = max(self.peak_lag, lag)
            if lag <= self.max_replica_lag:
                return
            if waited >= MAX_LAG_WAIT_SECONDS:
                raise ReplicaLagging(
                    f"a replica is {lag:.1f}s behind (max_replica_lag_seconds={self.max_replica_lag:g})"
                    f" after waiting {waited:.0f}s"
                )
            time.sleep(LAG_POLL_SECONDS)
            waited += LAG_POLL_SECONDS
            self.lag_wait_seconds += LAG_POLL_SECONDS

    def _replica_lag(self) -> float:
        from psycopg.errors import InsufficientPrivilege

        try:
            row = self.conn.execute(LAG_SQL).fetchone()
        except InsufficientPrivilege:  # pragma: no cover - the view is readable by every role
            self._lag_supported = False
            return 0.0
        return float(row[0]) if row and row[0] is not None else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "pauses": self.pauses,
            "paused_seconds": round(self.paused_seconds, 3),
            "batches_over_budget": self.over_budget,
            "sessions_blocked": self.blocked_total,
            "replica_lag_wait_seconds": round(self.lag_wait_seconds, 3),
            "peak_replica_lag_seconds": round(self.peak_lag, 3),
        }
