"""Where the local stack lives and how Airflow finds it.

Everything is derived from the project root and ``airflow_settings.yaml`` (the Astro CLI format),
so ``astro dev`` and our own stack read the same connections, pools and variables.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Loopback ports of the local stack, as airflow_settings.yaml has them. LIFECYCLE_*_PORT moves a
# service (and the connections pointing at it), so that two checkouts can run stacks side by side.
DEFAULT_PORTS = {"postgres": 55433, "s3": 5055, "slack": 8765}
# The Airflow services (`make airflow`, the scheduler tests): Airflow's and Redis's own defaults.
AIRFLOW_PORTS = {"api": 8080, "worker_log": 8793, "trigger_log": 8794, "redis": 6379}
POSTGRES_PORT = int(os.environ.get("LIFECYCLE_PG_PORT", DEFAULT_PORTS["postgres"]))
S3_PORT = int(os.environ.get("LIFECYCLE_S3_PORT", DEFAULT_PORTS["s3"]))
SLACK_PORT = int(os.environ.get("LIFECYCLE_SLACK_PORT", DEFAULT_PORTS["slack"]))
API_PORT = int(os.environ.get("LIFECYCLE_AIRFLOW_PORT") or AIRFLOW_PORTS["api"])
WORKER_LOG_PORT = int(os.environ.get("LIFECYCLE_WORKER_LOG_PORT") or AIRFLOW_PORTS["worker_log"])
TRIGGER_LOG_PORT = int(os.environ.get("LIFECYCLE_TRIGGER_LOG_PORT") or AIRFLOW_PORTS["trigger_log"])
REDIS_PORT = int(os.environ.get("LIFECYCLE_REDIS_PORT") or AIRFLOW_PORTS["redis"])
HOST = "127.0.0.1"

POSTGRES_USER = "lifecycle"
DEMO_DATABASE = "dreamseed"
# The erasure ledger lives apart from the application database (a restore must not rewind it).
LEDGER_DATABASE = "erasure_ledger"
LEDGER_SQL = PROJECT_ROOT / "include" / "sql" / "erasure_ledger.sql"
ERASURE_ROLE_SQL = PROJECT_ROOT / "include" / "sql" / "erasure_role.sql"
AIRFLOW_DATABASE = "airflow_meta"


@dataclass(frozen=True)
class StackPaths:
    root: Path = PROJECT_ROOT

    @property
    def local(self) -> Path:
        return self.root / ".local"

    @property
    def run(self) -> Path:
        return self.local / "run"

    @property
    def logs(self) -> Path:
        return self.local / "logs"

    @property
    def pgdata(self) -> Path:
        return self.local / "pgdata"

    @property
    def slack_messages(self) -> Path:
        return self.local / "slack" / "messages.jsonl"

    @property
    def airflow_home(self) -> Path:
        return self.local / "airflow"

    @property
    def env_file(self) -> Path:
        return self.local / "env.sh"

    @property
    def erasure_hmac_key(self) -> Path:
        return self.local / "secrets" / "erasure_hmac_key"


def local_secret(paths: StackPaths, name: str, make: Callable[[], str] | None = None) -> str:
    """A secret of the local stack: random, made on first use, kept in ``.local/secrets`` (0600)."""
    path = paths.local / "secrets" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(make() if make is not None else secrets.token_urlsafe(48))
        try:
            os.link(tmp, path)  # atomic: a concurrent first use keeps the secret that won
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text(encoding="utf-8").strip()


def local_erasure_hmac_key(paths: StackPaths) -> str:
    """The local stack's erasure HMAC key (see ``local_secret``)."""
    return local_secret(paths, paths.erasure_hmac_key.name)


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


