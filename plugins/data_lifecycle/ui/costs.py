"""The page's cost figures, from the recorded inventory and S3 bytes and the project's price table."""

from __future__ import annotations

from typing import Any

from data_lifecycle.pricing import monthly_cost


def cost_summary(s3: dict[str, Any], policy: Any) -> dict[str, Any]:
    latest = s3.get("latest_by_class") or {}
    return {
        "as_of": s3.get("latest_date"),
        "monthly_now_usd": monthly_cost(latest),
    }
