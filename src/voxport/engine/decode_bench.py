"""Decode-attention microbenchmark: the Triton paged kernel against the SDPA drop-in's page gather.

    python -m voxport.engine.decode_bench [--batches 1,16,64,128,256] [--context 1024] [--json out.json]

Times one layer's decode attention as nano-vllm calls it (q `[B, 1, 16, 128]` over a paged bf16 cache with
2 KV heads and pages of 256, VoxCPM2's LM geometry), with a block table as wide as the window, the way the
engine's CUDA graphs pass it. Both paths are captured in a CUDA graph and timed by replaying it, which is
how the engine runs decode; capturing the kernel is itself a check that it has no host sync. Each batch
size also reports the largest difference between the two outputs. CUDA only: elsewhere it says so and
exits with status 2.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _graph_time_ms(fn: Callable[[], torch.Tensor], iters: int) -> tuple[float, torch.Tensor]:
    """Mean milliseconds per call of `fn` replayed from a CUDA graph, and its output."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the graph compiles the Triton kernels
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters, out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from voxport.engine import sdpa_attention
    from voxport.engine.triton_decode import paged_decode_attention

    device = torch.device("cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    width = -(-args.max_model_len // args.page)
    scale = args.head_dim**-0.5
    gen = torch.Generator(device=device).manual_seed(0)
    sdpa_attention.set_decode_kernel("sdpa")  # the drop-in's own decode: the gather being compared
    rows = []
    for batch in args.batches:
        # Every sequence owns a full window of pages, shuffled so that neighbours are not adjacent.
        num_blocks = batch * width
        shape = (num_blocks, args.page, args.kv_heads, args.head_dim)
        k_cache = torch.randn(shape, generator=gen, device=device).to(dtype)
        v_cache = torch.randn(shape, generator=gen, device=device).to(dtype)
        table = torch.randperm(num_blocks, generator=gen, device=device).to(torch.int32).view(batch, width)
        lens = torch.full((batch,), args.context, dtype=torch.int32, device=device)
        q = torch.randn(batch, 1, args.heads, args.head_dim, generator=gen, device=device).to(dtype)

        kernel = functools.partial(paged_decode_attention, q, k_cache, v_cache, table, lens, scale)
        gather = functools.partial(
            sdpa_attention.flash_attn_with_kvcache,
            q,
            k_cache,
            v_cache,
            cache_seqlens=lens,
            block_table=table,
            softmax_scale=scale,
            causal=True,
        )
        kernel_ms, kernel_out = _graph_time_ms(kernel, args.iters)
        gather_ms, gather_out = _graph_time_ms(gather, args.iters)
        row = {
            "batch": batch,
            "context": args.context,
            "window": width * args.page,
            "kernel_ms": round(kernel_ms, 4),
            "gather_ms": round(gather_ms, 4),
            "speedup": round(gather_ms / kernel_ms, 2),
            "max_abs_diff": float((kernel_out.float() - gather_out.float()).abs().max()),
        }
        rows.append(row)
        print(
            f"batch {batch:4d}  context {args.context}  kernel {kernel_ms:8.4f} ms"
            f"  gather {gather_ms:8.4f} ms  x{row['speedup']:.2f}  max|diff| {row['max_abs_diff']:.2e}",
            flush=True,
        )
        del k_cache, v_cache, kernel_out, gather_out
        torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m voxport.engine.decode_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--batches", type=_parse_ints, default=[1, 16, 64, 128, 256])
    parser.add_argument("--context", type=int, default=1024, help="keys per sequence (all sequences alike)")
    parser.add_argument("--max-model-len", type=int, default=4096, help="window: sets the block-table width")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--page", type=int, default=256, help="KV-cache block size")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.context > args.max_model_len:
        parser.error("--context must not exceed --max-model-len")
    if not torch.cuda.is_available():
        print(
            "decode_bench needs a CUDA GPU (the kernel is timed on one); none is available here",
            file=sys.stderr,
        )
        return 2
    print(
        f"decode attention per layer: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
        f"{args.dtype}, heads {args.heads}/{args.kv_heads}, head dim {args.head_dim}, page {args.page}, "
        f"CUDA-graph replay, {args.iters} iterations",
        flush=True,
    )
    rows = run(args)
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(0), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
