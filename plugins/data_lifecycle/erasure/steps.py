"""The steps of the erasure DAGs (``Run`` for one subject, plus replay and deadline helpers).

Hooks are built at run time. DAG files wire these into tasks; tests call them directly. Nothing returned here (XCom, logs, Slack,
ledger) holds the subject id or email: targets are named by table and by prefix template, subjects
by the first characters of their keyed hash.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast

from data_lifecycle.erasure import ledger
from data_lifecycle.erasure.executor import erase_target
from data_lifecycle.erasure.intake import intake_table
from data_lifecycle.erasure.keys import HASH_PREFIX_LENGTH, SubjectKeys, load_subject_keys
from data_lifecycle.erasure.matching import count_matches
from data_lifecycle.erasure.params import REQUEST_ID_PATTERN, Connections
from data_lifecycle.erasure.planner import plan_tables, prepare_targets
from data_lifecycle.erasure.privileges import check_ledger_privileges, check_table_privileges
from data_lifecycle.erasure.s3_purge import delete_scanned, remaining, scan_bucket
from data_lifecycle.erasure.subject_map import SubjectMap
from data_lifecycle.exceptions import (
    GuardrailTripped,
    KillSwitchStopped,
    LifecycleConfigError,
    LifecycleError,
    VerificationFailed,
)
from data_lifecycle.kill_switch import KILL_SWITCH_VARIABLE, KillSwitch

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

MAX_REASON_LENGTH = 1_000


@dataclass(frozen=True)
class Request:
    """One erasure request, validated again at run time (params can be rendered or hand-edited)."""

    user_id: int
    request_id: str
    requested_by: str | None = None
    requested_at: datetime | None = None
    dry_run: bool = True

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Request:
        user_id = params.get("user_id")
        if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id < 1:
            raise LifecycleConfigError("user_id must be a positive integer")
        request_id = params.get("request_id")
        if not isinstance(request_id, str) or not re.match(REQUEST_ID_PATTERN, request_id):
            raise LifecycleConfigError(f"request_id must match {REQUEST_ID_PATTERN}")
        requested_by = params.get("requested_by") or None
        requested_at = params.get("requested_at") or None
        if isinstance(requested_at, str):
            requested_at = datetime.fromisoformat(requested_at)
        if requested_at is not None and requested_at.tzinfo is None:
            raise LifecycleConfigError("requested_at needs a timezone")
        token = re.compile(rf"(?<!\d){user_id}(?!\d)")
        for name, value in (("request_id", request_id), ("requested_by", requested_by)):
            if value and token.search(value):
                raise LifecycleConfigError(
                    f"{name} contains the subject's id; it is stored in the ledger, so use a reference "
                    "that does not identify the person"
                )
        return cls(
            user_id=user_id,
            request_id=request_id,
            requested_by=requested_by,
            requested_at=requested_at,
            dry_run=bool(params.get("dry_run", True)),
        )


@contextmanager
def pg_connection(conn_id: str) -> Any:
    """An autocommit psycopg connection: each statement or ``conn.transaction()`` block commits."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    conn = cast("psycopg.Connection[Any]", PostgresHook(postgres_conn_id=conn_id).get_conn())
    conn.autocommit = True
    conn.execute("SELECT set_config('application_name', 'data_lifecycle:erasure', false)")
    try:
        yield conn
    finally:
        conn.close()


