"""The SDPA flash_attn drop-in against a plain softmax(QK^T * scale + mask) V reference, on CPU.

Shapes, dtypes and keywords follow nano-vllm-voxcpm's `layers/attention.py` and `engine/model_runner.py`:
packed varlen prefill, prefill over a paged cache holding a cached prefix, paged decode with one query
per sequence, and non-causal dense attention. The engine's KV cache block size is 256.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import multiprocessing
import sys
import types
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

from voxport.engine import sdpa_attention
from voxport.engine.sdpa_attention import (
    DROPIN_VERSION,
    flash_attn_func,
    flash_attn_varlen_func,
    flash_attn_with_kvcache,
    install_as_flash_attn,
)

ENGINE_BLOCK_SIZE = 256
TOLERANCE = {torch.float32: {"atol": 1e-4, "rtol": 1e-4}, torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2}}
HEADS = pytest.mark.parametrize("num_heads,num_kv_heads", [(8, 8), (8, 2)], ids=["mha", "gqa4"])
HEAD_DIM = pytest.mark.parametrize("head_dim", [64, 128])
DTYPE = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool) -> torch.Tensor:
    """One sequence, q `[Sq, H, D]`, k/v `[Sk, Hkv, D]`, in float64; causal is bottom-right aligned."""
    seqlen_q, num_heads, _ = q.shape
    seqlen_k, num_kv_heads, _ = k.shape
    group = num_heads // num_kv_heads
    k = k.double().repeat_interleave(group, dim=1)
    v = v.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) * scale
    if causal:
        i = torch.arange(seqlen_q).view(-1, 1)
        j = torch.arange(seqlen_k).view(1, -1)
        scores = scores.masked_fill(~(j <= i + seqlen_k - seqlen_q), -math.inf)
    # flash-attn returns zeros for a query with no visible key; softmax of an all -inf row is NaN.
    probs = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
    return torch.einsum("hqk,khd->qhd", probs, v)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert actual.dtype == dtype
    assert actual.is_contiguous()  # the engine .view()s the output
    torch.testing.assert_close(actual.double(), expected.double(), **TOLERANCE[dtype])


def randn(gen: torch.Generator, *shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(*shape, generator=gen).to(dtype)


def paged_cache(
    gen: torch.Generator,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    block_size: int,
    extra_columns: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scatter each sequence's K/V over randomly chosen, non-contiguous pages of a NaN-filled cache.

    Returns k_cache, v_cache `[num_blocks, block_size, Hkv, D]` and the int32 block table, padded
    with -1 like the engine's `prepare_block_tables` (plus `extra_columns`, like a CUDA-graph table).
    """
    num_kv_heads, head_dim = keys[0].shape[1:]
    pages_per_seq = [max(1, -(-len(k) // block_size)) for k in keys]
    num_blocks = sum(pages_per_seq) + 3  # spare pages that no sequence owns
    order = torch.randperm(num_blocks, generator=gen).tolist()
    # Unwritten slots in the engine's cache are torch.empty garbage: NaN makes any leak visible.
    k_cache = torch.full((num_blocks, block_size, num_kv_heads, head_dim), math.nan, dtype=keys[0].dtype)
    v_cache = torch.full_like(k_cache, math.nan)
    width = max(pages_per_seq) + extra_columns
    table = torch.full((len(keys), width), -1, dtype=torch.int32)
    for b, (k, v) in enumerate(zip(keys, values, strict=True)):
        pages = [order.pop() for _ in range(pages_per_seq[b])]
        table[b, : len(pages)] = torch.tensor(pages, dtype=torch.int32)
        for t in range(len(k)):
            page, slot = pages[t // block_size], t % block_size
            k_cache[page, slot] = k[t]
            v_cache[page, slot] = v[t]
    return k_cache, v_cache, table


def cu_seqlens(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


# flash_attn_varlen_func, packed K/V: the engine's prefill when nothing is cached.


@DTYPE
@HEADS
@HEAD_DIM
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_varlen_packed_matches_reference(
    dtype: torch.dtype, num_heads: int, num_kv_heads: int, head_dim: int, causal: bool
) -> None:
    gen = torch.Generator().manual_seed(1)
    lengths = [1, 7, 33, 64, 20]
    total = sum(lengths)
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    # Like the engine: q, k, v are views split out of one fused qkv projection, not contiguous.
    qkv = randn(gen, total, q_size + 2 * kv_size, dtype=dtype)
    q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
    q = q.view(-1, num_heads, head_dim)
    k = k.view(-1, num_kv_heads, head_dim)
    v = v.view(-1, num_kv_heads, head_dim)
    scale = head_dim**-0.5
    cu = cu_seqlens(lengths)

    out = flash_attn_varlen_func(
        q,
        k,
        v,
        max_seqlen_q=max(lengths),
        cu_seqlens_q=cu,
        max_seqlen_k=max(lengths),
        cu_seqlens_k=cu,
        softmax_scale=scale,
        causal=causal,
        block_table=None,
    )

    assert out.shape == (total, num_heads, head_dim)
    expected = torch.cat(
        [
            reference(q[s:e], k[s:e], v[s:e], scale, causal)
            for s, e in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)
        ]
    )
    assert_close(out, expected, dtype)
    out.view(-1, num_heads * head_dim)


# flash_attn_varlen_func over the paged cache: prefill with a cached prefix (seqlen_k > seqlen_q).


@DTYPE
@HEADS
@HEAD_DIM
@pytest.mark.parametrize("block_size", [ENGINE_BLOCK_SIZE, 16])
def test_varlen_paged_prefix_matches_reference(
    dtype: torch.dtype, num_heads: int, num_kv_heads: int, head_dim: int, block_size: int
) -> None:
    gen = torch.Generator().manual_seed(2)
    # (cached prefix, new tokens): the engine caches whole blocks, so most prefixes are block
    # multiples; one is not, to check the general bottom-right alignment; one has no prefix at all.
    plan = [(block_size, 5), (0, 12), (2 * block_size, 1), (block_size + 3, block_size + 2)]
    full = [cached + new for cached, new in plan]
    keys = [randn(gen, n, num_kv_heads, head_dim, dtype=dtype) for n in full]
    values = [randn(gen, n, num_kv_heads, head_dim, dtype=dtype) for n in full]
    queries = [randn(gen, new, num_heads, head_dim, dtype=dtype) for _, new in plan]
    k_cache, v_cache, table = paged_cache(gen, keys, values, block_size)
    scale = 0.7 * head_dim**-0.5
    new_lengths = [new for _, new in plan]

    out = flash_attn_varlen_func(
        torch.cat(queries),
        k_cache,
        v_cache,
        max_seqlen_q=max(new_lengths),
        cu_seqlens_q=cu_seqlens(new_lengths),
        max_seqlen_k=max(full),
        cu_seqlens_k=cu_seqlens(full),
        softmax_scale=scale,
        causal=True,
        block_table=table,
    )

    expected = torch.cat(
        [reference(q, k, v, scale, True) for q, k, v in zip(queries, keys, values, strict=True)]
    )
    assert out.shape == (sum(new_lengths), num_heads, head_dim)
    assert_close(out, expected, dtype)


def test_varlen_more_queries_than_keys_gives_zero_rows() -> None:
    # Bottom-right alignment: with 5 queries over 2 keys the first 3 queries see nothing.
    gen = torch.Generator().manual_seed(3)
    q = randn(gen, 5, 4, 64, dtype=torch.float32)
    k = randn(gen, 2, 2, 64, dtype=torch.float32)
    v = randn(gen, 2, 2, 64, dtype=torch.float32)
    out = flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens_q=cu_seqlens([5]),
        cu_seqlens_k=cu_seqlens([2]),
        max_seqlen_q=5,
        max_seqlen_k=2,
        causal=True,
    )
    assert torch.isfinite(out).all()
    assert (out[:3] == 0).all()
    assert_close(out, reference(q, k, v, 64**-0.5, True), torch.float32)


# flash_attn_with_kvcache over the paged cache: the engine's decode step, one query per sequence.


@DTYPE
@HEADS
@HEAD_DIM
@pytest.mark.parametrize("block_size", [ENGINE_BLOCK_SIZE, 16])
def test_paged_decode_matches_reference(
    dtype: torch.dtype, num_heads: int, num_kv_heads: int, head_dim: int, block_size: int
) -> None:
    gen = torch.Generator().manual_seed(4)
    lengths = [1, block_size, block_size + 1, 3 * block_size - 1, 37, 2 * block_size]
    keys = [randn(gen, n, num_kv_heads, head_dim, dtype=dtype) for n in lengths]
    values = [randn(gen, n, num_kv_heads, head_dim, dtype=dtype) for n in lengths]
    k_cache, v_cache, table = paged_cache(gen, keys, values, block_size, extra_columns=2)
    q = randn(gen, len(lengths), num_heads, head_dim, dtype=dtype)
    scale = head_dim**-0.5

    out = flash_attn_with_kvcache(
        q.unsqueeze(1),
        k_cache,
        v_cache,
        cache_seqlens=torch.tensor(lengths, dtype=torch.int32),
        block_table=table,
        softmax_scale=scale,
        causal=True,
    )

    assert out.shape == (len(lengths), 1, num_heads, head_dim)
    expected = torch.stack(
        [reference(q[b : b + 1], keys[b], values[b], scale, True) for b in range(len(lengths))]
    )
    assert_close(out, expected, dtype)
    out.view(-1, num_heads * head_dim)


def test_paged_decode_zero_length_rows_are_zero() -> None:
    # CUDA-graph capture runs decode with all-zero cache_seqlens and a zero block table, and replay
    # pads the batch with zero-length rows: those must come out as zeros, never NaN.
    gen = torch.Generator().manual_seed(5)
    keys = [randn(gen, n, 2, 64, dtype=torch.float32) for n in (5, 40)]
    values = [randn(gen, n, 2, 64, dtype=torch.float32) for n in (5, 40)]
    k_cache, v_cache, table = paged_cache(gen, keys, values, 16, extra_columns=1)
    padded_table = torch.cat([table, torch.zeros(2, table.shape[1], dtype=torch.int32)])
    seqlens = torch.tensor([5, 40, 0, 0], dtype=torch.int32)
    q = randn(gen, 4, 1, 8, 64, dtype=torch.float32)

    out = flash_attn_with_kvcache(
        q, k_cache, v_cache, cache_seqlens=seqlens, block_table=padded_table, softmax_scale=0.125, causal=True
    )

    assert torch.isfinite(out).all()
    assert (out[2:] == 0).all()
    for b in range(2):
        assert_close(out[b].contiguous(), reference(q[b], keys[b], values[b], 0.125, True), torch.float32)


@HEADS
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_paged_kvcache_several_queries_per_sequence(num_heads: int, num_kv_heads: int, causal: bool) -> None:
    # Not an engine path, but flash-attn's contract: the 3 newest queries, causal mask bottom-right.
    gen = torch.Generator().manual_seed(6)
    lengths = [3, 17, 50]
    keys = [randn(gen, n, num_kv_heads, 64, dtype=torch.float32) for n in lengths]
    values = [randn(gen, n, num_kv_heads, 64, dtype=torch.float32) for n in lengths]
    k_cache, v_cache, table = paged_cache(gen, keys, values, 16)
    q = randn(gen, 3, 3, num_heads, 64, dtype=torch.float32)

    out = flash_attn_with_kvcache(
        q,
        k_cache,
        v_cache,
        cache_seqlens=torch.tensor(lengths, dtype=torch.int32),
        block_table=table,
        causal=causal,
    )

    expected = torch.stack([reference(q[b], keys[b], values[b], 64**-0.5, causal) for b in range(3)])
    assert_close(out, expected, torch.float32)


def test_contiguous_kvcache_with_int_seqlens_and_batch_index() -> None:
    gen = torch.Generator().manual_seed(7)
    k_cache = randn(gen, 4, 30, 2, 64, dtype=torch.float32)
    v_cache = randn(gen, 4, 30, 2, 64, dtype=torch.float32)
    k_cache[:, 21:] = math.nan
    v_cache[:, 21:] = math.nan
    q = randn(gen, 2, 1, 8, 64, dtype=torch.float32)

    out = flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=21, causal=True)
    expected = torch.stack(
        [reference(q[b], k_cache[b, :21], v_cache[b, :21], 64**-0.5, True) for b in range(2)]
    )
    assert_close(out, expected, torch.float32)
    assert torch.isnan(k_cache[:, 21:]).all()  # the caller's cache is left as it was

    rows = torch.tensor([3, 1], dtype=torch.int32)
    out = flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=21, cache_batch_idx=rows, causal=True)
    expected = torch.stack(
        [
            reference(q[b], k_cache[r, :21], v_cache[r, :21], 64**-0.5, True)
            for b, r in enumerate(rows.tolist())
        ]
    )
    assert_close(out, expected, torch.float32)


# flash_attn_func: non-causal dense attention (encoder and diffusion transformer).


@DTYPE
@HEADS
@HEAD_DIM
def test_dense_non_causal_matches_reference(
    dtype: torch.dtype, num_heads: int, num_kv_heads: int, head_dim: int
) -> None:
    gen = torch.Generator().manual_seed(8)
    batch, seqlen = 3, 24
    q = randn(gen, batch, seqlen, num_heads, head_dim, dtype=dtype)
    k = randn(gen, batch, seqlen, num_kv_heads, head_dim, dtype=dtype)
    v = randn(gen, batch, seqlen, num_kv_heads, head_dim, dtype=dtype)
    scale = head_dim**-0.5

    out = flash_attn_func(q, k, v, softmax_scale=scale, causal=False)

    assert out.shape == (batch, seqlen, num_heads, head_dim)
    expected = torch.stack([reference(q[b], k[b], v[b], scale, False) for b in range(batch)])
    assert_close(out, expected, dtype)
    out.view(batch, -1, num_heads * head_dim)


@HEADS
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(9, 9), (4, 9), (9, 4), (6, 11)])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_dense_lengths_and_causal_alignment(
    num_heads: int, num_kv_heads: int, seqlen_q: int, seqlen_k: int, causal: bool
) -> None:
    gen = torch.Generator().manual_seed(9)
    q = randn(gen, 2, seqlen_q, num_heads, 64, dtype=torch.float32)
    k = randn(gen, 2, seqlen_k, num_kv_heads, 64, dtype=torch.float32)
    v = randn(gen, 2, seqlen_k, num_kv_heads, 64, dtype=torch.float32)
    out = flash_attn_func(q, k, v, causal=causal)
    expected = torch.stack([reference(q[b], k[b], v[b], 64**-0.5, causal) for b in range(2)])
    assert_close(out, expected, torch.float32)


