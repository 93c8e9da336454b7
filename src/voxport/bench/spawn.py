"""A server the bench starts itself (`--spawn-server`), and the CPU time of a server process.

With `--engine sim` one command then measures both sides with the same step settings: a `voxport serve
--engine sim` subprocess on a free loopback port over HTTP, and the same sim engine in the bench's own
process.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

START_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name, field 2, is in parentheses and may hold spaces: count fields after its end.
    return stat[stat.rindex(")") + 2 :].split()


def _descendants(pid: int) -> list[int]:
    """The live processes below `pid` (`--workers`: the engine host and the workers), from /proc."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children", encoding="ascii") as handle:
                    kids = [int(k) for k in handle.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def cpu_seconds(pid: int) -> dict[str, float] | None:
    """CPU seconds of process `pid` and the live processes below it (user + system: with --workers, the
    supervisor, the engine host and every worker), and of the children they have waited for (ffmpeg
    encoders), from /proc; None where that cannot be read (no /proc, another machine)."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    total = {"self": 0.0, "children": 0.0}
    for stat in [fields, *(f for f in map(_stat_fields, _descendants(pid)) if f is not None)]:
        utime, stime, cutime, cstime = (int(v) / tick for v in stat[11:15])
        total["self"] += utime + stime
        total["children"] += cutime + cstime
    return total


class SpawnedServer:
    """`voxport serve` as a subprocess of the bench, with its own data directory and log file."""

    def __init__(self, args: argparse.Namespace, log_path: Path | None = None):
        self._scratch = tempfile.TemporaryDirectory(prefix="voxport-bench-server-")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or Path(self._scratch.name) / "server.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "voxport", "serve", "--host", "127.0.0.1", "--port", str(self.port),
            "--data-dir", str(Path(self._scratch.name) / "data"), "--log-level", "warning",
            "--engine", args.engine,
        ]  # fmt: skip
        if args.engine == "sim":
            command += ["--sim-step-ms", str(args.sim_step_ms)]
            command += ["--sim-step-ms-per-seq", str(args.sim_step_ms_per_seq)]
        elif args.engine_model:
            command += ["--model", str(args.engine_model), "--device", args.device]
        command += list(args.server_arg or [])
        self.command = command
        self._log = self.log_path.open("wb")
        # A file, not a pipe: nobody reads a pipe while the server runs, and a full one would stall it.
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> str | None:
        """None once /health says ready, else why not (the server's last log lines)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"the server exited with {self.proc.returncode}: {self.tail()}"
            try:
                if httpx.get(f"{self.url}/health", timeout=2).json().get("ready"):
                    return None
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        return f"the server was not ready after {timeout:.0f} s: {self.tail()}"

    def tail(self, chars: int = 2000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self._scratch.cleanup()