@lru_cache(maxsize=4)
def s3_client(aws_conn_id: str) -> Any:
    """One boto3 client per connection and process (thread-safe; building one takes ~0.5 s)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=aws_conn_id).get_conn()


def short(subject_hash: str) -> str:
    return subject_hash[:HASH_PREFIX_LENGTH]


def reason_of(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_REASON_LENGTH]


class Run:
    """One erasure of one subject within a DAG run: plan, erase, purge, verify and ledger entries.

    :param smap: the subject map.
    :param conns: connection ids.
    :param keys: hashing and sealing of the subject id.
    :param request: the request (its ``user_id`` never leaves this object).
    :param dag_id: recorded in the ledger.
    :param run_id: recorded in the ledger; entries are idempotent per run and status.
    """

    def __init__(
        self,
        smap: SubjectMap,
        conns: Connections,
        keys: SubjectKeys,
        request: Request,
        *,
        dag_id: str,
        run_id: str,
    ) -> None:
        self.smap = smap
        self.conns = conns
        self.keys = keys
        self.request = request
        self.dag_id = dag_id
        self.run_id = run_id
        self.subject_hash = keys.subject_hash(request.user_id)
        self._s3: Any = None

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = s3_client(self.conns.aws)
        return self._s3

    @property
    def label(self) -> str:
        return f"request {self.request.request_id} (subject {short(self.subject_hash)})"

    def record(
        self, status: ledger.Status, *, counts: dict[str, Any] | None = None, reason: str | None = None
    ) -> None:
        entry = ledger.Entry(
            request_id=self.request.request_id,
            subject_hash=self.subject_hash,
            subject_token=self.keys.seal(self.request.user_id),
            status=status,
            dry_run=self.request.dry_run,
            dag_id=self.dag_id,
            run_id=self.run_id,
            counts=counts or {},
            reason=reason,
            requested_by=self.request.requested_by,
            requested_at=self.request.requested_at,
        )
        with pg_connection(self.conns.ledger) as conn:
            added = ledger.record(conn, self.smap.ledger_table, entry)
        log.info("Ledger: %s %s%s", self.label, status.value, "" if added else " (already recorded)")

    def redact(self, text: str) -> str:
        """``text`` with the subject id (as a whole number) replaced by ``<subject>``."""
        return re.sub(rf"(?<!\d){self.request.user_id}(?!\d)", "<subject>", text)

    @contextmanager
    def failures_recorded(self) -> Any:
        """Record a ``failed`` ledger entry, with the reason, for any error, then re-raise it.

        An error whose text carries the subject id (a database error detail, an S3 key) is re-raised
        redacted, so the id reaches neither the ledger nor the failure notice.
        """
        try:
            yield
        except Exception as exc:
            reason = self.redact(reason_of(exc))
            try:
                self.record(ledger.Status.FAILED, reason=reason)
            except Exception:
                log.exception("Could not record the failure of %s in the ledger", self.label)
            if reason != reason_of(exc):
                log.error("%s failed: %s", self.label, reason)
                raise LifecycleError(reason) from None
            raise

    def plan(self) -> dict[str, Any]:
        """Rows and object versions per target, checked for locks; no change anywhere."""
        with pg_connection(self.conns.ledger) as conn:
            ledger.ensure_ledger(conn, self.smap.ledger_table)
            check_ledger_privileges(conn, self.smap.ledger_table)
            ledger.check_request_subject(
                conn, self.smap.ledger_table, self.request.request_id, self.subject_hash
            )
        with pg_connection(self.conns.postgres) as conn:
            prepared = prepare_targets(conn, self.smap)
            check_table_privileges(conn, prepared, self.smap.source)
            tables = plan_tables(conn, prepared, self.request.user_id)
        objects: dict[str, Any] = {}
        for b in self.smap.buckets:
            objects.update(scan_bucket(self.s3, b, self.request.user_id).counts)
        total_rows = sum(t["rows"] for t in tables)
        total_objects = sum(c["versions"] + c["delete_markers"] for c in objects.values())
        plan = {
            "subject": short(self.subject_hash),
            "request_id": self.request.request_id,
            "dry_run": self.request.dry_run,
            "tables": tables,
            "objects": objects,
            "total_rows": total_rows,
            "total_objects": total_objects,
        }
        for t in tables:
            log.info("Plan %s: %s %d row(s) of %s", self.label, t["action"], t["rows"], t["target"])
        for label, c in objects.items():
            log.info(
                "Plan %s: %d version(s), %d delete marker(s) under %s",
                self.label,
                c["versions"],
                c["delete_markers"],
                label,
            )
        return plan

    def recheck_coverage(self, conn: Any) -> None:
        """The coverage check again, before a step's first write: a step called on its own (as a
        library, or after the map or schema changed since the coverage task) erases nothing when
        the map misses a reference column or an archive destination."""
        from data_lifecycle.erasure.coverage import check_full_coverage

        check_full_coverage(conn, self.smap)

    def erase_tables(self) -> dict[str, int]:
        """Delete or mask every target in foreign-key order; rows per target."""
        if self.request.dry_run:
            with pg_connection(self.conns.postgres) as conn:
                prepared = prepare_targets(conn, self.smap)
                would = {p.name: count_matches(conn, p, self.request.user_id) for p in prepared}
            log.info("Dry run %s: would erase %s", self.label, would)
            return would
        out: dict[str, int] = {}
        with pg_connection(self.conns.postgres) as conn:
            self.recheck_coverage(conn)
            prepared = prepare_targets(conn, self.smap)
            check_table_privileges(conn, prepared, self.smap.source)
            switch = KillSwitch(self.label)
            for p in prepared:
                self.stop_if_switched_off(switch, done=out)

                def between_batches(rows: int, name: str = p.name) -> None:
                    self.stop_if_switched_off(switch, done=out, partly=(name, rows))

                out[p.name] = erase_target(
                    conn, p, self.request.user_id, self.keys, self.smap.batch, stop=between_batches
                )["rows"]
        return out

    def purge_objects(self) -> dict[str, Any]:
        """Check every bucket for locked versions first, then delete every version and marker."""
        if not self.request.dry_run:
            with pg_connection(self.conns.postgres) as conn:
                self.recheck_coverage(conn)
        scans = [scan_bucket(self.s3, b, self.request.user_id) for b in self.smap.buckets]
        out: dict[str, Any] = {}
        switch = KillSwitch(self.label)
        for scan in scans:
            if not self.request.dry_run:
                self.stop_if_switched_off(switch, done=out)
            if self.request.dry_run:
                log.info("Dry run %s: would delete %s", self.label, scan.counts)
                out.update(scan.counts)
            else:
                out.update(delete_scanned(self.s3, scan))
        return out

    def stop_if_switched_off(
        self, switch: KillSwitch, *, done: Mapping[str, Any], partly: tuple[str, int] | None = None
    ) -> None:
        """Between targets and batches: raise ``KillSwitchStopped`` (the step fails, recorded) once
        the switch is off."""
        if switch.tripped():
            within = f", and {partly[1]} row(s) of {partly[0]}" if partly else ""
            raise KillSwitchStopped(
                f"Erasure of {self.label} stopped by the kill switch {KILL_SWITCH_VARIABLE} after"
                f" {len(done)} target(s) ({', '.join(done) or 'none'}){within}; clear the task once it"
                " is back on (a rerun finishes it)"
            )

    def verify(self) -> dict[str, int]:
        """Re-query every target; raise ``VerificationFailed`` naming whatever remains."""
        left: dict[str, int] = {}
        with pg_connection(self.conns.postgres) as conn:
            for p in prepare_targets(conn, self.smap):
                left[p.name] = count_matches(conn, p, self.request.user_id)
        for b in self.smap.buckets:
            left.update(remaining(self.s3, b, self.request.user_id))
        residue = {k: v for k, v in left.items() if v}
        if residue and not self.request.dry_run:
            raise VerificationFailed(f"Erasure of {self.label} left data behind: {residue}")
        return left


def outcome_counts(tables: Mapping[str, int] | None, objects: Mapping[str, Any] | None) -> dict[str, Any]:
    return {"tables": dict(tables or {}), "s3": dict(objects or {})}


def total_erased(counts: Mapping[str, Any]) -> int:
    rows = sum(int(v) for v in counts.get("tables", {}).values())
    objects = sum(int(c["versions"]) + int(c["delete_markers"]) for c in counts.get("s3", {}).values())
    return rows + objects


def subject_keys(smap: SubjectMap) -> SubjectKeys:
    return load_subject_keys(smap.hmac_conn_id, smap.subject.table)


def replay_entry(
    smap: SubjectMap,
    conns: Connections,
    keys: SubjectKeys,
    entry: Mapping[str, Any],
    *,
    dry_run: bool,
    dag_id: str,
    run_id: str,
) -> dict[str, Any]:
    """Re-apply one completed erasure (after a restore); records ``replayed``, ``noop`` or ``failed``."""
    user_id = keys.unseal(entry["subject_token"], entry["subject_hash"])
    request = Request(user_id=user_id, request_id=entry["request_id"], dry_run=dry_run)
    run = Run(smap, conns, keys, request, dag_id=dag_id, run_id=run_id)
    with run.failures_recorded():
        _refuse_reused_id(run, datetime.fromisoformat(entry["completed_at"]))
        plan = run.plan()
        if not plan["total_rows"] and not plan["total_objects"]:
            run.record(ledger.Status.NOOP, counts=outcome_counts({}, {}))
            return {
                "request_id": request.request_id,
                "subject": short(run.subject_hash),
                "status": "noop",
                "erased": 0,
            }
        tables = run.erase_tables()
        objects = run.purge_objects()
        run.verify()
        counts = outcome_counts(tables, objects)
        status = ledger.Status.NOOP if dry_run else ledger.Status.REPLAYED
        run.record(status, counts=counts, reason="dry run" if dry_run else None)
    return {
        "request_id": request.request_id,
        "subject": short(run.subject_hash),
        "status": status.value,
        "erased": total_erased(counts),
    }


def _refuse_reused_id(run: Run, completed_at: datetime) -> None:
    """A subject row created after the erasure belongs to someone else: leave it for review."""
    column = run.smap.subject.created_column
    if not column:
        return
    from psycopg import sql

    schema, name = run.smap.subject.table.split(".", 1)
    with pg_connection(run.conns.postgres) as conn:
        row = conn.execute(
            sql.SQL("SELECT {} FROM {} WHERE {} = %s").format(
                sql.Identifier(column), sql.Identifier(schema, name), sql.Identifier(run.smap.subject.key)
            ),
            (run.request.user_id,),
        ).fetchone()
    if row and row[0] is not None and row[0] > completed_at:
        raise GuardrailTripped(
            f"Replay of {run.label}: the {run.smap.subject.table} row with this id was created after the "
            "erasure completed, so the id now belongs to another account; nothing was erased, review it by hand"
        )


def deadline_report(smap: SubjectMap, ledger_conn_id: str, anchor: datetime) -> list[dict[str, Any]]:
    """Open requests older than ``alert_after_days`` at ``anchor``, with their deadline."""
    with pg_connection(ledger_conn_id) as conn:
        ledger.ensure_ledger(conn, smap.ledger_table)
        intake = intake_table(smap.ledger_table)
        has_intake = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (intake,)).fetchone()[0]
        rows = ledger.open_requests(conn, smap.ledger_table, intake if has_intake else None)
    due = []
    for r in rows:
        age = anchor - r["requested_at"]
        if age < timedelta(days=smap.alert_after_days):
            continue
        deadline = r["requested_at"] + timedelta(days=smap.deadline_days)
        due.append(
            {
                "request_id": r["request_id"],
                "subject": short(r["subject_hash"]),
                "requested_at": r["requested_at"].isoformat(),
                "deadline": deadline.isoformat(),
                "age_days": age.days,
                "overdue": anchor > deadline,
                "last_status": r["last_status"],
            }
        )
    return due


def post_slack(slack_conn_id: str, text: str) -> bool:
    """Post ``text`` (bounded in time); a Slack outage is logged and does not change the task's outcome."""
    from data_lifecycle.slack import post_to_slack

    return post_to_slack(slack_conn_id, text, what="erasure notice")


