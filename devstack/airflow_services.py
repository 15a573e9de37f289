"""The Airflow services over the local stack, as separate processes, all on 127.0.0.1.

``python -m devstack airflow [--executor local|celery]`` (``make airflow``) runs the api-server,
scheduler, dag-processor and triggerer (the commands ``airflow standalone`` starts), and for
CeleryExecutor a Redis broker (Debian's ``redis-server``) and a Celery worker that runs in a working
directory and temp dir of its own, so a task can never rely on a file another process wrote. The
scheduler tests start the same services. The log servers are not started (Airflow binds them to all
interfaces and has no setting for their host); every process writes to the same log folder, which
the api-server reads.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from devstack.settings import API_PORT, HOST, REDIS_PORT

EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}
READY_TIMEOUT_SECONDS = 180
HEALTHY = ("scheduler", "triggerer", "dag_processor")


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, for an error message."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = text.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in tail) or f"(empty log {path})"


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def airflow_environment(base: dict[str, str], executor: str) -> dict[str, str]:
    """The stack's environment with the executor chosen and the local auth manager open to admins."""
    for key in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET"):
        if not base.get(key):
            raise ValueError(f"{key} is not set: the services must share it (see stack_environment)")
    if executor not in EXECUTORS:
        raise ValueError(f"executor {executor!r}: choose one of {sorted(EXECUTORS)}")
    return {
        **base,
        "AIRFLOW__CORE__EXECUTOR": EXECUTORS[executor],
        # Loopback only: everyone who can reach the UI is an admin, as with a local `astro dev`.
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    }


@dataclass
class Service:
    name: str
    cmd: list[str]
    cwd: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class AirflowServices:
    """Start, watch and stop the Airflow services; ``logs`` gets one ``<name>.log`` per service."""

    env: dict[str, str]
    executor: str
    logs: Path
    work: Path
    services: list[Service] = field(default_factory=list)
    airflow_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        airflow = str(Path(sys.executable).parent / "airflow")
        env = airflow_environment(self.env, self.executor)
        self.airflow_env = env
        root = Path(env.get("AIRFLOW__CORE__DAGS_FOLDER", ".")).resolve().parent
        if self.executor == "celery":
            redis = shutil.which("redis-server")
            if redis is None:
                raise RuntimeError("redis-server is not installed: run `make system-deps` (packages-dev.txt)")
            data = self.work / "redis"
            data.mkdir(parents=True, exist_ok=True)
            self.services.append(
                Service(
                    "redis",
                    [redis, "--bind", HOST, "--port", str(REDIS_PORT), "--save", "", "--appendonly", "no"],
                    data,
                    env,
                )
            )
        self.services += [
            Service(
                "api-server", [airflow, "api-server", "--host", HOST, "--port", str(API_PORT)], root, env
            ),
            Service("scheduler", [airflow, "scheduler", "--skip-serve-logs"], root, env),
            Service("dag-processor", [airflow, "dag-processor"], root, env),
            Service("triggerer", [airflow, "triggerer", "--skip-serve-logs"], root, env),
        ]
        if self.executor == "celery":
            # Another working directory and temp dir: nothing the scheduler or a task leaves on disk
            # is visible to the worker, as on separate machines.
            worker = self.work / "celery-worker"
            (worker / "tmp").mkdir(parents=True, exist_ok=True)
            worker_env = {**env, "TMPDIR": str(worker / "tmp")}
            cmd = [airflow, "celery", "worker", "--skip-serve-logs", "--concurrency", "4"]
            self.services.append(Service("celery-worker", cmd, worker, worker_env))

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        for port, what in ((API_PORT, "api-server"), (REDIS_PORT, "redis")):
            if any(s.name == what for s in self.services) and port_open(port):
                raise RuntimeError(
                    f"{what}: port {HOST}:{port} is already in use (move it with LIFECYCLE_*_PORT)"
                )
        for service in self.services:
            log = (self.logs / f"{service.name}.log").open("ab")
            service.proc = subprocess.Popen(
                service.cmd,
                cwd=service.cwd,
                env=service.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            if service.name == "redis":
                self._wait(lambda: port_open(REDIS_PORT), f"redis on {HOST}:{REDIS_PORT}", 30)

    def health(self) -> dict[str, str]:
        """Component statuses from the api-server's health endpoint (empty while it is not up)."""
        try:
            with urllib.request.urlopen(f"http://{HOST}:{API_PORT}/api/v2/monitor/health", timeout=3) as resp:
                doc = json.load(resp)
        except (OSError, ValueError):
            return {}
        return {name: str((doc.get(name) or {}).get("status")) for name in ("metadatabase", *HEALTHY)}

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        self._wait(
            lambda: all(self.health().get(name) == "healthy" for name in HEALTHY),
            f"the Airflow services (api-server on {HOST}:{API_PORT})",
            timeout,
        )

    def _wait(self, ready: object, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():  # type: ignore[operator]
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {timeout:.0f} s; health: {self.health()}")
            time.sleep(1)

    def check_alive(self) -> None:
        """Raise with the service's last log lines if any service has exited."""
        for service in self.services:
            if service.proc is not None and service.proc.poll() is not None:
                log = self.logs / f"{service.name}.log"
                raise RuntimeError(
                    f"{service.name} exited with {service.proc.returncode}; last lines of {log}:\n{log_tail(log)}"
                )

    def stop(self) -> None:
        for service in reversed(self.services):
            if service.proc is None or service.proc.poll() is not None:
                continue
            try:
                os.killpg(service.proc.pid, signal.SIGTERM)
                service.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(service.proc.pid, signal.SIGKILL)
                service.proc.wait(timeout=10)
            except ProcessLookupError:
                pass


def run_foreground(env: dict[str, str], executor: str, logs: Path, work: Path) -> int:
    """``make airflow``: start everything, wait for Ctrl-C, stop everything."""
    services = AirflowServices(env=env, executor=executor, logs=logs, work=work)
    try:
        services.start()
        services.wait_ready()
        print(
            f"Airflow ({EXECUTORS[executor]}) on http://localhost:{API_PORT}; logs in {logs}; Ctrl-C stops it"
        )
        while True:
            services.check_alive()
            time.sleep(2)
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        services.stop()
