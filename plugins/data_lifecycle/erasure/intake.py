"""Erasure requests: registered with the subject id sealed, triggered with the request id only.

``python -m data_lifecycle.erasure.intake register --user-id 42 [--requested-by TEAM]
[--requested-at ISO]`` seals the id with the erasure key (the ``erasure_hmac`` secret), stores it
in ``app.erasure_requests`` beside the ledger, and prints a new request id. Trigger
``erase_user_data`` with ``{"request_id": "<that id>"}``: the subject id is then in no
``dag_run.conf``, UI page, REST answer or metadata row; the tasks unseal it from the intake table
and keep it in memory only. The command needs the ``erasure_ledger`` and ``erasure_hmac``
connections (as ``AIRFLOW_CONN_*`` variables or from the secrets backend).
"""

from __future__ import annotations

import argparse
import re
import secrets
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg import sql

from data_lifecycle.erasure.keys import SubjectKeys
from data_lifecycle.exceptions import LifecycleConfigError

INTAKE_SUFFIX = "erasure_requests"


@dataclass(frozen=True)
class Registered:
    """A registered request, its subject unsealed (in memory only)."""

    request_id: str
    user_id: int
    requested_by: str | None
    requested_at: datetime


def intake_table(ledger_table: str) -> str:
    """The intake table lives in the ledger's schema and database: ``app.erasure_requests``."""
    return f"{ledger_table.split('.', 1)[0]}.{INTAKE_SUFFIX}"


def _ident(table: str) -> sql.Identifier:
    schema, name = table.split(".", 1)
    return sql.Identifier(schema, name)


def new_request_id(user_id: int) -> str:
    """``DSR-`` and 12 random hex digits; never one that contains the subject's id."""
    while True:
        candidate = f"DSR-{secrets.token_hex(6)}"
        if not re.search(rf"(?<!\d){int(user_id)}(?!\d)", candidate):
            return candidate


def register(
    conn: Any,
    table: str,
    keys: SubjectKeys,
    user_id: int,
    *,
    requested_by: str | None = None,
    requested_at: datetime | None = None,
) -> str:
    """Store the sealed id of a new request; returns its request id."""
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id < 1:
        raise LifecycleConfigError("user_id must be a positive integer")
    if requested_at is not None and requested_at.tzinfo is None:
        raise LifecycleConfigError("requested_at needs a timezone")
    if requested_by and re.search(rf"(?<!\d){user_id}(?!\d)", requested_by):
        raise LifecycleConfigError("requested_by contains the subject's id; name the team or operator")
    request_id = new_request_id(user_id)
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (request_id, subject_hash, subject_token, requested_by, requested_at) "
                "VALUES (%s, %s, %s, %s, %s)"
            ).format(_ident(table)),
            (
                request_id,
                keys.subject_hash(user_id),
                keys.seal(user_id),
                requested_by or None,
                requested_at or datetime.now(UTC),
            ),
        )
    return request_id


def lookup(conn: Any, table: str, keys: SubjectKeys, request_id: str) -> Registered:
    """The registered request, its token unsealed and checked against its hash."""
    row = conn.execute(
        sql.SQL(
            "SELECT subject_hash, subject_token, requested_by, requested_at FROM {} WHERE request_id = %s"
        ).format(_ident(table)),
        (request_id,),
    ).fetchone()
    if row is None:
        raise LifecycleConfigError(
            f"Request {request_id} is not registered in {table}: register it first "
            "(python -m data_lifecycle.erasure.intake register --user-id ...)"
        )
    subject_hash, token, requested_by, requested_at = row
    return Registered(
        request_id=request_id,
        user_id=keys.unseal(token, subject_hash),
        requested_by=requested_by,
        requested_at=requested_at,
    )


def register_request(
    user_id: int, *, requested_by: str | None = None, requested_at: datetime | None = None
) -> str:
    """Register a request through the deployed map and connections; returns its request id."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from data_lifecycle.erasure.keys import load_subject_keys
    from data_lifecycle.erasure.params import Connections
    from data_lifecycle.erasure.subject_map import load_subject_map
    from data_lifecycle.policy import load_policy

    smap = load_subject_map()
    conns = Connections.from_policy(load_policy(), smap)
    keys = load_subject_keys(smap.hmac_conn_id, smap.subject.table)
    conn: Any = PostgresHook(postgres_conn_id=conns.ledger).get_conn()
    conn.autocommit = True
    try:
        return register(
            conn,
            intake_table(smap.ledger_table),
            keys,
            user_id,
            requested_by=requested_by,
            requested_at=requested_at,
        )
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_lifecycle.erasure.intake", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="register an erasure request; prints its request id")
    reg.add_argument("--user-id", type=int, required=True)
    reg.add_argument("--requested-by", default=None)
    reg.add_argument("--requested-at", default=None, help="ISO 8601 with timezone; default: now")
    args = parser.parse_args(argv)
    try:
        requested_at = datetime.fromisoformat(args.requested_at) if args.requested_at else None
        request_id = register_request(args.user_id, requested_by=args.requested_by, requested_at=requested_at)
    except (LifecycleConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(request_id)
    return 0


if __name__ == "__main__":  # pragma: no cover - the command line
    raise SystemExit(main())
