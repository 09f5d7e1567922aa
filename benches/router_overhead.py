#!/usr/bin/env python3
"""What the router costs: perf_analyzer straight to a tern-node, then through a tern-router in
front of the same node (and through `tern serve`), same model and concurrency, alternating so
machine noise hits both sides alike.

    .venv/bin/python benches/router_overhead.py [--window-ms 5000] [--rounds 2] [--write]

Targets (issue 6): light_resnet50 at concurrency 8, router throughput >= 95% of direct;
tiny_add at concurrency 1, the router adds <= 150 us to p50. --write replaces the section
"Router overhead" of benches/RESULTS.md with the table.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))
from benchlib import ENV, REL, free_port, start_server, write_section  # noqa: E402

PA = ROOT / ".tern" / "perf_analyzer"
REPO = ROOT / "examples" / "model_repository"
CASES = [("tiny_add", 1), ("tiny_add", 16), ("light_resnet50", 8)]


def perf(url, model, conc, window_ms, out_csv):
    extra = ["--shape", "input:1,3,224,224"] if model == "light_resnet50" else []
    cmd = [str(PA / "bin" / "perf_analyzer"), "-m", model, "-u", url, "-i", "grpc",
           "--concurrency-range", str(conc), "--measurement-interval", str(window_ms),
           "--stability-percentage", "20", "--max-trials", "5", "-f", str(out_csv), *extra]
    env = dict(ENV, LD_LIBRARY_PATH=str(PA / "lib"))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0 and not out_csv.exists():
        sys.exit(f"perf_analyzer failed:\n{r.stdout}\n{r.stderr}")
    row = next(csv.DictReader(open(out_csv)))
    return float(row["Inferences/Second"]), float(row["p50 latency"]), float(row["p99 latency"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--window-ms", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tern-router-bench-"))
    repo = tmp / "repo"
    repo.mkdir()
    for m in ("tiny_add", "light_resnet50"):
        os.symlink(REPO / m, repo / m)
    node_port, router_port, serve_port = free_port(), free_port(), free_port()
    procs = []
    try:
        procs.append(start_server([str(REL / "tern-node"), "--model-repository", str(repo), "--grpc-address", "127.0.0.1",
                            "--grpc-port", str(node_port), "--metrics-port", "0", "--allow-http", "false"], "tern-node ready", tmp / "node.log"))
        procs.append(start_server([str(REL / "tern-router"), "--grpc-address", "127.0.0.1", "--grpc-port", str(router_port),
                            "--metrics-port", "0", "--allow-http", "false", "--node", f"127.0.0.1:{node_port}"],
                           "tern-router ready",
                           tmp / "router.log"))
        # The router has found the node once it answers ServerReady true.
        sys.path.insert(0, str(ROOT / "tests" / "python"))
        import tritonclient.grpc as g
        c = g.InferenceServerClient(f"127.0.0.1:{router_port}")
        for _ in range(100):
            if c.is_server_ready():
                break
            time.sleep(0.1)
        results = {}
        for model, conc in CASES:
            for rnd in range(args.rounds):
                for side, port in (("direct", node_port), ("router", router_port)):
                    tput, p50, p99 = perf(f"127.0.0.1:{port}", model, conc, args.window_ms,
                                          tmp / f"{model}-{conc}-{side}-{rnd}.csv")
                    results.setdefault((model, conc, side), []).append((tput, p50, p99))
                    print(f"{model} c={conc} {side}: {tput:.0f} infer/s p50 {p50:.0f} us p99 {p99:.0f} us",
                          flush=True)
        for p in procs:
            p.terminate()
            p.wait(30)
        procs.clear()
        procs.append(start_server([str(REL / "tern"), "serve", "--model-repository", str(repo), "--grpc-address", "127.0.0.1",
                            "--grpc-port", str(serve_port), "--metrics-port", "0", "--allow-http", "false"], "tern ready", tmp / "serve.log"))
        for model, conc in CASES:
            for rnd in range(args.rounds):
                tput, p50, p99 = perf(f"127.0.0.1:{serve_port}", model, conc, args.window_ms,
                                      tmp / f"{model}-{conc}-serve-{rnd}.csv")
                results.setdefault((model, conc, "tern serve"), []).append((tput, p50, p99))
                print(f"{model} c={conc} tern serve: {tput:.0f} infer/s p50 {p50:.0f} us", flush=True)
    finally:
        for p in procs:
            p.kill()
    lines = report(results, args)
    print("\n".join(lines))
    if args.write:
        write_section('## Router overhead (`benches/router_overhead.py`)', lines)


def med(rows, i):
    return statistics.median(r[i] for r in rows)


def report(results, args):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    L = ["## Router overhead (`benches/router_overhead.py`)", "",
         f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} cores ({cpu}), {platform.platform()}; "
         "router, node and perf_analyzer share the machine. One tern-node (none mode, the model's own config), "
         "one tern-router in front of it (`--node`), and `tern serve`; perf_analyzer over gRPC, "
         f"{args.window_ms} ms windows, median of {args.rounds} alternating rounds.",
         "", f"Command: `.venv/bin/python benches/router_overhead.py --window-ms {args.window_ms} --rounds {args.rounds} --write`",
         "", "| model | concurrency | path | infer/s | p50 µs | p99 µs | vs direct |",
         "|---|---|---|---|---|---|---|"]
    for model, conc in CASES:
        direct = results[(model, conc, "direct")]
        for side in ("direct", "router", "tern serve"):
            rows = results.get((model, conc, side))
            if not rows:
                continue
            t, p50, p99 = med(rows, 0), med(rows, 1), med(rows, 2)
            vs = "" if side == "direct" else (
                f"{100 * t / med(direct, 0):.1f}% throughput, p50 {p50 - med(direct, 1):+.0f} µs")
            L.append(f"| {model} | {conc} | {side} | {t:.0f} | {p50:.0f} | {p99:.0f} | {vs} |")
    return L


if __name__ == "__main__":
    main()