def test_causal_mask_is_bottom_right_aligned() -> None:
    # With zero queries every visible key weighs the same, and one-hot values show which were visible:
    # flash-attn's documented mask for seqlen_q=2, seqlen_k=5 is [1 1 1 1 0], [1 1 1 1 1].
    q = torch.zeros(1, 2, 1, 8)
    k = torch.zeros(1, 5, 1, 8)
    v = torch.eye(5, 8).view(1, 5, 1, 8)
    out = flash_attn_func(q, k, v, causal=True)[0, :, 0, :5]
    torch.testing.assert_close(out, torch.tensor([[0.25] * 4 + [0.0], [0.2] * 5]))


# The engine's sequence of calls: a packed prefill, then paged decode steps, against full attention.


def test_prefill_then_decode_like_the_engine() -> None:
    gen = torch.Generator().manual_seed(10)
    num_heads, num_kv_heads, head_dim, block_size = 8, 2, 64, 16
    prompt, steps = [20, 33], 3
    full = [n + steps for n in prompt]
    keys = [randn(gen, n, num_kv_heads, head_dim, dtype=torch.float32) for n in full]
    values = [randn(gen, n, num_kv_heads, head_dim, dtype=torch.float32) for n in full]
    queries = [randn(gen, n, num_heads, head_dim, dtype=torch.float32) for n in full]
    k_cache, v_cache, table = paged_cache(gen, keys, values, block_size)
    scale = head_dim**-0.5

    cu = cu_seqlens(prompt)
    out = flash_attn_varlen_func(
        torch.cat([q[:n] for q, n in zip(queries, prompt, strict=True)]),
        torch.cat([k[:n] for k, n in zip(keys, prompt, strict=True)]),
        torch.cat([v[:n] for v, n in zip(values, prompt, strict=True)]),
        max_seqlen_q=max(prompt),
        cu_seqlens_q=cu,
        max_seqlen_k=max(prompt),
        cu_seqlens_k=cu,
        softmax_scale=scale,
        causal=True,
        block_table=None,
    )
    whole = [reference(q, k, v, scale, True) for q, k, v in zip(queries, keys, values, strict=True)]
    assert_close(out, torch.cat([w[:n] for w, n in zip(whole, prompt, strict=True)]), torch.float32)

    for step in range(steps):
        positions = [n + step for n in prompt]
        out = flash_attn_with_kvcache(
            torch.stack([q[p] for q, p in zip(queries, positions, strict=True)]).unsqueeze(1),
            k_cache,
            v_cache,
            cache_seqlens=torch.tensor([p + 1 for p in positions], dtype=torch.int32),
            block_table=table,
            softmax_scale=scale,
            causal=True,
        )
        expected = torch.stack([w[p] for w, p in zip(whole, positions, strict=True)]).unsqueeze(1)
        assert_close(out, expected, torch.float32)


