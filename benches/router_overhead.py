#!/usr/bin/env python3
"""What the router costs: perf_analyzer straight to a tern-node, then through a tern-router in
front of the same node (and through `tern serve`), same model and concurrency, alternating so
machine noise hits both sides alike.

    .venv/bin/python benches/router_overhead.py [--window-ms 5000] [--rounds 2] [--write]
        [--cases tiny_add:1,tiny_add:16] [--variant NAME=BINDIR ...]

Every row also shows each server process's CPU time (utime + stime from /proc, over the
perf_analyzer run) divided by the requests that process served (its own counters on /metrics):
on a 2-core machine that the client shares, a steadier figure than throughput or latency.
`--variant` (repeatable) compares builds: each names a directory holding tern-node, tern-router
and tern; the variants take turns within every round.

`--isolate-router` runs tern-router on the machine's last CPU and everything else (tern-node,
`tern serve`, perf_analyzer) on the others (taskset), as a router on its own machine would be:
on a small machine this separates what the router costs the node's clients in latency and
throughput from the CPU it takes away from a co-located node.

Targets (issue 6): light_resnet50 at concurrency 8, router throughput >= 95% of direct;
tiny_add at concurrency 1, the router adds <= 150 us to p50. --write replaces the section
"Router overhead" of benches/RESULTS.md with the table.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))
from benchlib import ENV, REL, free_port, start_server, write_section  # noqa: E402

PA = ROOT / ".tern" / "perf_analyzer"
REPO = ROOT / "examples" / "model_repository"
CASES = [("tiny_add", 1), ("tiny_add", 16), ("light_resnet50", 8)]
TICK = os.sysconf("SC_CLK_TCK")


# taskset prefixes (empty unless --isolate-router).
NODE_PIN: list[str] = []
ROUTER_PIN: list[str] = []


def perf(url, model, conc, window_ms, out_csv, stability=20):
    extra = ["--shape", "input:1,3,224,224"] if model == "light_resnet50" else []
    cmd = [*NODE_PIN, str(PA / "bin" / "perf_analyzer"), "-m", model, "-u", url, "-i", "grpc",
           "--concurrency-range", str(conc), "--measurement-interval", str(window_ms),
           "--stability-percentage", str(stability), "--max-trials", "5", "-f", str(out_csv), *extra]
    env = dict(ENV, LD_LIBRARY_PATH=str(PA / "lib"))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0 and not out_csv.exists():
        sys.exit(f"perf_analyzer failed:\n{r.stdout}\n{r.stderr}")
    row = next(csv.DictReader(open(out_csv)))
    return float(row["Inferences/Second"]), float(row["p50 latency"]), float(row["p99 latency"])


class Server:
    """A started server process, its CPU time and the requests it has served."""

    def __init__(self, proc, metrics_port, counter):
        self.proc, self.metrics_port, self.counter = proc, metrics_port, counter

    def cpu_s(self):
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime

    def served(self):
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        return sum(float(m.group(1)) for m in re.finditer(self.counter, text, re.M))

    def sample(self):
        return self.cpu_s(), self.served()


# tern_router_requests_total counts answered requests by code; the node's own counter is Triton's.
NODE_SERVED = r'^nv_inference_request_success\{[^}]*\} (\S+)'
ROUTER_SERVED = r'^tern_router_requests_total\{[^}]*code="OK"[^}]*\} (\S+)'


def start(args, mark, log, counter):
    mport = free_port()
    proc = start_server([*args, "--metrics-address", "127.0.0.1", "--metrics-port", str(mport)], mark, log)
    return Server(proc, mport, counter)


def measure(servers, url, model, conc, args, out_csv):
    """perf_analyzer against `url`, and CPU µs per request of each of `servers` over the run."""
    before = [s.sample() for s in servers]
    tput, p50, p99 = perf(url, model, conc, args.window_ms, out_csv, args.stability)
    after = [s.sample() for s in servers]
    cpu = [1e6 * (a[0] - b[0]) / max(a[1] - b[1], 1) for a, b in zip(after, before)]
    return tput, p50, p99, cpu


def stop(servers):
    for s in servers:
        s.proc.terminate()
    for s in servers:
        try:
            s.proc.wait(30)
        except subprocess.TimeoutExpired:
            s.proc.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--window-ms", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--stability", type=int, default=20,
                    help="perf_analyzer's --stability-percentage (raise it on a busy machine)")
    ap.add_argument("--cases", default=",".join(f"{m}:{c}" for m, c in CASES),
                    help="model:concurrency,... (default: %(default)s)")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=DIR: a build to compare (DIR holds tern-node, tern-router, tern)")
    ap.add_argument("--isolate-router", action="store_true",
                    help="tern-router on the last CPU, node, tern serve and perf_analyzer on the others")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if args.isolate_router:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            sys.exit("--isolate-router needs at least 2 CPUs")
        NODE_PIN[:] = ["taskset", "-c", ",".join(map(str, cpus[:-1]))]
        ROUTER_PIN[:] = ["taskset", "-c", str(cpus[-1])]
    cases = [(m, int(c)) for m, c in (x.split(":") for x in args.cases.split(","))]
    variants = [tuple(v.split("=", 1)) for v in args.variant] or [("", str(REL))]
    tmp = Path(tempfile.mkdtemp(prefix="tern-router-bench-"))
    repo = tmp / "repo"
    repo.mkdir()
    for m in sorted({m for m, _ in cases}):
        os.symlink(REPO / m, repo / m)
    sys.path.insert(0, str(ROOT / "tests" / "python"))
    import tritonclient.grpc as g
    results = {}
    running = []
    try:
        for rnd in range(args.rounds):
            for name, bindir in variants:
                bindir = Path(bindir)
                node_port, router_port, serve_port = free_port(), free_port(), free_port()
                node = start([*NODE_PIN, str(bindir / "tern-node"), "--model-repository", str(repo), "--grpc-address", "127.0.0.1",
                             "--grpc-port", str(node_port), "--allow-http", "false"],
                             "tern-node ready", tmp / "node.log", NODE_SERVED)
                running.append(node)
                router = start([*ROUTER_PIN, str(bindir / "tern-router"), "--grpc-address", "127.0.0.1", "--grpc-port", str(router_port),
                               "--allow-http", "false", "--node", f"127.0.0.1:{node_port}"],
                               "tern-router ready", tmp / "router.log", ROUTER_SERVED)
                running.append(router)
                # The router has found the node once it answers ServerReady true.
                c = g.InferenceServerClient(f"127.0.0.1:{router_port}")
                for _ in range(100):
                    if c.is_server_ready():
                        break
                    time.sleep(0.1)
                c.close()
                for model, conc in cases:
                    for side, port, watched in (("direct", node_port, [node]), ("router", router_port, [router, node])):
                        tput, p50, p99, cpu = measure(watched, f"127.0.0.1:{port}", model, conc, args,
                                                      tmp / f"{model}-{conc}-{side}-{name}-{rnd}.csv")
                        results.setdefault((name, model, conc, side), []).append((tput, p50, p99, *cpu))
                        print(f"{name} {model} c={conc} {side}: {tput:.0f} infer/s p50 {p50:.0f} us p99 {p99:.0f} us; "
                              f"CPU us/req {' + '.join(f'{x:.1f}' for x in cpu)}", flush=True)
                stop(running)
                running.clear()
                serve = start([*NODE_PIN, str(bindir / "tern"), "serve", "--model-repository", str(repo), "--grpc-address", "127.0.0.1",
                              "--grpc-port", str(serve_port), "--allow-http", "false"], "tern ready", tmp / "serve.log", NODE_SERVED)
                running.append(serve)
                for model, conc in cases:
                    tput, p50, p99, cpu = measure([serve], f"127.0.0.1:{serve_port}", model, conc, args,
                                                  tmp / f"{model}-{conc}-serve-{name}-{rnd}.csv")
                    results.setdefault((name, model, conc, "tern serve"), []).append((tput, p50, p99, *cpu))
                    print(f"{name} {model} c={conc} tern serve: {tput:.0f} infer/s p50 {p50:.0f} us p99 {p99:.0f} us; "
                          f"CPU us/req {cpu[0]:.1f}",
                          flush=True)
                stop(running)
                running.clear()
    finally:
        for s in running:
            s.proc.kill()
    lines = report(results, args, cases, variants)
    print("\n".join(lines))
    if args.write:
        write_section(section_title(args), lines)


def section_title(args):
    if args.isolate_router:
        return "## Router overhead, the router on a CPU of its own (`benches/router_overhead.py --isolate-router`)"
    return "## Router overhead (`benches/router_overhead.py`)"


def med(rows, i):
    return statistics.median(r[i] for r in rows)


def report(results, args, cases, variants):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    load = open("/proc/loadavg").read().split()[:3]
    many = len(variants) > 1
    cmd = f".venv/bin/python benches/router_overhead.py --window-ms {args.window_ms} --rounds {args.rounds}"
    if args.stability != 20:
        cmd += f" --stability {args.stability}"
    if args.cases != ",".join(f"{m}:{c}" for m, c in CASES):
        cmd += f" --cases {args.cases}"
    cmd += "".join(f" --variant {n}={d}" for n, d in variants if n)
    cmd += " --isolate-router" if args.isolate_router else ""
    cmd += " --write"
    where = (f"tern-router pinned to CPU {ROUTER_PIN[-1]}, tern-node, `tern serve` and perf_analyzer to CPUs "
             f"{NODE_PIN[-1]} (taskset)" if args.isolate_router else "router, node and perf_analyzer share the machine")
    L = [section_title(args), "",
         f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} cores ({cpu}), {platform.platform()}; "
         f"load average at the end {' '.join(load)}; "
         f"{where}. One tern-node (none mode, the model's own config), "
         "one tern-router in front of it (`--node`), and `tern serve`; perf_analyzer over gRPC, "
         f"{args.window_ms} ms windows, median of {args.rounds} alternating rounds. CPU µs/req: the process's "
         "utime + stime over the perf_analyzer run divided by the requests it served in that time "
         "(router: `tern_router_requests_total` OK; node and `tern serve`: `nv_inference_request_success`).",
         "", f"Command: `{cmd}`", "",
         f"| {'variant | ' if many else ''}model | concurrency | path | infer/s | p50 µs | p99 µs | vs direct "
         "| router CPU µs/req | node CPU µs/req | serve CPU µs/req |",
         f"|{'---|' if many else ''}---|---|---|---|---|---|---|---|---|---|"]
    for name, _ in variants:
        for model, conc in cases:
            direct = results[(name, model, conc, "direct")]
            for side in ("direct", "router", "tern serve"):
                rows = results.get((name, model, conc, side))
                if not rows:
                    continue
                t, p50, p99 = med(rows, 0), med(rows, 1), med(rows, 2)
                vs = "" if side == "direct" else (
                    f"{100 * t / med(direct, 0):.1f}% throughput, p50 {p50 - med(direct, 1):+.0f} µs")
                c = [f"{med(rows, i):.1f}" for i in range(3, len(rows[0]))]
                # CPU figures in the order measure() watched the processes.
                router_cpu, node_cpu, serve_cpu = (
                    ("", c[0], "") if side == "direct" else (c[0], c[1], "") if side == "router" else ("", "", c[0]))
                L.append(f"| {name + ' | ' if many else ''}{model} | {conc} | {side} | {t:.0f} | {p50:.0f} | {p99:.0f} | {vs} "
                         f"| {router_cpu} | {node_cpu} | {serve_cpu} |")
    return L


if __name__ == "__main__":
    main()
