"""The S3 cost model: hand-computed cases, the seed's scenario, and invariants over generated estates."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_lifecycle.forecast import (
    ObjectGroup,
    Schedule,
    compare,
    daily_inflow,
    forecast,
    rules_by_bucket,
    schedule_for,
    seed_rules,
    steady_state,
)
from data_lifecycle.policy import DEFAULT_POLICY_FILE, load_policy
from data_lifecycle.pricing import GB, KIB
from data_lifecycle.s3_lifecycle_rules import validate_rules

MIB = 1024**2
USD = pytest.approx


class TestHandComputedMonth:
    """One month, us-east-1 prices. Rule on prefix logs/: STANDARD_IA at 30 days, expire at 45.

    Group A: 1,000 objects of 1 MiB = 1000/1024 GiB = 0.9765625 GiB, 20 days old, STANDARD.
      day 0-10  STANDARD:    0.9765625 * 0.023  * 10/30 = 0.00748697916...
      day 10    transition:  1,000 requests * $0.01/1,000 = 0.01
      day 10-25 STANDARD_IA: 0.9765625 * 0.0125 * 15/30 = 0.006103515625
      day 25    expired after 15 days in STANDARD_IA, minimum 30: 15 more days charged
                             0.9765625 * 0.0125 * 15/30 = 0.006103515625
    Group B: 1,000 objects of 64 KiB = 62.5 MiB = 0.06103515625 GiB, 20 days old, STANDARD:
      below 128 KiB, so never transitioned; expired at day 25 with no minimum in STANDARD:
      day 0-25  STANDARD:    0.06103515625 * 0.023 * 25/30 = 0.00116984049479...
    With the rule:    storage 0.00748697916 + 0.006103515625 + 0.00116984049 = 0.01476033528...
                      transitions 0.01, minimum-duration 0.006103515625; nothing left at month end.
    Without the rule: (0.9765625 + 0.06103515625) GiB * 0.023 for the whole month = 0.02386474609375.
    """

    RULES: ClassVar[dict[str, Any]] = {
        "b": [
            {
                "id": "tiers",
                "prefix": "logs/",
                "transitions": [{"days": 30, "storage_class": "STANDARD_IA"}],
                "expiration_days": 45,
            }
        ]
    }
    GROUPS = (
        ObjectGroup("b", "logs/big", count=1000, size_bytes=MIB, age_days=20),
        ObjectGroup("b", "logs/small", count=1000, size_bytes=64 * KIB, age_days=20),
    )

    def test_rules_are_valid_s3_rules(self) -> None:
        assert validate_rules(self.RULES["b"]) == [
            "Lifecycle rule 'tiers': expiration_days keeps objects in STANDARD_IA for 15 days before it "
            "expires; S3 charges a minimum of 30 days"
        ]

    def test_with_rules_charges_transition_minimum_and_skips_small_objects(self) -> None:
        (month,) = forecast(self.GROUPS, self.RULES, months=1)
        assert month.storage_usd == USD(0.00748697916667 + 0.006103515625 + 0.00116984049479, rel=1e-9)
        assert month.transition_requests == 1000  # group A only: group B is under 128 KiB
        assert month.transition_usd == USD(0.01)
        assert month.early_deletion_usd == USD(0.006103515625)
        assert month.total_usd == USD(0.01476033528646 + 0.01 + 0.006103515625, rel=1e-9)
        assert month.bytes_by_class == {}
        assert month.expired_bytes == 1000 * MIB + 1000 * 64 * KIB

    def test_without_rules_everything_stays_in_standard(self) -> None:
        comparison = compare(self.GROUPS, self.RULES, months=1)
        (bare,) = comparison.without_rules
        assert bare.total_usd == USD(0.02386474609375)
        assert bare.bytes_by_class == {"STANDARD": 1000 * MIB + 1000 * 64 * KIB}
        assert comparison.saving_usd == USD(0.02386474609375 - 0.03086385091146, rel=1e-9)

    def test_small_object_in_ia_bills_128_kib(self) -> None:
        # 1 KiB written straight to STANDARD_IA bills as 128 KiB: 128/1024^2 GiB * 0.0125 = 1.52587890625e-06.
        (month,) = forecast([ObjectGroup("b", "k", 1, KIB, 0, "STANDARD_IA")], {}, months=1)
        assert month.storage_usd == USD(1.52587890625e-06)

    def test_overdue_object_moves_once_to_the_coldest_class_due(self) -> None:
        # 400 days old under the seed's schedule: one request straight into DEEP_ARCHIVE on day 0
        # ($0.05 per 1,000), then 30 days of 1 GiB at 0.00099 plus 32 KiB at 0.00099 and 8 KiB at 0.023.
        (month,) = forecast([ObjectGroup("s", "x", 1, GB, 400)], {"s": seed_rules()}, months=1)
        assert month.transition_requests == 1
        assert month.transition_usd == USD(0.00005)
        assert month.storage_usd == USD(0.00099 + 32 / 1024**2 * 0.00099 + 8 / 1024**2 * 0.023)
        assert month.bytes_by_class == {"DEEP_ARCHIVE": GB}


class TestSeedScenario:
    """10 GiB a day in 16 MiB objects (640 a day) on the seed's schedule, expired at 2,555 days.

    Steady state, per month (GiB held = 10 GiB * days in the class):
      STANDARD       30 d:    300 GiB * 0.023   = 6.9
      STANDARD_IA    60 d:    600 GiB * 0.0125  = 7.5
      GLACIER       275 d:  2,750 GiB * 0.0036  = 9.9
      DEEP_ARCHIVE 2190 d: 21,900 GiB * 0.00099 = 21.681            storage 45.981
      archive overhead: GLACIER 640*275 = 176,000 objects, DEEP_ARCHIVE 640*2190 = 1,401,600:
        176,000 * 32 KiB = 5.37109375 GiB * 0.0036    = 0.0193359375
        176,000 *  8 KiB = 1.3427734375 GiB * 0.023   = 0.0308837890625
        1,401,600 * 32 KiB = 42.7734375 GiB * 0.00099 = 0.042345703125
        1,401,600 *  8 KiB = 10.693359375 GiB * 0.023 = 0.245947265625  overhead 0.3385126953125
      transitions: 640 * 30 = 19,200 objects a month, each moved 3 times:
        19.2 * (0.01 + 0.03 + 0.05) = 1.728
      total 45.981 + 0.3385126953125 + 1.728 = 48.0475126953125
    Without tiering: 25,550 GiB * 0.023 = 587.65; saving 1 - 48.0475 / 587.65 = 91.82 %.
    """

    def test_steady_state_with_and_without_tiering(self) -> None:
        tiered = steady_state(640, 16 * MIB, schedule_for("", seed_rules()))
        bare = steady_state(640, 16 * MIB, schedule_for("", seed_rules(tiering=False)))
        assert tiered.storage_usd == USD(45.981 + 0.3385126953125)
        assert tiered.transition_usd == USD(1.728)
        assert tiered.early_deletion_usd == 0
        assert tiered.total_usd == USD(48.0475126953125)
        assert bare.total_usd == USD(587.65)
        assert 1 - tiered.total_usd / bare.total_usd == USD(0.91824, abs=1e-5)
        assert tiered.bytes_by_class == {
            "STANDARD": 300 * GB,
            "STANDARD_IA": 600 * GB,
            "GLACIER": 2750 * GB,
            "DEEP_ARCHIVE": 21900 * GB,
        }

    def test_command_prints_the_steady_state_and_saving(self) -> None:
        out = subprocess.run(
            [sys.executable, "-m", "data_lifecycle.forecast", "--daily-gb", "10"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "total                       $587.65         $48.05" in out
        assert "saving: $539.60 a month, 91.8 %" in out
        assert len([line for line in out.splitlines() if line.strip()[:2].strip().isdigit()]) == 12

    def test_steady_state_needs_an_expiration(self) -> None:
        with pytest.raises(ValueError, match="needs an expiration"):
            steady_state(1, MIB, Schedule(((30, "STANDARD_IA"),)))


class TestRulesFromPolicy:
    def test_shipped_policy_schedules(self) -> None:
        rules = rules_by_bucket(load_policy(DEFAULT_POLICY_FILE))
        # app/ logs are archived by copy-then-delete, so only the archive bucket's own rule tiers them.
        assert schedule_for("app/2026/01/x.log.gz", rules["dreamseed-logs"]) == Schedule((), None)
        assert schedule_for("app/2026/01/x.log.gz", rules["dreamseed-log-archive"]) == Schedule(
            ((275, "DEEP_ARCHIVE"),), 2465
        )
        assert schedule_for("tmp/file.bin", rules["dreamseed-uploads"]) == Schedule((), 90)
        assert schedule_for("user_7/f.bin", rules["dreamseed-uploads"]) == Schedule(
            ((30, "STANDARD_IA"), (180, "GLACIER_IR")), None
        )

    def test_precedence_coldest_class_and_earliest_expiration_win(self) -> None:
        rules = [
            {
                "id": "a",
                "prefix": "",
                "allow_whole_bucket": True,
                "transitions": [{"days": 60, "storage_class": "STANDARD_IA"}],
            },
            {"id": "b", "prefix": "x/", "transitions": [{"days": 60, "storage_class": "GLACIER"}]},
            {"id": "c", "prefix": "x/", "expiration_days": 100},
            {"id": "d", "prefix": "x/", "expiration_days": 80, "tags": {"t": "v"}},  # tags: not applied
        ]
        assert schedule_for("x/k", rules) == Schedule(((60, "GLACIER"),), 100)
        assert schedule_for("y/k", rules) == Schedule(((60, "STANDARD_IA"),), None)


# -- invariants over generated estates ---------------------------------------------------------

TIER_CLASSES = ("STANDARD_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE")


@st.composite
def tier_rules(draw: st.DrawFn, *, expire: bool) -> dict[str, Any]:
    chosen = draw(st.sets(st.sampled_from(TIER_CLASSES), min_size=0 if expire else 1, max_size=3))
    classes = sorted(chosen, key=TIER_CLASSES.index)
    days = sorted(draw(st.sets(st.integers(30, 400), min_size=len(classes), max_size=len(classes))))
    rule: dict[str, Any] = {
        "id": "r",
        "prefix": "",
        "allow_whole_bucket": True,
        "transitions": [{"days": d, "storage_class": c} for d, c in zip(days, classes, strict=True)],
    }
    if expire:
        rule["expiration_days"] = draw(st.integers((days[-1] + 1) if days else 1, 500))
    validate_rules([rule])
    return rule


groups_st = st.lists(
    st.builds(
        ObjectGroup,
        bucket=st.just("b"),
        key=st.just("k"),
        count=st.integers(1, 1000),
        size_bytes=st.sampled_from([0, 1, 100 * KIB, 128 * KIB, MIB, GB]) | st.integers(0, 10 * MIB),
        age_days=st.integers(0, 600),
    ),
    min_size=1,
    max_size=8,
)
FAST = settings(max_examples=40, deadline=None)


@FAST
@given(groups=groups_st, rule=tier_rules(expire=False))
def test_transitions_never_raise_the_storage_bill(groups: list[ObjectGroup], rule: dict[str, Any]) -> None:
    comparison = compare(groups, {"b": [rule]}, months=12)
    for bare, ruled in zip(comparison.without_rules, comparison.with_rules, strict=True):
        assert ruled.storage_usd <= bare.storage_usd * (1 + 1e-12)
        assert ruled.total_bytes == bare.total_bytes  # bytes conserved across classes without expiry


@FAST
@given(groups=groups_st, rule=tier_rules(expire=True))
def test_bytes_are_conserved_until_they_expire(groups: list[ObjectGroup], rule: dict[str, Any]) -> None:
    total = sum(g.count * g.size_bytes for g in groups)
    expired = 0
    for month in forecast(groups, {"b": [rule]}, months=12):
        expired += month.expired_bytes
        assert month.total_bytes + expired == total


@FAST
@given(groups=groups_st, rule=tier_rules(expire=True))
def test_objects_under_128_kib_stay_in_their_class(groups: list[ObjectGroup], rule: dict[str, Any]) -> None:
    small = [g for g in groups if g.size_bytes < 128 * KIB]
    for month in forecast(small, {"b": [rule]}, months=12):
        assert set(month.bytes_by_class) <= {"STANDARD"}
        assert month.transition_requests == 0


@FAST
@given(
    rule=tier_rules(expire=True),
    per_day=st.integers(1, 50),
    size=st.sampled_from([64 * KIB, 128 * KIB, MIB, 3 * MIB + 7]),
)
def test_daily_data_settles_into_the_steady_state(rule: dict[str, Any], per_day: int, size: int) -> None:
    # Expiration <= 500 days: from month 18 (day 510) on, every age of the data is present.
    inflow = daily_inflow("b", "k", objects_per_day=per_day, object_size=size, days=20 * 30)
    month = forecast(inflow, {"b": [rule]}, months=20)[-1]
    steady = steady_state(per_day, size, schedule_for("k", [rule]))
    assert month.storage_usd == USD(steady.storage_usd, rel=1e-9)
    assert month.transition_usd == USD(steady.transition_usd, rel=1e-9)
    assert month.early_deletion_usd == USD(steady.early_deletion_usd, rel=1e-9, abs=1e-12)
    assert month.transition_requests == steady.transition_requests
    # Held on the month's last day vs the average: equal in the steady state.
    assert month.bytes_by_class == steady.bytes_by_class
