"""The shape of the deployable package: what ships, what it may import, and no import circles.

`plugins/` is what every deployment receives (MWAA's plugins.zip, Composer's plugins folder, the
Astro image), so it holds only code a deployment runs; the local stack lives in `devstack/`.
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
PACKAGE = PLUGINS / "data_lifecycle"

# Top-level modules that exist for development, tests and benchmarks only. Dev-only third-party
# packages are those of requirements-dev.in that requirements.txt (the runtime) does not name.
DEV_ONLY_MODULES = {"devstack", "tests", "benchmarks", "include"}
DEV_ONLY_PACKAGES = {"moto", "pytest", "hypothesis", "playwright", "mypy", "ruff", "uv", "_pytest"}
# A module of our package that starts servers or subprocesses is development tooling.
DEV_ONLY_CALLS = re.compile(r"\b(subprocess|ThreadedMotoServer|pg_ctl|initdb)\b")


def module_name(path: Path) -> str:
    parts = path.relative_to(PLUGINS).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, at any depth (inside functions and TYPE_CHECKING too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {
        name: {dep for dep in imported_modules(path) if dep in modules and dep != name}
        for name, path in modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def readme_bundle_command() -> str:
    """The plugins.zip command as the README's deploy instructions write it."""
    match = re.search(r"`(cd plugins && zip [^`]+)`", (ROOT / "README.md").read_text(encoding="utf-8"))
    assert match, "README.md no longer shows how to build plugins.zip"
    return match.group(1)


def build_bundle(workdir: Path, plugins: Path = PLUGINS) -> list[str]:
    """Run the README's zip command against ``plugins`` (copied into ``workdir``); the bundle's names."""
    copy = workdir / "plugins"
    subprocess.run(["cp", "-a", str(plugins), str(copy)], check=True)
    command = readme_bundle_command()
    args = shlex.split(command.split("&&", 1)[1])
    assert args[:2] == ["zip", "-r"], command
    target, members = args[2], args[3:]
    assert target == "../plugins.zip", command
    zip_path = workdir / "plugins.zip"
    with zipfile.ZipFile(zip_path, "w") as bundle:  # what `zip -r` adds, without needing zip(1)
        for member in members:
            source = copy / member
            files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
            for file in files:
                bundle.write(file, file.relative_to(copy).as_posix())
    with zipfile.ZipFile(zip_path) as bundle:
        return bundle.namelist()


def dev_only_problems(names: list[str], root: Path) -> list[str]:
    problems = []
    for name in names:
        parts = Path(name).parts
        if any(part in DEV_ONLY_MODULES for part in parts):
            problems.append(f"{name}: a dev-only module in the deploy bundle")
        if not name.endswith(".py"):
            continue
        path = root / name
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        for node in ast.walk(tree):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                mods = [node.module]
            for mod in mods:
                top = mod.split(".")[0]
                if top in DEV_ONLY_MODULES or top in DEV_ONLY_PACKAGES:
                    problems.append(f"{name}: imports the dev-only module {mod}")
        if DEV_ONLY_CALLS.search(text):
            problems.append(f"{name}: starts processes or servers (development tooling)")
    return problems


def test_nothing_under_plugins_imports_the_local_stack() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {mod}"
        for path in PLUGINS.rglob("*.py")
        for mod in imported_modules(path)
        if mod.split(".")[0] in DEV_ONLY_MODULES or mod.split(".")[0] in DEV_ONLY_PACKAGES
    ]
    assert offenders == []


def test_the_readme_deploy_bundle_holds_no_dev_only_module(tmp_path: Path) -> None:
    names = build_bundle(tmp_path)
    assert "data_lifecycle/operators/postgres/batched_delete.py" in names
    assert ".airflowignore" in names
    # The Data Lifecycle page: the plugin module the plugin manager scans, and the page's files.
    assert "data_lifecycle_page.py" in names
    assert "data_lifecycle/ui/static/page.js" in names
    assert dev_only_problems(names, tmp_path / "plugins") == []


def test_the_bundle_check_catches_the_stack_put_back_under_plugins(tmp_path: Path) -> None:
    planted = tmp_path / "planted"
    subprocess.run(["cp", "-a", str(PLUGINS), str(planted)], check=True)
    subprocess.run(
        ["cp", "-a", str(ROOT / "devstack"), str(planted / "data_lifecycle" / "devstack")], check=True
    )
    work = tmp_path / "work"
    work.mkdir()
    names = build_bundle(work, planted)
    problems = dev_only_problems(names, work / "plugins")
    assert any("data_lifecycle/devstack/postgres.py" in p for p in problems), problems


def test_no_module_of_the_package_imports_one_that_imports_it_back() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_check_finds_a_planted_circle() -> None:
    graph = import_graph()
    graph["data_lifecycle.cutoff"] = graph["data_lifecycle.cutoff"] | {"data_lifecycle.policy"}
    graph["data_lifecycle.policy"] = graph["data_lifecycle.policy"] | {"data_lifecycle.cutoff"}
    assert ["data_lifecycle.cutoff", "data_lifecycle.policy"] in cycles(graph)


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        pytest.param(
            "data_lifecycle.operators", ("data_lifecycle.dag_common", "data_lifecycle.alerts"), id="operators"
        ),
        pytest.param(
            "data_lifecycle.erasure", ("data_lifecycle.dag_common", "data_lifecycle.alerts"), id="erasure"
        ),
    ],
)
def test_dependencies_point_from_dags_down_to_helpers(layer: str, forbidden: tuple[str, ...]) -> None:
    graph = import_graph()
    offenders = [
        f"{mod} imports {dep}"
        for mod, deps in graph.items()
        if mod.startswith(layer)
        for dep in deps
        if dep.startswith(forbidden)
    ]
    assert offenders == []


def test_no_package_module_grows_past_seven_hundred_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 700
    }
    assert long == {}
