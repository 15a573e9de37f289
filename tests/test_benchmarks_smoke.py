"""The benchmark suite at a minuscule scale: every benchmark runs and reports positive figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import BENCHMARKS
from devstack.settings import StackPaths

SMOKE_SCALE = "0.001"  # 2,000 sessions, 50 objects


@pytest.mark.slow
def test_every_benchmark_reports_positive_figures(local_stack: StackPaths, tmp_path: Path) -> None:
    env = {**os.environ, "BENCH_SCALE": SMOKE_SCALE}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--results", str(tmp_path)],
        cwd=local_stack.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "| benchmark | measure |" in done.stdout
    for name in BENCHMARKS:
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert result["rows"], name
        assert result["figures"], name
        for figure, value in result["figures"].items():
            assert isinstance(value, int | float) and not isinstance(value, bool), (name, figure, value)
            assert value > 0, (name, figure, value)
    meta = json.loads((tmp_path / "machine.json").read_text())
    assert meta["machine"]["cores"] >= 1 and meta["machine"]["postgresql"]
