"""Data Lifecycle DAGs: reusable operators and policies that keep PostgreSQL and S3 clean."""

from __future__ import annotations

__version__ = "0.1.0"
