"""The Triton paged decode kernel, run on CPU by Triton's interpreter, against two references.

References: the SDPA drop-in's decode (gather the block table's pages, then SDPA), which is what the
kernel replaces, and a float64 recompute from each sequence's own K/V. Shapes follow nano-vllm's decode
call (q `[B, 1, H, D]`, a `[num_blocks, block_size, Hkv, D]` cache, an int32 block table, int32 lengths);
sizes are cut down so the interpreter, which runs each program in numpy, stays quick.

The kernels run in a worker process. Triton must see `TRITON_INTERPRET=1` before it is first imported
(its own `tl.sum`, `tl.max`... are `@triton.jit` functions decorated at import), and in a full test run
another module has imported triton by then; a process-wide variable would also leak into the nano-vllm
worker processes that later tests spawn on a GPU machine. So a spawned worker sets it, then imports the
kernel; this module imports neither triton nor the kernel at top level, and tensors come back to be
checked here.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest
import torch

from tests.gates import PACKAGES, installed, missing
from voxport.engine import sdpa_attention

if not installed("triton"):  # installed but broken, the kernel's import fails in the worker: a failure
    missing(PACKAGES, "triton is not installed: the kernel needs it (the dev extra installs it)")


def _interpret() -> None:
    """Worker initializer: runs before anything in the worker imports triton."""
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(scope="module")
def worker() -> Iterator[ProcessPoolExecutor]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context, initializer=_interpret) as pool:
        yield pool


def in_worker(pool: ProcessPoolExecutor, fn: Any, *args: Any, **kwargs: Any) -> Any:
    return pool.submit(fn, *args, **kwargs).result(timeout=300)


TOLERANCE = {
    torch.float32: {"atol": 1e-4, "rtol": 1e-4},
    torch.float16: {"atol": 5e-3, "rtol": 5e-3},
    torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2},
}


def recompute(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """One decode query `[H, D]` over one sequence's keys `[n, Hkv, D]`, in float64; zeros when n = 0."""
    if k.shape[0] == 0:
        return torch.zeros(q.shape, dtype=torch.float64)
    group = q.shape[0] // k.shape[1]
    k = k.double().repeat_interleave(group, dim=1)
    v = v.double().repeat_interleave(group, dim=1)
    probs = torch.softmax(torch.einsum("hd,khd->hk", q.double(), k) * scale, dim=-1)
    return torch.einsum("hk,khd->hd", probs, v)


def scattered_cache(
    gen: torch.Generator,
    lengths: list[int],
    num_kv_heads: int,
    head_dim: int,
    page: int,
    dtype: torch.dtype,
    width: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each sequence's K/V written to shuffled, non-adjacent pages of a NaN-filled cache.

    The block table is `width` columns wide like a CUDA-graph table; columns past a sequence's pages
    hold what replay leaves there: -1, or stale ids of pages that belong to other sequences.
    """
    keys = [torch.randn(n, num_kv_heads, head_dim, generator=gen).to(dtype) for n in lengths]
    values = [torch.randn(n, num_kv_heads, head_dim, generator=gen).to(dtype) for n in lengths]
    pages_per_seq = [-(-n // page) for n in lengths]
    num_blocks = 2 * sum(pages_per_seq) + 4  # every other page unowned, so owned pages are never adjacent
    order = torch.randperm(num_blocks // 2, generator=gen) * 2
    free = order.tolist()
    # Unwritten slots of the engine's cache are torch.empty garbage: NaN makes any read of one visible.
    k_cache = torch.full((num_blocks, page, num_kv_heads, head_dim), math.nan).to(dtype)
    v_cache = torch.full_like(k_cache, math.nan)
    table = torch.full((len(lengths), width), -1, dtype=torch.int32)
    for b, n in enumerate(lengths):
        pages = [free.pop() for _ in range(pages_per_seq[b])]
        for t in range(n):
            k_cache[pages[t // page], t % page] = keys[b][t]
            v_cache[pages[t // page], t % page] = values[b][t]
        table[b, : len(pages)] = torch.tensor(pages, dtype=torch.int32)
        if b % 2 and len(pages) < width:
            table[b, len(pages) :] = 0  # stale entries: page 0 is another sequence's or garbage
    return keys, values, k_cache, v_cache, table


CASES = {
    # name: (lengths, num_heads, num_kv_heads, head_dim, page, table width)
    # ragged lengths, partially filled last pages, a zero-length (padded) row, GQA 8:2 like VoxCPM2
    "gqa4-ragged": ([1, 16, 17, 45, 0, 64], 8, 2, 64, 16, 5),
    # GQA ratio 1 (plain multi-head), a length that fills its last page exactly
    "mha": ([32, 5, 31], 4, 4, 64, 16, 3),
    # VoxCPM2's LM geometry (16 query heads on 2 KV heads, head dim 128), pages of 32
    "voxcpm2-heads": ([70, 3], 16, 2, 128, 32, 4),
    # head dim that is not a power of two, and a group of 3 (padded to 16 rows in the kernel)
    "odd-dims": ([9, 40], 6, 2, 48, 8, 6),
}


def _kernel(*args: Any, **kwargs: Any) -> torch.Tensor:
    """In the worker: the kernel, imported there under the interpreter."""
    from voxport.engine.triton_decode import paged_decode_attention

    return paged_decode_attention(*args, **kwargs)


def _routed(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
    """In the worker: the drop-in's decode entry point under each setting, counting kernel calls."""
    from voxport.engine import triton_decode

    calls: list[int] = []
    original = triton_decode.paged_decode_attention

    def counting(*args: Any, **kw: Any) -> torch.Tensor:
        calls.append(1)
        return original(*args, **kw)

    triton_decode.paged_decode_attention = counting
    result: dict[str, Any] = {}
    sdpa_attention.set_decode_kernel("sdpa")
    result["gathered"] = sdpa_attention.flash_attn_with_kvcache(q, k_cache, v_cache, **kwargs)
    result["calls_sdpa"] = len(calls)
    sdpa_attention.set_decode_kernel("triton")
    result["env"] = os.environ[sdpa_attention.DECODE_ENV]
    result["kernel"] = sdpa_attention.flash_attn_with_kvcache(q, k_cache, v_cache, **kwargs)
    result["calls_triton"] = len(calls)
    # Calls the kernel does not cover (several queries per sequence) stay on SDPA.
    sdpa_attention.flash_attn_with_kvcache(q.expand(-1, 3, -1, -1).contiguous(), k_cache, v_cache, **kwargs)
    result["calls_after_multi_query"] = len(calls)
    return result


DTYPES = pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"]
)


