"""A PostgreSQL server for the local stack, on loopback, with its data under ``.local/``.

It uses the server binaries of the machine (``/usr/lib/postgresql/*/bin``) when they exist and
falls back to the embedded server of the ``pgserver`` package. PostgreSQL refuses to run as root,
so as root the server runs as the unprivileged ``postgres`` user (or ``nobody``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

import psycopg
from psycopg import sql

from devstack.settings import HOST, POSTGRES_PORT, POSTGRES_USER, StackPaths

START_TIMEOUT_SECONDS = 60


def find_bindir() -> Path:
    """The newest PostgreSQL 15+ server binaries on the machine, else pgserver's bundled ones."""
    candidates = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    candidates = [p for p in candidates if p.parent.name.isdigit() and int(p.parent.name) >= 15]
    if candidates:
        return candidates[-1]
    try:
        import pgserver  # type: ignore[import-not-found]
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError(
            "No PostgreSQL 15+ server binaries under /usr/lib/postgresql and no pgserver package: "
            "install the 'postgresql' system package or `pip install pgserver`."
        ) from exc
    return Path(pgserver.__file__).parent / "pginstall" / "bin"


def _run_as() -> str | None:
    """The user to run the server as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("Running as root and neither a 'postgres' nor a 'nobody' user exists.")


def _server_cmd(args: list[str]) -> list[str]:
    user = _run_as()
    if user is None:
        return args
    runuser = shutil.which("runuser") or shutil.which("su")
    if runuser and runuser.endswith("runuser"):
        return [runuser, "-u", user, "--", *args]
    return ["su", user, "-s", "/bin/sh", "-c", " ".join(args)]


def _chown_for_server(path: Path) -> None:
    user = _run_as()
    if user is None:
        return
    entry = pwd.getpwnam(user)
    path.mkdir(parents=True, exist_ok=True)
    for dirpath, _dirnames, filenames in os.walk(path):
        os.chown(dirpath, entry.pw_uid, entry.pw_gid)
        for name in filenames:
            os.chown(os.path.join(dirpath, name), entry.pw_uid, entry.pw_gid)
    # The server user must be able to reach its data directory.
    parent = path.parent
    while parent != parent.parent:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o001)
        parent = parent.parent


def is_ready() -> bool:
    try:
        with psycopg.connect(
            host=HOST, port=POSTGRES_PORT, user=POSTGRES_USER, dbname="postgres", connect_timeout=2
        ):
            return True
    except psycopg.Error:
        return False


def start(paths: StackPaths) -> bool:
    """Initialise (once) and start the server. Returns True when this call started it."""
    if is_ready():
        return False
    bindir = find_bindir()
    pgdata = paths.pgdata
    if not (pgdata / "PG_VERSION").exists():
        _chown_for_server(pgdata)
        subprocess.run(
            _server_cmd(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(pgdata),
                    "-A",
                    "trust",
                    "-U",
                    POSTGRES_USER,
                    "-E",
                    "UTF8",
                    "--no-instructions",
                ]
            ),
            check=True,
            capture_output=True,
        )
    _chown_for_server(pgdata)
    paths.logs.mkdir(parents=True, exist_ok=True)
    logfile = paths.logs / "postgres.log"
    logfile.touch()
    _chown_for_server_file(logfile)
    options = (
        f"-p {POSTGRES_PORT} -c listen_addresses={HOST} -c unix_socket_directories='' "
        "-c max_connections=200 -c shared_buffers=256MB -c fsync=off -c full_page_writes=on "
        "-c log_min_messages=warning"
    )
    started = subprocess.run(
        _server_cmd([str(bindir / "pg_ctl"), "-D", str(pgdata), "-l", str(logfile), "-o", options, "start"]),
        check=False,
        capture_output=True,
        timeout=START_TIMEOUT_SECONDS,
    )
    if started.returncode != 0:
        raise RuntimeError(_start_failure(f"pg_ctl start exited with {started.returncode}", logfile))
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not is_ready():
        if time.monotonic() > deadline:
            raise RuntimeError(_start_failure("it did not accept connections", logfile))
        time.sleep(0.2)
    return True


def _start_failure(what: str, logfile: Path) -> str:
    from devstack.airflow_services import log_tail

    return (
        f"PostgreSQL did not start on {HOST}:{POSTGRES_PORT} ({what}; move it with LIFECYCLE_PG_PORT);"
        f" last lines of {logfile}:\n{log_tail(logfile)}"
    )


def _chown_for_server_file(path: Path) -> None:
    user = _run_as()
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def stop(paths: StackPaths) -> None:
    if not (paths.pgdata / "postmaster.pid").exists():
        return
    bindir = find_bindir()
    subprocess.run(
        _server_cmd([str(bindir / "pg_ctl"), "-D", str(paths.pgdata), "-m", "fast", "stop"]),
        check=False,
        capture_output=True,
        timeout=START_TIMEOUT_SECONDS,
    )


def ensure_database(name: str) -> None:
    with psycopg.connect(
        host=HOST, port=POSTGRES_PORT, user=POSTGRES_USER, dbname="postgres", autocommit=True
    ) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def server_version() -> str:
    with psycopg.connect(host=HOST, port=POSTGRES_PORT, user=POSTGRES_USER, dbname="postgres") as c:
        row = c.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "unknown"


def apply_sql(dbname: str, path: Path) -> None:
    """Run one of our idempotent SQL files in ``dbname``."""
    with psycopg.connect(
        host=HOST, port=POSTGRES_PORT, user=POSTGRES_USER, dbname=dbname, autocommit=True
    ) as c:
        c.execute(path.read_text())  # type: ignore[arg-type]  # our own file, no parameters