ERASE_STEPS = (
    "check_coverage",
    "plan_erasure",
    "record_started",
    "erase_tables",
    "purge_s3_versions",
    "verify_erasure",
)


def coverage_report(conns: Connections) -> dict[str, Any]:
    """The coverage check against the live catalog and the policy's archive destinations: fails
    naming every unmapped user reference and every uncovered archive."""
    from data_lifecycle.erasure.coverage import check_full_coverage
    from data_lifecycle.erasure.subject_map import load_subject_map

    with pg_connection(conns.postgres) as conn:
        return check_full_coverage(conn, load_subject_map())


def run_from_context(context: Mapping[str, Any], conns: Connections) -> Run:
    """The ``Run`` of a task of ``erase_user_data``: its params name a registered request, whose
    sealed subject id is read from the intake table (and kept in memory only)."""
    from data_lifecycle.cutoff import check_not_after_run
    from data_lifecycle.erasure.intake import lookup
    from data_lifecycle.erasure.subject_map import load_subject_map

    # A future-dated run or request is refused before any step reads or writes (as for cleanups).
    if context.get("data_interval_end") is not None:
        check_not_after_run(context["data_interval_end"], context, what="The run's data_interval_end")
    smap = load_subject_map()
    keys = subject_keys(smap)
    params = context["params"]
    conf = getattr(context.get("dag_run"), "conf", None) or {}
    if "user_id" in conf or "user_id" in params:
        raise LifecycleConfigError(
            "The trigger conf carries a user_id: the subject id must never be in dag_run.conf. Register "
            "the request (python -m data_lifecycle.erasure.intake register) and trigger with its request_id"
        )
    request_id = params.get("request_id")
    if not isinstance(request_id, str) or not re.match(REQUEST_ID_PATTERN, request_id):
        raise LifecycleConfigError(f"request_id must match {REQUEST_ID_PATTERN}")
    with pg_connection(conns.ledger) as conn:
        registered = lookup(conn, intake_table(smap.ledger_table), keys, request_id)
    request = Request.from_params(
        {
            "user_id": registered.user_id,
            "request_id": request_id,
            "requested_by": registered.requested_by,
            "requested_at": registered.requested_at,
            "dry_run": params.get("dry_run", True),
        }
    )
    if request.requested_at is not None:
        check_not_after_run(request.requested_at, context, what="requested_at")
    return Run(smap, conns, keys, request, dag_id=context["ti"].dag_id, run_id=context["run_id"])


