"""Fault injection for the reliability tests: killable child runs, S3 faults, PostgreSQL helpers.

Operators run in a child process forked from a forkserver that has Airflow, the providers and our
operators already imported, so a child starts in milliseconds and can be killed with SIGKILL at any
point. S3 faults are botocore event handlers registered on every S3 client created while a fault
context is active (in the test process, or inside a child).
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import psycopg

from devstack import postgres as pg_devstack
from devstack.settings import HOST, POSTGRES_PORT, POSTGRES_USER, StackPaths

# Imported once by the forkserver so each child starts without paying for Airflow's imports.
FORKSERVER_PRELOAD = [
    "psycopg",
    "boto3",
    "botocore.client",
    "airflow.sdk",
    "airflow.providers.postgres.hooks.postgres",
    "airflow.providers.amazon.aws.hooks.s3",
    "data_lifecycle.operators.postgres",
    "data_lifecycle.operators.s3",
    "data_lifecycle.erasure.steps",
]
CHILD_START_TIMEOUT_SECONDS = 60.0
CHILD_RUN_TIMEOUT_SECONDS = 60.0
BACKEND_GONE_TIMEOUT_SECONDS = 20.0

_CONTEXT: Any = None


def run_context(anchor: datetime, *, run_id: str = "scheduled__reliability") -> dict[str, Any]:
    """The context an operator's ``execute`` receives for a scheduled run ending at ``anchor``."""
    return {
        "data_interval_end": anchor,
        "dag_run": SimpleNamespace(run_after=anchor, dag_id="reliability", run_id=run_id),
        "run_id": run_id,
    }


# -- S3 faults ----------------------------------------------------------------------------------


class _Body:
    """The raw body of a fabricated HTTP response (what ``AWSResponse.content`` reads)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


def error_response(code: str, status: int, message: str = "injected fault") -> tuple[Any, dict[str, Any]]:
    """A ``before-call`` answer: botocore raises it as a ClientError without sending the request."""
    from botocore.awsrequest import AWSResponse

    http = AWSResponse(url="", status_code=status, headers={}, raw=_Body(b""))
    parsed = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {}, "RetryAttempts": 0},
    }
    return http, parsed


def http_error(code: str, status: int, message: str = "injected fault") -> Any:
    """A ``before-send`` answer: an HTTP error response that goes through parsing and retries."""
    from botocore.awsrequest import AWSResponse

    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>{message}</Message><RequestId>fault</RequestId></Error>"
    ).encode()
    return AWSResponse(
        url="", status_code=status, headers={"Content-Type": "application/xml"}, raw=_Body(body)
    )


@contextmanager
def s3_faults(*handlers: tuple[str, Callable[..., Any]]) -> Iterator[None]:
    """Register ``(event, handler)`` pairs on every S3 client created inside the block."""
    from botocore.client import ClientCreator

    original = ClientCreator.create_client

    def create_client(self: Any, service_name: str, *args: Any, **kwargs: Any) -> Any:
        client = original(self, service_name, *args, **kwargs)
        if service_name == "s3":
            for event, handler in handlers:
                client.meta.events.register(event, handler)
        return client

    ClientCreator.create_client = create_client  # type: ignore[method-assign]
    try:
        yield
    finally:
        ClientCreator.create_client = original  # type: ignore[method-assign]


def ok_response(parsed: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A ``before-call`` answer: an HTTP 200 with ``parsed`` as its body, without sending the request."""
    from botocore.awsrequest import AWSResponse

    http = AWSResponse(url="", status_code=200, headers={}, raw=_Body(b""))
    return http, {
        **parsed,
        "ResponseMetadata": {"HTTPStatusCode": 200, "HTTPHeaders": {}, "RetryAttempts": 0},
    }


