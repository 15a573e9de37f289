"""Every DAG in dags/ imports cleanly and carries the guardrails our users rely on.

The checks live in ``integrity_problems`` so that the same code is also run on deliberately broken
DAG folders (an import error, a DAG without retries, a broken policy file) to show it catches them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import airflow.sdk
import pytest
from airflow.dag_processing.dagbag import DagBag

from data_lifecycle import dag_common
from data_lifecycle.alerts import APPROVED_TAGS, kill_switch_guard
from data_lifecycle.operators.postgres import (
    PostgresBatchedDeleteOperator,
    PostgresPartitionRetentionOperator,
)
from data_lifecycle.operators.s3 import (
    S3ApplyLifecycleOperator,
    S3ExpireObjectsOperator,
    S3GlacierCopyThenDeleteOperator,
)

# Importing Airflow itself (the SDK's lazily loaded DAG, task and timetable machinery) is a one-time
# cost of the DAG processor, not the DAG files' parse time; our own package is still counted.
_AIRFLOW_ONE_TIME_IMPORTS = [
    getattr(airflow.sdk, name) for name in ("DAG", "Asset", "BaseOperator", "Param", "dag", "task")
]

# Operators that delete, or (lifecycle rules) make S3 delete: the kill switch must run before them.
DESTRUCTIVE_OPERATORS = (
    PostgresBatchedDeleteOperator,
    PostgresPartitionRetentionOperator,
    S3ExpireObjectsOperator,
    S3GlacierCopyThenDeleteOperator,
    S3ApplyLifecycleOperator,
)
DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
MAX_PARSE_SECONDS = 1.0


def load_dagbag(folder: Path) -> DagBag:
    return DagBag(dag_folder=str(folder), safe_mode=False)


def integrity_problems(dagbag: DagBag) -> list[str]:
    """Everything wrong with the DAGs of a DagBag, one line each (empty when all is well)."""
    problems = [
        f"import error in {path}: {err.strip().splitlines()[-1]}"
        for path, err in dagbag.import_errors.items()
    ]
    for dag_id, dag in sorted(dagbag.dags.items()):
        where = f"{dag_id}:"
        if not dag.tags:
            problems.append(f"{where} has no tags")
        elif unknown := set(dag.tags) - APPROVED_TAGS:
            problems.append(f"{where} tags {sorted(unknown)} not in the approved set")
        if not dag.doc_md:
            problems.append(f"{where} has no doc_md")
        if dag.catchup:
            problems.append(f"{where} catchup must be False")
        if dag.max_active_runs != 1:
            problems.append(f"{where} max_active_runs must be 1, is {dag.max_active_runs}")
        if dag.schedule is None and "erasure" not in dag.tags:
            problems.append(f"{where} has no explicit schedule")
        if not dag.deadline:
            problems.append(f"{where} has no deadline alert")
        for task in dag.tasks:
            t = f"{dag_id}.{task.task_id}:"
            if not task.owner or task.owner == "airflow":
                problems.append(f"{t} has no owner")
            if task.task_id == "run_summary":
                continue
            if (task.retries or 0) < 2:
                problems.append(f"{t} retries={task.retries}, must be >= 2")
            if not task.retry_exponential_backoff:
                problems.append(f"{t} has no exponential retry backoff")
            if not task.on_failure_callback:
                problems.append(f"{t} has no failure notifier")
            if task.execution_timeout is None:
                problems.append(f"{t} has no execution_timeout")
            if isinstance(task, DESTRUCTIVE_OPERATORS) and not _guarded(task):
                problems.append(f"{t} is destructive but the kill switch does not run before it")
            if isinstance(task, DESTRUCTIVE_OPERATORS) and "lifecycle_dry_run" not in str(task.dry_run):
                problems.append(f"{t} is destructive but its dry_run does not follow the run's type")
    return problems


def _guarded(task: object) -> bool:
    hook = getattr(task, "_pre_execute_hook", None)
    return hook is kill_switch_guard or getattr(hook, "func", None) is dag_common._guard_and_measure


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return load_dagbag(DAGS_FOLDER)


def test_dag_folder_has_dags(dagbag):
    assert dagbag.dags, "no DAG was loaded from dags/"
    assert "cleanup_expired_sessions" in dagbag.dags


def test_every_dag_passes_the_integrity_checks(dagbag):
    assert integrity_problems(dagbag) == []


def test_dag_id_matches_file_name(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert Path(dag.fileloc).stem == dag_id


def slow_files(folder: Path) -> list[tuple[str, float]]:
    """Files whose own parse time is at least ``MAX_PARSE_SECONDS``, printing every file's figure.

    Airflow's DAG processor imports what DAG files import once, before it parses them
    ([dag_processor] parsing_pre_import_modules), so the figure that matters is each file's own work
    on a warm process: the per-file stats of a second DagBag over the folder.
    """
    load_dagbag(folder)
    stats = load_dagbag(folder).dagbag_stats
    assert stats, "the DagBag recorded no per-file stats"
    slow = []
    for stat in sorted(stats, key=lambda s: s.file):
        seconds = (
            stat.duration.total_seconds() if isinstance(stat.duration, timedelta) else float(stat.duration)
        )
        print(f"parse time {stat.file}: {seconds:.3f} s")
        if seconds >= MAX_PARSE_SECONDS:
            slow.append((stat.file, seconds))
    return slow


def test_each_dag_file_parses_under_a_second():
    assert slow_files(DAGS_FOLDER) == []


# Modules a DAG file must not import at parse time: drivers and clients belong in the tasks and
# callbacks that use them (each costs tens of milliseconds on every parse of every file).
HEAVY_AT_PARSE = ("psycopg", "slack_sdk", "aiohttp", "boto3", "botocore", "s3transfer", "pyarrow")

_IMPORTS_CHILD = """
import importlib.util, json, sys
import airflow.sdk
before = set(sys.modules)
found = {}
for path in sys.argv[1:]:
    spec = importlib.util.spec_from_file_location("dag_" + str(len(found)), path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    found[path] = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in HEAVY)
