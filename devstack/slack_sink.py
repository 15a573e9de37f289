"""A Slack incoming-webhook receiver for the local stack.

Every POST is appended as one JSON line (path, body, time) to a file that tests and the demo read,
and answered ``ok`` like Slack does. ``POST /_control`` with ``{"status": 500}`` makes the sink
answer that status to webhook posts (to test "Slack is down"); ``{"status": 200}`` restores it.
``{"hang": true}`` makes it accept webhook posts and never answer (up to ``HANG_LIMIT_SECONDS``),
like a webhook endpoint behind a stuck proxy; ``{"hang": false}`` or a status restores it.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CONTROL_PATH = "/_control"
# A hanging answer is released after this long, so no test or demo thread waits forever.
HANG_LIMIT_SECONDS = 120


class SinkState:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.status = 200
        self.lock = threading.Lock()
        self.released = threading.Event()
        self.released.set()

    def record(self, path: str, body: Any) -> None:
        line = json.dumps({"path": path, "body": body, "received_at": time.time()})
        with self.lock, self.out.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def make_handler(state: SinkState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _read_body(self) -> Any:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                return json.loads(raw or b"{}")
            except json.JSONDecodeError:
                return {"raw": raw.decode("utf-8", "replace")}

        def _answer(self, status: int, text: str) -> None:
            payload = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self._answer(200, "slack sink")

        def do_POST(self) -> None:
            body = self._read_body()
            if self.path == CONTROL_PATH:
                state.status = int(body.get("status", 200))
                if body.get("hang"):
                    state.released.clear()
                else:
                    state.released.set()
                self._answer(200, "ok")
                return
            if not state.released.is_set():
                state.released.wait(HANG_LIMIT_SECONDS)  # read the post, then say nothing
                return
            if state.status != 200:
                self._answer(state.status, "sink told to fail")
                return
            state.record(self.path, body)
            self._answer(200, "ok")

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


def serve(host: str, port: int, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.touch()
    server = ThreadingHTTPServer((host, port), make_handler(SinkState(out)))
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    serve(args.host, args.port, args.out)


if __name__ == "__main__":
    main()
