"""Guardrails of the batched delete that must hold whatever the statistics or the predicate say."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_lifecycle.exceptions import GuardrailTripped, LifecycleConfigError
from data_lifecycle.operators.postgres import PostgresBatchedDeleteOperator
from data_lifecycle.operators.postgres.batched_delete import check_predicate_parentheses
from tests.operators.test_postgres import CUTOFF, RETENTION_DAYS, add_logs, interval_context, scalar


def logs_delete(**overrides: Any) -> PostgresBatchedDeleteOperator:
    return PostgresBatchedDeleteOperator(
        **{
            "task_id": "logs",
            "table": "app.app_logs",
            "timestamp_column": "created_at",
            "retention_days": RETENTION_DAYS,
            **overrides,
        }
    )


class TestDeleteFractionWithStaleStatistics:
    def test_stale_reltuples_cannot_hide_a_ninety_percent_delete(self, pg: psycopg.Connection[Any]) -> None:
        add_logs(pg, 9_000, CUTOFF - timedelta(days=200), timedelta(minutes=20))  # due
        add_logs(pg, 1_000, CUTOFF + timedelta(hours=1), timedelta(minutes=1))  # kept
        pg.execute("ANALYZE app.app_logs")
        # Statistics from when the table was far larger: the old guard took 10M as the total.
        pg.execute("UPDATE pg_class SET reltuples = 10000000 WHERE oid = 'app.app_logs'::regclass")
        with pytest.raises(GuardrailTripped, match=r"9000 of 10000 rows \(90%\)"):
            logs_delete(max_delete_fraction=0.5).execute(interval_context())
        assert scalar(pg, "SELECT count(*) FROM app.app_logs") == 10_000

    def test_a_large_table_with_few_due_rows_is_counted_only_up_to_the_bound(
        self, pg: psycopg.Connection[Any]
    ) -> None:
        add_logs(pg, 100, CUTOFF - timedelta(days=10), timedelta(minutes=1))
        add_logs(pg, 5_000, CUTOFF + timedelta(hours=1), timedelta(seconds=10))
        summary = logs_delete(max_delete_fraction=0.5, dry_run=True).execute(interval_context())
        assert summary["would_delete"] == 100
        assert not summary["guardrail_would_trip"]
        # Never analysed (no statistics): the total shown is the bound the count stopped at.
        assert summary["table_rows"] == 201


class TestExtraPredicateOnlyNarrows:
    def test_a_predicate_that_closes_the_retention_parenthesis_is_refused(
        self, pg: psycopg.Connection[Any]
    ) -> None:
        add_logs(pg, 10, CUTOFF + timedelta(hours=1), timedelta(minutes=1))  # all inside retention
        with pytest.raises(LifecycleConfigError, match="closes a parenthesis it did not open"):
            logs_delete(extra_predicate="level = 'x') OR (true", dry_run=True).execute(interval_context())
        assert scalar(pg, "SELECT count(*) FROM app.app_logs") == 10

    @pytest.mark.parametrize(
        "predicate",
        [
            pytest.param("level = 'INFO'", id="plain"),
            pytest.param("(level = 'a)') AND (logger <> 'b(')", id="parens-in-strings"),
            pytest.param("message = 'it''s (fine'", id="doubled-quote"),
            pytest.param("\"level\" IN ('INFO', 'WARN')", id="quoted-identifier"),
        ],
    )
    def test_balanced_predicates_pass(self, predicate: str) -> None:
        check_predicate_parentheses(predicate)

    @pytest.mark.parametrize(
        ("predicate", "match"),
        [
            pytest.param("a = 1) OR (true", "did not open", id="escape"),
            pytest.param("(a = 1", "unclosed", id="unclosed"),
            pytest.param("a = 'x", "unterminated", id="open-string"),
            pytest.param("level = E'\\') OR (true'", "escape strings", id="escape-string"),
            pytest.param("level = $$) OR (true$$", "dollar quoting", id="dollar-quote"),
        ],
    )
    def test_unbalanced_or_opaque_predicates_are_refused(self, predicate: str, match: str) -> None:
        with pytest.raises(LifecycleConfigError, match=match):
            check_predicate_parentheses(predicate)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.text(alphabet="ab()' =", max_size=24))
    def test_any_accepted_predicate_stays_inside_its_parentheses(self, predicate: str) -> None:
        """Whatever is accepted, wrapped as ``(...)`` it never closes the wrapper early."""
        try:
            check_predicate_parentheses(predicate)
        except LifecycleConfigError:
            return
        wrapped, depth, in_string = f"({predicate})", 0, False
        for i, ch in enumerate(wrapped):
            if ch == "'":
                in_string = not in_string
            elif not in_string and ch in "()":
                depth += 1 if ch == "(" else -1
            if 0 < i < len(wrapped) - 1:
                assert depth >= 1, predicate
        assert depth == 0 and not in_string, predicate