print(json.dumps(found))
"""


def heavy_imports(folder: Path) -> dict[str, list[str]]:
    """Per DAG file of ``folder``, the heavy modules it loaded beyond ``import airflow.sdk``.

    One fresh process for the folder. Its metadata database is left at the default (SQLite): on a
    PostgreSQL one, Airflow itself imports psycopg, which would hide a DAG file importing it.
    """
    paths = sorted(str(p) for p in folder.glob("*.py"))
    code = f"HEAVY = {HEAVY_AT_PARSE!r}\n" + _IMPORTS_CHILD
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"}
    done = subprocess.run(
        [sys.executable, "-c", code, *paths], capture_output=True, text=True, check=True, timeout=120, env=env
    )
    found: dict[str, list[str]] = json.loads(done.stdout.strip().splitlines()[-1])
    return {Path(path).name: modules for path, modules in found.items() if modules}


def test_dag_files_import_no_drivers_or_clients_at_parse_time():
    assert heavy_imports(DAGS_FOLDER) == {}


def test_heavy_import_guard_names_the_file(tmp_path):
    _write_dag(tmp_path, "a_light")
    _write_dag(tmp_path, "b_heavy")
    heavy = tmp_path / "b_heavy.py"
    heavy.write_text("import psycopg  # noqa: F401\n" + heavy.read_text())
    found = heavy_imports(tmp_path)
    assert list(found) == ["b_heavy.py"]
    assert "psycopg" in found["b_heavy.py"]


def test_parse_time_guard_catches_work_at_top_level(tmp_path):
    _write_dag(tmp_path, "fast")
    _write_dag(tmp_path, "slow")
    slow_dag = tmp_path / "slow.py"
    slow_dag.write_text(
        "import time\ntime.sleep(1.1)  # a query or API call at parse time\n" + slow_dag.read_text()
    )
    assert [name for name, _ in slow_files(tmp_path)] == ["slow.py"]


GOOD_DAG = """
from datetime import datetime, timedelta, UTC
from airflow.sdk import CronTriggerTimetable, dag, task
from data_lifecycle.alerts import deadline_alert, lifecycle_default_args