@dataclass(frozen=True)
class AirflowSettings:
    """The ``airflow:`` section of ``airflow_settings.yaml``."""

    path: Path = PROJECT_ROOT / "airflow_settings.yaml"

    @cached_property
    def _doc(self) -> dict[str, Any]:
        with self.path.open(encoding="utf-8") as fh:
            doc = yaml.safe_load(fh) or {}
        return doc.get("airflow", {}) or {}

    @property
    def connections(self) -> list[dict[str, Any]]:
        return list(self._doc.get("connections") or [])

    @property
    def pools(self) -> list[dict[str, Any]]:
        return list(self._doc.get("pools") or [])

    @property
    def variables(self) -> list[dict[str, Any]]:
        return list(self._doc.get("variables") or [])


def connection_json(conn: dict[str, Any]) -> str:
    """Render one Astro-format connection as the JSON form of ``AIRFLOW_CONN_<ID>``."""
    mapping = {
        "conn_type": "conn_type",
        "conn_host": "host",
        "conn_schema": "schema",
        "conn_login": "login",
        "conn_password": "password",
        "conn_port": "port",
    }
    out: dict[str, Any] = {}
    for src, dst in mapping.items():
        value = conn.get(src)
        if value not in (None, ""):
            out[dst] = value
    extra = conn.get("conn_extra")
    if isinstance(extra, str) and extra.strip():
        extra = json.loads(extra)
    if extra:
        out["extra"] = extra
    return json.dumps(out, sort_keys=True)


def stack_environment(paths: StackPaths | None = None) -> dict[str, str]:
    """Environment variables that point Airflow and our code at the local stack."""
    paths = paths or StackPaths()
    settings = AirflowSettings(paths.root / "airflow_settings.yaml")
    env = {
        "AIRFLOW_HOME": str(paths.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(paths.root / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(paths.root / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
            f"postgresql+psycopg://{POSTGRES_USER}@{HOST}:{POSTGRES_PORT}/{AIRFLOW_DATABASE}"
        ),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(paths.airflow_home / "logs"),
        # Loopback only. The log servers (whose host Airflow does not let us set) are not started:
        # every component runs on this machine and writes to the same log folder.
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(API_PORT),
        "AIRFLOW__API__BASE_URL": f"http://{HOST}:{API_PORT}",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(WORKER_LOG_PORT),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(TRIGGER_LOG_PORT),
        "AIRFLOW__CELERY__BROKER_URL": f"redis://{HOST}:{REDIS_PORT}/0",
        # One set of keys for every Airflow process of the stack: the scheduler signs the tokens
        # tasks show the api-server and encrypts what the triggerer and the CLI decrypt.
        "AIRFLOW__CORE__FERNET_KEY": local_secret(paths, "airflow_fernet_key", _fernet_key),
        "AIRFLOW__API_AUTH__JWT_SECRET": local_secret(paths, "airflow_jwt_secret"),
        "AIRFLOW__API__SECRET_KEY": local_secret(paths, "airflow_api_secret_key"),
        "LIFECYCLE_SLACK_MESSAGES": str(paths.slack_messages),
        # The local S3 endpoint for boto3 clients that are not built from a connection (benchmarks).
        "AWS_DEFAULT_REGION": "us-east-1",
        "PYTHONPATH": os.pathsep.join([str(paths.root / "plugins"), str(paths.root)]),
    }
    moved = {
        f"{HOST}:{DEFAULT_PORTS['s3']}": f"{HOST}:{S3_PORT}",
        f"{HOST}:{DEFAULT_PORTS['slack']}": f"{HOST}:{SLACK_PORT}",
    }
    for conn in settings.connections:
        rendered = connection_json(conn)
        if conn.get("conn_port") == DEFAULT_PORTS["postgres"]:
            rendered = connection_json({**conn, "conn_port": POSTGRES_PORT})
        for old, new in moved.items():
            rendered = rendered.replace(old, new)
        env[f"AIRFLOW_CONN_{conn['conn_id'].upper()}"] = rendered
    # The erasure HMAC key: only its password is read; the host just keeps every local connection on loopback.
    env["AIRFLOW_CONN_ERASURE_HMAC"] = json.dumps(
        {"conn_type": "generic", "host": HOST, "password": local_erasure_hmac_key(paths)}, sort_keys=True
    )
    return env
