"""The Data Lifecycle page in a real browser, against ``airflow api-server`` on the local stack.

A small DreamSeed run (the cleanup DAGs and the inventory, with ``dag.test()``) fills the audit
tables; an API server with the simple auth manager serves the plugin under a base URL path; Debian's
Chromium, driven by Playwright (never a downloaded browser), loads the page. The figures the page
shows are compared with the audit tables, every chart must hold drawn SVG, the console must stay
clean, and an anonymous visitor gets no data. One screenshot per run: .local/lifecycle_page.png.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PATHS
from tests.e2e.conftest import ANCHOR, run_dag

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The API server's port for this test; LIFECYCLE_UI_TEST_PORT moves it (two checkouts side by side).
API_PORT = int(os.environ.get("LIFECYCLE_UI_TEST_PORT", "19233"))
BASE_PATH = "/airflow"  # served under a path, as behind a reverse proxy or a managed service
BASE = f"http://127.0.0.1:{API_PORT}{BASE_PATH}"
PAGE = f"{BASE}/data-lifecycle/"
SCREENSHOT = PATHS.local / "lifecycle_page.png"
DAGS = (
    "cleanup_expired_sessions",
    "purge_soft_deleted",
    "cleanup_s3_objects",
    "apply_storage_tiers",
    "maintain_partitions",
)

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (make system-deps)"
)


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means the server is up
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def _request(url: str, token: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


@pytest.fixture(scope="module")
def estate(lifecycle_env, dagbag, local_stack, s3_client, tmp_path_factory) -> Iterator[str]:
    """A database and buckets after a small DreamSeed run: yesterday's inventory, the cleanups,
    today's inventory, and one erasure request left open."""
    import uuid

    import psycopg
    from psycopg import sql

    from include.dreamseed.generate import load_postgres
    from tests.conftest import LEDGER_SQL, TEMPLATE_DB, TEMPLATE_LOCK_KEY, _ensure_template, admin_connect
    from tests.e2e.conftest import E2E_SIZES, DemoS3

    _ensure_template()
    name = f"t_{uuid.uuid4().hex[:12]}"
    with admin_connect() as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (TEMPLATE_LOCK_KEY,))
        try:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(TEMPLATE_DB)
                )
            )
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (TEMPLATE_LOCK_KEY,))
    ledger = f"l_{uuid.uuid4().hex[:12]}"
    with admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(ledger)))
    with admin_connect(ledger) as conn:
        conn.execute(LEDGER_SQL.read_text())
    saved = {k: os.environ.get(k) for k in ("AIRFLOW_CONN_LIFECYCLE_POSTGRES", "AIRFLOW_CONN_ERASURE_LEDGER")}
    conn_json = json.loads(saved["AIRFLOW_CONN_LIFECYCLE_POSTGRES"] or "{}")
    os.environ["AIRFLOW_CONN_LIFECYCLE_POSTGRES"] = json.dumps(conn_json | {"schema": name})
    os.environ["AIRFLOW_CONN_ERASURE_LEDGER"] = json.dumps(conn_json | {"schema": ledger})
    try:
        with admin_connect(name) as pg:
            with pg.transaction():
                load_postgres(pg, ANCHOR, E2E_SIZES)
            DemoS3(s3_client, lifecycle_env).load()
            from datetime import timedelta

            assert run_dag(dagbag, "lifecycle_inventory", ANCHOR - timedelta(days=1)).state == "success"
            for dag_id in DAGS:
                assert run_dag(dagbag, dag_id).state == "success", dag_id
            assert run_dag(dagbag, "lifecycle_inventory").state == "success"
        with admin_connect(ledger) as lpg:
            # One request started 26 days ago and not finished, one registered and never run.
            lpg.execute(
                "INSERT INTO app.erasure_ledger (request_id, subject_hash, status, dry_run, dag_id, run_id, requested_at)"
                " VALUES ('REQ-page-0001', repeat('b', 64), 'started', false, 'erase_user_data', 'r', now() - interval '26 days')"
            )
            lpg.execute(
                "INSERT INTO app.erasure_requests (request_id, subject_hash, subject_token, requested_at)"
                " VALUES ('REQ-page-0002', repeat('b', 64), 'sealed', now() - interval '2 days')"
            )
        yield name
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        with psycopg.connect(**_admin_kwargs()) as conn:
            for db in (name, ledger):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))


