"""Privileges of every planned statement, checked before the first write.

An erasure that deletes sessions and uploads and then meets a table it may not UPDATE stops
half-way, with the person's account still there. So the plan is checked first: for each target the
privileges its statement needs (DELETE, or UPDATE on each masked column; SELECT on the table and on
every table of its join path), and INSERT and SELECT on the ledger; a missing one fails the run
naming all of them, before anything is changed.
"""

from __future__ import annotations

from typing import Any

from data_lifecycle.erasure.matching import PreparedTarget
from data_lifecycle.erasure.subject_map import Action
from data_lifecycle.exceptions import LifecycleConfigError


def needed_privileges(prepared: list[PreparedTarget]) -> list[tuple[str, str | None, str]]:
    """``(table, column or None, privilege)`` for every planned statement, in erase order."""
    out: list[tuple[str, str | None, str]] = []
    for p in prepared:
        t = p.target
        out.append((t.table, None, "SELECT"))
        out += [(hop.table, None, "SELECT") for hop in t.via]
        if t.action is Action.DELETE:
            out.append((t.table, None, "DELETE"))
        else:
            out += [(t.table, m.column, "UPDATE") for m in t.mask]
    return list(dict.fromkeys(out))


def missing_privileges(conn: Any, needed: list[tuple[str, str | None, str]]) -> list[str]:
    """The entries of ``needed`` the connection's role does not hold, as readable text."""
    missing = []
    for table, column, privilege in needed:
        if column is None:
            row = conn.execute("SELECT has_table_privilege(%s, %s)", (table, privilege)).fetchone()
            what = f"{privilege} on {table}"
        else:
            row = conn.execute(
                "SELECT has_column_privilege(%s, %s, %s)", (table, column, privilege)
            ).fetchone()
            what = f"{privilege} ({column}) on {table}"
        if not row[0]:
            missing.append(what)
    return missing


def check_table_privileges(conn: Any, prepared: list[PreparedTarget], source: str) -> None:
    """Raise ``LifecycleConfigError`` naming every privilege the plan needs and the role lacks."""
    missing = missing_privileges(conn, needed_privileges(prepared))
    if missing:
        user = conn.execute("SELECT current_user").fetchone()[0]
        raise LifecycleConfigError(
            f"The erasure's database role '{user}' lacks {len(missing)} privilege(s) the plan of "
            f"{source} needs: {'; '.join(missing)}. Grant them (include/sql/erasure_role.sql); "
            "nothing was erased."
        )


def check_ledger_privileges(conn: Any, table: str) -> None:
    """The ledger is appended to and read, never changed: INSERT and SELECT are all it needs."""
    missing = missing_privileges(conn, [(table, None, "SELECT"), (table, None, "INSERT")])
    if missing:
        user = conn.execute("SELECT current_user").fetchone()[0]
        raise LifecycleConfigError(
            f"The erasure's ledger role '{user}' lacks {'; '.join(missing)}; nothing was erased."
        )
