"""What production sees while a cleanup runs: an OLTP load and a pg_stat_activity sampler.

Both run in a child process, so the benchmark's own Python work never delays them (and they never
take the GIL from the operator being measured).

* The load sends ``rate`` operations per second on a fixed schedule to a small pool of connections:
  half read a random row by primary key, half update one (live and expired rows alike). Latency is
  counted from the scheduled time, so an operation queued behind a blocked one is late too. No
  ``lock_timeout``: a blocked operation waits as long as the lock is held.
* The sampler polls ``pg_stat_activity`` of the benchmark database every few milliseconds: the age of
  the deleting backend's transaction (write transactions, those with an ``backend_xid``, hold the
  row locks until they commit) and the load's statements waiting on a lock, with how long they waited.
"""

from __future__ import annotations

import multiprocessing
import queue
import random
import threading
import time
from typing import Any

LOAD_APPLICATION = "lifecycle_bench_load"
LOAD_CONNECTIONS = 4
SAMPLE_INTERVAL_SECONDS = 0.01


class Probe:
    """``with Probe(conninfo, deleter_app=..., rate=...) as probe: ...``; then ``probe.result``."""

    def __init__(
        self,
        conninfo: str,
        *,
        deleter_app: str,
        rate: float = 0.0,
        table: str = "app.sessions",
        max_id: int = 0,
    ) -> None:
        self.args = {
            "conninfo": conninfo,
            "deleter_app": deleter_app,
            "rate": rate,
            "table": table,
            "max_id": max_id,
        }
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._ready = ctx.Event()
        self._parent, child = ctx.Pipe(duplex=False)
        self._process = ctx.Process(
            target=_run, args=(self.args, self._stop, self._ready, child), daemon=True
        )
        self.result: dict[str, Any] = {}

    def __enter__(self) -> Probe:
        self._process.start()
        if not self._ready.wait(60):
            raise RuntimeError("the load/sampler process did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._parent.poll(120):
            self.result = self._parent.recv()
        self._process.join(30)


def _run(args: dict[str, Any], stop: Any, ready: Any, pipe: Any) -> None:
    import psycopg

    from benchmarks.common import percentile

    sampler = _Sampler(psycopg.connect(args["conninfo"], autocommit=True), args["deleter_app"])
    load = _Load(args) if args["rate"] else None
    threads = [threading.Thread(target=sampler.run, args=(stop,), daemon=True)]
    if load is not None:
        threads += load.threads(stop)
    for t in threads:
        t.start()
    ready.set()
    started = time.perf_counter()
    stop.wait()
    elapsed = time.perf_counter() - started
    for t in threads:
        t.join(120)
    result: dict[str, Any] = {"seconds": elapsed, **sampler.summary()}
    if load is not None:
        ms = sorted(v * 1000 for v in load.latencies)
        result.update(
            {
                "ops": len(ms),
                "ops_per_second": len(ms) / elapsed if elapsed else 0.0,
                "p50_ms": percentile(ms, 50),
                "p99_ms": percentile(ms, 99),
                "max_ms": ms[-1] if ms else 0.0,
            }
        )
    pipe.send(result)


class _Sampler:
    def __init__(self, conn: Any, deleter_app: str) -> None:
        self.conn = conn
        self.deleter_app = deleter_app
        self.longest_xact = 0.0
        self.longest_write_xact = 0.0
        self.lock_waits: set[tuple[int, Any]] = set()
        self.longest_lock_wait = 0.0
        self.samples = 0

    def run(self, stop: Any) -> None:
        query = """
            SELECT application_name, backend_xid IS NOT NULL, pid, query_start, wait_event_type,
                   extract(epoch FROM clock_timestamp() - xact_start),
                   extract(epoch FROM clock_timestamp() - query_start)
            FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = ANY(%s)
        """
        apps = [self.deleter_app, LOAD_APPLICATION]
        while not stop.is_set():
            for app, writing, pid, query_start, wait, xact_age, query_age in self.conn.execute(
                query, (apps,)
            ).fetchall():
                if app == self.deleter_app and xact_age is not None:
                    self.longest_xact = max(self.longest_xact, float(xact_age))
                    if writing:
                        self.longest_write_xact = max(self.longest_write_xact, float(xact_age))
                elif app == LOAD_APPLICATION and wait == "Lock":
                    self.lock_waits.add((pid, query_start))
                    self.longest_lock_wait = max(self.longest_lock_wait, float(query_age or 0))
            self.samples += 1
            time.sleep(SAMPLE_INTERVAL_SECONDS)
        self.conn.close()

    def summary(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "longest_transaction_s": self.longest_xact,
            "longest_write_transaction_s": self.longest_write_xact,
            "lock_waits": len(self.lock_waits),
            "longest_lock_wait_s": self.longest_lock_wait,
        }


class _Load:
    def __init__(self, args: dict[str, Any]) -> None:
        self.args = args
        self.todo: queue.Queue[float | None] = queue.Queue()
        self.latencies: list[float] = []
        self.rng = random.Random(7)

    def threads(self, stop: Any) -> list[threading.Thread]:
        workers = [threading.Thread(target=self._work, daemon=True) for _ in range(LOAD_CONNECTIONS)]
        return [threading.Thread(target=self._schedule, args=(stop,), daemon=True), *workers]

    def _schedule(self, stop: Any) -> None:
        interval = 1.0 / self.args["rate"]
        due = time.perf_counter()
        while not stop.is_set():
            due += interval
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            self.todo.put(due)
        for _ in range(LOAD_CONNECTIONS):
            self.todo.put(None)

    def _work(self) -> None:
        import psycopg
        from psycopg import sql

        table = sql.SQL(self.args["table"])
        read = sql.SQL("SELECT * FROM {} WHERE id = %s").format(table)
        write = sql.SQL("UPDATE {} SET user_agent = %s WHERE id = %s").format(table)
        max_id = self.args["max_id"]
        with psycopg.connect(
            self.args["conninfo"], autocommit=True, application_name=LOAD_APPLICATION
        ) as conn:
            while (due := self.todo.get()) is not None:
                row_id = self.rng.randint(1, max_id)
                if self.rng.random() < 0.5:
                    conn.execute(read, (row_id,)).fetchall()
                else:
                    conn.execute(write, (f"bench agent {due:.3f}", row_id))
                self.latencies.append(time.perf_counter() - due)