def record_outcome(run: Run, results: Mapping[str, Any]) -> dict[str, Any]:
    """Ledger entry closing the run: ``completed``/``noop`` when every step succeeded, else ``failed``.

    :param results: each step's return value by task id (None when it failed or was skipped).
    """
    missing = [step for step in ERASE_STEPS if results.get(step) is None]
    outcome: dict[str, Any] = {
        "request_id": run.request.request_id,
        "subject": short(run.subject_hash),
        "dry_run": run.request.dry_run,
    }
    if missing:
        with pg_connection(run.conns.ledger) as conn:
            recorded = ledger.run_entries(conn, run.smap.ledger_table, run.request.request_id, run.run_id)
        reasons = [r for s, r in recorded if s == ledger.Status.FAILED.value and r]
        reason = (
            reasons[-1]
            if reasons
            else f"{missing[0]} did not succeed (failed, or skipped by the kill switch)"
        )
        if not reasons:
            run.record(ledger.Status.FAILED, reason=reason)
        return {**outcome, "status": ledger.Status.FAILED.value, "reason": reason, "failed_step": missing[0]}
    counts = outcome_counts(results["erase_tables"], results["purge_s3_versions"])
    status = ledger.Status.COMPLETED if total_erased(counts) else ledger.Status.NOOP
    run.record(status, counts=counts)
    return {**outcome, "status": status.value, "counts": counts, "erased": total_erased(counts)}


