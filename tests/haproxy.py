"""A real HAProxy (Debian's `haproxy` package) on loopback, running the shipped deploy/haproxy.cfg as is:
the addresses come from the environment variables that file reads. It runs in the foreground (-db) as a
child process and is stopped by its PID. The same for nginx with deploy/nginx.conf. Without the binaries the
tests that need them skip, unless VOXPORT_REQUIRE_PROXIES is set (.ci/run sets it), where they fail: a
missing balancer must never pass for a working one."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NoReturn

import httpx

from tests.conftest import free_port
from tests.gates import missing

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "haproxy.cfg"
SERVERS = ("replica1", "replica2")  # the `server` lines of deploy/haproxy.cfg, in order


def _missing(package: str) -> NoReturn:
    missing("VOXPORT_REQUIRE_PROXIES", f"{package} is not installed (apt-get install {package})")


SBIN = ("/usr/sbin", "/sbin")  # where Debian puts both, often not on a user's PATH


def _binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None
    )


def haproxy_binary() -> str:
    return _binary("haproxy") or _missing("haproxy")


def nginx_binary() -> str:
    return _binary("nginx") or _missing("nginx-light")


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


class Nginx:
    """deploy/nginx.conf (nginx reads no environment) with its listen and server addresses rewritten to
    free loopback ports, in its own prefix directory; stopped by its PID."""

    def __init__(self, replicas: list[str], prefix: Path):
        binary = nginx_binary()
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        text = (CONFIG.parent / "nginx.conf").read_text()
        text = text.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{self.port};")
        for default, address in zip(("127.0.0.1:8001", "127.0.0.1:8002"), replicas, strict=True):
            assert f"server {default} " in text
            text = text.replace(f"server {default} ", f"server {address} ")
        (prefix / "logs").mkdir(parents=True, exist_ok=True)
        config = prefix / "nginx.conf"
        config.write_text(text)
        self.proc = subprocess.Popen(
            [
                binary,
                "-p",
                str(prefix),
                "-c",
                str(config),
                "-g",
                "daemon off; pid nginx.pid; error_log stderr;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.base_url}/health", timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError("nginx did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
