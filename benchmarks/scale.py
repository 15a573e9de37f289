"""How cost grows with size: the batched delete and partition retention at three table sizes.

``python -m benchmarks.scale [--scales 0.25 1 4]`` (``make bench-scale``; opt-in, never part of
``make test``). At each benchmark scale (0.25 → 500,000 sessions, 1 → 2M, 4 → 8M; half of them due)
it measures, each on a fresh copy of that scale's prepared data:

* the batched delete of every due row: rows/s and the mean batch latency (seconds / batches);
* its planning cost: a run stopped after its first batch (``max_rows`` = one batch), which pays
  the catalog reads, the guardrail's count and one batch, whatever the table size;
* partition retention of the oldest month (detach + drop): seconds, while that month grows with
  the scale.

What should hold: rows/s and batch latency flat across sizes (per-row cost does not grow), the
first-batch time independent of size (no whole-table work before the first batch), and the
partition drop independent of the rows it removes. The ratios are against the smallest size, all
measured in one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import dataset, partition_retention
from benchmarks.batched_delete import KNOBS, TASK_ID
from benchmarks.common import (
    ANCHOR,
    Scale,
    connect,
    fresh_database,
    operators_use,
    run_context,
    server_version,
    timed,
)
from benchmarks.report import RESULTS_DIR, TIMES, Result, Row, machine, table

DEFAULT_SCALES = (0.25, 1.0, 4.0)


def _batched(**overrides: Any) -> Any:
    from data_lifecycle.operators.postgres import PostgresBatchedDeleteOperator

    return PostgresBatchedDeleteOperator(
        task_id=TASK_ID,
        table="app.sessions",
        timestamp_column="expires_at",
        retention_days=dataset.SESSIONS_RETENTION_DAYS,
        max_delete_fraction=0.6,
        **{**KNOBS, **overrides},
    )


def _delete_all(template: str) -> dict[str, Any]:
    with fresh_database(template, "scale") as db, operators_use(db):
        summary, seconds = timed(_batched().execute, run_context(ANCHOR))
    assert summary["remaining"] == 0, summary
    deleted, batches = int(summary["deleted"]), int(summary["batches"])
    return {
        "rows": deleted,
        "seconds": seconds,
        "rows_per_s": deleted / seconds,
        "batches": batches,
        "batch_seconds": seconds / max(batches, 1),
    }


def _first_batch(template: str) -> dict[str, Any]:
    first = int(KNOBS["batch_size"])
    with fresh_database(template, "scale_plan") as db, operators_use(db):
        summary, seconds = timed(_batched(max_rows=first, max_batch_size=first).execute, run_context(ANCHOR))
    assert 0 < int(summary["deleted"]) <= first, summary
    return {"seconds": seconds, "rows": int(summary["deleted"])}


def _at(scale: Scale) -> dict[str, Any]:
    template = dataset.prepare_template(scale)
    with connect(template) as conn:
        rows = int(conn.execute("SELECT count(*) FROM app.sessions").fetchone()[0])
    drop = partition_retention._measure(template, partition_retention._retention(), ANCHOR)
    return {
        "scale": scale.factor,
        "table_rows": rows,
        "delete": _delete_all(template),
        "first_batch": _first_batch(template),
        "partition_drop": {"seconds": drop["seconds"], "rows": drop["rows"]},
    }


# Each measure: (figure key, row label, unit, target, the figure of one size).
MEASURES: tuple[tuple[str, str, str, str, Any], ...] = (
    ("delete_rows_per_s", "delete rows/s", "", f"flat (~1{TIMES})", lambda s: s["delete"]["rows_per_s"]),
    ("batch_seconds", "mean batch latency", "s", "", lambda s: s["delete"]["batch_seconds"]),
    (
        "first_batch_seconds",
        "planning + first batch",
        "s",
        "independent of size",
        lambda s: s["first_batch"]["seconds"],
    ),
    (
        "partition_drop_seconds",
        "partition drop ({rows:,} rows)",
        "s",
        "independent of rows",
        lambda s: s["partition_drop"]["seconds"],
    ),
)


def _row(size: dict[str, Any], base: dict[str, Any], measure: tuple[str, str, str, str, Any]) -> Row:
    """One size's figure against the smallest size's."""
    _, label, unit, target, figure = measure
    name = label.format(rows=size["partition_drop"]["rows"])
    ours, baseline = figure(size), figure(base)
    return Row(
        f"{size['table_rows']:,} rows: {name}", ours, baseline, "smallest size", unit, ours / baseline, target
    )


def result(sizes: list[dict[str, Any]]) -> Result:
    base = sizes[0]
    rows = [_row(size, base, measure) for size in sizes for measure in MEASURES]
    return Result(
        name="scale",
        title="How cost grows with size (batched delete, planning, partition drop)",
        settings={"scales": [s["scale"] for s in sizes], **KNOBS},
        figures={f"{key}_{s['scale']:g}": figure(s) for s in sizes for key, *_, figure in MEASURES},
        rows=rows,
        details={"sizes": sizes},
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    parser.add_argument("--scales", nargs="+", type=float, default=list(DEFAULT_SCALES))
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    sizes = []
    for factor in sorted(args.scales):
        print(f"Scale {factor} ...", flush=True)
        sizes.append(_at(Scale(factor)))
    out = result(sizes)
    with connect() as conn:
        meta = {
            "machine": machine(server_version(conn)),
            "scale": ", ".join(f"{f:g}" for f in sorted(args.scales)),
        }
    meta["seconds"] = time.perf_counter() - started
    out.details.update(meta)
    path = out.save(args.results)
    print(json.dumps({"saved": path.name}))
    print(table(meta, [asdict(out)]))


if __name__ == "__main__":
    main()