def _admin_kwargs() -> dict[str, Any]:
    from devstack.settings import HOST, POSTGRES_PORT, POSTGRES_USER

    return {
        "host": HOST,
        "port": POSTGRES_PORT,
        "user": POSTGRES_USER,
        "dbname": "postgres",
        "autocommit": True,
    }


@pytest.fixture(scope="module")
def api_server(estate, tmp_path_factory) -> Iterator[str]:
    """``airflow api-server`` over the local stack with one user; yields a token for it."""
    if socket.socket().connect_ex(("127.0.0.1", API_PORT)) == 0:
        pytest.fail(f"port {API_PORT} is taken; set LIFECYCLE_UI_TEST_PORT to a free port")
    home = tmp_path_factory.mktemp("api")
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"viewer": "viewer-pass"}))
    env = {
        **os.environ,
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{API_PORT}{BASE_PATH}",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(API_PORT),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False",
        "AIRFLOW__API_AUTH__JWT_SECRET": "lifecycle-page-test-secret-0123456789abcdef",
    }
    log = (PATHS.logs / "lifecycle_page_api_server.log").open("w")
    PATHS.logs.mkdir(parents=True, exist_ok=True)
    airflow = shutil.which("airflow", path=str(Path(sys.executable).parent)) or "airflow"
    proc = subprocess.Popen(
        [airflow, "api-server", "--host", "127.0.0.1", "--port", str(API_PORT), "--workers", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_http(f"{BASE}/api/v2/monitor/health", timeout=90)
        body = json.dumps({"username": "viewer", "password": "viewer-pass"}).encode()
        req = urllib.request.Request(
            f"{BASE}/auth/token", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            token = json.loads(resp.read())["access_token"]
        yield token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium (packages-dev.txt)"
        )
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _db(name: str, query: str, *params: Any) -> Any:
    import psycopg

    with psycopg.connect(**(_admin_kwargs() | {"dbname": name})) as conn:
        return conn.execute(query, params or None).fetchall()


def test_anonymous_requests_get_no_data(api_server, browser):
    assert _request(f"{BASE}/data-lifecycle/api/overview")[0] == 401
    assert _request(f"{BASE}/data-lifecycle/api/overview", token="not-a-token")[0] == 403
    page = browser.new_page()
    page.goto(PAGE)
    page.wait_for_selector("#status[data-refused]", timeout=10_000)
    assert page.locator("#status").get_attribute("data-refused") == "401"
    assert page.locator("#content").is_hidden()
    assert page.locator("[data-metric]").count() == 0
    page.close()


def test_the_plugin_is_in_the_ui_navigation(api_server):
    status, body = _request(f"{BASE}/api/v2/plugins", token=api_server)
    assert status == 200
    views = [v for p in body["plugins"] for v in p["external_views"]]
    assert {"name": "Data Lifecycle", "href": "data-lifecycle/", "destination": "nav"}.items() <= next(
        v for v in views if v["name"] == "Data Lifecycle"
    ).items()


def test_page_shows_the_audit_figures_with_drawn_charts_and_a_clean_console(api_server, browser, estate):
    context = browser.new_context(viewport={"width": 1360, "height": 1000}, device_scale_factor=1)
    context.add_cookies([{"name": "_token", "value": api_server, "url": f"http://127.0.0.1:{API_PORT}/"}])
    page = context.new_page()
    problems: list[str] = []
    page.on(
        "console",
        lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None,
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))

    started = time.monotonic()
    page.goto(PAGE)
    page.wait_for_selector("body[data-ready=true]", timeout=10_000)
    load_seconds = time.monotonic() - started
    assert load_seconds < 5, f"page took {load_seconds:.1f} s"
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    def shown(metric: str) -> int:
        return int(float(page.locator(f'[data-metric="{metric}"]').first.get_attribute("data-value")))

    ((rows, objects, partitions),) = _db(
        estate,
        "SELECT coalesce(sum(n) FILTER (WHERE kind = 'rows'), 0), coalesce(sum(n) FILTER (WHERE kind = 'objects'), 0),"
        " coalesce(sum(n) FILTER (WHERE kind = 'partitions'), 0) FROM (SELECT CASE WHEN summary ? 'dropped'"
        " THEN jsonb_array_length(summary -> 'dropped') + jsonb_array_length(summary -> 'moved') ELSE rows_affected END n, CASE WHEN summary ? 'objects'"
        " THEN 'objects' WHEN summary ? 'dropped' THEN 'partitions' WHEN summary ? 'deleted' THEN 'rows' END kind FROM app.cleanup_audit"
        " WHERE action <> 'dry_run') a",
    )
    assert rows > 0 and objects > 0 and partitions > 0
    assert (shown("rows_removed_90d"), shown("objects_removed_90d"), shown("partitions_dropped_90d")) == (
        rows,
        objects,
        partitions,
    )
    ((freed,),) = _db(
        estate, "SELECT sum(greatest(bytes_before - bytes_after, 0)) FROM app.cleanup_table_sizes"
    )
    assert shown("pg_bytes_freed") == freed > 0
    ((removed, moved),) = _db(
        estate,
        "SELECT sum(bytes) FILTER (WHERE action = 'removed'), sum(bytes) FILTER (WHERE action = 'moved') FROM app.cleanup_s3_bytes",
    )
    assert (shown("s3_bytes_removed"), shown("s3_bytes_moved")) == (removed, moved)
    ((stored,),) = _db(
        estate,
        "SELECT sum(bytes) FROM app.s3_inventory WHERE snapshot_date = (SELECT max(snapshot_date) FROM app.s3_inventory)",
    )
    assert shown("s3_bytes_now") == stored
    from data_lifecycle.pricing import monthly_cost, monthly_saving

    changes = _db(estate, "SELECT action, storage_class, to_class, bytes FROM app.cleanup_s3_bytes")
    saving = sum(
        monthly_cost({cls: n}) if action == "removed" else monthly_saving(n, cls, to)
        for action, cls, to, n in changes
    )
    assert float(
        page.locator('[data-metric="saving_per_month"]').get_attribute("data-value")
    ) == pytest.approx(saving)
    assert saving > 0
    assert float(page.locator('[data-metric="forecast_12_months"]').get_attribute("data-value")) > 0
    assert shown("erasure_open_count") == 2
    assert shown("erasure_due_soon") == 1  # REQ-page-0001: 4 days left of 30
    assert page.locator('[data-request="REQ-page-0001"]').count() == 1
    assert page.locator('[data-request="REQ-page-0002"]').count() == 1
    assert "b" * 16 not in page.content()  # no subject hash reaches the page

    # Last run per target, as audited.
    audited = _db(
        estate,
        "SELECT DISTINCT ON (dag_id, task_id) dag_id, task_id, CASE WHEN summary ? 'dropped' THEN"
        " jsonb_array_length(summary -> 'dropped') + jsonb_array_length(summary -> 'moved') ELSE rows_affected END"
        " FROM app.cleanup_audit ORDER BY dag_id, task_id, recorded_at DESC",
    )
    for dag_id, task_id, n in audited:
        row = page.locator(f'tr[data-target="{dag_id}/{task_id}"]')
        assert row.locator('[data-field="state"]').get_attribute("data-value") == "success", task_id
        assert int(row.locator('[data-field="removed"]').get_attribute("data-value")) == n, task_id

    assert problems == []
    for chart in ("removals", "s3-bytes", "pg-bytes", "forecast"):
        svg = page.locator(f'svg[data-chart="{chart}"]')
        assert svg.count() == 1, chart
        assert svg.locator("rect[data-value], circle[data-value], polyline").count() > 0, chart
        box = svg.bounding_box()
        assert box and box["width"] > 100 and box["height"] > 50, chart
    context.close()


def test_the_page_opens_inside_the_airflow_ui(api_server, browser):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    context.add_cookies([{"name": "_token", "value": api_server, "url": f"http://127.0.0.1:{API_PORT}/"}])
    page = context.new_page()
    page.goto(f"{BASE}/plugin/data-lifecycle")
    deadline = time.monotonic() + 20
    frames: list[str] = []
    while time.monotonic() < deadline:
        frames = [f.url for f in page.frames]
        ready = [
            f
            for f in page.frames
            if f.url.endswith("/data-lifecycle/") and f.locator("body[data-ready=true]").count()
        ]
        if ready:
            break
        page.wait_for_timeout(250)
    else:
        pytest.fail(f"the page did not load inside the UI; frames: {frames}")
    assert ready[0].url == PAGE, frames
    page.screenshot(path=str(PATHS.local / "lifecycle_page_in_airflow.png"))
    context.close()
