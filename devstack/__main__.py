"""The local stack: ``python -m devstack up|down|status|env``.

- ``up`` starts PostgreSQL, the moto S3 server and the Slack sink on 127.0.0.1 (each only if it is
  not already answering), migrates the Airflow metadata database, creates the pools and variables of
  ``airflow_settings.yaml`` and writes ``.local/env.sh`` with the ``AIRFLOW_CONN_*`` environment.
  Running it again changes nothing.
- ``down`` stops only what ``up`` started (it keeps the pid files of its own processes).
- ``status`` says what answers.
- ``env`` prints the environment as shell ``export`` lines.
- ``airflow [--executor local|celery]`` runs the Airflow services in the foreground (``make airflow``).

A service that does not start is reported with its port and the last lines of its log.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from devstack import postgres
from devstack.airflow_services import EXECUTORS, log_tail, run_foreground
from devstack.settings import (
    AIRFLOW_DATABASE,
    DEMO_DATABASE,
    ERASURE_ROLE_SQL,
    HOST,
    LEDGER_DATABASE,
    LEDGER_SQL,
    S3_PORT,
    SLACK_PORT,
    StackPaths,
    stack_environment,
)

READY_TIMEOUT_SECONDS = 30
STARTED_BY_US = "postgres.started"


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback only
            return resp.status < 500
    except OSError:
        return False


def _start_process(paths: StackPaths, name: str, cmd: list[str], ready_url: str, port: int) -> bool:
    """Start a background service unless its port already answers; True when we started it."""
    if _http_ok(ready_url):
        return False
    paths.run.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(parents=True, exist_ok=True)
    log = (paths.logs / f"{name}.log").open("ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=paths.root)
    (paths.run / f"{name}.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while not _http_ok(ready_url):
        if proc.poll() is not None or time.monotonic() > deadline:
            logfile = paths.logs / f"{name}.log"
            raise RuntimeError(
                f"{name} did not start on {HOST}:{port}; last lines of {logfile}:\n{log_tail(logfile)}"
            )
        time.sleep(0.2)
    return True


def _stop_process(paths: StackPaths, name: str) -> bool:
    pidfile = paths.run / f"{name}.pid"
    if not pidfile.exists():
        return False
    pid = int(pidfile.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pidfile.unlink(missing_ok=True)
    return True


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _settings_digest(paths: StackPaths, env: dict[str, str]) -> str:
    """Changes with the settings file, Airflow's version and the key variables are encrypted with."""
    version = importlib.metadata.version("apache-airflow")
    key = env.get("AIRFLOW__CORE__FERNET_KEY", "")
    data = (paths.root / "airflow_settings.yaml").read_bytes() + version.encode() + key.encode()
    return hashlib.sha256(data).hexdigest()


def prepare_airflow(paths: StackPaths, env: dict[str, str]) -> None:
    """Migrate the metadata DB and load pools/variables, once per settings file and version."""
    marker = paths.airflow_home / ".prepared"
    digest = _settings_digest(paths, env)
    if marker.exists() and marker.read_text() == digest:
        return
    paths.airflow_home.mkdir(parents=True, exist_ok=True)
    postgres.ensure_database(AIRFLOW_DATABASE)
    full_env = {**os.environ, **env}
    subprocess.run([_bin("airflow"), "db", "migrate"], env=full_env, check=True)
    subprocess.run([sys.executable, "-m", "devstack.airflow_meta"], env=full_env, check=True)
    marker.write_text(digest)


def write_env(paths: StackPaths, env: dict[str, str]) -> None:
    paths.local.mkdir(parents=True, exist_ok=True)
    lines = [f"export {key}={shlex.quote(value)}" for key, value in sorted(env.items())]
    paths.env_file.write_text("\n".join(lines) + "\n")


def up(paths: StackPaths, *, airflow: bool = True) -> list[str]:
    """Bring the stack up; returns the names of the services this call started."""
    started: list[str] = []
    env = stack_environment(paths)
    write_env(paths, env)
    if postgres.start(paths):
        started.append("postgres")
        (paths.run).mkdir(parents=True, exist_ok=True)
        (paths.run / STARTED_BY_US).write_text("1")
    postgres.ensure_database(DEMO_DATABASE)
    postgres.ensure_database(LEDGER_DATABASE)
    postgres.apply_sql(LEDGER_DATABASE, LEDGER_SQL)
    # The erasure role (its login is the erasure connections'); the demo grants it the tables too.
    postgres.apply_sql(LEDGER_DATABASE, ERASURE_ROLE_SQL)
    postgres.apply_sql(DEMO_DATABASE, ERASURE_ROLE_SQL)
    if _start_process(
        paths,
        "moto",
        [_bin("moto_server"), "-H", HOST, "-p", str(S3_PORT)],
        f"http://{HOST}:{S3_PORT}/moto-api/",
        S3_PORT,
    ):
        started.append("moto")
    if _start_process(
        paths,
        "slack_sink",
        [
            sys.executable,
            "-m",
            "devstack.slack_sink",
            "--port",
            str(SLACK_PORT),
            "--out",
            str(paths.slack_messages),
        ],
        f"http://{HOST}:{SLACK_PORT}/",
        SLACK_PORT,
    ):
        started.append("slack_sink")
    if airflow:
        prepare_airflow(paths, env)
    return started


def down(paths: StackPaths, only: list[str] | None = None) -> list[str]:
    """Stop what ``up`` started (or only the named services); returns what was stopped."""
    stopped = []
    names = only if only is not None else ["slack_sink", "moto", "postgres"]
    for name in names:
        if name == "postgres":
            marker = paths.run / STARTED_BY_US
            if marker.exists():
                postgres.stop(paths)
                marker.unlink()
                stopped.append(name)
        elif _stop_process(paths, name):
            stopped.append(name)
    return stopped


def status() -> dict[str, bool]:
    return {
        "postgres": postgres.is_ready(),
        "s3 (moto)": _port_open(S3_PORT),
        "slack sink": _port_open(SLACK_PORT),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "env", "airflow"])
    parser.add_argument("--no-airflow", action="store_true", help="up: skip the metadata DB")
    parser.add_argument(
        "--executor", choices=sorted(EXECUTORS), default="local", help="airflow: the executor"
    )
    args = parser.parse_args(argv)
    paths = StackPaths()
    if args.command == "airflow":
        try:
            up(paths)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        env = {**os.environ, **stack_environment(paths)}
        return run_foreground(env, args.executor, paths.logs / "airflow", paths.local / "airflow-work")
    if args.command == "up":
        try:
            started = up(paths, airflow=not args.no_airflow)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"stack up (started: {', '.join(started) or 'nothing, all were running'})")
        print(f"environment: . {paths.env_file}")
    elif args.command == "down":
        stopped = down(paths)
        print(f"stack down (stopped: {', '.join(stopped) or 'nothing'})")
    elif args.command == "status":
        states = status()
        for name, ok in states.items():
            print(f"{name:12} {'up' if ok else 'down'}")
        return 0 if all(states.values()) else 1
    else:
        for key, value in sorted(stack_environment(paths).items()):
            print(f"export {key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
