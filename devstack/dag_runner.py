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

``dag.test()`` always creates a *manual* run, with ``run_after`` now unless told otherwise (a
manual run at a future logical date is refused by the anchor check, as in a deployment). Runs that stand for the schedule (the demo, most
end-to-end tests) ask for ``run_type="scheduled"``: the same run is then created with the
scheduled run type, the way the scheduler creates it, so the tasks see what a scheduled run sees
(for instance, that a manual run's dry-run default does not apply).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

RUN_TYPES = ("manual", "scheduled", "backfill")


def test_run(
    dag: Any,
    *,
    logical_date: datetime | None,
    conf: dict[str, Any] | None = None,
    run_type: str = "manual",
    run_after: datetime | None = None,
) -> Any:
    """``dag.test(logical_date=..., run_conf=...)`` as a run of ``run_type``; returns the finished DagRun."""
    from airflow.dag_processing.dagbag import DagBag

    if run_type not in RUN_TYPES:
        raise ValueError(f"run_type must be one of {RUN_TYPES}, got {run_type!r}")
    fresh = DagBag(dag_folder=dag.fileloc, safe_mode=False).dags[dag.dag_id]
    fresh.deadline = None
    with _created_as(run_type):
        return fresh.test(logical_date=logical_date, run_conf=conf, run_after=run_after)


@contextmanager
def _created_as(run_type: str) -> Iterator[None]:
    """``dag.test()`` creating its run as ``run_type`` instead of manual."""
    if run_type == "manual":
        yield
        return
    from unittest import mock

    from airflow.models import dagrun as dagrun_module
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType
    from sqlalchemy import select

    kind = DagRunType(run_type)

    def create(*, dag: Any, logical_date: Any, run_after: Any, session: Any, **kwargs: Any) -> Any:
        # What get_or_create_dagrun does, with the run type (and its run id prefix) of the schedule,
        # which starts a run once its data interval has ended: run_after is the interval's end.
        if kwargs["data_interval"] is not None:
            run_after = kwargs["data_interval"][1]
        elif logical_date is not None:
            run_after = logical_date
        DagRun = dagrun_module.DagRun  # noqa: N806 (the model class)
        existing = session.scalar(
            select(DagRun).where(DagRun.dag_id == dag.dag_id, DagRun.logical_date == logical_date)
        )
        if existing:
            session.delete(existing)
            session.commit()
        return dag.create_dagrun(
            run_id=DagRun.generate_run_id(run_type=kind, logical_date=logical_date, run_after=run_after),
            logical_date=logical_date,
            data_interval=kwargs["data_interval"],
            run_after=run_after,
            conf=kwargs["conf"],
            run_type=kind,
            state=DagRunState.RUNNING,
            triggered_by=DagRunTriggeredByType.BACKFILL
            if kind is DagRunType.BACKFILL_JOB
            else DagRunTriggeredByType.TIMETABLE,
            triggering_user_name=None,
            start_date=kwargs["start_date"] or logical_date,
            session=session,
        )

    with mock.patch.object(dagrun_module, "get_or_create_dagrun", create):
        yield