@pytest.mark.parametrize(
    "call",
    [
        lambda q: flash_attn_func(q, q, q, window_size=(4, 0)),
        lambda q: flash_attn_func(q, q, q, softcap=30.0),
        lambda q: flash_attn_func(q, q, q, alibi_slopes=torch.zeros(2)),
        lambda q: flash_attn_func(q, q, q, return_attn_probs=True),
        lambda q: flash_attn_with_kvcache(q, q, q, k=q, v=q, cache_seqlens=1),
        lambda q: flash_attn_with_kvcache(q, q, q, cache_seqlens=1, return_softmax_lse=True),
    ],
    ids=["window", "softcap", "alibi", "probs", "append-kv", "lse"],
)
def test_options_that_change_results_are_refused(call) -> None:
    with pytest.raises(NotImplementedError):
        call(torch.zeros(1, 2, 2, 8))


def test_performance_knobs_are_accepted() -> None:
    q = torch.randn(1, 3, 2, 8, generator=torch.Generator().manual_seed(11))
    plain = flash_attn_with_kvcache(q[:, :1], q, q, cache_seqlens=3, causal=True)
    tuned = flash_attn_with_kvcache(
        q[:, :1], q, q, cache_seqlens=3, causal=True, num_splits=4, window_size=(-1, -1)
    )
    torch.testing.assert_close(plain, tuned)
    torch.testing.assert_close(
        flash_attn_func(q, q, q, deterministic=True, window_size=[-1, -1]), flash_attn_func(q, q, q)
    )


