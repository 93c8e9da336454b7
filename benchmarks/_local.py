"""What the benchmark scripts share: a free loopback port, waiting for a server to answer 200, and the bare
uvicorn app they measure against. (Imported by name: `python benchmarks/<script>.py` puts this folder on
sys.path.)"""

from __future__ import annotations

import socket
import time

import httpx

# The baseline the hot-path figures are read against: a bare ASGI app answering 15 bytes of JSON, run by
# uvicorn as `bare:app` (benchmarks/hotpath.py, benchmarks/workers.py).
BARE_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"15")]})
    await send({"type": "http.response.body", "body": b'{"status":"ok"}'})
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ok(url: str, seconds: float = 180) -> None:
    """Return once `url` answers 200; exit the script, naming the URL, if it has not within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {seconds:.0f} s")
