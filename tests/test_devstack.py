"""The local stack answers like the real services our operators talk to."""

from __future__ import annotations

import json
import urllib.request

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