# install_as_flash_attn


@contextlib.contextmanager
def isolated_flash_attn() -> Iterator[None]:
    """Run with no `flash_attn` in sys.modules, then put back exactly what was there (and sys.path)."""
    saved_path = list(sys.path)
    saved = {
        name: mod
        for name, mod in sys.modules.items()
        if name == "flash_attn" or name.startswith("flash_attn.")
    }
    for name in saved:
        del sys.modules[name]
    try:
        yield
    finally:
        for name in [n for n in sys.modules if n == "flash_attn" or n.startswith("flash_attn.")]:
            del sys.modules[name]
        sys.modules.update(saved)
        sys.path[:] = saved_path


@pytest.fixture
def clean_flash_attn() -> Iterator[None]:
    with isolated_flash_attn():
        yield


@pytest.mark.usefixtures("clean_flash_attn")
def test_forced_install_serves_the_engine_imports() -> None:
    assert install_as_flash_attn(force=True) == "sdpa"

    import flash_attn
    from flash_attn import flash_attn_func as imported_func
    from flash_attn import flash_attn_varlen_func as imported_varlen
    from flash_attn import flash_attn_with_kvcache as imported_kvcache

    assert imported_varlen is flash_attn_varlen_func
    assert imported_kvcache is flash_attn_with_kvcache
    assert imported_func is flash_attn_func
    assert flash_attn.__version__ == DROPIN_VERSION
    assert importlib.import_module("flash_attn") is flash_attn
    spec = importlib.util.find_spec("flash_attn")
    assert spec is not None and spec.name == "flash_attn"
    # A second call sees its own module and leaves it in place.
    assert install_as_flash_attn() == "sdpa"
    assert sys.modules["flash_attn"] is flash_attn


