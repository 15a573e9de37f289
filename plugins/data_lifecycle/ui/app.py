"""The Data Lifecycle page's FastAPI app: one HTML page, its script and style, one JSON endpoint.

The Airflow API server mounts it under ``/data-lifecycle`` (plugins/data_lifecycle_page.py). The
JSON endpoint requires an authenticated Airflow user allowed to read DAG runs (Airflow's own
dependency: anonymous requests get 401, a bad token 403). The static files hold no data. Every URL
the page uses is relative, so it works under any base URL and behind a reverse proxy.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
# The connection the page reads with; a deployment points it at a login holding lifecycle_report.
CONN_ENV = "LIFECYCLE_PAGE_POSTGRES_CONN_ID"


def _read_access() -> Any:
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag("GET", DagAccessEntity.RUN))


def overview() -> dict[str, Any]:
    """Everything the page shows, in one answer (a handful of indexed, aggregated queries)."""
    from data_lifecycle.erasure.subject_map import load_subject_map
    from data_lifecycle.policy import load_policy
    from data_lifecycle.ui import costs, queries

    policy = load_policy()
    smap = load_subject_map()
    now = queries.utcnow()
    conn_id = os.environ.get(CONN_ENV) or policy.postgres_conn_id
    ledger_conn_id = smap.ledger_conn_id or conn_id
    with _connect(conn_id) as conn:
        runs = queries.last_runs(conn, now)
        removals = queries.removals_per_day(conn, now)
        pg_bytes = queries.postgres_bytes(conn)
        s3 = queries.s3_bytes(conn, now)
        inventory = queries.latest_inventory(conn)
        changes = queries.s3_changes_by_day(conn)
    with _connect(ledger_conn_id) as conn:
        erasure = queries.erasure_requests(conn, smap.ledger_table, smap.deadline_days, now)
    return {
        "generated_at": now.isoformat(),
        "targets": runs,
        "removals": removals,
        "postgres": pg_bytes,
        "s3": s3,
        "cost": costs.cost_summary(inventory, changes, policy, now.date()),
        "erasure": erasure,
    }


def _connect(conn_id: str) -> Any:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    conn: Any = PostgresHook(postgres_conn_id=conn_id).get_conn()
    conn.autocommit = True
    return conn


def create_app() -> FastAPI:
    app = FastAPI(title="Data Lifecycle", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.add_api_route("/api/overview", overview, methods=["GET"], dependencies=[_read_access()])
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
