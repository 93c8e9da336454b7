"""Plot `benchmarks/workers.py --json FILE`: audio-s/s and server CPU per audio second against concurrent
streams, one line per server shape and format.

    python benchmarks/plot_workers.py OUT.png FILE.json

Needs matplotlib (the `bench` extra).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from voxport.bench.report import concurrency_axes  # noqa: E402

COLORS = {"pcm": "tab:blue", "mp3": "tab:red", "opus": "tab:green"}  # one per format; dashed: one worker


def main(argv: list[str]) -> int:
    out, data = Path(argv[0]), json.loads(Path(argv[1]).read_text())
    fig, (rate, cpu) = plt.subplots(1, 2, figsize=(12, 4.5))
    ticks: set[int] = set()
    for shape in data["shapes"]:
        style = "-" if shape["workers"] > 1 else "--"
        for fmt in sorted({cell["format"] for cell in shape["streams"]}):
            cells = [c for c in shape["streams"] if c["format"] == fmt]
            xs = [c["streams"] for c in cells]
            ticks.update(xs)
            label = f"--workers {shape['workers']}, {fmt}"
            color = COLORS.get(fmt)
            rate.plot(xs, [c["audio_s_per_s"] for c in cells], style, marker="o", label=label, color=color)
            cpu.plot(xs, [c["server_cpu_ms_per_audio_s"] for c in cells], style, marker="o", label=label,
                     color=color)  # fmt: skip
    for ax, title, ylabel in (
        (rate, "Audio delivered (wrk, bytes read)", "audio s per s"),
        (cpu, "Server CPU per second of audio (every process)", "CPU ms per audio s"),
    ):
        concurrency_axes(ax, ticks, title, ylabel, xlabel="concurrent streams", legend_size=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
