"""The Data Lifecycle page in the Airflow UI: what the cleanups removed, what it saved, what is due.

An Airflow plugin (this file is what the plugin manager scans; the code lives in the
``data_lifecycle.ui`` package): a FastAPI app mounted by the API server under ``/data-lifecycle``,
and a navigation entry (Browse → Data Lifecycle) that shows it inside the UI.
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

from data_lifecycle.ui.app import create_app

URL_PREFIX = "/data-lifecycle"


class DataLifecyclePagePlugin(AirflowPlugin):
    name = "data_lifecycle_page"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": create_app(), "url_prefix": URL_PREFIX, "name": "Data Lifecycle"}
    ]
    # href without a leading slash: relative to the UI's base URL (reverse proxies, managed services).
    external_views: ClassVar[list[dict[str, Any]]] = [
        {
            "name": "Data Lifecycle",
            "href": URL_PREFIX.lstrip("/") + "/",
            "destination": "nav",
            "category": "browse",
            "url_route": "data-lifecycle",
        }
    ]