def real_s3_conditions(checker: Any) -> list[tuple[str, Callable[..., Any]]]:
    """Handlers that answer conditional requests as S3 does, where the moto server ignores them.

    * DeleteObjects: an entry whose ``ETag`` no longer matches the current object is not deleted
      and comes back in ``Errors`` as ``PreconditionFailed`` (moto deletes it anyway);
    * CopyObject with ``IfNoneMatch="*"`` onto an existing key answers HTTP 412
      ``PreconditionFailed`` (moto overwrites). PutObject and CompleteMultipartUpload honour
      ``IfNoneMatch`` on moto already.

    ``checker`` is a client without these handlers, used to read the current state.
    """

    def current_etag(bucket: str, key: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            return str(checker.head_object(Bucket=bucket, Key=key)["ETag"])
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def stale_deletes(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        objects = params["Delete"]["Objects"]
        stale = [
            o["Key"]
            for o in objects
            if o.get("ETag")
            and not o.get("VersionId")
            and current_etag(params["Bucket"], o["Key"]) not in (None, o["ETag"])
        ]
        if stale:
            context["stale_etags"] = stale
            # A new request body: the caller's own list stays as it sent it.
            left = [o for o in objects if o["Key"] not in stale]
            context["nothing_left"] = not left
            params["Delete"] = {**params["Delete"], "Objects": left}

    def errors_of(context: dict[str, Any]) -> list[dict[str, str]]:
        return [
            {
                "Key": k,
                "Code": "PreconditionFailed",
                "Message": "At least one of the pre-conditions you specified did not hold",
            }
            for k in context.get("stale_etags", [])
        ]

    def answer_empty(context: dict[str, Any], **_: Any) -> Any:
        # S3 refuses an empty Objects list; every entry was stale, so answer for it (the Errors are
        # added after the call, as for any other answer).
        if context.get("stale_etags") and context.get("nothing_left"):
            return ok_response({"Deleted": []})
        return None

    def report(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        extra = errors_of(context)
        if extra:
            parsed["Errors"] = [*parsed.get("Errors", []), *extra]

    def mark_copy(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if params.get("IfNoneMatch") == "*" and current_etag(params["Bucket"], params["Key"]) is not None:
            context["copy_onto_existing"] = True

    def refuse_copy(context: dict[str, Any], **_: Any) -> Any:
        if context.get("copy_onto_existing"):
            return error_response(
                "PreconditionFailed", 412, "At least one of the pre-conditions did not hold"
            )
        return None

    return [
        ("provide-client-params.s3.DeleteObjects", stale_deletes),
        ("before-call.s3.DeleteObjects", answer_empty),
        ("after-call.s3.DeleteObjects", report),
        ("provide-client-params.s3.CopyObject", mark_copy),
        ("before-call.s3.CopyObject", refuse_copy),
    ]


def slow_calls(
    delays: dict[str, float], notify: Callable[[tuple[Any, ...]], None] | None = None
) -> list[Any]:
    """``before-call`` handlers that report each call of the named operations, then sleep."""

    def make(operation: str, seconds: float) -> tuple[str, Callable[..., None]]:
        def handler(**_: Any) -> None:
            if notify is not None:
                notify(("call", operation, time.monotonic()))
            time.sleep(seconds)

        return f"before-call.s3.{operation}", handler

    return [make(op, seconds) for op, seconds in delays.items()]


# -- child processes -----------------------------------------------------------------------------


@dataclass
class ChildSpec:
    """What a child runs: ``operator(task_id=..., **kwargs).execute(run_context(anchor))``.

    :param operator: ``"module:Class"`` of the operator, or ``"module:function"`` called with
        ``(anchor, **kwargs)`` for work that is not an operator.
    :param env: environment set in the child before anything runs (connections).
    :param patches: ``{"module:NAME": value}`` module attributes replaced in the child.
    :param s3_delays: seconds slept before each call of an S3 operation, reported as events.
    """

    operator: str
    kwargs: dict[str, Any]
    anchor: datetime
    env: dict[str, str] = field(default_factory=dict)
    patches: dict[str, Any] = field(default_factory=dict)
    s3_delays: dict[str, float] = field(default_factory=dict)


@dataclass
class ChildOutcome:
    killed: bool
    exitcode: int | None
    events: list[tuple[Any, ...]]
    seconds_until_kill: float | None

    def result(self) -> Any:
        done = [e for e in self.events if e[0] in ("done", "error")]
        return done[-1] if done else None


def _child_main(spec: ChildSpec, events: Any) -> None:
    """Entry point of a child: runs the spec and reports events through a pipe."""
    lock = threading.Lock()

    def send(event: tuple[Any, ...]) -> None:
        with lock:
            events.send(event)

    os.environ.update(spec.env)
    for target, value in spec.patches.items():
        module, _, name = target.partition(":")
        setattr(importlib.import_module(module), name, value)
    module, _, name = spec.operator.partition(":")
    factory = getattr(importlib.import_module(module), name)
    with s3_faults(*slow_calls(spec.s3_delays, send)):
        try:
            if isinstance(factory, type):
                op = factory(**spec.kwargs)
                send(("started", time.monotonic()))
                result = op.execute(run_context(spec.anchor))
            else:
                send(("started", time.monotonic()))
                result = factory(spec.anchor, **spec.kwargs)
            send(("done", result))
        except BaseException as exc:
            send(("error", f"{type(exc).__name__}: {exc}"))


def _mp_context() -> Any:
    global _CONTEXT  # noqa: PLW0603
    if _CONTEXT is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
        _CONTEXT = ctx
    return _CONTEXT


def run_child(
    spec: ChildSpec,
    *,
    kill_after: float | None = None,
    kill_on: Callable[[tuple[Any, ...]], bool] | None = None,
    kill_delay: float = 0.0,
) -> ChildOutcome:
    """Run ``spec`` in a child; SIGKILL it ``kill_after`` seconds after it started executing, or
    ``kill_delay`` seconds after the first event ``kill_on`` accepts. Returns what it reported."""
    ctx = _mp_context()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(spec, sender), daemon=True)
    proc.start()
    sender.close()
    events: list[tuple[Any, ...]] = []
    started: float | None = None
    kill_at: float | None = None
    deadline = time.monotonic() + CHILD_START_TIMEOUT_SECONDS
    finished = False
    try:
        while True:
            now = time.monotonic()
            if kill_at is not None and now >= kill_at:
                break
            if now > deadline:
                raise TimeoutError(f"child {spec.operator} did not finish in time; events: {events[-5:]}")
            wait = 0.05 if kill_at is None else max(0.0, min(0.05, kill_at - now))
            if receiver.poll(wait):
                try:
                    event = receiver.recv()
                except EOFError:
                    finished = True
                    break
                events.append(event)
                if event[0] == "started":
                    started = event[1]
                    deadline = time.monotonic() + CHILD_RUN_TIMEOUT_SECONDS
                    if kill_after is not None:
                        kill_at = started + kill_after
                if kill_on is not None and kill_at is None and kill_on(event):
                    kill_at = time.monotonic() + kill_delay
                if event[0] in ("done", "error"):
                    finished = True
                    break
            elif not proc.is_alive() and not receiver.poll(0):
                finished = True
                break
        killed = False
        until = None
        if not finished and proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            until = time.monotonic() - started if started is not None else None
        proc.join(10)
        return ChildOutcome(killed=killed, exitcode=proc.exitcode, events=events, seconds_until_kill=until)
    finally:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(10)
        receiver.close()


def erase_subject(
    anchor: datetime, *, map_path: str, user_id: int, request_id: str, conns: dict[str, str]
) -> dict[str, Any]:
    """The erase steps of ``erase_user_data`` for one subject: tables, then S3 versions."""
    from data_lifecycle.erasure.params import Connections
    from data_lifecycle.erasure.steps import Request, Run, subject_keys
    from data_lifecycle.erasure.subject_map import load_subject_map

    smap = load_subject_map(map_path)
    request = Request(user_id=user_id, request_id=request_id, requested_by="privacy-team", dry_run=False)
    run = Run(
        smap,
        Connections(**conns),
        subject_keys(smap),
        request,
        dag_id="erase_user_data",
        run_id=f"manual__{anchor.isoformat()}",
    )
    return {"tables": run.erase_tables(), "s3": run.purge_objects(), "left": run.verify()}


# -- PostgreSQL ----------------------------------------------------------------------------------


def connect(dbname: str, *, user: str = POSTGRES_USER, autocommit: bool = True) -> psycopg.Connection[Any]:
    return psycopg.connect(host=HOST, port=POSTGRES_PORT, user=user, dbname=dbname, autocommit=autocommit)


def wait_backends_gone(dbname: str, application_name: str) -> None:
    """Wait until the server has ended the sessions of a killed task (it notices the closed socket)."""
    deadline = time.monotonic() + BACKEND_GONE_TIMEOUT_SECONDS
    with connect(dbname) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
                (dbname, application_name),
            ).fetchone()
            if not row or row[0] == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"sessions of {application_name} still open in {dbname}")
            time.sleep(0.05)


def restart_postgres(paths: StackPaths) -> float:
    """``pg_ctl restart -m fast`` of the local server; returns the seconds it took."""
    bindir = pg_devstack.find_bindir()
    started = time.monotonic()
    subprocess.run(
        pg_devstack._server_cmd(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(paths.pgdata),
                "-l",
                str(paths.logs / "postgres.log"),
                "-m",
                "fast",
                "-w",
                "restart",
            ]
        ),
        check=True,
        capture_output=True,
        timeout=pg_devstack.START_TIMEOUT_SECONDS,
    )
    while not pg_devstack.is_ready():
        if time.monotonic() - started > pg_devstack.START_TIMEOUT_SECONDS:
            raise RuntimeError("PostgreSQL did not come back after the restart")
        time.sleep(0.05)
    return time.monotonic() - started


