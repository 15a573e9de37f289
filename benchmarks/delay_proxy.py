"""A delaying HTTP proxy in front of the S3 endpoint: every request waits one round trip on the server side.

``python -m benchmarks.delay_proxy --upstream http://127.0.0.1:5055 --delay-ms 20 --port 0`` prints
the port it listens on, then forwards each request to the upstream after sleeping ``delay-ms``.
One thread per client connection (a client's connection pool gets that many requests in flight),
one kept-alive upstream connection per thread. The sleep happens in the proxy, not in the client,
so a client's concurrency is what overlaps the round trips, as with S3 across a network.

It runs in a process of its own (``DelayProxy``) so that its work does not share the measured
process's interpreter lock.
"""

from __future__ import annotations

import argparse
import http.client
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

# Headers that describe one hop, not the message (RFC 9110 section 7.6.1).
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
)


def make_handler(upstream: str, delay_seconds: float) -> type[BaseHTTPRequestHandler]:
    parts = urlsplit(upstream)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    local = threading.local()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out as separate writes: without this, Nagle's algorithm holds the
        # body until the client's delayed ACK (about 40 ms), on top of the simulated round trip.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _forward(self) -> None:
            body = self._body()
            time.sleep(delay_seconds)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if body or "Content-Length" in self.headers:
                headers["Content-Length"] = str(len(body))
            for attempt in (1, 2):  # a kept-alive upstream connection may have been closed
                conn = getattr(local, "conn", None) or http.client.HTTPConnection(host, port, timeout=60)
                local.conn = conn
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    break
                except (http.client.HTTPException, OSError):
                    conn.close()
                    local.conn = None
                    if attempt == 2:
                        raise
            self.send_response_only(response.status, response.reason)
            # A HEAD answer keeps the object's Content-Length; the others carry the body read here.
            keep_length = self.command == "HEAD"
            for name, value in response.getheaders():
                if name.lower() not in HOP_BY_HOP and (keep_length or name.lower() != "content-length"):
                    self.send_header(name, value)
            if not keep_length:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815 - http.server names

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a pool of clients connecting at once


class DelayProxy:
    """The proxy in a child process, as a context manager: ``with DelayProxy(url, 20) as endpoint:``."""

    def __init__(self, upstream: str, delay_ms: float) -> None:
        self.upstream = upstream
        self.delay_ms = delay_ms
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> str:
        args = [sys.executable, "-m", "benchmarks.delay_proxy", "--upstream", self.upstream]
        args += ["--delay-ms", str(self.delay_ms), "--port", "0"]
        self._process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        port = int(self._process.stdout.readline().strip())
        return f"http://127.0.0.1:{port}"

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.delay_proxy", description=__doc__)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = _Server(("127.0.0.1", args.port), make_handler(args.upstream, args.delay_ms / 1000))
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