@pytest.mark.usefixtures("clean_flash_attn")
def test_install_falls_back_when_flash_attn_cannot_import() -> None:
    sys.modules["flash_attn"] = None  # type: ignore[assignment]  # makes `import flash_attn` raise ImportError
    assert install_as_flash_attn() == "sdpa"
    assert sys.modules["flash_attn"].flash_attn_with_kvcache is flash_attn_with_kvcache


@pytest.mark.usefixtures("clean_flash_attn")
def test_install_keeps_an_importable_flash_attn_unless_forced() -> None:
    real = types.ModuleType("flash_attn")
    sys.modules["flash_attn"] = real
    assert install_as_flash_attn() == "flash-attn"
    assert sys.modules["flash_attn"] is real
    assert install_as_flash_attn(force=True) == "sdpa"
    assert sys.modules["flash_attn"] is not real
    assert sys.modules["flash_attn"].flash_attn_func is sdpa_attention.flash_attn_func


def test_isolation_restores_sys_modules() -> None:
    before, path_before = sys.modules.get("flash_attn"), list(sys.path)
    with isolated_flash_attn():
        install_as_flash_attn(force=True)
        assert sys.modules["flash_attn"].__version__ == DROPIN_VERSION
    assert sys.modules.get("flash_attn") is before
    assert sys.path == path_before


def _flash_attn_seen_by_a_fresh_interpreter() -> tuple[str, str]:
    import flash_attn

    return flash_attn.__version__, flash_attn.flash_attn_with_kvcache.__module__


@pytest.mark.usefixtures("clean_flash_attn")
def test_a_spawned_worker_process_imports_the_drop_in() -> None:
    # nano-vllm runs the model in a process started with "spawn": a new interpreter that imports
    # flash_attn by name and knows only the parent's sys.path, not its sys.modules.
    assert install_as_flash_attn(force=True) == "sdpa"
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        version, module = pool.submit(_flash_attn_seen_by_a_fresh_interpreter).result(timeout=300)
    assert (version, module) == (DROPIN_VERSION, "voxport.engine.sdpa_attention")
