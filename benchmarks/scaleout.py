"""Scale-out with `--engine sim`: one replica alone against two behind HAProxy (deploy/haproxy.cfg, as
shipped), in audio seconds per second at a concurrency that saturates one replica. docs/scaling.md reports it.

Each replica's simulated GPU generates at most --max-num-seqs sequences at once (a step takes
--sim-step-ms + --sim-step-ms-per-seq x batch), so one replica's throughput is bounded by its engine, as a
GPU bounds a real one; the default concurrency keeps both replicas' batches full with a queue behind them.
What else limits the ratio is this machine's CPU: every replica, HAProxy and the load generator share it.
The defaults (a small, slow simulated GPU: 8 sequences, 40 ms a step, about 31 audio-s/s per replica) keep
each replica's engine, not its Python process, the bottleneck on a small machine; a replica's own CPU cost
per audio-second is what `voxport bench --engine sim` measures (docs/benchmarks.md). Run it on a quiet
machine; with cores to spare, raise --max-num-seqs and lower --sim-step-ms towards the sim's GPU rates.

    python benchmarks/scaleout.py                     # defaults; prints both figures and the ratio
    python benchmarks/scaleout.py --rounds 3 --out benchmarks/results/scaleout-$(date +%Y%m%d-%H%M)

The load is `voxport bench` (streamed pcm requests, every one fresh: no cache hits); the replicas are
`voxport serve --engine sim` processes on loopback; HAProxy is Debian's (apt-get install haproxy).
Exit status: 0 when no request failed, 1 otherwise, 2 when a process could not start.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from voxport.bench.cli import main as bench_main
from voxport.bench.spawn import SpawnedServer

ROOT = Path(__file__).resolve().parents[1]
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HAProxy:
    """deploy/haproxy.cfg with its two server lines pointed at the replicas (its environment variables)."""

    def __init__(self, binary: str, replicas: list[str], log: Path):
        self.port, stats = _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stats_url = f"http://127.0.0.1:{stats}/stats;csv"
        env = {**os.environ, "VOXPORT_LB_BIND": f"127.0.0.1:{self.port}",
               "VOXPORT_LB_STATS_BIND": f"127.0.0.1:{stats}",
               "VOXPORT_REPLICA_1": replicas[0], "VOXPORT_REPLICA_2": replicas[1]}  # fmt: skip
        self._log = log.open("wb")
        self.proc = subprocess.Popen([binary, "-db", "-f", str(HAPROXY_CFG)], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env)  # fmt: skip

    def wait_up(self, timeout: float = 30) -> bool:
        """Until both servers are UP in HAProxy's statistics."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                rows = httpx.get(self.stats_url, timeout=2).text.splitlines()
                if sum(1 for row in rows if row.startswith("voxport,replica") and ",UP," in row) == 2:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self._log.close()


def _bench(url: str, args: argparse.Namespace, out: Path, concurrency: int, requests: int) -> dict:
    """One level of `voxport bench` against `url`; its level summary from bench.json."""
    code = bench_main(["--url", url, "--format", "pcm", "--max-length", str(args.max_length),
                       "--concurrency", str(concurrency), "--requests", str(requests),
                       "--timeout", "300", "--out", str(out)])  # fmt: skip
    level = json.loads((out / "bench.json").read_text())["levels"]["server"][0]
    level["exit_code"] = code
    return level


def _replica(args: argparse.Namespace, scratch: Path, name: str) -> SpawnedServer:
    spawn = argparse.Namespace(
        engine="sim", sim_step_ms=args.sim_step_ms, sim_step_ms_per_seq=args.sim_step_ms_per_seq,
        engine_model=None, device="auto",
        server_arg=["--max-num-seqs", str(args.max_num_seqs), "--cache-ttl-minutes", "0"],
    )  # fmt: skip
    return SpawnedServer(spawn, log_path=scratch / f"{name}.log")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-num-seqs", type=int, default=8, help="Each replica's simulated batch width.")
    parser.add_argument("--sim-step-ms", type=float, default=40.0)
    parser.add_argument("--sim-step-ms-per-seq", type=float, default=0.06)
    parser.add_argument("--max-length", type=int, default=32, help="Steps of 0.16 s per request.")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="Requests at once (default: 4 x max-num-seqs: both replicas full, and queued).",
    )
    parser.add_argument(
        "--requests", type=int, default=None, help="Requests per run (default: 8 x concurrency)."
    )
    parser.add_argument("--rounds", type=int, default=1, help="Runs of each setup, alternating; medians.")
    parser.add_argument("--haproxy", default=shutil.which("haproxy") or "/usr/sbin/haproxy")
    parser.add_argument("--out", type=Path, default=None, help="Directory for scaleout.json and bench files.")
    args = parser.parse_args()
    concurrency = args.concurrency or 4 * args.max_num_seqs
    requests = args.requests or 8 * concurrency
    scratch = Path(tempfile.mkdtemp(prefix="voxport-scaleout-"))
    out = args.out or scratch
    replicas = [_replica(args, scratch, f"replica{i}") for i in (1, 2)]
    lb = None
    try:
        for replica in replicas:
            if problem := replica.wait_ready():
                print(f"scaleout: {problem}", file=sys.stderr)
                return 2
        lb = HAProxy(args.haproxy, [f"127.0.0.1:{r.port}" for r in replicas], scratch / "haproxy.log")
        if not lb.wait_up():
            print(f"scaleout: HAProxy did not report both replicas up; see {scratch / 'haproxy.log'}",
                  file=sys.stderr)  # fmt: skip
            return 2
        for i, replica in enumerate(replicas):  # warm both: first requests pay one-off costs
            _bench(replica.url, args, scratch / f"warmup{i}", args.max_num_seqs, 2 * args.max_num_seqs)
        runs: dict[str, list[dict]] = {"one": [], "two": []}
        for n in range(args.rounds):
            runs["one"].append(_bench(replicas[0].url, args, out / f"one-{n}", concurrency, requests))
            runs["two"].append(_bench(lb.url, args, out / f"two-{n}", concurrency, requests))
    finally:
        if lb is not None:
            lb.stop()
        for replica in replicas:
            replica.stop()
    one = statistics.median(r["audio_s_per_s"] for r in runs["one"])
    two = statistics.median(r["audio_s_per_s"] for r in runs["two"])
    errors = sum(r["errors"] for rs in runs.values() for r in rs)
    summary = {
        "settings": {"max_num_seqs": args.max_num_seqs, "sim_step_ms": args.sim_step_ms,
                     "sim_step_ms_per_seq": args.sim_step_ms_per_seq, "max_length": args.max_length,
                     "concurrency": concurrency, "requests": requests, "rounds": args.rounds,
                     "cpus": os.cpu_count(), "loadavg_1m": os.getloadavg()[0]},
        "one_replica_audio_s_per_s": one, "two_replicas_haproxy_audio_s_per_s": two, "ratio": two / one,
        "errors": errors,
        "runs": {k: [{"audio_s_per_s": r["audio_s_per_s"], "errors": r["errors"], "wall_s": r["wall_s"],
                      "first_audio_ms": r["first_audio_ms"]} for r in rs] for k, rs in runs.items()},
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaleout.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nconcurrency {concurrency}, {requests} requests of {args.max_length * 0.16:.2f} s, "
          f"{args.max_num_seqs} sequences per replica's batch, {args.rounds} round(s); "
          f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    print(f"one replica alone:          {one:8.1f} audio-s/s")
    print(f"two replicas behind HAProxy:{two:8.1f} audio-s/s")
    print(f"ratio:                      {two / one:8.2f}x   (errors: {errors}; {out / 'scaleout.json'})")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
