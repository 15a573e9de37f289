"""Generate DreamSeed demo data relative to an anchor date, in PostgreSQL and S3.

Rows are made server-side with ``generate_series`` (fast enough for millions of rows on 2 cores).
Every timestamp is relative to ``anchor``, the logical date the demo runs its DAGs at, so the same
share of data is due whatever day the demo runs. S3 sets ``LastModified`` itself, so the demo runs
its S3 DAGs at an anchor far enough in the future that objects written now are old by then.

Usage: ``python -m include.dreamseed.generate --anchor 2027-03-01T05:00:00+00:00 --scale 1``
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"
# The DreamSeed tables, then the erasure role's grants on them (the erasure ledger lives in its
# own database, made by the local stack).
SCHEMA_SQL = SQL_DIR / "dreamseed_schema.sql"
SCHEMA_FILES = (SCHEMA_SQL, SQL_DIR / "erasure_role.sql")

LOGS_BUCKET = "dreamseed-logs"
LOG_ARCHIVE_BUCKET = "dreamseed-log-archive"
UPLOADS_BUCKET = "dreamseed-uploads"
BUCKETS = (LOGS_BUCKET, LOG_ARCHIVE_BUCKET, UPLOADS_BUCKET)

# How many months of student_progress history exist before the anchor.
PROGRESS_HISTORY_MONTHS = 16


@dataclass(frozen=True)
class Sizes:
    """Row and object counts for a scale factor (1 = the demo; benchmarks use more)."""

    scale: float = 1.0

    def _n(self, base: int) -> int:
        return max(1, int(base * self.scale))

    @property
    def users(self) -> int:
        return self._n(20_000)

    @property
    def sessions(self) -> int:
        return self._n(250_000)

    @property
    def app_logs(self) -> int:
        return self._n(150_000)

    @property
    def progress(self) -> int:
        return self._n(160_000)

    @property
    def uploads(self) -> int:
        return self._n(4_000)

    @property
    def log_objects(self) -> int:
        return self._n(120)

    @property
    def upload_objects(self) -> int:
        return self._n(150)


def month_start(ts: datetime) -> datetime:
    return ts.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def add_months(ts: datetime, months: int) -> datetime:
    index = ts.year * 12 + ts.month - 1 + months
    return ts.replace(year=index // 12, month=index % 12 + 1)


def apply_schema(conn: psycopg.Connection[Any]) -> None:
    for path in SCHEMA_FILES:
        conn.execute(path.read_text())  # type: ignore[arg-type] - our own files, no parameters


def create_progress_partitions(conn: psycopg.Connection[Any], first: datetime, last: datetime) -> None:
    """Monthly partitions of app.student_progress from ``first`` up to (not including) ``last``."""
    month = month_start(first)
    while month < last:
        nxt = add_months(month, 1)
        name = f"student_progress_{month:%Y_%m}"
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS app.{} PARTITION OF app.student_progress "
                "FOR VALUES FROM ({}) TO ({})"
            ).format(sql.Identifier(name), sql.Literal(month), sql.Literal(nxt))
        )
        month = nxt


def load_postgres(conn: psycopg.Connection[Any], anchor: datetime, sizes: Sizes) -> None:
    """Fill the DreamSeed tables. Empties them first (partitions too), so a reload gives the same shape."""
    conn.execute("DROP TABLE IF EXISTS app.student_progress CASCADE")
    apply_schema(conn)
    conn.execute(
        "TRUNCATE app.sessions, app.user_uploads, app.app_logs, app.student_progress, "
        "app.cleanup_audit, app.users RESTART IDENTITY"
    )
    first_month = add_months(month_start(anchor), -PROGRESS_HISTORY_MONTHS)
    create_progress_partitions(conn, first_month, add_months(month_start(anchor), 1))
    params = {"anchor": anchor, "users": sizes.users}
    # 4% of users are soft-deleted: half of them more than 30 days before the anchor.
    conn.execute(
        """
        INSERT INTO app.users (id, email, display_name, created_at, deleted_at)
        SELECT g, 'user' || g || '@dreamseed.example', 'Learner ' || g,
               %(anchor)s - (g %% 700 + 1) * interval '1 day',
               CASE WHEN g %% 25 = 0 THEN %(anchor)s - (g %% 60 + 1) * interval '1 day' END
        FROM generate_series(1, %(users)s) AS g
        """,
        params,
    )
    conn.execute("SELECT setval(pg_get_serial_sequence('app.users', 'id'), %s)", (sizes.users,))
    # Sessions last 14 days; created over the 60 days before the anchor, so most have expired.
    conn.execute(
        """
        INSERT INTO app.sessions (user_id, token, user_agent, created_at, expires_at)
        SELECT (g %% %(users)s) + 1, md5(g::text), 'Mozilla/5.0 (DreamSeed app ' || g %% 7 || ')',
               c, c + interval '14 days'
        FROM (SELECT g, %(anchor)s - ((g::bigint * 86400) / %(n)s) * interval '1 minute' AS c
              FROM generate_series(1, %(n)s) AS g) AS s
        """,
        {**params, "n": sizes.sessions},
    )
    # Logs over the 21 days before the anchor: two thirds are older than 7 days.
    conn.execute(
        """
        INSERT INTO app.app_logs (created_at, level, logger, message, user_id, context)
        SELECT %(anchor)s - (g * 30240.0 / %(n)s) * interval '1 minute',
               (ARRAY['DEBUG','INFO','INFO','INFO','WARNING','ERROR'])[g %% 6 + 1],
               'dreamseed.' || (ARRAY['api','auth','lessons','billing'])[g %% 4 + 1],
               'request ' || g || ' handled in ' || (g %% 900) || ' ms',
               (g %% %(users)s) + 1,
               jsonb_build_object('request_id', md5(g::text), 'status', 200 + (g %% 3) * 100)
        FROM generate_series(1, %(n)s) AS g
        """,
        {**params, "n": sizes.app_logs},
    )
    # Progress spread evenly over the history months.
    span_minutes = int((anchor - first_month).total_seconds() // 60) - 1
    conn.execute(
        """
        INSERT INTO app.student_progress (user_id, lesson_id, score, recorded_at)
        SELECT (g %% %(users)s) + 1, g %% 300 + 1, g %% 101,
               %(first)s + ((g::bigint * %(span)s) / %(n)s) * interval '1 minute'
        FROM generate_series(1, %(n)s) AS g
        """,
        {**params, "n": sizes.progress, "first": first_month, "span": span_minutes},
    )
    conn.execute(
        """
        INSERT INTO app.user_uploads (user_id, s3_key, size_bytes, uploaded_at)
        SELECT (g %% %(users)s) + 1, 'user_' || ((g %% %(users)s) + 1) || '/file_' || g || '.bin',
               1024 + g %% 4096, %(anchor)s - (g %% 400) * interval '1 day'
        FROM generate_series(1, %(n)s) AS g
        """,
        {**params, "n": sizes.uploads},
    )
    conn.execute("ANALYZE")


def _body(size: int, seed: int) -> bytes:
    line = json.dumps({"seed": seed, "msg": "dreamseed log line"}).encode() + b"\n"
    raw = (line * (size // len(line) + 1))[:size]
    return gzip.compress(raw, compresslevel=1) if seed % 2 else raw


def empty_bucket(s3: Any, bucket: str) -> None:
    """Remove every object version, delete marker and lifecycle rule of a demo bucket."""
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        doomed = [
            {"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in (*page.get("Versions", []), *page.get("DeleteMarkers", []))
        ]
        for start in range(0, len(doomed), 1000):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": doomed[start : start + 1000], "Quiet": True})
    s3.delete_bucket_lifecycle(Bucket=bucket)


def load_s3(s3: Any, sizes: Sizes) -> None:
    """Create the demo buckets afresh with objects (LastModified is the time of this upload)."""
    for bucket in BUCKETS:
        try:
            s3.create_bucket(Bucket=bucket)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        # us-east-1 answers 200 to re-creating a bucket you own: empty it either way.
        empty_bucket(s3, bucket)
    for i in range(sizes.log_objects):
        key = f"app/2026/{i % 12 + 1:02d}/{i % 28 + 1:02d}/dreamseed-{i:05d}.log.gz"
        s3.put_object(Bucket=LOGS_BUCKET, Key=key, Body=_body(64 * 1024 + i * 97, i))
    for i in range(sizes.upload_objects):
        prefix = ("tmp/", "exports/", f"user_{i % 50 + 1}/")[i % 3]
        s3.put_object(
            Bucket=UPLOADS_BUCKET, Key=f"{prefix}file_{i:05d}.bin", Body=io.BytesIO(b"x" * (2048 + i)).read()
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--anchor", required=True, help="ISO timestamp with timezone")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--skip-s3", action="store_true")
    args = parser.parse_args()
    anchor = datetime.fromisoformat(args.anchor).astimezone(UTC)
    sizes = Sizes(args.scale)

    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    conn = PostgresHook(postgres_conn_id="lifecycle_postgres").get_conn()
    with conn:
        load_postgres(conn, anchor, sizes)
    if not args.skip_s3:
        load_s3(S3Hook(aws_conn_id="lifecycle_aws").get_conn(), sizes)
    print(f"DreamSeed data loaded at scale {args.scale} relative to {anchor.isoformat()}")


if __name__ == "__main__":
    main()
