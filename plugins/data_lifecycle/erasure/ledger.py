"""The erasure ledger: append-only rows that prove what was erased, when, for which request.

Subjects appear only as an HMAC (``subject_hash``) and a Fernet token (``subject_token``). Writes are
idempotent per run and status, so a retried or cleared task does not add the same entry twice.
The table and its append-only trigger and grants are in ``include/sql/erasure_ledger.sql``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from psycopg import sql

from data_lifecycle.exceptions import LifecycleConfigError


class Status(StrEnum):
    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"
    REPLAYED = "replayed"
    NOOP = "noop"


DONE_STATUSES = (Status.COMPLETED.value, Status.NOOP.value)


@dataclass(frozen=True)
class Entry:
    request_id: str
    subject_hash: str
    status: Status
    dry_run: bool
    dag_id: str
    run_id: str
    subject_token: str | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    requested_by: str | None = None
    requested_at: datetime | None = None


def _ident(table: str) -> sql.Identifier:
    schema, name = table.split(".", 1)
    return sql.Identifier(schema, name)


def ensure_ledger(conn: Any, table: str) -> None:
    if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
        raise LifecycleConfigError(
            f"Erasure ledger {table} does not exist: apply include/sql/erasure_ledger.sql to this database"
        )


def record(conn: Any, table: str, entry: Entry) -> bool:
    """Append ``entry`` unless this run already recorded this status; True when a row was added."""
    query = sql.SQL(
        "INSERT INTO {t} (request_id, subject_hash, subject_token, status, dry_run, counts, reason, "
        "requested_by, requested_at, dag_id, run_id) "
        "SELECT %(request_id)s, %(subject_hash)s, %(subject_token)s, %(status)s, %(dry_run)s, "
        "%(counts)s::jsonb, %(reason)s, %(requested_by)s, %(requested_at)s, %(dag_id)s, %(run_id)s "
        "WHERE NOT EXISTS (SELECT 1 FROM {t} WHERE request_id = %(request_id)s AND run_id = %(run_id)s "
        "AND subject_hash = %(subject_hash)s AND status = %(status)s AND dry_run = %(dry_run)s) "
        "RETURNING id"
    ).format(t=_ident(table))
    with conn.transaction():
        row = conn.execute(
            query,
            {
                "request_id": entry.request_id,
                "subject_hash": entry.subject_hash,
                "subject_token": entry.subject_token,
                "status": entry.status.value,
                "dry_run": entry.dry_run,
                "counts": json.dumps(entry.counts, sort_keys=True, default=str),
                "reason": entry.reason,
                "requested_by": entry.requested_by,
                "requested_at": entry.requested_at,
                "dag_id": entry.dag_id,
                "run_id": entry.run_id,
            },
        ).fetchone()
    return row is not None


def check_request_subject(conn: Any, table: str, request_id: str, subject_hash: str) -> None:
    """Refuse a request id that the ledger already holds for another subject."""
    row = conn.execute(
        sql.SQL("SELECT 1 FROM {} WHERE request_id = %s AND subject_hash <> %s LIMIT 1").format(
            _ident(table)
        ),
        (request_id, subject_hash),
    ).fetchone()
    if row:
        raise LifecycleConfigError(
            f"Request {request_id} is already recorded in the erasure ledger for another subject; "
            "use a new request id"
        )


def run_entries(conn: Any, table: str, request_id: str, run_id: str) -> list[tuple[str, str | None]]:
    """``(status, reason)`` of what this run recorded for the request, oldest first."""
    rows = conn.execute(
        sql.SQL("SELECT status, reason FROM {} WHERE request_id = %s AND run_id = %s ORDER BY id").format(
            _ident(table)
        ),
        (request_id, run_id),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def completed_since(conn: Any, table: str, since: datetime) -> list[dict[str, Any]]:
    """One row per subject whose erasure completed (for real) at or after ``since``: what a replay redoes."""
    rows = conn.execute(
        sql.SQL(
            "SELECT DISTINCT ON (subject_hash) request_id, subject_hash, subject_token, recorded_at "
            "FROM {} WHERE status = 'completed' AND NOT dry_run AND subject_token IS NOT NULL "
            "AND recorded_at >= %s ORDER BY subject_hash, recorded_at"
        ).format(_ident(table)),
        (since,),
    ).fetchall()
    out = [
        {"request_id": r[0], "subject_hash": r[1], "subject_token": r[2], "completed_at": r[3].isoformat()}
        for r in rows
    ]
    return sorted(out, key=lambda e: (e["completed_at"], e["request_id"]))


def newest_entry(conn: Any, table: str) -> datetime | None:
    """When the ledger's newest entry (of any kind) was recorded; None when it is empty."""
    row = conn.execute(sql.SQL("SELECT max(recorded_at) FROM {}").format(_ident(table))).fetchone()
    return row[0] if row else None


def open_requests(conn: Any, table: str, intake: str | None = None) -> list[dict[str, Any]]:
    """Requests with no real completion yet, with their request time.

    The request time is the ``requested_at`` param, else the first ``started`` entry, else the first
    entry of any kind (a request refused before it started, e.g. under legal hold, still runs late).
    With ``intake``, requests registered there but never run are open too (status ``registered``).
    """
    registered: sql.Composable = sql.SQL("")
    if intake is not None:
        registered = sql.SQL(
            "UNION ALL SELECT i.request_id, i.subject_hash, i.requested_at, 'registered' FROM {i} AS i "
            "WHERE NOT EXISTS (SELECT 1 FROM {t} AS l WHERE l.request_id = i.request_id) "
        ).format(i=_ident(intake), t=_ident(table))
    rows = conn.execute(
        sql.SQL(
            "SELECT request_id, min(subject_hash), "
            "coalesce(min(requested_at), min(recorded_at) FILTER (WHERE status = 'started'), min(recorded_at)) "
            "AS requested, "
            "(array_agg(status ORDER BY id DESC))[1] AS last_status "
            "FROM {t} GROUP BY request_id "
            "HAVING NOT bool_or(status = ANY (%s) AND NOT dry_run) "
            "{registered}"
            "ORDER BY 3"
        ).format(t=_ident(table), registered=registered),
        (list(DONE_STATUSES),),
    ).fetchall()
    return [
        {"request_id": r[0], "subject_hash": r[1], "requested_at": r[2], "last_status": r[3]} for r in rows
    ]
