"""Batched delete vs one ``DELETE ... WHERE expires_at < cutoff`` on the same 2M-row sessions table.

Half the rows are due. Each method runs twice, each time on its own fresh copy of the prepared data:
once alone (throughput and WAL; a CHECKPOINT first, so both pay the same full-page writes) and once
beside the OLTP load (its latency, lock waits and the longest write transaction). The load also runs
once with no delete at all: the idle baseline.
"""

from __future__ import annotations

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
TARGET_THROUGHPUT_RATIO = 0.7
TARGET_LONGEST_TRANSACTION_S = 1.0
TARGET_P99_VS_IDLE = 2.0


def _operator() -> Any:
    from data_lifecycle.operators.postgres import PostgresBatchedDeleteOperator

    return PostgresBatchedDeleteOperator(
        task_id=TASK_ID,
        table="app.sessions",
        timestamp_column="expires_at",
        retention_days=dataset.SESSIONS_RETENTION_DAYS,
        max_delete_fraction=0.6,
        **KNOBS,
    )


def _ours(dbname: str) -> tuple[int, float]:
    with operators_use(dbname):
        summary, seconds = timed(_operator().execute, run_context(ANCHOR))
    assert summary["remaining"] == 0, summary
    return int(summary["deleted"]), seconds


def _single(dbname: str) -> tuple[int, float]:
    cutoff = ANCHOR - timedelta(days=dataset.SESSIONS_RETENTION_DAYS)
    with connect(dbname, application_name=SINGLE_APP) as conn:
        cur, seconds = timed(conn.execute, "DELETE FROM app.sessions WHERE expires_at < %s", (cutoff,))
        return int(cur.rowcount), seconds


METHODS = {"ours": (_ours, OPERATOR_APP), "single": (_single, SINGLE_APP)}


def _alone(template: str, method: str) -> dict[str, Any]:
    run, app = METHODS[method]
    with fresh_database(template, "delete") as db, connect(db) as conn:
        checkpoint(conn)
        start = wal_lsn(conn)
        with Probe(conninfo(db), deleter_app=app) as probe:
            rows, seconds = run(db)
        return {
            "rows": rows,
            "seconds": seconds,
            "rows_per_s": rows / seconds,
            "wal_bytes": wal_bytes_since(conn, start),
            "longest_write_transaction_s": probe.result["longest_write_transaction_s"],
        }


def _under_load(template: str, method: str, max_id: int, idle_seconds: float) -> dict[str, Any]:
    run, app = METHODS[method]
    out: dict[str, Any] = {}
    with fresh_database(template, "load") as db:
        info = conninfo(db)
        if method == "ours":  # the idle baseline, on a copy nothing has touched yet
            with Probe(info, deleter_app=app, rate=LOAD_OPS_PER_SECOND, max_id=max_id) as idle:
                time.sleep(idle_seconds)
            out["idle"] = idle.result
        with Probe(info, deleter_app=app, rate=LOAD_OPS_PER_SECOND, max_id=max_id) as probe:
            rows, seconds = run(db)
        out[method] = {**probe.result, "rows": rows, "delete_seconds": seconds, "rows_per_s": rows / seconds}
    return out


def run(scale: Scale, template: str) -> Result:
    max_id = dataset.sizes(scale).sessions
    idle_seconds = 2.0 if scale.is_small else 10.0
    alone = {m: _alone(template, m) for m in METHODS}
    loaded = {
        **_under_load(template, "ours", max_id, idle_seconds),
        **_under_load(template, "single", max_id, 0),
    }
    ours, single, idle = alone["ours"], alone["single"], loaded["idle"]
    lo, ls = loaded["ours"], loaded["single"]
    throughput = ours["rows_per_s"] / single["rows_per_s"]
    p99_vs_idle = lo["p99_ms"] / idle["p99_ms"]
    result = Result(
        name="batched_delete",
        title=f"Batched delete vs one DELETE ({max_id:,} rows, {ours['rows']:,} due)",
        settings={**KNOBS, "load_ops_per_second": LOAD_OPS_PER_SECOND, "idle_seconds": idle_seconds},
        figures={
            "ours_rows_per_s": ours["rows_per_s"],
            "single_rows_per_s": single["rows_per_s"],
            "throughput_ratio": throughput,
            "ours_wal_bytes": ours["wal_bytes"],
            "single_wal_bytes": single["wal_bytes"],
            "idle_p99_ms": idle["p99_ms"],
            "ours_p99_ms": lo["p99_ms"],
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
                "longest write transaction, under load",
                lo["longest_write_transaction_s"],
                ls["longest_write_transaction_s"],
                "one DELETE",
                "s",
                None,
                f"≤ {TARGET_LONGEST_TRANSACTION_S:g} s",
                lo["longest_write_transaction_s"] <= TARGET_LONGEST_TRANSACTION_S,
            ),
            Row(
                "load p99 latency vs idle",
                lo["p99_ms"],
                idle["p99_ms"],
                "idle",
                "ms",
                p99_vs_idle,
                f"≤ {TARGET_P99_VS_IDLE:g}{TIMES} idle",
                p99_vs_idle <= TARGET_P99_VS_IDLE,
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
            Row(
                "WAL",
                ours["wal_bytes"] / 2**20,
                single["wal_bytes"] / 2**20,
                "one DELETE",
                "MiB",
                ours["wal_bytes"] / single["wal_bytes"],
            ),
        ],
        details={"alone": alone, "under_load": loaded},
    )
    return result
