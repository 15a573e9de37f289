"""PostgreSQL cleanup operators, one module per action.

* :mod:`.batched_delete` — :class:`PostgresBatchedDeleteOperator` and its batch runner;
* :mod:`.partitions` — :class:`PostgresPartitionRetentionOperator`, :class:`PostgresPartitionPremakeOperator`;
* :mod:`.vacuum` — :class:`PostgresVacuumAnalyzeOperator`;
* :mod:`.base` — the connection, session settings and ``on_kill`` they share.
"""

from __future__ import annotations

from data_lifecycle.operators.postgres.batched_delete import PostgresBatchedDeleteOperator
from data_lifecycle.operators.postgres.partitions import (
    DETACH_MARKER,
    PartitionRetentionMode,
    PostgresPartitionPremakeOperator,
    PostgresPartitionRetentionOperator,
)
from data_lifecycle.operators.postgres.vacuum import PostgresVacuumAnalyzeOperator

__all__ = [
    "DETACH_MARKER",
    "PartitionRetentionMode",
    "PostgresBatchedDeleteOperator",
    "PostgresPartitionPremakeOperator",
    "PostgresPartitionRetentionOperator",
    "PostgresVacuumAnalyzeOperator",
]
