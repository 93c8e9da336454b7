"""A real HAProxy (Debian's `haproxy` package) on loopback, running the shipped deploy/haproxy.cfg as is:
the addresses come from the environment variables that file reads. It runs in the foreground (-db) as a
child process and is stopped by its PID. Without the haproxy binary the tests that need it skip, unless
VOXPORT_REQUIRE_HAPROXY is set (.ci/run sets it), where they fail: a missing balancer must never pass for
a working one."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "haproxy.cfg"
SERVERS = ("replica1", "replica2")  # the `server` lines of deploy/haproxy.cfg, in order


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/sbin/haproxy") if os.access(p, os.X_OK)), None
    )
    if found is None:
        if os.environ.get("VOXPORT_REQUIRE_HAPROXY"):
            pytest.fail(
                "VOXPORT_REQUIRE_HAPROXY is set but haproxy is not installed (apt-get install haproxy)"
            )
        pytest.skip("needs HAProxy: apt-get install haproxy")
    return found


class HAProxy:
    """deploy/haproxy.cfg with its two `server` lines pointed at `replicas` ("host:port")."""

    def __init__(self, replicas: list[str]):
        assert len(replicas) == len(SERVERS), "deploy/haproxy.cfg has two server lines"
        self.port, self.stats_port = free_port(), free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "VOXPORT_LB_BIND": f"127.0.0.1:{self.port}",
            "VOXPORT_LB_STATS_BIND": f"127.0.0.1:{self.stats_port}",
            **{f"VOXPORT_REPLICA_{i}": address for i, address in enumerate(replicas, start=1)},
        }
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - open for HAProxy's life, closed in stop()
        self.proc = subprocess.Popen(
            [haproxy_binary(), "-db", "-f", str(CONFIG)], stdout=self.log, stderr=subprocess.STDOUT, env=env
        )

    def states(self) -> dict[str, str]:
        """Each server's status as HAProxy sees it ("UP", "DOWN", "UP 1/2", ...), from its CSV statistics."""
        text = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5).text
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == "voxport" and row["svname"] in SERVERS
        }

    def wait_for(self, expected: dict[str, str], timeout: float = 60) -> None:
        """Until HAProxy reports the given servers in the given states."""
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}:\n{self.output()}")
            try:
                seen = self.states()
            except httpx.HTTPError:
                seen = {}
            if all(seen.get(name) == state for name, state in expected.items()):
                return
            time.sleep(0.1)
        raise TimeoutError(f"HAProxy never reported {expected}; last seen {seen}:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> str:
        self.proc.terminate()  # SIGTERM to its PID: HAProxy stops at once
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        out = self.output()
        self.log.close()
        return out
