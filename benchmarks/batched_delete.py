"""Batched delete vs one ``DELETE ... WHERE expires_at < cutoff`` on the same 2M-row sessions table.

Half the rows are due. Each method runs on its own fresh copy of the prepared data, once alone
(throughput and WAL; a CHECKPOINT first, so all pay the same full-page writes) and once beside the
OLTP load (its latency, lock waits and the longest write transaction). The methods: the operator
(stride batches), the operator with stride batches turned off (keyset batches that read each
batch's upper key first: the method before stride batches), the operator with load-aware pauses
(``max_load_p99_factor``; under load only) and the single DELETE. Before each operator run under
load, the load also runs for a few seconds on the same copy with no delete at all: that run's idle
baseline.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

from benchmarks import dataset
from benchmarks.common import (
    ANCHOR,
    Scale,
    checkpoint,
    connect,
    conninfo,
    fresh_database,
    operators_use,
    run_context,
    timed,
    wal_bytes_since,
    wal_lsn,
)
from benchmarks.probe import Probe
from benchmarks.report import TIMES, Result, Row

TASK_ID = "bench_batched_delete"
OPERATOR_APP = f"data_lifecycle:{TASK_ID}"
SINGLE_APP = "lifecycle_bench_single_delete"
LOAD_OPS_PER_SECOND = 200
# Operator settings (all ordinary constructor arguments): a shorter target than the default 0.5 s
# keeps the longest batch under a second when the machine is busy; throughput hardly depends on it.
KNOBS: dict[str, Any] = {"target_batch_seconds": 0.25, "max_batch_size": 50_000, "batch_size": 1_000}
# The load-aware run's budget: the target itself.
LOAD_AWARE: dict[str, Any] = {"max_load_p99_factor": 1.5}
TARGET_THROUGHPUT_RATIO = 0.8
TARGET_LONGEST_TRANSACTION_S = 0.5
TARGET_WAL_RATIO = 1.05
TARGET_P99_VS_IDLE = 1.5


def _operator(**overrides: Any) -> Any:
    from data_lifecycle.operators.postgres import PostgresBatchedDeleteOperator

    return PostgresBatchedDeleteOperator(
        task_id=TASK_ID,
        table="app.sessions",
        timestamp_column="expires_at",
        retention_days=dataset.SESSIONS_RETENTION_DAYS,
        max_delete_fraction=0.6,
        **{**KNOBS, **overrides},
    )


LAST_SUMMARY: dict[str, Any] = {}


def _ours(dbname: str, **overrides: Any) -> tuple[int, float]:
    with operators_use(dbname):
        summary, seconds = timed(_operator(**overrides).execute, run_context(ANCHOR))
    assert summary["remaining"] == 0, summary
    LAST_SUMMARY.clear()
    LAST_SUMMARY.update(summary)
    return int(summary["deleted"]), seconds


def _keyset(dbname: str) -> tuple[int, float]:
    from data_lifecycle.operators.postgres import batch_runner

    before = batch_runner.STRIDE_MIN_DENSITY
    batch_runner.STRIDE_MIN_DENSITY = float("inf")  # no key is dense enough: keyset batches
    try:
        return _ours(dbname)
    finally:
        batch_runner.STRIDE_MIN_DENSITY = before


def _aware(dbname: str) -> tuple[int, float]:
    return _ours(dbname, **LOAD_AWARE)


def _single(dbname: str) -> tuple[int, float]:
    cutoff = ANCHOR - timedelta(days=dataset.SESSIONS_RETENTION_DAYS)
    with connect(dbname, application_name=SINGLE_APP) as conn:
        cur, seconds = timed(conn.execute, "DELETE FROM app.sessions WHERE expires_at < %s", (cutoff,))
        return int(cur.rowcount), seconds


METHODS = {
    "ours": (_ours, OPERATOR_APP),
    "keyset": (_keyset, OPERATOR_APP),
    "aware": (_aware, OPERATOR_APP),
    "single": (_single, SINGLE_APP),
}


def _alone(template: str, method: str) -> dict[str, Any]:
    run, app = METHODS[method]
    with fresh_database(template, "delete") as db, connect(db) as conn:
        checkpoint(conn)
        start = wal_lsn(conn)
        LAST_SUMMARY.clear()
        with Probe(conninfo(db), deleter_app=app) as probe:
            rows, seconds = run(db)
        out = {
            "rows": rows,
            "seconds": seconds,
            "rows_per_s": rows / seconds,
            "wal_bytes": wal_bytes_since(conn, start),
            "longest_write_transaction_s": probe.result["longest_write_transaction_s"],
        }
        if "batch_seconds" in LAST_SUMMARY:
            # The rest of the run: connecting, the guardrail's counts, the final count of due rows.
            out["batch_seconds"] = LAST_SUMMARY["batch_seconds"]
            out["batch_rows_per_s"] = rows / max(LAST_SUMMARY["batch_seconds"], 1e-6)
        return out


def _under_load(template: str, method: str, max_id: int, idle_seconds: float) -> dict[str, Any]:
    run, app = METHODS[method]
    out: dict[str, Any] = {}
    with fresh_database(template, "load") as db:
        info = conninfo(db)
        if idle_seconds:  # the idle baseline just before, on a copy nothing has touched yet
            with Probe(info, deleter_app=app, rate=LOAD_OPS_PER_SECOND, max_id=max_id) as idle:
                time.sleep(idle_seconds)
            out[f"idle_{method}"] = idle.result
        with Probe(info, deleter_app=app, rate=LOAD_OPS_PER_SECOND, max_id=max_id) as probe:
            rows, seconds = run(db)
        out[method] = {**probe.result, "rows": rows, "delete_seconds": seconds, "rows_per_s": rows / seconds}
        if method == "aware":
            out[method]["load_pauses"] = LAST_SUMMARY.get("load_pauses")
    return out


def run(scale: Scale, template: str) -> Result:
    max_id = dataset.sizes(scale).sessions
    idle_seconds = 2.0 if scale.is_small else 5.0
    alone = {m: _alone(template, m) for m in ("ours", "keyset", "single")}
    loaded = {
        # Each with its own idle baseline just before it: on a shared machine the background
        # load drifts within minutes, so a ratio compares windows seconds apart.
        **_under_load(template, "ours", max_id, idle_seconds),
        **_under_load(template, "aware", max_id, idle_seconds),
        **_under_load(template, "single", max_id, 0),
    }
    ours, keyset, single = alone["ours"], alone["keyset"], alone["single"]
    idle, idle_aware = loaded["idle_ours"], loaded["idle_aware"]
    lo, la, ls = loaded["ours"], loaded["aware"], loaded["single"]
    throughput = ours["rows_per_s"] / single["rows_per_s"]
    wal = ours["wal_bytes"] / single["wal_bytes"]
    p99_vs_idle = lo["p99_ms"] / idle["p99_ms"]
    aware_vs_idle = la["p99_ms"] / idle_aware["p99_ms"]
    longest = max(lo["longest_write_transaction_s"], la["longest_write_transaction_s"])
    return Result(
        name="batched_delete",
        title=f"Batched delete vs one DELETE ({max_id:,} rows, {ours['rows']:,} due)",
        settings={
            **KNOBS,
            "load_aware": LOAD_AWARE,
            "load_ops_per_second": LOAD_OPS_PER_SECOND,
            "idle_seconds": idle_seconds,
        },
        figures={
            "ours_rows_per_s": ours["rows_per_s"],
            "keyset_rows_per_s": keyset["rows_per_s"],
            "single_rows_per_s": single["rows_per_s"],
            "throughput_ratio": throughput,
            "ours_wal_bytes": ours["wal_bytes"],
            "single_wal_bytes": single["wal_bytes"],
            "idle_p99_ms": idle["p99_ms"],
            "idle_before_aware_p99_ms": idle_aware["p99_ms"],
            "ours_p99_ms": lo["p99_ms"],
            "aware_p99_ms": la["p99_ms"],
            "single_p99_ms": ls["p99_ms"],
        },
        rows=[
            Row(
                "rows/s",
                ours["rows_per_s"],
                single["rows_per_s"],
                "one DELETE",
                "",
                throughput,
                f"≥ {TARGET_THROUGHPUT_RATIO}{TIMES}",
                throughput >= TARGET_THROUGHPUT_RATIO,
            ),
            Row(
                "rows/s inside the batches (no planning counts, no final count)",
                ours["batch_rows_per_s"],
                single["rows_per_s"],
                "one DELETE",
                "",
                ours["batch_rows_per_s"] / single["rows_per_s"],
            ),
            Row(
                "rows/s, keyset batches (before stride)",
                keyset["rows_per_s"],
                single["rows_per_s"],
                "one DELETE",
                "",
                keyset["rows_per_s"] / single["rows_per_s"],
            ),
            Row(
                "longest write transaction, under load",
                longest,
                ls["longest_write_transaction_s"],
                "one DELETE",
                "s",
                None,
                f"≤ {TARGET_LONGEST_TRANSACTION_S:g} s",
                longest <= TARGET_LONGEST_TRANSACTION_S,
            ),
            Row(
                "WAL",
                ours["wal_bytes"] / 2**20,
                single["wal_bytes"] / 2**20,
                "one DELETE",
                "MiB",
                wal,
                f"≤ {TARGET_WAL_RATIO:g}{TIMES}",
                wal <= TARGET_WAL_RATIO,
            ),
            Row(
                "load p99 vs idle, load-aware pauses",
                la["p99_ms"],
                idle_aware["p99_ms"],
                "idle",
                "ms",
                aware_vs_idle,
                f"≤ {TARGET_P99_VS_IDLE:g}{TIMES} idle",
                aware_vs_idle <= TARGET_P99_VS_IDLE,
            ),
            Row("load p99 vs idle, no pauses", lo["p99_ms"], idle["p99_ms"], "idle", "ms", p99_vs_idle),
            Row(
                "rows/s under load, load-aware pauses",
                la["rows_per_s"],
                lo["rows_per_s"],
                "no pauses",
                "",
                la["rows_per_s"] / lo["rows_per_s"],
            ),
            Row(
                "load p99 latency",
                lo["p99_ms"],
                ls["p99_ms"],
                "one DELETE",
                "ms",
                lo["p99_ms"] / ls["p99_ms"] if ls["p99_ms"] else None,
            ),
            Row("load p50 latency", lo["p50_ms"], ls["p50_ms"], "one DELETE", "ms", None),
            Row(
                "load lock waits (longest, s)",
                lo["longest_lock_wait_s"],
                ls["longest_lock_wait_s"],
                "one DELETE",
                "s",
                None,
            ),
        ],
        details={"alone": alone, "under_load": loaded, "load": _uptime()},
    )


def _uptime() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages as the benchmark ends (it may be shared)."""
    return [round(x, 2) for x in os.getloadavg()]
