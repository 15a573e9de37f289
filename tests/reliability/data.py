"""Small DreamSeed data sets for the reliability tests, relative to one run anchor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

ANCHOR = datetime(2027, 3, 1, 5, 0, tzinfo=UTC)


def month(index: int) -> datetime:
    """The first instant (UTC) of month ``index`` = year * 12 + month - 1."""
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def add_user(
    pg: psycopg.Connection[Any], email: str = "p@example.com", deleted_at: datetime | None = None
) -> int:
    row = pg.execute(
        "INSERT INTO app.users (email, display_name, created_at, deleted_at) VALUES (%s, 'P', %s, %s)"
        " RETURNING id",
        (email, ANCHOR - timedelta(days=900), deleted_at),
    ).fetchone()
    assert row is not None
    return int(row[0])


def load_monthly_progress(
    pg: psycopg.Connection[Any], *, first: int, months: int, per_month: int, default: bool = False
) -> None:
    """Monthly partitions of app.student_progress from month ``first``, each with ``per_month`` rows."""
    uid = add_user(pg)
    for i in range(months):
        lower, upper = month(first + i), month(first + i + 1)
        pg.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF app.student_progress FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier("app", f"student_progress_{lower:%Y_%m}"),
                sql.Literal(lower),
                sql.Literal(upper),
            )
        )
        pg.execute(
            "INSERT INTO app.student_progress (user_id, lesson_id, score, recorded_at)"
            " SELECT %s, g, (g * 7) %% 100, %s + g * interval '5 hours' FROM generate_series(0, %s - 1) g",
            (uid, lower, per_month),
        )
    if default:
        pg.execute("CREATE TABLE app.student_progress_default PARTITION OF app.student_progress DEFAULT")


def load_sessions(pg: psycopg.Connection[Any], *, cutoff: datetime, due: int, kept: int) -> set[int]:
    """``due`` sessions that expired before ``cutoff`` (one a minute) and ``kept`` after it; returns the due ids."""
    uid = add_user(pg, "s@example.com")
    pg.execute(
        "INSERT INTO app.sessions (user_id, token, user_agent, created_at, expires_at)"
        " SELECT %s, md5(g::text), 'ua ' || g, %s - g * interval '1 minute' - interval '1 day',"
        "        %s - (%s - g + 1) * interval '1 minute' FROM generate_series(1, %s) g",
        (uid, cutoff, cutoff, due, due),
    )
    pg.execute(
        "INSERT INTO app.sessions (user_id, token, user_agent, created_at, expires_at)"
        " SELECT %s, md5(g::text), 'ua kept', %s, %s + g * interval '1 minute' FROM generate_series(0, %s - 1) g",
        (uid, cutoff - timedelta(days=1), cutoff, kept),
    )
    rows = pg.execute("SELECT id FROM app.sessions WHERE expires_at < %s", (cutoff,)).fetchall()
    return {int(r[0]) for r in rows}