@DTYPES
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_kernel_matches_gather_and_recompute(
    worker: ProcessPoolExecutor, monkeypatch: pytest.MonkeyPatch, case: str, dtype: torch.dtype
) -> None:
    lengths, num_heads, num_kv_heads, head_dim, page, width = CASES[case]
    gen = torch.Generator().manual_seed(sum(lengths) + num_heads)
    keys, values, k_cache, v_cache, table = scattered_cache(
        gen, lengths, num_kv_heads, head_dim, page, dtype, width
    )
    q = torch.randn(len(lengths), 1, num_heads, head_dim, generator=gen).to(dtype)
    seqlens = torch.tensor(lengths, dtype=torch.int32)
    scale = 0.8 * head_dim**-0.5

    out = in_worker(worker, _kernel, q, k_cache, v_cache, table, seqlens, scale)

    assert out.shape == q.shape and out.dtype == dtype and out.is_contiguous()
    assert torch.isfinite(out).all()
    expected = torch.stack([recompute(q[b, 0], keys[b], values[b], scale) for b in range(len(lengths))])
    torch.testing.assert_close(out[:, 0].double(), expected, **TOLERANCE[dtype])
    monkeypatch.setattr(sdpa_attention, "_decode", "sdpa")
    gathered = sdpa_attention.flash_attn_with_kvcache(
        q, k_cache, v_cache, cache_seqlens=seqlens, block_table=table, softmax_scale=scale, causal=True
    )
    torch.testing.assert_close(out.double(), gathered.double(), **TOLERANCE[dtype])
    assert (out[torch.tensor(lengths) == 0] == 0).all()  # CUDA-graph padding rows come out as zeros


@pytest.mark.parametrize("num_splits", [1, 2, 3, 7])
def test_split_count_does_not_change_the_result(worker: ProcessPoolExecutor, num_splits: int) -> None:
    # Sequences end inside, at the edge of, and before a chunk, so some chunks are empty and merged as such.
    lengths = [1, 64, 65, 200, 0]
    gen = torch.Generator().manual_seed(3)
    keys, values, k_cache, v_cache, table = scattered_cache(gen, lengths, 2, 32, 16, torch.float32, 14)
    q = torch.randn(len(lengths), 1, 4, 32, generator=gen)
    seqlens = torch.tensor(lengths, dtype=torch.int32)

    out = in_worker(worker, _kernel, q, k_cache, v_cache, table, seqlens, 0.2, num_splits)

    expected = torch.stack([recompute(q[b, 0], keys[b], values[b], 0.2) for b in range(len(lengths))])
    torch.testing.assert_close(out[:, 0].double(), expected, **TOLERANCE[torch.float32])


def test_split_choice_depends_on_shapes_only() -> None:
    # Importing the kernel here only decorates it (nothing runs), so the interpreter is not needed.
    from voxport.engine.triton_decode import choose_num_splits

    # Small batches are cut into chunks to fill the GPU; large ones run one program per (row, KV head).
    assert choose_num_splits(batch=1, num_kv_heads=2, max_keys=4096, programs_wanted=264) == 64
    assert choose_num_splits(batch=256, num_kv_heads=2, max_keys=4096, programs_wanted=264) == 1
    assert choose_num_splits(batch=1, num_kv_heads=2, max_keys=100, programs_wanted=264) == 2
    assert choose_num_splits(batch=0, num_kv_heads=2, max_keys=64, programs_wanted=264) == 1


def test_the_drop_in_routes_decode_to_the_kernel_when_asked(worker: ProcessPoolExecutor) -> None:
    gen = torch.Generator().manual_seed(4)
    _, _, k_cache, v_cache, table = scattered_cache(gen, [20, 7], 2, 32, 16, torch.float32, 3)
    q = torch.randn(2, 1, 4, 32, generator=gen)
    seqlens = torch.tensor([20, 7], dtype=torch.int32)
    kwargs = {"cache_seqlens": seqlens, "block_table": table, "softmax_scale": 0.2, "causal": True}

    result = in_worker(worker, _routed, q, k_cache, v_cache, **kwargs)

    assert result["calls_sdpa"] == 0
    assert result["calls_triton"] == 1
    assert result["env"] == "triton"  # what nano-vllm's spawned model worker reads
    assert result["calls_after_multi_query"] == 1
    torch.testing.assert_close(result["kernel"], result["gathered"], **TOLERANCE[torch.float32])


def test_the_microbenchmark_needs_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: scripts/gpu-session bench runs the microbenchmark there")
    done = subprocess.run(
        [sys.executable, "-m", "voxport.engine.decode_bench", "--batches", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "needs a CUDA GPU" in done.stderr