def summary_text(dag_id: str, run_id: str, outcome: Mapping[str, Any] | None, deadline_days: int) -> str:
    """The Slack summary of one erasure run: request id and subject hash prefix, never the id."""
    if not outcome:
        return f":red_circle: *{dag_id}* run `{run_id}`: the outcome could not be recorded; check the run."
    who = f"request `{outcome['request_id']}` (subject `{outcome['subject']}`)"
    mode = " [dry run]" if outcome.get("dry_run") else ""
    if outcome["status"] == ledger.Status.FAILED.value:
        return (
            f":red_circle: *{dag_id}*{mode} {who} FAILED at `{outcome.get('failed_step')}`: "
            f"{str(outcome.get('reason'))[:500]}\nThe legal deadline is {deadline_days} days from the request."
        )
    counts = outcome.get("counts") or {}
    lines = [f":white_check_mark: *{dag_id}*{mode} {who}: {outcome['status']}, {outcome['erased']} item(s)"]
    for target, rows in (counts.get("tables") or {}).items():
        lines.append(f"• `{target}`: {rows} row(s)")
    for label, c in (counts.get("s3") or {}).items():
        lines.append(f"• `{label}`: {c['versions']} version(s), {c['delete_markers']} delete marker(s)")
    return "\n".join(lines)


