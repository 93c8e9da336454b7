"""Paged decode attention in Triton: one query per sequence over nano-vllm's paged KV cache.

The SDPA drop-in's decode (`sdpa_attention.flash_attn_with_kvcache`) gathers every page a sequence's block
table could hold into a dense copy before attending, because a CUDA graph cannot size anything by the
sequences' real lengths. At batch 128 and a 4096 window that is ~0.5 GB of K/V copied per layer per step.
This kernel reads K/V in place, page by page through the block table, and stops at each sequence's length.

Layouts are the engine's: q `[B, 1, H, D]`; k/v cache `[num_blocks, block_size, Hkv, D]`; block table
`[B, max_blocks]` int32 (entries past a sequence's length may be -1, 0 or stale: they are never read);
`cache_seqlens` `[B]` int32, 0 on the rows CUDA-graph replay pads a batch with (their output is zeros).

It is split-K ("flash-decoding"): at small batch, one program per (sequence, KV head) would leave most of
a GPU idle (batch 1 with 2 KV heads is 2 programs), so each sequence's key range is cut into `num_splits`
chunks attended in parallel, then merged by their log-sum-exp in a second kernel. The grid and the
chunking depend only on shapes (batch, heads, block-table width), never on tensor values, and there is no
host sync, so the call can be captured in a CUDA graph; lengths are read on the device, and a program
whose chunk lies past its sequence's end does no loads.

Each program handles all query heads that share one KV head (GQA), so each K/V tile is loaded once per
group; the group is padded to 16 rows because `tl.dot` needs M >= 16.
"""

from __future__ import annotations

import functools
import os

import torch

try:  # the `gpu` extra, not a base dependency: imported only where the Triton kernel is chosen
    import triton
    import triton.language as tl
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError('the Triton decode kernel needs triton: pip install "voxport[gpu]"') from exc

__all__ = ["paged_decode_attention", "choose_num_splits"]

_BLOCK_N = 64  # keys per tile: a 64x128 bf16 tile is 16 KiB, well within shared memory
_LOG2E = 1.4426950408889634
# Triton decides at decoration (when this module is imported) whether kernels are interpreted on the CPU.
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


