"""Run a DAG in-process with ``dag.test()`` for the demo and the end-to-end tests.

In Airflow 3.3.2, ``dag.test()`` builds its scheduler-side DAG by serializing the DAG in memory, so
its ``deadline`` holds serialized dicts instead of the database ids a deployed DAG has; a run that
succeeds then fails while pruning its deadlines (``cannot adapt type 'dict'``). Deadlines only
matter to a scheduler and a triggerer, neither of which ``dag.test()`` runs, so the DAG runs here
with its deadline detached for the duration of the call. The deadline itself is checked by the
DAG integrity test.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any


def test_run(dag: Any, *, logical_date: datetime, conf: dict[str, Any] | None = None) -> Any:
    """``dag.test(logical_date=..., run_conf=...)``; returns the finished DagRun."""
    deadline = dag.deadline
    dag.deadline = None
    try:
        return dag.test(logical_date=logical_date, run_conf=conf)
    finally:
        dag.deadline = deadline
