"""A `flash_attn` stand-in built on torch `scaled_dot_product_attention`, for the nano-vllm engine.

nano-vllm-voxcpm imports `flash_attn` when its package loads and calls three of its functions from
`layers/attention.py`: `flash_attn_varlen_func` (prefill, optionally over the paged KV cache when a
prefix is cached), `flash_attn_with_kvcache` (decode over the paged cache) and `flash_attn_func`
(non-causal attention in the encoder and the diffusion transformer). flash-attn cannot be built on
our GPU machine, so `install_as_flash_attn()` registers a module named `flash_attn` that provides
these functions, reimplemented with SDPA. They follow flash-attn's semantics where the engine can
observe them:

- grouped-query attention: query head `h` reads KV head `h // (num_heads // num_kv_heads)`;
- causal masks are aligned to the bottom-right corner: with `seqlen_q` queries over `seqlen_k` keys,
  query `i` sees keys `j <= i + seqlen_k - seqlen_q` (SDPA's own `is_causal` is top-left aligned, so
  it is used only when the two lengths are equal);
- a query row with no key to attend to produces zeros, not NaN;
- outputs are contiguous, in q's layout and dtype, because the engine `.view()`s them.

Options that change the result and that the engine never passes (sliding windows, softcap, ALiBi,
appending new K/V or rotary inside the kernel, returning the log-sum-exp) raise NotImplementedError
instead of being silently ignored; performance knobs (`num_splits`, `deterministic`, the
`max_seqlen_*` hints) are accepted and ignored.

Decode (one query per sequence over the paged cache) has two implementations, chosen by
`install_as_flash_attn(decode=...)`: "triton", voxport's paged kernel (`triton_decode`), which reads
K/V in place through the block table; and "sdpa", which gathers each sequence's whole block table into
a dense copy and runs SDPA, kept as the reference the kernel is compared against. Prefill stays on SDPA.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "DROPIN_VERSION",
    "flash_attn_func",
    "flash_attn_varlen_func",
    "flash_attn_with_kvcache",
    "install_as_flash_attn",
]

DROPIN_VERSION = "sdpa-dropin"
_MARKER = "__voxport_sdpa_dropin__"
DecodeKernel = Literal["sdpa", "triton"]
# The decode choice travels to nano-vllm's spawned model worker through its environment (a spawned
# interpreter inherits the parent's environment, not its module state).
DECODE_ENV = "VOXPORT_DROPIN_DECODE"
_decode: DecodeKernel = "triton" if os.environ.get(DECODE_ENV) == "triton" else "sdpa"
# Holds the `flash_attn` package that re-exports this module; on sys.path only while the drop-in is in use.
_SHIM_DIR = str(Path(__file__).with_name("flash_attn_dropin"))


def _reject_unsupported(
    window_size: tuple[int, int] | list[int] | None = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    **flags: object,
) -> None:
    # A silently ignored option would give plausible but wrong audio; failing loudly is cheaper to debug.
    if window_size is not None and tuple(window_size) != (-1, -1):
        raise NotImplementedError("sdpa flash_attn drop-in: window_size (local attention) is not supported")
    if softcap:
        raise NotImplementedError("sdpa flash_attn drop-in: softcap is not supported")
    if alibi_slopes is not None:
        raise NotImplementedError("sdpa flash_attn drop-in: alibi_slopes is not supported")
    for name, value in flags.items():
        if value is not None and value is not False:
            raise NotImplementedError(f"sdpa flash_attn drop-in: {name} is not supported")


def _causal_mask(seqlen_q: int, key_lens: torch.Tensor, max_k: int) -> torch.Tensor:
    """Bottom-right aligned causal mask `[batch, seqlen_q, max_k]` (True = attend) for per-row key lengths."""
    device = key_lens.device
    rows = torch.arange(seqlen_q, device=device).view(1, seqlen_q, 1)
    cols = torch.arange(max_k, device=device).view(1, 1, max_k)
    lens = key_lens.view(-1, 1, 1)
    return (cols < lens) & (cols <= rows + (lens - seqlen_q))


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    mask: torch.Tensor | None = None,
    square_causal: bool = False,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """SDPA on flash-attn layouts: q `[B, Sq, H, D]`, k/v `[B, Sk, Hkv, D]` -> contiguous `[B, Sq, H, D]`.

    `mask` is boolean `[B, Sq, Sk]`, True where a query may attend; `square_causal` asks for the plain
    causal mask with Sq == Sk, which SDPA can apply itself (and so keep its fastest kernels).
    """
    batch, seqlen_q, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(f"query heads ({num_heads}) must be a multiple of KV heads ({num_kv_heads})")
    group = num_heads // num_kv_heads
    if k.dtype != q.dtype:
        k, v = k.to(q.dtype), v.to(q.dtype)
    k_t, v_t = k.transpose(1, 2), v.transpose(1, 2)

    if square_causal:
        # Folding query heads (below) would break is_causal's row-equals-position assumption and force
        # an explicit mask, which rules out SDPA's flash kernel; repeating KV is the cheaper trade here.
        if group > 1:
            k_t = k_t.repeat_interleave(group, dim=1)
            v_t = v_t.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k_t, v_t, is_causal=True, scale=scale, dropout_p=dropout_p
        )
        return out.transpose(1, 2).contiguous()

    # Fold each KV head's group of query heads into the query axis: K/V are used as they are,
    # without a repeated copy, which matters on the decode path where they were just gathered.
    q_f = q.reshape(batch, seqlen_q, num_kv_heads, group, head_dim).permute(0, 2, 3, 1, 4)
    q_f = q_f.reshape(batch, num_kv_heads, group * seqlen_q, head_dim)
    attn_mask = None
    empty = None
    if mask is not None:
        empty = ~mask.any(dim=-1)
        # A fully masked row would make softmax NaN; let it see key 0 and zero it afterwards
        # (flash-attn returns zeros there). Tensor ops only, so CUDA-graph capture still works.
        sk = mask.shape[-1]
        first_key = torch.arange(sk, device=mask.device) == 0
        mask = mask | (empty.unsqueeze(-1) & first_key)
        attn_mask = (
            mask.unsqueeze(1).expand(batch, group, seqlen_q, sk).reshape(batch, 1, group * seqlen_q, sk)
        )
    out = F.scaled_dot_product_attention(q_f, k_t, v_t, attn_mask=attn_mask, scale=scale, dropout_p=dropout_p)
    out = out.reshape(batch, num_kv_heads, group, seqlen_q, head_dim).permute(0, 3, 1, 2, 4)
    if empty is not None:
        out = out.masked_fill(empty.view(batch, seqlen_q, 1, 1, 1), 0)
    # reshape can return a strided view here, and the engine .view()s the result.
    return out.reshape(batch, seqlen_q, num_heads, head_dim).contiguous()


def _softmax_scale(softmax_scale: float | None, q: torch.Tensor) -> float:
    return q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)


def flash_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
) -> torch.Tensor:
    """Dense batched attention: q `[B, Sq, H, D]`, k/v `[B, Sk, Hkv, D]` -> `[B, Sq, H, D]`."""
    _reject_unsupported(window_size, softcap, alibi_slopes, return_attn_probs=return_attn_probs)
    scale = _softmax_scale(softmax_scale, q)
    seqlen_q, seqlen_k = q.shape[1], k.shape[1]
    if not causal:
        return _attend(q, k, v, scale=scale, dropout_p=dropout_p)
    if seqlen_q == seqlen_k:
        return _attend(q, k, v, scale=scale, square_causal=True, dropout_p=dropout_p)
    key_lens = torch.full((q.shape[0],), seqlen_k, dtype=torch.long, device=q.device)
    mask = _causal_mask(seqlen_q, key_lens, seqlen_k)
    return _attend(q, k, v, scale=scale, mask=mask, dropout_p=dropout_p)


def _gather_pages(cache: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """Pages `[..., n]` of a `[num_blocks, block_size, Hkv, D]` cache as `[..., n * block_size, Hkv, D]`."""
    # The engine pads block tables with -1; those pages are masked out, any valid index will do.
    pages = cache[block_ids.clamp(min=0).long()]
    return pages.reshape(*block_ids.shape[:-1], -1, *cache.shape[2:])


def flash_attn_varlen_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    block_table: torch.Tensor | None = None,
) -> torch.Tensor:
    """Packed variable-length attention: q `[total_q, H, D]` -> `[total_q, H, D]`.

    Without `block_table`, k/v are packed like q: `[total_k, Hkv, D]`, split by `cu_seqlens_k`. With it,
    k/v are the paged cache `[num_blocks, block_size, Hkv, D]`, sequence `b` owns the pages listed in
    `block_table[b]` (int32, padded with -1), and `cu_seqlens_k` gives each sequence's key count.
    """
    _reject_unsupported(window_size, softcap, alibi_slopes, return_attn_probs=return_attn_probs)
    scale = _softmax_scale(softmax_scale, q)
    # Prefill runs eagerly (the engine only graph-captures decode), so reading the offsets on the host
    # and looping over sequences is allowed here.
    q_offsets = cu_seqlens_q.tolist()
    k_offsets = cu_seqlens_k.tolist()
    out = q.new_zeros(q.shape)
    block_size = k.shape[1] if block_table is not None else 0
    for b in range(len(q_offsets) - 1):
        q_start, q_end = q_offsets[b], q_offsets[b + 1]
        seqlen_q = q_end - q_start
        seqlen_k = k_offsets[b + 1] - k_offsets[b]
        if seqlen_q == 0 or seqlen_k == 0:
            continue  # no query, or nothing to attend to: flash-attn's output is zero
        if block_table is None:
            k_b = k[k_offsets[b] : k_offsets[b + 1]]
            v_b = v[k_offsets[b] : k_offsets[b + 1]]
        else:
            pages = block_table[b, : -(-seqlen_k // block_size)]
            k_b = _gather_pages(k, pages)[:seqlen_k]
            v_b = _gather_pages(v, pages)[:seqlen_k]
        q_b, k_b, v_b = q[q_start:q_end].unsqueeze(0), k_b.unsqueeze(0), v_b.unsqueeze(0)
        if causal and seqlen_q == seqlen_k:
            o_b = _attend(q_b, k_b, v_b, scale=scale, square_causal=True, dropout_p=dropout_p)
        elif causal:
            key_lens = torch.full((1,), seqlen_k, dtype=torch.long, device=q.device)
            mask = _causal_mask(seqlen_q, key_lens, seqlen_k)
            o_b = _attend(q_b, k_b, v_b, scale=scale, mask=mask, dropout_p=dropout_p)
        else:
            o_b = _attend(q_b, k_b, v_b, scale=scale, dropout_p=dropout_p)
        out[q_start:q_end] = o_b[0]
    return out


def flash_attn_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    rotary_cos: torch.Tensor | None = None,
    rotary_sin: torch.Tensor | None = None,
    cache_seqlens: int | torch.Tensor | None = None,
    cache_batch_idx: torch.Tensor | None = None,
    cache_leftpad: torch.Tensor | None = None,
    block_table: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    rotary_interleaved: bool = True,
    alibi_slopes: torch.Tensor | None = None,
    num_splits: int = 0,
    return_softmax_lse: bool = False,
) -> torch.Tensor:
    """Attention of q `[B, Sq, H, D]` over a KV cache -> `[B, Sq, H, D]`; the engine's decode step (Sq = 1).

    The cache is paged, `[num_blocks, block_size, Hkv, D]` with `block_table` `[B, max_blocks]` (int32,
    padded with -1), or contiguous, `[B_cache, max_len, Hkv, D]` (rows picked by `cache_batch_idx`).
    `cache_seqlens` (int or int32 `[B]`) is each sequence's number of valid keys, new token included.
    """
    # The engine writes new K/V into the cache itself (store_kvcache) and applies rotary beforehand.
    _reject_unsupported(
        window_size,
        softcap,
        alibi_slopes,
        k=k,
        v=v,
        rotary_cos=rotary_cos,
        rotary_sin=rotary_sin,
        cache_leftpad=cache_leftpad,
        return_softmax_lse=return_softmax_lse,
    )
    scale = _softmax_scale(softmax_scale, q)
    batch, seqlen_q = q.shape[0], q.shape[1]
    if (
        _decode == "triton"
        and block_table is not None
        and seqlen_q == 1
        and isinstance(cache_seqlens, torch.Tensor)
        and cache_batch_idx is None
    ):
        # nano-vllm's decode call. Imported here so that the SDPA paths work where triton is absent.
        from voxport.engine.triton_decode import paged_decode_attention

        return paged_decode_attention(q, k_cache, v_cache, block_table, cache_seqlens, scale)
    # Everything below is shape-static and free of host syncs: the engine captures decode in CUDA graphs
    # (with a block table as wide as max_model_len allows, and zero cache_seqlens on padded rows).
    if block_table is not None:
        if cache_batch_idx is not None:
            raise NotImplementedError("sdpa flash_attn drop-in: cache_batch_idx with block_table")
        keys = _gather_pages(k_cache, block_table)
        values = _gather_pages(v_cache, block_table)
    else:
        rows = (
            slice(0, batch)
            if cache_batch_idx is None
            else cache_batch_idx.to(device=k_cache.device, dtype=torch.long)
        )
        keys, values = k_cache[rows], v_cache[rows]
    max_k = keys.shape[1]
    if cache_seqlens is None:
        key_lens = torch.full((batch,), max_k, dtype=torch.long, device=q.device)
    elif isinstance(cache_seqlens, int):
        key_lens = torch.full((batch,), cache_seqlens, dtype=torch.long, device=q.device)
    else:
        key_lens = cache_seqlens.to(device=q.device, dtype=torch.long)
    # Slots past a sequence's length are never written (the cache comes from torch.empty, and -1 table
    # entries read some other sequence's page) and may hold NaN/Inf; a masked score does not stop
    # 0 * NaN in the value product, so those slots are zeroed. Gathered K/V are private copies.
    invalid = (torch.arange(max_k, device=q.device).view(1, max_k) >= key_lens.view(-1, 1)).view(
        batch, max_k, 1, 1
    )
    if block_table is not None or cache_batch_idx is not None:
        keys, values = keys.masked_fill_(invalid, 0), values.masked_fill_(invalid, 0)
    else:
        keys, values = keys.masked_fill(invalid, 0), values.masked_fill(invalid, 0)
    if causal:
        mask = _causal_mask(seqlen_q, key_lens, max_k)
    else:
        mask = ~invalid.view(batch, 1, max_k).expand(batch, seqlen_q, max_k)
    return _attend(q, keys, values, scale=scale, mask=mask)


def set_decode_kernel(decode: DecodeKernel) -> None:
    """Choose the drop-in's decode implementation, here and in processes started from here later."""
    global _decode
    if decode not in ("sdpa", "triton"):
        raise ValueError(f"unknown decode kernel {decode!r}")
    _decode = decode
    os.environ[DECODE_ENV] = decode


