"""The prepared database every PostgreSQL benchmark copies: DreamSeed data at the benchmark's scale.

Built once with the project's generator (``include.dreamseed.generate``) and kept as a template
named by the scale; its comment holds a digest of the generator and schema, so a changed generator
rebuilds it. Rows are frozen and analyzed, so each copy starts with hint bits and statistics set,
and autovacuum is off on the measured tables, so no vacuum runs inside a measured window.

At scale 1: 2,000,000 sessions (half past ``expires_at < anchor - 16 days``), 1,200,000 app logs
over 21 days, 1,280,000 progress rows in 17 monthly partitions, 160,000 users.
"""

from __future__ import annotations

import hashlib
import inspect

from psycopg import sql

from benchmarks.common import ANCHOR, BENCH_DB_PREFIX, Scale, connect
from include.dreamseed import generate

# The generator's scale 1 makes 250,000 sessions; the benchmarks' scale 1 is 2,000,000.
GENERATOR_SCALE_PER_BENCH_SCALE = 8
# Sessions expire 14 days after creation, created over 60 days: this cutoff makes exactly half due.
SESSIONS_RETENTION_DAYS = 16
UNVACUUMED_TABLES = ("app.sessions", "app.app_logs")


def sizes(scale: Scale) -> generate.Sizes:
    return generate.Sizes(scale.factor * GENERATOR_SCALE_PER_BENCH_SCALE)


def _digest(scale: Scale) -> str:
    source = inspect.getsource(generate) + generate.SCHEMA_SQL.read_text() + inspect.getsource(_build)
    return hashlib.sha256(f"{scale.factor}:{ANCHOR.isoformat()}:{source}".encode()).hexdigest()[:16]


def template_name(scale: Scale) -> str:
    return f"{BENCH_DB_PREFIX}_tpl_{str(scale.factor).replace('.', '_')}"


def prepare_template(scale: Scale) -> str:
    """The template database for ``scale``, built unless an identical one exists."""
    name, digest = template_name(scale), _digest(scale)
    with connect() as admin:
        row = admin.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if row and row[0] == digest:
            return name
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        _build(name, scale)
        admin.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(digest))
        )
    return name


def _build(name: str, scale: Scale) -> None:
    with connect(name) as conn:
        with conn.transaction():
            generate.load_postgres(conn, ANCHOR, sizes(scale))
        for table in UNVACUUMED_TABLES:
            conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = off)").format(sql.SQL(table)))
        conn.execute("VACUUM (FREEZE, ANALYZE)")


def row_count(dbname: str, query: str) -> int:
    with connect(dbname) as conn:
        return int(conn.execute(query).fetchone()[0])
