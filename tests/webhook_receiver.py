"""A real webhook receiver for the tests: an HTTP server on loopback, in a thread, that records what it
receives and answers 500 to the first `fail_first` deliveries. With `answer_bytes`, each answer has a body
that long (generated as it is sent, until the sender hangs up; `streamed` counts what went out); with
`hang_s`, each answer waits that long first."""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


class Receiver:
    def __init__(self, fail_first: int = 0, status: int = 204, redirect_to: str | None = None,
                 tls: ssl.SSLContext | None = None, answer_bytes: int = 0, hang_s: float = 0):  # fmt: skip
        self.fail_first = fail_first
        self.streamed = 0
        self.done = threading.Event()  # set when an answer has ended (sent, or cut by the sender)
        self.received: list[Received] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with outer.lock:
                    failing = len(outer.received) < outer.fail_first
                    code = 500 if failing else (302 if redirect_to else status)
                    outer.received.append(Received(self.path, dict(self.headers.items()), body, code))
                if hang_s:
                    time.sleep(hang_s)
                self.send_response(code)
                if redirect_to and not failing:
                    self.send_header("Location", redirect_to)
                self.send_header("Content-Length", str(answer_bytes))
                self.end_headers()
                piece = bytes(2**20)
                try:
                    while outer.streamed < answer_bytes:
                        self.wfile.write(piece[: answer_bytes - outer.streamed])
                        outer.streamed += min(len(piece), answer_bytes - outer.streamed)
                except OSError:
                    pass  # the sender hung up
                finally:
                    outer.done.set()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def accepted(self) -> list[Received]:
        with self.lock:
            return [r for r in self.received if 200 <= r.status < 300]
