"""What the erasure DAG files need at parse time: Params, connection ids and the request id shape.

Kept free of database and network imports so the DAG files parse fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data_lifecycle.erasure.subject_map import ACKNOWLEDGED, SubjectMap
from data_lifecycle.exceptions import LifecycleConfigError

# Shared by the trigger form, the ledger's CHECK constraint and the run-time check.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{2,63}$"


@dataclass(frozen=True)
class Connections:
    postgres: str
    aws: str
    slack: str
    ledger: str

    @classmethod
    def from_policy(cls, policy: Any, smap: SubjectMap) -> Connections:
        """The subject map's connections (PostgreSQL, ledger), else the lifecycle policy's.

        A ledger on the connection of an erased database is refused (a restore of that database
        would rewind the ledger with it) unless the map says ``ledger_survives_restore: acknowledged``.
        """
        postgres = smap.postgres_conn_id or policy.postgres_conn_id
        ledger = smap.ledger_conn_id or postgres
        erased = {postgres, policy.postgres_conn_id}
        if ledger in erased and smap.ledger_survives_restore != ACKNOWLEDGED:
            raise LifecycleConfigError(
                f"Invalid erasure subject map {smap.source}: connections, field 'ledger': '{ledger}' is "
                "the connection of an erased database, so restoring that database would rewind the "
                "ledger and replay_erasures would miss the erasures the restore undid. Name a ledger "
                "connection to another database, or set `ledger_survives_restore: acknowledged`."
            )
        return cls(postgres=postgres, aws=policy.aws_conn_id, slack=policy.slack_conn_id, ledger=ledger)


def erasure_params() -> dict[str, Any]:
    """The trigger form of ``erase_user_data``: a registered request id, never the subject id.

    The request is registered first (``python -m data_lifecycle.erasure.intake register``), which
    seals the id with the erasure key; the tasks unseal it from the intake table.
    """
    from airflow.sdk import Param

    return {
        "request_id": Param(
            type="string",
            pattern=REQUEST_ID_PATTERN,
            title="Request id",
            description="The id printed by `python -m data_lifecycle.erasure.intake register --user-id N`. "
            "The user id itself is never entered here.",
        ),
        "dry_run": Param(
            True,
            type="boolean",
            title="Dry run",
            description="Plan and count only; change nothing. Untick to erase.",
        ),
    }


def replay_params() -> dict[str, Any]:
    """The trigger form of ``replay_erasures``."""
    from airflow.sdk import Param

    return {
        "since": Param(
            type="string",
            format="date-time",
            title="Erasures completed since",
            description="Re-apply every erasure completed at or after this time (ISO 8601 with timezone): "
            "the time of the restored backup.",
        ),
        "dry_run": Param(
            True,
            type="boolean",
            title="Dry run",
            description="Count what the restore brought back; change nothing. Untick to erase again.",
        ),
    }
