"""Run a DAG in-process with ``dag.test()`` for the demo and the end-to-end tests.

In Airflow 3.3.2, ``dag.test()`` builds its scheduler-side DAG by serializing the DAG in memory, so
its ``deadline`` holds serialized dicts instead of the database ids a deployed DAG has; a run that
succeeds then fails while pruning its deadlines (``cannot adapt type 'dict'``). Deadlines only
matter to a scheduler and a triggerer, neither of which ``dag.test()`` runs, so the DAG runs here
with its deadline detached. The deadline itself is checked by the DAG integrity test.

``dag.test()`` also renders templated fields in place on the task objects it is given, so a second
run in the same process would reuse the first run's rendered values (its ``dry_run``, its
retention, its resolved Params). In a deployment every task runs on a freshly parsed DAG; here each
run gets one too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any


def test_run(dag: Any, *, logical_date: datetime | None, conf: dict[str, Any] | None = None) -> Any:
    """``dag.test(logical_date=..., run_conf=...)``; returns the finished DagRun."""
    from airflow.dag_processing.dagbag import DagBag

    fresh = DagBag(dag_folder=dag.fileloc, safe_mode=False).dags[dag.dag_id]
    fresh.deadline = None
    return fresh.test(logical_date=logical_date, run_conf=conf)
