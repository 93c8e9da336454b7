"""The parent process of `voxport serve --workers N`: binds the listening socket once, starts the engine
host and N workers (spawned; each worker inherits the socket), restarts any that dies, and on SIGTERM
drains every worker within the grace period before it stops the engine host.

A worker that dies is reported to the engine host at once (Gone), which frees its streams' engine places
within one step; the host's own watch (no ping for LOST_S) is the fallback. An engine host that dies is
restarted; meanwhile /ready fails on every worker and requests get 503.

The workers' metrics live in one fresh directory under <data-dir>/tmp (PROMETHEUS_MULTIPROC_DIR, set
before any worker is spawned, removed at the end); a dead worker's live gauges are dropped from it
(`mark_process_dead`), its counters stay in the totals.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.connection import wait
from typing import Any

import zmq
from prometheus_client.multiprocess import mark_process_dead

from voxport.config import Settings
from voxport.topology import wire
from voxport.topology.processes import FATAL, host_main, identity, worker_main

log = logging.getLogger("voxport.topology")

RESTART_DELAY_S = 0.5


def default_workers(settings: Settings) -> int:
    """--workers when not given: 1 on CPU engines; with nano-vllm one per CPU, less one for the engine
    host and one for nano-vllm's model worker, at most 8 (docs/configuration.md)."""
    if settings.workers is not None:
        return settings.workers
    if settings.engine in ("auto", "nanovllm"):
        from voxport.engine import nanovllm_usable

        if nanovllm_usable()[0]:
            return max(1, min(8, (os.cpu_count() or 1) - 2))
    return 1


def _metrics_dir(settings: Settings) -> str:
    """A fresh, empty directory for the workers' metrics files, named in the environment they inherit."""
    scratch = settings.data_dir / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    path = tempfile.mkdtemp(prefix="metrics-", dir=scratch)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def _listen(host: str, port: int) -> socket.socket:
    """The one listening socket every worker accepts on (inherited by each)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    def __init__(self, settings: Settings, overrides: dict[str, Any], model_dir: str, workers: int):
        self.settings = settings
        self.overrides = overrides
        self.model_dir = model_dir
        self.count = workers
        self.address = f"ipc://@voxport-{os.getpid()}-{secrets.token_hex(4)}"  # abstract: no file
        self.ctx = multiprocessing.get_context("spawn")
        self.sock: Any = None
        self.host: Any = None
        self.workers: list[Any] = []
        self.stopping = False
        self.status = 0
        self.metrics_dir = ""

    def _start_host(self) -> Any:
        proc = self.ctx.Process(target=host_main, args=(self.overrides, self.model_dir, self.address),
                                name="voxport-engine-host", daemon=False)  # fmt: skip
        proc.start()
        log.info("engine host started (pid %d)", proc.pid)
        return proc

    def _start_worker(self, index: int) -> Any:
        args = (self.overrides, self.model_dir, self.address, index, self.sock)
        proc = self.ctx.Process(target=worker_main, args=args, name=f"voxport-worker-{index}", daemon=False)
        proc.start()
        log.info("worker %d started (pid %d)", index, proc.pid)
        return proc

    def _stop(self, signum: int, _frame: object) -> None:
        self.stopping = True

    def run(self) -> int:
        self.sock = _listen(self.settings.host, self.settings.port)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        notify = zmq.Context.instance().socket(zmq.DEALER)
        notify.setsockopt(zmq.IDENTITY, b"supervisor")
        notify.setsockopt(zmq.LINGER, 0)
        notify.connect(self.address)
        self.metrics_dir = _metrics_dir(self.settings)
        try:
            self.host = self._start_host()
            self.workers = [self._start_worker(i) for i in range(self.count)]
            self._watch(notify)
            self._shutdown()
        finally:
            notify.close(0)
            self.sock.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return self.status

    def _watch(self, notify: Any) -> None:
        while not self.stopping:
            sentinels = [self.host.sentinel, *(w.sentinel for w in self.workers)]
            wait(sentinels, timeout=0.5)
            if self.stopping:
                return
            for index, proc in enumerate(self.workers):
                if proc.exitcode is None:
                    continue
                log.warning("worker %d (pid %d) exited with %s", index, proc.pid, proc.exitcode)
                notify.send(wire.pack(wire.Gone(identity(index, proc.pid))))
                mark_process_dead(proc.pid, self.metrics_dir)  # its gauges leave the sums
                if proc.exitcode == FATAL:
                    self.status, self.stopping = FATAL, True
                    return
                time.sleep(RESTART_DELAY_S)
                self.workers[index] = self._start_worker(index)
            if self.host.exitcode is not None:
                log.warning("engine host (pid %d) exited with %s", self.host.pid, self.host.exitcode)
                if self.host.exitcode == FATAL:
                    self.status, self.stopping = FATAL, True
                    return
                time.sleep(RESTART_DELAY_S)
                self.host = self._start_host()

    def _shutdown(self) -> None:
        """Every worker drains and stops (SIGTERM: drain_s, then the grace period); then the engine host."""
        log.info("stopping %d workers", len(self.workers))
        for proc in self.workers:
            if proc.exitcode is None:
                proc.terminate()
        deadline = time.monotonic() + self.settings.drain_s + self.settings.shutdown_grace_s + 15
        for proc in self.workers:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.exitcode is None:
                proc.kill()
                proc.join()
        if self.host.exitcode is None:
            self.host.terminate()
            self.host.join(60)
            if self.host.exitcode is None:
                self.host.kill()
                self.host.join()
