"""What the erasure DAG files need at parse time: Params, connection ids and the request id shape.

Kept free of database and network imports so the DAG files parse fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data_lifecycle.erasure.subject_map import SubjectMap

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
        """The lifecycle policy's connections; the ledger's own one when the subject map names it."""
        return cls(
            postgres=policy.postgres_conn_id,
            aws=policy.aws_conn_id,
            slack=policy.slack_conn_id,
            ledger=smap.ledger_conn_id or policy.postgres_conn_id,
        )


def erasure_params() -> dict[str, Any]:
    """The trigger form of ``erase_user_data``; validated when the run is created."""
    from airflow.sdk import Param

    return {
        "user_id": Param(
            type="integer",
            minimum=1,
            title="User id",
            description="Id of the app.users row whose data is erased. Never stored in clear.",
        ),
        "request_id": Param(
            type="string",
            pattern=REQUEST_ID_PATTERN,
            title="Request id",
            description="Reference of the erasure request (ticket id), 3-64 letters, digits, . _ : -. "
            "Must not contain the user id or email.",
        ),
        "requested_by": Param(
            "",
            type="string",
            maxLength=200,
            title="Requested by",
            description="Who handles the request (team or operator), for the ledger.",
        ),
        "requested_at": Param(
            None,
            type=["null", "string"],
            format="date-time",
            title="Requested at",
            description="When the person asked (ISO 8601 with timezone); the legal deadline runs from it. "
            "Empty: the first run's start.",
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
