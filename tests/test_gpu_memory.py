"""GPU memory attribution for /health and `voxport bench`: this process and its children, per NVML."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types

import pytest

from tests.conftest import TEST_ENGINE
from voxport import metrics


def test_process_tree_holds_children_and_grandchildren() -> None:
    # A child that starts a grandchild, like `voxport serve` starting nano-vllm's spawned worker.
    child = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, '-c', 'input()'])"],
        stdin=subprocess.PIPE,
    )
    try:
        for _ in range(400):  # until the grandchild has started
            grandchildren = metrics._process_tree(child.pid) - {child.pid}
            if grandchildren:
                break
            time.sleep(0.05)
        tree = metrics._process_tree(os.getpid())
        assert len(grandchildren) == 1
        assert {os.getpid(), child.pid} | grandchildren <= tree
        assert os.getppid() not in tree
    finally:
        child.stdin.close()  # the grandchild inherits stdin and exits on EOF
        child.wait(timeout=30)


def fake_nvml(processes: list[tuple[int, int | None]]) -> types.SimpleNamespace:
    listed = [types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in processes]
    return types.SimpleNamespace(
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetComputeRunningProcesses=lambda handle: listed,
    )


def test_gpu_memory_sums_our_processes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    others = 10**9  # above Linux's pid limit: no process of ours
    monkeypatch.setattr(metrics, "_nvml", fake_nvml([(os.getpid(), 3 << 30), (others, 50 << 30)]))
    assert metrics.gpu_memory_bytes() == 3 << 30


def test_gpu_memory_is_unknown_when_no_listed_process_is_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    # Inside a container NVML may list host process ids: no figure beats a wrong zero.
    monkeypatch.setattr(metrics, "_nvml", fake_nvml([(10**9, 1 << 30)]))
    assert metrics.gpu_memory_bytes() is None
    monkeypatch.setattr(metrics, "_nvml", fake_nvml([]))
    assert metrics.gpu_memory_bytes() == 0  # NVML sees no process on the GPU at all


def test_without_nvml_there_is_no_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_nvml", False)
    assert metrics.gpu_memory_bytes() is None


async def test_health_reports_gpu_memory_on_cuda_only(http) -> None:
    body = (await http.get("/health")).json()
    if TEST_ENGINE == "nanovllm":  # the server process and its model worker hold the weights and KV cache
        assert isinstance(body["gpu_memory_bytes"], int) and body["gpu_memory_bytes"] > 0
    else:
        assert "gpu_memory_bytes" in body and body["gpu_memory_bytes"] is None