def decode_kernel() -> DecodeKernel:
    return _decode


def install_as_flash_attn(force: bool = False, decode: DecodeKernel = "sdpa") -> str:
    """Make `import flash_attn` work, backed by this module when the real package cannot be imported.

    Returns "flash-attn" when the real package is in use, else the drop-in's decode implementation,
    `decode` ("sdpa" or "triton"). With `force`, the drop-in replaces whatever `flash_attn` is (modules
    that already imported from it keep what they got).

    The drop-in is installed as an importable package (its directory goes first on `sys.path`), not
    only as a `sys.modules` entry: nano-vllm loads the model in a worker started with the `spawn`
    method, a fresh interpreter that imports `flash_attn` again and inherits only the parent's
    `sys.path`.
    """
    current = sys.modules.get("flash_attn")
    ours = getattr(current, _MARKER, False)
    if ours and _SHIM_DIR in sys.path:
        set_decode_kernel(decode)
        return decode
    if not force and not ours:
        if current is not None:
            return "flash-attn"
        try:
            importlib.import_module("flash_attn")
            return "flash-attn"
        except Exception:  # a build for another CUDA/torch fails with more than ImportError
            sys.modules.pop("flash_attn", None)

    set_decode_kernel(decode)
    if _SHIM_DIR in sys.path:
        sys.path.remove(_SHIM_DIR)
    sys.path.insert(0, _SHIM_DIR)
    for name in [n for n in sys.modules if n == "flash_attn" or n.startswith("flash_attn.")]:
        del sys.modules[name]
    importlib.invalidate_caches()
    module = importlib.import_module("flash_attn")
    if not getattr(module, _MARKER, False):  # only if something replaced sys.path[0] under us
        raise RuntimeError(f"import flash_attn gave {module.__file__}, not voxport's drop-in")
    return decode
