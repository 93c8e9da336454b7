"""Plot `voxport bench --engine sim` runs side by side: server CPU per second of audio and server / engine
throughput against concurrency, one line per run.

    python benchmarks/plot_sim.py OUT.png LABEL=DIR [LABEL=DIR ...]

Each DIR holds a bench.json (its `comparison` list). Needs matplotlib (the `bench` extra).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from voxport.bench.report import concurrency_axes  # noqa: E402


def main(argv: list[str]) -> int:
    out, runs = Path(argv[0]), [arg.split("=", 1) for arg in argv[1:]]
    fig, (cpu, ratio) = plt.subplots(1, 2, figsize=(12, 4.5))
    ticks: set[int] = set()
    for label, folder in runs:
        rows = json.loads((Path(folder) / "bench.json").read_text())["comparison"]
        xs = [r["concurrency"] for r in rows]
        ticks.update(xs)
        style = "--" if label.startswith("before") else "-"
        nan = float("nan")
        cpu.plot(xs, [r["cpu_ms_per_audio_s"] or nan for r in rows], style, marker="o", label=label)
        ratio.plot(xs, [r["ratio"] or nan for r in rows], style, marker="o", label=label)
    for ax, title, ylabel in (
        (cpu, "Server CPU per second of audio", "CPU ms per audio s (server + encoders)"),
        (ratio, "Server / in-process engine throughput", "audio s/s ratio"),
    ):
        concurrency_axes(ax, ticks, title, ylabel, xlabel="concurrent streams", legend_size=8)
    cpu.set_yscale("log")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
