"""DAG parse time: each file in ``dags/`` imported in a fresh process, against a bare ``import airflow.sdk``.

Each child process times ``import airflow.sdk`` and then the import of one DAG file (what the DAG
processor does for a file); the file's own cost is the second part, the time beyond the baseline.
Medians over a few fresh processes each. The target (issue 18) is 50 ms per file.

A minimal DAG file (one ``@task``, a cron timetable) is timed the same way: what Airflow's own
lazily loaded DAG, task-decorator and timetable modules cost any first DAG file of a process, so
the rest of a file's time is ours.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import Scale
from benchmarks.report import Result, Row

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DAGS_DIR = PROJECT_ROOT / "dags"
TARGET_SECONDS = 0.05
MINIMAL_DAG = """
from datetime import datetime, UTC
from airflow.sdk import CronTriggerTimetable, dag, task

@dag(schedule=CronTriggerTimetable("0 1 * * *", timezone="UTC"), start_date=datetime(2026, 1, 1, tzinfo=UTC))
def minimal():
    @task
    def work():
        return 1
    work()

minimal()
"""

_CHILD = """
import importlib.util, json, sys, time
t0 = time.perf_counter()
import airflow.sdk
t1 = time.perf_counter()
dags = 0
if len(sys.argv) > 1:
    from airflow.sdk.definitions._internal.contextmanager import DagContext
    spec = importlib.util.spec_from_file_location("bench_dag_file", sys.argv[1])
    module = sys.modules["bench_dag_file"] = importlib.util.module_from_spec(spec)
    DagContext.current_autoregister_module_name = "bench_dag_file"  # as the DAG processor does
    spec.loader.exec_module(module)
    found = {id(d) for d, _ in DagContext.autoregistered_dags}
    dags = len(found | {id(v) for v in vars(module).values() if isinstance(v, airflow.sdk.DAG)})
t2 = time.perf_counter()
print(json.dumps({"sdk": t1 - t0, "file": t2 - t1, "dags": dags}))
"""


def _parse(path: Path | None) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT / "plugins"), str(PROJECT_ROOT)])}
    args = [sys.executable, "-c", _CHILD, *([str(path)] if path else [])]
    done = subprocess.run(args, capture_output=True, text=True, check=True, env=env, cwd=PROJECT_ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median(path: Path | None, repeats: int) -> dict[str, float]:
    runs = [_parse(path) for _ in range(repeats)]
    return {key: statistics.median(r[key] for r in runs) for key in ("sdk", "file", "dags")}


def run(scale: Scale, template: str) -> Result:
    paths = sorted(DAGS_DIR.glob("*.py"))
    repeats = 3
    if scale.is_small:  # the smoke run: one file, one process each
        paths, repeats = paths[:1], 1
    else:
        _parse(None)  # warm the bytecode caches once
    baseline = _median(None, repeats)["sdk"]
    with tempfile.TemporaryDirectory() as folder:
        minimal_path = Path(folder) / "minimal_dag.py"
        minimal_path.write_text(MINIMAL_DAG, encoding="utf-8")
        minimal = _median(minimal_path, repeats)["file"]
    files = {p.name: _median(p, repeats) for p in paths}
    for name, timing in files.items():
        assert timing["dags"] >= 1, f"{name} defines no DAG"
    slowest = max(t["file"] for t in files.values())
    return Result(
        name="dag_parse",
        title=f"DAG parse, beyond `import airflow.sdk` ({len(files)} files)",
        settings={"repeats": repeats},
        figures={
            "sdk_import_seconds": baseline,
            "minimal_dag_file_seconds": minimal,
            "slowest_file_seconds": slowest,
            **{f"{name}_seconds": t["file"] for name, t in files.items()},
        },
        rows=[
            Row(
                f"`{name}`",
                t["file"],
                baseline,
                "import airflow.sdk",
                "s",
                None,
                f"≤ {TARGET_SECONDS * 1000:g} ms",
                t["file"] <= TARGET_SECONDS,
            )
            for name, t in files.items()
        ]
        + [Row("a minimal DAG file (Airflow's own share)", minimal, baseline, "import airflow.sdk", "s")],
        details={"files": files, "sdk_import_seconds": baseline},
    )
