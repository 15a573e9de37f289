"""Benchmark results: one JSON file per benchmark in ``benchmarks/results/`` and the printed table.

A result holds ``figures`` (the headline numbers, all positive), ``rows`` (one table line each:
ours, the baseline, their ratio and the target) and ``details`` (everything else measured).
``python -m benchmarks.report`` prints the Markdown table of the saved results without running
anything (the README's Performance section is that output).
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MACHINE_FILE = "machine.json"
TIMES = "\u00d7"  # the multiplication sign of ratios


@dataclass
class Row:
    """One line of the table."""

    measure: str
    ours: float | None
    baseline: float | None = None
    baseline_name: str = ""
    unit: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None


@dataclass
class Result:
    name: str
    title: str
    settings: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: Path = RESULTS_DIR) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}.json"
        path.write_text(json.dumps(asdict(self), indent=2, default=str) + "\n", encoding="utf-8")
        return path


def machine(pg_version: str) -> dict[str, Any]:
    """Cores, RAM, OS, Python and PostgreSQL versions of the machine the suite ran on."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(ram / 1024**3, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgresql": pg_version,
    }


def load(directory: Path = RESULTS_DIR) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    meta = json.loads((directory / MACHINE_FILE).read_text(encoding="utf-8"))
    results = [
        json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
        for name in meta.get("benchmarks", [])
        if (directory / f"{name}.json").exists()
    ]
    return meta, results


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    elif value == int(value):
        text = f"{value:.0f}"
    else:
        text = f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3f}"
    return f"{text} {unit}".strip()


def table(meta: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """The Markdown table of ``results``, with the machine line above it."""
    m = meta["machine"]
    lines = [
        f"Machine: {m['cores']} cores, {m['ram_gib']} GiB RAM, PostgreSQL {m['postgresql']}, "
        f"{m['os']}, Python {m['python']}; scale {meta['scale']}, {meta['seconds']:.0f} s in all.",
        "",
        "| benchmark | measure | ours | baseline | ratio | target | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for i, row in enumerate(result["rows"]):
            baseline = _num(row["baseline"], row["unit"])
            if row["baseline_name"] and row["baseline"] is not None:
                baseline = f"{baseline} ({row['baseline_name']})"
            verdict = {True: "met", False: "**missed**", None: ""}[row["met"]]
            lines.append(
                f"| {result['title'] if i == 0 else ''} | {row['measure']} | {_num(row['ours'], row['unit'])}"
                f" | {baseline} | {_num(row['ratio'])}{TIMES if row['ratio'] is not None else ''}"
                f" | {row['target']} | {verdict} |"
            )
    return "\n".join(lines)


def main() -> None:
    meta, results = load()
    print(table(meta, results))


if __name__ == "__main__":
    main()