def completed_erasures(smap: SubjectMap, conns: Connections, since: str | datetime) -> list[dict[str, Any]]:
    """The ledger's real erasures completed at or after ``since``, one per subject (sealed ids only)."""
    when = datetime.fromisoformat(since) if isinstance(since, str) else since
    if when.tzinfo is None:
        raise LifecycleConfigError(f"since={since!r} has no timezone; refusing to guess one")
    with pg_connection(conns.ledger) as conn:
        ledger.ensure_ledger(conn, smap.ledger_table)
        entries = ledger.completed_since(conn, smap.ledger_table, when)
        newest = ledger.newest_entry(conn, smap.ledger_table)
    if newest is None or newest < when:
        _refuse_rewound_ledger(smap, conns, when, newest)
    log.info("%d completed erasure(s) since %s to replay", len(entries), when.isoformat())
    return entries


def _refuse_rewound_ledger(
    smap: SubjectMap, conns: Connections, since: datetime, newest: datetime | None
) -> None:
    """The ledger knows nothing after ``since`` but the database holds newer accounts: the ledger
    was most likely restored with the database, and a replay from it would miss exactly the
    erasures the restore undid."""
    column = smap.subject.created_column
    if not column:
        log.warning("The subject map has no created_column: cannot tell whether the ledger was rewound")
        return
    from psycopg import sql

    schema, name = smap.subject.table.split(".", 1)
    with pg_connection(conns.postgres) as conn:
        row = conn.execute(
            sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(column), sql.Identifier(schema, name))
        ).fetchone()
    database_newest = row[0] if row else None
    if database_newest is None or (newest is not None and database_newest <= newest):
        return
    seen = newest.isoformat() if newest else "none at all"
    raise VerificationFailed(
        f"The erasure ledger's newest entry ({seen}) is older than since={since.isoformat()}, while "
        f"{smap.subject.table} holds rows created up to {database_newest.isoformat()}: the ledger looks "
        "rewound with the database (does it live in the restored database?), so the erasures it lost "
        "would not be replayed. Restore the ledger from its own, newer copy; if no erasure ran after "
        f"{seen}, rerun with since at or before it."
    )


def replay_summary(
    smap: SubjectMap, conns: Connections, dag_id: str, run_id: str, entries: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """Per request, the status this replay run recorded; posts to Slack and fails on any failure."""
    results = []
    with pg_connection(conns.ledger) as conn:
        for e in entries or []:
            recorded = ledger.run_entries(conn, smap.ledger_table, e["request_id"], run_id)
            status, reason = recorded[-1] if recorded else ("failed", "no ledger entry (task failed early)")
            results.append(
                {
                    "request_id": e["request_id"],
                    "subject": short(e["subject_hash"]),
                    "status": status,
                    "reason": reason,
                }
            )
    failed = [r for r in results if r["status"] == ledger.Status.FAILED.value]
    icon = ":red_circle:" if failed or entries is None else ":recycle:"
    lines = [f"{icon} *{dag_id}* run `{run_id}`: {len(results)} completed erasure(s) re-checked"]
    for r in results:
        extra = f" - {str(r['reason'])[:300]}" if r["status"] == ledger.Status.FAILED.value else ""
        lines.append(f"• `{r['request_id']}` (subject `{r['subject']}`): {r['status']}{extra}")
    post_slack(conns.slack, "\n".join(lines))
    if entries is None:
        raise VerificationFailed("The completed erasures could not be listed; nothing was replayed")
    if failed:
        raise VerificationFailed(
            f"{len(failed)} replay(s) failed: {', '.join(r['request_id'] for r in failed)}"
        )
    return results


def alert_due_requests(smap: SubjectMap, conns: Connections, anchor: datetime) -> list[dict[str, Any]]:
    """Slack alert on open requests past ``alert_after_days``; returns them (overdue first)."""
    due = sorted(deadline_report(smap, conns.ledger, anchor), key=lambda r: (not r["overdue"], r["deadline"]))
    if not due:
        log.info("No open erasure request is older than %d day(s)", smap.alert_after_days)
        return []
    overdue = sum(r["overdue"] for r in due)
    lines = [
        f":hourglass: {len(due)} erasure request(s) open for {smap.alert_after_days}+ days "
        f"({overdue} past the {smap.deadline_days}-day legal deadline):"
    ]
    for r in due:
        flag = "OVERDUE" if r["overdue"] else "due"
        lines.append(
            f"• `{r['request_id']}` (subject `{r['subject']}`): {flag} {r['deadline'][:10]}, "
            f"open {r['age_days']} days, last status {r['last_status']}"
        )
    post_slack(conns.slack, "\n".join(lines))
    return due