args = lifecycle_default_args("report")
args.update({OVERRIDES})

@dag(schedule=CronTriggerTimetable("0 1 * * *", timezone="UTC"), start_date=datetime(2026, 1, 1, tzinfo=UTC),
     catchup=False, max_active_runs=1, tags=["lifecycle"], doc_md="doc", default_args=args,
     deadline=deadline_alert(timedelta(hours=1)))
def {DAG_ID}():
    @task
    def work():
        return 1
    work()

{DAG_ID}()
"""


def _write_dag(folder: Path, dag_id: str, overrides: str = "") -> None:
    body = GOOD_DAG.replace("{OVERRIDES}", overrides).replace("{DAG_ID}", dag_id)
    (folder / f"{dag_id}.py").write_text(textwrap.dedent(body))


def test_checks_pass_a_well_formed_dag(tmp_path):
    _write_dag(tmp_path, "well_formed")
    bag = load_dagbag(tmp_path)
    assert list(bag.dags) == ["well_formed"]
    assert integrity_problems(bag) == []


def test_checks_catch_an_import_error(tmp_path):
    _write_dag(tmp_path, "fine")
    (tmp_path / "broken.py").write_text("from airflow.sdk import dag\nimport not_a_module_anywhere\n")
    problems = integrity_problems(load_dagbag(tmp_path))
    assert len(problems) == 1
    assert "broken.py" in problems[0] and "not_a_module_anywhere" in problems[0]


def test_checks_catch_a_dag_without_retries(tmp_path):
    _write_dag(tmp_path, "no_retries", overrides='{"retries": 0}')
    problems = integrity_problems(load_dagbag(tmp_path))
    assert problems == ["no_retries.work: retries=0, must be >= 2"]


def test_broken_policy_is_an_import_error_naming_the_field(tmp_path, monkeypatch):
    policy = (DAGS_FOLDER.parent / "include" / "policies" / "lifecycle.yaml").read_text()
    broken = policy.replace("timestamp_column: expires_at", "timestamp_colum: expires_at")
    assert broken != policy
    path = tmp_path / "broken_policy.yaml"
    path.write_text(broken)
    monkeypatch.setenv("LIFECYCLE_POLICY_FILE", str(path))
    bag = load_dagbag(DAGS_FOLDER)
    assert bag.import_errors, "a broken policy must fail the DAG files that load it"
    message = "\n".join(bag.import_errors.values())
    assert "broken_policy.yaml" in message
    assert "rule 'sessions'" in message
    assert "timestamp_colum" in message
    problems = integrity_problems(bag)
    assert any("import error" in p for p in problems)


def test_dag_files_do_no_work_at_parse_time(dagbag):
    # No Variable.get / DB / network at top level: the DAGs parse with no connection variables set.
    env_keys = [k for k in os.environ if k.startswith("AIRFLOW_CONN_")]
    saved = {k: os.environ.pop(k) for k in env_keys}
    try:
        bag = load_dagbag(DAGS_FOLDER)
    finally:
        os.environ.update(saved)
    assert bag.import_errors == {}
    assert set(bag.dags) == set(dagbag.dags)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(None, 10, id="unset"),
        pytest.param("2", 2, id="set"),
        pytest.param("0", "1 to 600", id="zero"),
        pytest.param("2.5", "1 to 600", id="fraction"),
        pytest.param("601", "1 to 600", id="too-long"),
    ],
)
def test_in_order_gate_poke_interval_comes_from_the_environment(monkeypatch, raw, expected):
    from data_lifecycle.dag_common import IN_ORDER_POKE_ENV, in_order_poke_seconds
    from data_lifecycle.exceptions import LifecycleConfigError

    if raw is None:
        monkeypatch.delenv(IN_ORDER_POKE_ENV, raising=False)
    else:
        monkeypatch.setenv(IN_ORDER_POKE_ENV, raw)
    if isinstance(expected, int):
        assert in_order_poke_seconds() == expected
    else:
        with pytest.raises(LifecycleConfigError, match=expected):
            in_order_poke_seconds()