def fault_when(
    operation: str, decide: Callable[[dict[str, Any]], tuple[str, int] | None]
) -> list[tuple[str, Callable[..., Any]]]:
    """Handlers that answer ``operation`` with an error ``(code, status)`` when ``decide(params)``
    returns one, without sending the request (as when an error outlasts botocore's retries)."""

    def mark(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        fault = decide(params)
        if fault is not None:
            context["injected_fault"] = fault

    def answer(context: dict[str, Any], **_: Any) -> Any:
        fault = context.get("injected_fault")
        return error_response(*fault) if fault is not None else None

    return [(f"provide-client-params.s3.{operation}", mark), (f"before-call.s3.{operation}", answer)]


def rewrite_response(
    operation: str,
    decide: Callable[[dict[str, Any]], bool],
    rewrite: Callable[[dict[str, Any], dict[str, Any]], None],
) -> list[tuple[str, Callable[..., Any]]]:
    """Handlers that change the parsed answer of the calls ``decide(params)`` selects:
    ``rewrite(params, parsed)`` (an HTTP 200 that says something else than what happened)."""

    def mark(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if decide(params):
            context["rewrite_params"] = params

    def after(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if "rewrite_params" in context:
            rewrite(context["rewrite_params"], parsed)

    return [(f"provide-client-params.s3.{operation}", mark), (f"after-call.s3.{operation}", after)]


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A database of our own with the DreamSeed schema, for a module's shared state; dropped after."""
    from tests.conftest import TEMPLATE_DB, _ensure_template, copy_database, drop_database

    _ensure_template()
    name = f"{prefix}_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    copy_database(TEMPLATE_DB, name)
    try:
        yield name
    finally:
        drop_database(name)


def postgres_conn_json(dbname: str, login: str = POSTGRES_USER) -> str:
    """``AIRFLOW_CONN_LIFECYCLE_POSTGRES`` for ``dbname`` as ``login``."""
    import json

    return json.dumps(
        {"conn_type": "postgres", "host": HOST, "port": POSTGRES_PORT, "login": login, "schema": dbname}
    )
