"""The local stack answers like the real services our operators talk to."""

from __future__ import annotations

import json
import socket
import sys
import urllib.request
from pathlib import Path

import pytest

from devstack.settings import HOST, SLACK_PORT, connection_json, stack_environment


def test_pg_database_has_dreamseed_schema(pg):
    tables = {
        row[0]
        for row in pg.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'app' AND c.relkind IN ('r', 'p')"
        )
    }
    assert {"users", "sessions", "app_logs", "student_progress", "cleanup_audit"} <= tables


def test_s3_endpoint_stores_objects(s3_client, make_bucket):
    bucket = make_bucket("smoke")
    s3_client.put_object(Bucket=bucket, Key="a/b.txt", Body=b"hello")
    assert s3_client.get_object(Bucket=bucket, Key="a/b.txt")["Body"].read() == b"hello"


def test_slack_sink_records_posts(slack_sink):
    request = urllib.request.Request(
        f"http://{HOST}:{SLACK_PORT}/T000/B000/local",
        data=json.dumps({"text": "smoke test"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 200
    assert [m["body"]["text"] for m in slack_sink.messages()] == ["smoke test"]


def test_environment_points_only_at_loopback():
    env = stack_environment()
    for key, value in env.items():
        if key.startswith("AIRFLOW_CONN_"):
            conn = json.loads(value)
            endpoint = conn.get("host") or conn.get("extra", {}).get("endpoint_url", "")
            assert "127.0.0.1" in endpoint, key


def test_connection_json_keeps_extra_as_object():
    rendered = json.loads(
        connection_json({"conn_type": "aws", "conn_login": "x", "conn_extra": {"endpoint_url": "http://e"}})
    )
    assert rendered == {"conn_type": "aws", "login": "x", "extra": {"endpoint_url": "http://e"}}


def test_airflow_services_listen_on_loopback():
    env = stack_environment()
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__API__BASE_URL"].startswith("http://127.0.0.1:")


def test_airflow_services_start_no_log_server():
    from devstack.airflow_services import AirflowServices

    services = AirflowServices(
        env=stack_environment(), executor="celery", logs=Path("logs"), work=Path("work")
    )
    commands = {s.name: s.cmd for s in services.services}
    for name in ("scheduler", "triggerer", "celery-worker"):
        assert "--skip-serve-logs" in commands[name], name
    assert commands["api-server"][commands["api-server"].index("--host") + 1] == "127.0.0.1"
    assert commands["redis"][commands["redis"].index("--bind") + 1] == "127.0.0.1"


def test_a_service_that_does_not_start_names_its_port_and_log(tmp_path):
    from devstack.__main__ import _start_process
    from devstack.settings import StackPaths

    paths = StackPaths(root=tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-c", "import sys; print('bind: Address already in use'); sys.exit(1)"]
    with pytest.raises(RuntimeError) as raised:
        _start_process(paths, "fake", cmd, f"http://127.0.0.1:{port}/", port)
    message = str(raised.value)
    assert f"127.0.0.1:{port}" in message
    assert "bind: Address already in use" in message
    assert str(paths.logs / "fake.log") in message
