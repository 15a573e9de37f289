"""Guardrails as properties: generated run histories against small real tables and buckets.

Each state machine owns one rule (retention 30 days, override floor 20) and one destructive
operator. Its steps add data at ages around the retention, run the operator the way any trigger
could (anchors in the past, at, just after and far after the run's ``run_after``; retention
overrides above and below the floor), retry or clear earlier runs, and flip the kill switch between
steps or in the middle of a run. After every run:

* nothing whose timestamp is inside the rule's retention (its override floor), measured from the
  clock when the run ended (plus the allowed anchor skew), is gone;
* a run that was not stopped removed exactly what was due at its cutoff, and its retry at once
  does zero work;
* a refusal (future anchor, override below the floor, a tripped guardrail) changed nothing: every
  refusal happened before the first write;
* with the switch off when the run starts nothing changes; flipped mid-run, the run stops with
  ``stopped_by: kill_switch`` and only what it removed before is gone (archived where it archives).

PostgreSQL machines use the real clock, in days. S3 cannot backdate ``LastModified``, so the S3
machines' clock is the real one moved ``retention - 2 s`` ahead (objects older than two seconds are
past retention), plus how long after the writes each run comes (drawn, not slept), with a
one-second anchor skew.

``LIFECYCLE_PROPERTY_EXAMPLES`` and ``LIFECYCLE_PROPERTY_STEPS`` run more (the defaults keep
``make test`` to a few seconds per machine).
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test
from psycopg import sql

from data_lifecycle import archive as archive_mod
from data_lifecycle.alerts import kill_switch_guard
from data_lifecycle.cutoff import ANCHOR_SKEW_ENV
from data_lifecycle.dag_common import override_retention_days
from data_lifecycle.exceptions import LifecycleConfigError, LifecycleError
from data_lifecycle.kill_switch import KILL_SWITCH_VARIABLE, RECHECK_ENV
from data_lifecycle.operators.postgres import (
    PostgresBatchedDeleteOperator,
    PostgresPartitionRetentionOperator,
)
from data_lifecycle.operators.s3 import (
    S3ApplyLifecycleOperator,
    S3ExpireObjectsOperator,
    S3GlacierCopyThenDeleteOperator,
)
from data_lifecycle.operators.s3 import common as s3_common
from tests.conftest import admin_connect
from tests.reliability.harness import s3_faults

RETENTION = 30
SWITCH_ENV = f"AIRFLOW_VAR_{KILL_SWITCH_VARIABLE.upper()}"
DAY, HOUR, SECOND = timedelta(days=1), timedelta(hours=1), timedelta(seconds=1)

EXAMPLES = os.environ.get("LIFECYCLE_PROPERTY_EXAMPLES")
SETTINGS = settings(
    max_examples=int(EXAMPLES or "3"),
    stateful_step_count=int(os.environ.get("LIFECYCLE_PROPERTY_STEPS", "10")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    # No shrinking: the histories run against the real clock, so a shrunk replay is not the same
    # history; a failure is reported as generated (with every draw labelled).
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
# The S3 machines are slower (moto, and a one-second tick per history): fewer by default.
S3_SETTINGS = settings(
    SETTINGS,
    max_examples=int(EXAMPLES or "2"),
    stateful_step_count=int(os.environ.get("LIFECYCLE_PROPERTY_STEPS", "6")),
)


def context(run_after: datetime, anchor: datetime, run_id: str) -> dict[str, Any]:
    return {
        "data_interval_end": anchor,
        "dag_run": SimpleNamespace(
            run_after=run_after, run_id=run_id, dag_id="prop", conf={}, run_type="scheduled"
        ),
        "run_id": run_id,
        "params": {},
    }


class GuardrailMachine(RuleBasedStateMachine):
    """The runs, retries, clears and switch flips every destructive operator goes through.

    A family says what its items are (``present``: item -> timestamp), how it runs, and what a run
    did (``work``); the checks here are the same for all.
    """

    FLOOR_DAYS: ClassVar[int] = 20  # the rule's override_floor_days
    OVERRIDES: ClassVar[list[int | None]] = [
        None,
        None,
        None,
        10,
        20,
        25,
        RETENTION,
        45,
    ]  # 10: below the floor
    SKEW: ClassVar[timedelta] = timedelta(minutes=5)
    RUN_AFTER_AGES: ClassVar[list[timedelta]] = [timedelta(0), HOUR, 3 * DAY]
    # Allowed anchors come more often than refused ones (10 minutes and 400 days ahead are refused).
    ANCHOR_DELTAS: ClassVar[list[timedelta]] = [
        -40 * DAY,
        -DAY,
        timedelta(0),
        timedelta(0),
        2 * timedelta(minutes=1),
        10 * timedelta(minutes=1),
        400 * DAY,
    ]
    MID_RUN_FLIPS: ClassVar[list[int | None]] = [None]
    # Items one operator call (an upload, a delete batch) may still remove after the switch flips.
    FLIP_BOUND: ClassVar[int] = 0

    def __init__(self) -> None:
        super().__init__()
        os.environ[SWITCH_ENV] = "true"
        self.runs: list[tuple[dict[str, Any], Any]] = []
        self.flip_after: int | None = None
        self.flipped = False

    # -- what a family provides ------------------------------------------------------------------

    def clock(self) -> datetime:
        return datetime.now(UTC)

    def present(self) -> dict[Any, datetime]:
        raise NotImplementedError

    def snapshot(self) -> Any:
        return self.present()

    def execute(self, ctx: dict[str, Any], retention: int) -> dict[str, Any]:
        raise NotImplementedError

    def work(self, result: dict[str, Any]) -> int:
        raise NotImplementedError

    def due(self, items: dict[Any, datetime], cutoff: datetime) -> set[Any]:
        return {k for k, ts in items.items() if ts < cutoff}

    def check_removed(self, removed: set[Any]) -> None:
        """Where the family archives: every removed item is in its archive."""

    def mid_run_event(self, *_: Any, **__: Any) -> None:
        """A botocore event handler: turns the switch off after ``flip_after`` calls."""
        if self.flip_after is None:
            return
        self.flip_after -= 1
        if self.flip_after <= 0:
            os.environ[SWITCH_ENV] = "false"
            self.flip_after = None
            self.flipped = True

    # -- steps -----------------------------------------------------------------------------------

    @rule(off=st.sampled_from([True, False, False]))
    def flip_switch(self, off: bool) -> None:
        os.environ[SWITCH_ENV] = "false" if off else "true"

    def first_run(self) -> None:
        """Every history starts with a future-dated run and an override below the floor (both
        refused), a run while the switch is off, one the switch stops mid-run (where the family can
        flip it mid-run), and a scheduled run at the clock that does the rest."""
        now = self.clock()
        self._attempt(context(now, now + 400 * DAY, "manual__future"), None, None)
        self._attempt(context(now, now, "manual__short"), 1, None)
        os.environ[SWITCH_ENV] = "false"
        self._attempt(context(now, now, "scheduled__off"), None, None)
        os.environ[SWITCH_ENV] = "true"
        if self.MID_RUN_FLIPS[-1] is not None:
            self._attempt(context(now, now, "scheduled__flipped"), None, 1)
            os.environ[SWITCH_ENV] = "true"
        self._attempt(context(now, now, "scheduled__first"), None, None)

    @rule(data=st.data())
    def run(self, data: st.DataObject) -> None:
        """One to three runs, each created any way a run can be: anchor, override, a mid-run flip."""
        for _ in range(data.draw(st.integers(1, 3), label="runs")):
            now = self.clock()
            run_after = now - data.draw(st.sampled_from(self.RUN_AFTER_AGES), label="run_after age")
            anchor = run_after + data.draw(st.sampled_from(self.ANCHOR_DELTAS), label="anchor - run_after")
            override = data.draw(st.sampled_from(self.OVERRIDES), label="override")
            flip = data.draw(st.sampled_from(self.MID_RUN_FLIPS), label="flip after calls")
            ctx = context(run_after, anchor, f"scheduled__{uuid.uuid4().hex[:8]}")
            self._attempt(ctx, override, flip)

    @rule(data=st.data())
    def clear_an_earlier_run(self, data: st.DataObject) -> None:
        if not self.runs:
            return
        ctx, override = data.draw(st.sampled_from(self.runs), label="cleared run")
        self._attempt(ctx, override, None)

    # -- the checks ------------------------------------------------------------------------------

    def _attempt(self, ctx: dict[str, Any], override: Any, flip: int | None) -> None:
        anchor, run_after = ctx["data_interval_end"], ctx["dag_run"].run_after
        must_refuse = anchor > run_after + self.SKEW or (override is not None and override < self.FLOOR_DAYS)
        switch_off = os.environ[SWITCH_ENV] == "false"
        before, items = self.snapshot(), self.present()
        self.flip_after, self.flipped = flip, False
        try:
            retention = override_retention_days(override, RETENTION, self.FLOOR_DAYS, "prop")
            result = self.execute(ctx, retention)
        except LifecycleError as exc:
            event(f"refused: {type(exc).__name__}")
            assert self.snapshot() == before, f"refused after a write: {exc}"
            # Refused as bad input, not by a later guardrail that happened to catch it.
            assert not must_refuse or isinstance(exc, LifecycleConfigError), exc
            return
        finally:
            self.flip_after = None
        assert not must_refuse, f"not refused: anchor {anchor} run_after {run_after} override {override}"
        self.runs.append((ctx, override))
        after = self.present()
        removed = set(items) - set(after)
        protected_from = self.clock() - timedelta(days=self.FLOOR_DAYS) + self.SKEW
        early = {k: items[k] for k in removed if items[k] >= protected_from}
        assert not early, f"removed inside retention: {early}"
        cutoff = anchor - timedelta(days=retention)
        assert removed <= self.due(items, cutoff), "removed something that was not due"
        self.check_removed(removed)
        event("switch off" if switch_off else f"stopped by {result.get('stopped_by')}")
        event("removed something" if removed else "removed nothing")
        if switch_off:
            assert self.snapshot() == before, "the switch was off, yet something changed"
            return
        if self.flipped:
            bound = self.FLIP_BOUND * (flip or 0)
            assert len(removed) <= bound, f"went on after the switch was turned off: {len(removed)} removed"
            if len(self.due(items, cutoff)) > bound:
                assert result["stopped_by"] == "kill_switch", result
        if self.flipped or result.get("stopped_by") == "kill_switch":
            return
        assert removed == self.due(items, cutoff), "a run that was not stopped left due items"
        again = self.execute(ctx, retention)
        assert self.work(again) == 0 and self.present() == after, f"the retry did more: {again}"


# -- PostgreSQL ------------------------------------------------------------------------------------

PG_AGES = [
    HOUR,
    19 * DAY,
    20 * DAY - HOUR,
    20 * DAY + HOUR,
    RETENTION * DAY - HOUR,
    RETENTION * DAY + HOUR,
    100 * DAY,
]


class PostgresMachine(GuardrailMachine):
    dbname: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.conn = admin_connect(self.dbname)
        self.conn.execute("TRUNCATE app.app_logs, app.student_progress, app.users CASCADE")

    def teardown(self) -> None:
        self.conn.close()

    def present(self) -> dict[Any, datetime]:
        return dict(self.conn.execute("SELECT id, created_at FROM app.app_logs").fetchall())

    @initialize()
    def seed(self) -> None:
        self.add_rows([*PG_AGES, *[100 * DAY] * 4])  # several batches of due rows
        self.first_run()

    @rule(ages=st.lists(st.sampled_from(PG_AGES), min_size=1, max_size=6))
    def add_rows(self, ages: list[timedelta]) -> None:
        now = self.clock()
        with self.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO app.app_logs (created_at, level, logger, message) VALUES (%s, 'INFO', 'p', 'm')",
                [(now - age,) for age in ages],
            )

    def work(self, result: dict[str, Any]) -> int:
        return int(result["deleted"])


class BatchedDeleteMachine(PostgresMachine):
    def execute(self, ctx: dict[str, Any], retention: int) -> dict[str, Any]:
        return PostgresBatchedDeleteOperator(
            task_id="prop",
            table="app.app_logs",
            timestamp_column="created_at",
            retention_days=retention,
            batch_size=2,
            min_batch_size=1,
            max_batch_size=2,
            max_delete_fraction=0.9,
        ).execute(ctx)


class ArchiveDeleteMachine(PostgresMachine):
    bucket: ClassVar[str]
    s3: ClassVar[Any]
    MID_RUN_FLIPS: ClassVar[list[int | None]] = [None, 1, 2]
    FLIP_BOUND: ClassVar[int] = 2  # the batch whose upload flipped it

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"p{uuid.uuid4().hex[:8]}"

    def snapshot(self) -> Any:
        return self.present(), sorted(self.archived_keys())

    def archived_keys(self) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def execute(self, ctx: dict[str, Any], retention: int) -> dict[str, Any]:
        with s3_faults(("after-call.s3.PutObject", self.mid_run_event)):
            return PostgresBatchedDeleteOperator(
                task_id="prop",
                table="app.app_logs",
                timestamp_column="created_at",
                retention_days=retention,
                batch_size=2,
                min_batch_size=1,
                max_batch_size=2,
                archive={"bucket": self.bucket, "prefix": self.prefix},
                allow_large_delete=True,
            ).execute(ctx)

    def check_removed(self, removed: set[Any]) -> None:
        archived = {
            int(row["id"])
            for key in self.archived_keys()
            for row in archive_mod.read_archive_rows(self.s3, self.bucket, key)
        }
        assert removed <= archived, f"deleted without an archive: {removed - archived}"


class PartitionMachine(PostgresMachine):
    """Monthly partitions of app.student_progress from eight months back to next month (drop mode)."""

    def __init__(self) -> None:
        super().__init__()
        for name in self.partitions():
            self.conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("app", name)))
        now = self.clock()
        first = now.year * 12 + now.month - 1 - 8
        self.upper: dict[str, datetime] = {}
        for idx in range(first, first + 10):
            lower = datetime(idx // 12, idx % 12 + 1, 1, tzinfo=UTC)
            upper = datetime((idx + 1) // 12, (idx + 1) % 12 + 1, 1, tzinfo=UTC)
            name = f"student_progress_{lower:%Y_%m}"
            self.upper[name] = upper
            self.conn.execute(
                sql.SQL(
                    "CREATE TABLE {} PARTITION OF app.student_progress FOR VALUES FROM ({}) TO ({})"
                ).format(sql.Identifier("app", name), sql.Literal(lower), sql.Literal(upper))
            )
        self.user = self.conn.execute(
            "INSERT INTO app.users (email, display_name, created_at) VALUES ('p@example.com', 'p', now()) RETURNING id"
        ).fetchone()[0]

    def present(self) -> dict[Any, datetime]:
        return dict(self.conn.execute("SELECT id, recorded_at FROM app.student_progress").fetchall())

    def snapshot(self) -> Any:
        return self.present(), self.partitions()

    def partitions(self) -> list[str]:
        rows = self.conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'app.student_progress'::regclass ORDER BY 1"
        ).fetchall()
        return [r[0] for r in rows]

    @initialize()
    def seed(self) -> None:
        self.add_rows([*PG_AGES, 200 * DAY])
        self.first_run()

    @rule(ages=st.lists(st.sampled_from([*PG_AGES, 200 * DAY]), min_size=1, max_size=6))
    def add_rows(self, ages: list[timedelta]) -> None:
        now, left = self.clock(), set(self.partitions())
        rows = [(self.user, now - age) for age in ages if self.partition_of(now - age) in left]
        with self.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO app.student_progress (user_id, lesson_id, score, recorded_at) VALUES (%s, 1, 1, %s)",
                rows,
            )

    @staticmethod
    def partition_of(ts: datetime) -> str:
        return f"student_progress_{ts.astimezone(UTC):%Y_%m}"

    def due(self, items: dict[Any, datetime], cutoff: datetime) -> set[Any]:
        # A row goes with its partition, once the partition's upper bound is at or before the cutoff.
        return {
            k
            for k, ts in items.items()
            if self.upper[f"student_progress_{ts.astimezone(UTC):%Y_%m}"] <= cutoff
        }

    def execute(self, ctx: dict[str, Any], retention: int) -> dict[str, Any]:
        return PostgresPartitionRetentionOperator(
            task_id="prop", table="app.student_progress", retention_days=retention
        ).execute(ctx)

    def work(self, result: dict[str, Any]) -> int:
        return len(result["dropped"]) + len(result["detached"])


# -- S3 --------------------------------------------------------------------------------------------


class S3Machine(GuardrailMachine):
    s3: ClassVar[Any]
    FLOOR_DAYS: ClassVar[int] = RETENTION  # no lower floor declared: an override may only keep longer
    OVERRIDES: ClassVar[list[int | None]] = [None, None, 10, RETENTION, RETENTION + 1]
    SKEW: ClassVar[timedelta] = SECOND
    RUN_AFTER_AGES: ClassVar[list[timedelta]] = [timedelta(0), SECOND]
    # Allowed anchors come more often than refused ones (10 minutes and 400 days ahead are refused).
    ANCHOR_DELTAS: ClassVar[list[timedelta]] = [
        -3 * SECOND,
        -SECOND,
        timedelta(0),
        timedelta(0),
        SECOND,
        3 * SECOND,
        400 * DAY,
    ]

    def __init__(self) -> None:
        super().__init__()
        self.bucket = f"prop-{uuid.uuid4().hex[:12]}"
        self.s3.create_bucket(Bucket=self.bucket)
        self.n = 0
        self.later = timedelta(0)
        self.op: Any = None

    def clock(self) -> datetime:
        return datetime.now(UTC) + timedelta(days=RETENTION) - 2 * SECOND + self.later

    def first_run(self) -> None:
        self.later = SECOND  # the three objects written before the tick are past retention
        super().first_run()

    @rule(data=st.data())
    def run(self, data: st.DataObject) -> None:
        # How long after the writes the run comes, instead of sleeping that long.
        self.later = data.draw(st.sampled_from([timedelta(0), SECOND, 3 * SECOND, DAY]), label="later")
        super().run(data)

    def present(self) -> dict[Any, datetime]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix="tmp/")
        return {o["Key"]: o["LastModified"] for page in pages for o in page.get("Contents", [])}

    @initialize()
    def seed(self) -> None:
        self.put(3)
        self.tick()
        self.put(2)
        self.first_run()

    @rule(count=st.integers(1, 3))
    def put(self, count: int) -> None:
        for _ in range(count):
            self.n += 1
            self.s3.put_object(
                Bucket=self.bucket, Key=f"tmp/{self.n:04d}", Body=b"x" * self.n, ChecksumAlgorithm="SHA256"
            )

    def tick(self) -> None:
        now = datetime.now(UTC)
        time.sleep(1 - now.microsecond / 1e6 + 0.01)


class ExpireMachine(S3Machine):
    MID_RUN_FLIPS: ClassVar[list[int | None]] = [None, 1]
    FLIP_BOUND: ClassVar[int] = 2  # the delete batch that flipped it

    def execute(self, ctx: dict[str, Any], retention: int) -> dict[str, Any]:
        if self.op is None:  # one operator (and client) per history, its retention set per run
            self.op = S3ExpireObjectsOperator(
                task_id="prop", bucket=self.bucket, prefix="tmp/", retention_days=1
            )
            self.op.hook.get_conn().meta.events.register("after-call.s3.DeleteObjects", self.mid_run_event)
        self.op.retention_days = retention
        return self.op.execute(ctx)

    def work(self, result: dict[str, Any]) -> int:
        return int(result["objects"])


class CopyThenDeleteMachine(S3Machine):
    MID_RUN_FLIPS: ClassVar[list[int | None]] = [None, 1]

    def __init__(self) -> None:
        super().__init__()
        self.dest = f"prop-arch-{uuid.uuid4().hex[:10]}"
        self.s3.create_bucket(Bucket=self.dest)

    def copies(self) -> dict[str, int]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.dest)
        return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}

    def snapshot(self) -> Any:
        return self.present(), self.copies()

    def execute(self, ctx: dict[str, Any], retention: int) -> dict[str, Any]:
        if self.op is None:  # one operator (and client) per history, its retention set per run
            self.op = S3GlacierCopyThenDeleteOperator(
                task_id="prop",
                source_bucket=self.bucket,
                source_prefix="tmp/",
                dest_bucket=self.dest,
                dest_prefix="archive/",
                retention_days=1,
                max_workers=2,
            )
            self.op.hook.get_conn().meta.events.register("after-call.s3.CopyObject", self.mid_run_event)
        self.op.retention_days = retention
        return self.op.execute(ctx)

    def work(self, result: dict[str, Any]) -> int:
        return int(result["objects"]) + int(result["copies_reused"])

    def check_removed(self, removed: set[Any]) -> None:
        copies = self.copies()
        missing = {k for k in removed if "archive/" + k.removeprefix("tmp/") not in copies}
        assert not missing, f"deleted without a copy: {missing}"


class LifecycleApplyMachine(RuleBasedStateMachine):
    """Rule sets applied by merge; the switch, dry runs and bad rule sets change nothing."""

    s3: ClassVar[Any]
    FOREIGN: ClassVar[dict[str, Any]] = {
        "ID": "someone-else",
        "Filter": {"Prefix": "audit/"},
        "Status": "Enabled",
        "Expiration": {"Days": 3650},
    }

    def __init__(self) -> None:
        super().__init__()
        os.environ[SWITCH_ENV] = "true"
        self.bucket = f"prop-lc-{uuid.uuid4().hex[:10]}"
        self.s3.create_bucket(Bucket=self.bucket)
        self.s3.put_bucket_lifecycle_configuration(
            Bucket=self.bucket, LifecycleConfiguration={"Rules": [self.FOREIGN]}
        )

    def config(self) -> list[dict[str, Any]]:
        try:
            return self.s3.get_bucket_lifecycle_configuration(Bucket=self.bucket)["Rules"]
        except self.s3.exceptions.ClientError:
            return []

    @rule(off=st.booleans())
    def flip_switch(self, off: bool) -> None:
        os.environ[SWITCH_ENV] = "false" if off else "true"

    @rule(
        rules=st.lists(
            st.fixed_dictionaries(
                {
                    "id": st.sampled_from(["tmp", "exports", "logs"]),
                    "prefix": st.sampled_from(["tmp/", "exports/", ""]),
                },
                optional={"expiration_days": st.sampled_from([1, 7, 90]), "absent": st.booleans()},
            ),
            max_size=3,
        ),
        dry_run=st.booleans(),
        manual=st.booleans(),
    )
    def apply(self, rules: list[dict[str, Any]], dry_run: bool, manual: bool) -> None:
        from airflow.sdk.exceptions import AirflowSkipException

        before = self.config()
        run_type = "manual" if manual else "scheduled"
        conf = {"dry_run": dry_run} if dry_run else {}
        ctx = {
            "dag_run": SimpleNamespace(conf=conf, run_type=run_type, run_after=datetime.now(UTC)),
            "params": {"dry_run": dry_run or manual},
        }
        try:
            kill_switch_guard(ctx)  # as Airflow runs it: pre_execute
            op = S3ApplyLifecycleOperator(
                task_id="prop", bucket=self.bucket, rules=rules, dry_run=dry_run or manual
            )
            result = op.execute(ctx)
        except AirflowSkipException:
            assert os.environ[SWITCH_ENV] == "false" and self.config() == before
            return
        except LifecycleConfigError:
            assert self.config() == before, "a refused rule set was written"
            return
        after = self.config()
        assert self.FOREIGN in after, "another team's rule was lost"
        if result["dry_run"]:
            assert after == before, "a dry run wrote the configuration"
            return
        ours = {r["ID"] for r in after} - {"someone-else"}
        assert ours == {r["id"] for r in rules if not r.get("absent")} | (
            {r["ID"] for r in before} - {"someone-else"} - {r["id"] for r in rules}
        )
        again = S3ApplyLifecycleOperator(task_id="prop", bucket=self.bucket, rules=rules).execute(ctx)
        assert again["put"] is False and self.config() == after, "the rerun wrote again"


# -- the tests -------------------------------------------------------------------------------------


@pytest.fixture
def property_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ANCHOR_SKEW_ENV, str(int(GuardrailMachine.SKEW.total_seconds())))
    monkeypatch.setenv(SWITCH_ENV, "true")
    monkeypatch.setenv(RECHECK_ENV, "0")  # read before every batch: flips take effect at once


@pytest.mark.parametrize(
    "machine", [BatchedDeleteMachine, PartitionMachine], ids=["batched_delete", "partition_drop"]
)
def test_postgres_guardrails_hold_over_run_histories(
    machine: Any, pg_database: str, property_env: None
) -> None:
    machine.dbname = pg_database
    run_state_machine_as_test(machine, settings=SETTINGS)


def test_archive_mode_guardrails_hold_over_run_histories(
    pg_database: str, s3_client: Any, make_bucket: Any, property_env: None
) -> None:
    ArchiveDeleteMachine.dbname = pg_database
    ArchiveDeleteMachine.s3 = s3_client
    ArchiveDeleteMachine.bucket = make_bucket("prop-archive")
    run_state_machine_as_test(ArchiveDeleteMachine, settings=SETTINGS)


@pytest.mark.parametrize(
    "machine", [ExpireMachine, CopyThenDeleteMachine], ids=["expire", "copy_then_delete"]
)
def test_s3_guardrails_hold_over_run_histories(
    machine: Any, s3_client: Any, property_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ANCHOR_SKEW_ENV, "1")
    monkeypatch.setattr(s3_common, "DELETE_OBJECTS_MAX_KEYS", 2)  # several delete batches per run
    machine.s3 = s3_client
    run_state_machine_as_test(machine, settings=S3_SETTINGS)


def test_lifecycle_apply_guardrails_hold_over_histories(s3_client: Any, property_env: None) -> None:
    LifecycleApplyMachine.s3 = s3_client
    run_state_machine_as_test(LifecycleApplyMachine, settings=SETTINGS)