@triton.jit
def _split_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    table_ptr,
    lens_ptr,
    part_out_ptr,
    part_lse_ptr,
    scale_log2,
    stride_qb,
    stride_qh,
    stride_kn,
    stride_ks,
    stride_kh,
    stride_vn,
    stride_vs,
    stride_vh,
    stride_tb,
    stride_ob,
    stride_oh,
    stride_os,
    stride_lb,
    stride_lh,
    keys_per_split,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    PAGE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    FP32_DOT: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)

    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, D_PAD)
    mask_g = offs_g < GROUP
    mask_d = offs_d < HEAD_DIM
    heads = kvh * GROUP + offs_g

    q = tl.load(
        q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
        mask=mask_g[:, None] & mask_d[None, :],
        other=0.0,
    )
    seq_len = tl.load(lens_ptr + b)
    start = split * keys_per_split
    stop = tl.minimum(start + keys_per_split, seq_len)

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, D_PAD], tl.float32)
    # The bound is read on the device: a sequence shorter than the window costs only its own pages.
    for tile in range(start, stop, BLOCK_N):
        offs_n = tile + tl.arange(0, BLOCK_N)
        mask_n = offs_n < stop
        # Masked lanes load nothing: slots past a sequence's end hold torch.empty garbage (maybe NaN),
        # and a zero probability would not stop 0 * NaN in the value product.
        page = tl.load(table_ptr + b * stride_tb + offs_n // PAGE, mask=mask_n, other=0).to(tl.int64)
        slot = offs_n % PAGE
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(
            k_ptr + page[:, None] * stride_kn + slot[:, None] * stride_ks + kvh * stride_kh + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        ).to(q.dtype)
        if FP32_DOT:
            s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(mask_n[None, :], s * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            v_ptr + page[:, None] * stride_vn + slot[:, None] * stride_vs + kvh * stride_vh + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        ).to(q.dtype)
        if FP32_DOT:
            # p is rounded to the input dtype first, as the native path does, so both agree.
            pv = p.to(v.dtype).to(tl.float32)
            acc = acc * alpha[:, None] + tl.dot(pv, v.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    # A chunk with no key (past the sequence's end, or a zero-length row) reports lse = -inf and zeros,
    # which the merge weighs as nothing.
    has_keys = l_i > 0
    out = tl.where(has_keys[:, None], acc / tl.where(has_keys, l_i, 1.0)[:, None], 0.0)
    lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
    tl.store(
        part_out_ptr + b * stride_ob + heads[:, None] * stride_oh + split * stride_os + offs_d[None, :],
        out,
        mask=mask_g[:, None] & mask_d[None, :],
    )
    tl.store(part_lse_ptr + b * stride_lb + heads * stride_lh + split, lse, mask=mask_g)


@triton.jit
def _merge_kernel(
    part_out_ptr,
    part_lse_ptr,
    o_ptr,
    stride_ob,
    stride_oh,
    stride_os,
    stride_lb,
    stride_lh,
    stride_b,
    stride_h,
    num_splits,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, D_PAD)
    mask_s = offs_s < num_splits
    mask_d = offs_d < HEAD_DIM
    lse = tl.load(part_lse_ptr + b * stride_lb + h * stride_lh + offs_s, mask=mask_s, other=float("-inf"))
    m = tl.max(lse, 0)
    # All chunks empty (a zero-length row): every weight is exp2(-inf) = 0 and the output is zeros.
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m)
    total = tl.sum(w, 0)
    parts = tl.load(
        part_out_ptr + b * stride_ob + h * stride_oh + offs_s[:, None] * stride_os + offs_d[None, :],
        mask=mask_s[:, None] & mask_d[None, :],
        other=0.0,
    )
    out = tl.sum(parts * w[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(o_ptr + b * stride_b + h * stride_h + offs_d, out.to(o_ptr.dtype.element_ty), mask=mask_d)


def _dot_in_fp32(dtype: torch.dtype) -> bool:
    """Whether the kernel's two products run as fp32 dots instead of native ones.

    fp32 inputs: always, at IEEE precision (a TF32 dot would lose ~3 decimal digits). bf16 under Triton's
    CPU interpreter too: it keeps bf16 as raw uint16 and its `tl.dot` multiplies those bits (seen with
    triton 3.9). Upcasting operands that are already bf16 is exact, and products of two bf16 values fit
    fp32 exactly, so this path computes what a bf16 dot with fp32 accumulation does, in another order.
    """
    if dtype == torch.float32:
        return True
    return _INTERPRETED and dtype == torch.bfloat16


@functools.lru_cache(maxsize=8)
def _programs_wanted(device: torch.device) -> int:
    # Enough programs to fill every SM about twice; on CPU (the interpreter) parallelism means nothing.
    if device.type != "cuda":
        return 1
    return 2 * torch.cuda.get_device_properties(device).multi_processor_count


def choose_num_splits(batch: int, num_kv_heads: int, max_keys: int, programs_wanted: int) -> int:
    """Chunks per sequence: enough programs to fill the GPU, each chunk at least one tile of keys.

    A function of shapes only, so a CUDA graph captured for a batch size keeps its grid valid.
    """
    per_row = max(1, batch * num_kv_heads)
    splits = max(1, -(-programs_wanted // per_row))
    return max(1, min(splits, -(-max_keys // _BLOCK_N)))


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    softmax_scale: float,
    num_splits: int | None = None,
) -> torch.Tensor:
    """q `[B, 1, H, D]` over the paged cache -> contiguous `[B, 1, H, D]` in q's dtype.

    `num_splits` overrides the chunk count (tests use it to cover merging on small shapes).
    """
    batch, seqlen_q, num_heads, head_dim = q.shape
    num_blocks, page, num_kv_heads, _ = k_cache.shape
    if seqlen_q != 1:
        raise ValueError("paged_decode_attention takes one query per sequence")
    if num_heads % num_kv_heads:
        raise ValueError(f"query heads ({num_heads}) must be a multiple of KV heads ({num_kv_heads})")
    if q.stride(-1) != 1 or k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("q and the K/V cache must be contiguous in the head dimension")
    group = num_heads // num_kv_heads
    max_keys = block_table.shape[1] * page
    if num_splits is None:
        num_splits = choose_num_splits(batch, num_kv_heads, max_keys, _programs_wanted(q.device))
    keys_per_split = -(-max_keys // num_splits)
    keys_per_split = -(-keys_per_split // _BLOCK_N) * _BLOCK_N
    lens = cache_seqlens if cache_seqlens.dtype == torch.int32 else cache_seqlens.to(torch.int32)
    table = block_table if block_table.stride(-1) == 1 else block_table.contiguous()

    part_out = torch.empty(batch, num_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
    part_lse = torch.empty(batch, num_heads, num_splits, dtype=torch.float32, device=q.device)
    out = torch.empty(batch, 1, num_heads, head_dim, dtype=q.dtype, device=q.device)
    d_pad = triton.next_power_of_2(head_dim)
    _split_kernel[(batch, num_kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        table,
        lens,
        part_out,
        part_lse,
        float(softmax_scale) * _LOG2E,
        q.stride(0),
        q.stride(2),
        *k_cache.stride()[:3],
        *v_cache.stride()[:3],
        table.stride(0),
        *part_out.stride()[:3],
        *part_lse.stride()[:2],
        keys_per_split,
        GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim,
        D_PAD=d_pad,
        PAGE=page,
        BLOCK_N=_BLOCK_N,
        FP32_DOT=_dot_in_fp32(q.dtype),
    )
    _merge_kernel[(batch, num_heads)](
        part_out,
        part_lse,
        out,
        *part_out.stride()[:3],
        *part_lse.stride()[:2],
        out.stride(0),
        out.stride(2),
        num_splits,
        HEAD_DIM=head_dim,
        D_PAD=d_pad,
        SPLITS_PAD=max(2, triton.next_power_of_2(num_splits)),
    )
    return out
