"""``python -m benchmarks [--scale 1] [--only name ...]``: run the benchmarks, save JSON, print the table.

The scale also comes from ``BENCH_SCALE``. Scale 1 (a 2M-row table, 5,000 objects) takes about
5 minutes on 2 cores, plus about 2 to build the template once; ``--scale 0.001`` is the smoke run
of ``tests/test_benchmarks_smoke.py``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import subprocess
import time
from pathlib import Path

from benchmarks import report
from benchmarks.common import Scale, connect, server_version

# Benchmarks that read no PostgreSQL template (a run of only these does not build one).
WITHOUT_TEMPLATE = frozenset({"glacier_copy", "dag_parse"})
# Run in this order; each name is a module of this package with ``run(scale, template) -> Result``.
BENCHMARKS = (
    "batched_delete",
    "partition_retention",
    "glacier_copy",
    "archive_mode",
    "dag_parse",
    "lifecycle_apply",
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--scale", type=float, default=float(os.environ.get("BENCH_SCALE", "1")))
    parser.add_argument("--only", nargs="*", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--results", type=Path, default=report.RESULTS_DIR)
    args = parser.parse_args(argv)
    # The operators log every batch; the benchmark prints only its progress and table (and errors).
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from benchmarks import dataset

    started = time.perf_counter()
    scale = Scale(args.scale)
    with connect() as conn:
        pg_version = server_version(conn)
    template = ""
    if set(args.only) - WITHOUT_TEMPLATE:
        print(f"Preparing the data at scale {scale.factor} ...", flush=True)
        template = dataset.prepare_template(scale)
    for name in args.only:
        print(f"Running {name} ...", flush=True)
        t0 = time.perf_counter()
        load_before = _uptime()
        result = importlib.import_module(f"benchmarks.{name}").run(scale, template)
        result.details["benchmark_seconds"] = round(time.perf_counter() - t0, 1)
        # The machine is shared: the load beside the figures says what else was running.
        result.details["uptime_before"], result.details["uptime_after"] = load_before, _uptime()
        result.save(args.results)
    # A run of some benchmarks keeps the others' results in the table.
    machine_file = args.results / report.MACHINE_FILE
    earlier = (
        json.loads(machine_file.read_text(encoding="utf-8")).get("benchmarks", [])
        if machine_file.exists()
        else []
    )
    meta = {
        "machine": report.machine(pg_version),
        "scale": scale.factor,
        "seconds": time.perf_counter() - started,
        "benchmarks": [name for name in BENCHMARKS if name in {*earlier, *args.only}],
    }
    (args.results / report.MACHINE_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print()
    print(report.table(*report.load(args.results)))


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


if __name__ == "__main__":
    main()
