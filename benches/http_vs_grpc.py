#!/usr/bin/env python3
"""HTTP against gRPC: tern-node and real Triton, each serving both protocols at once, measured by
perf_analyzer (`-i http` with its default binary tensors, and `-i grpc`) in alternating rounds.

    .venv/bin/python benches/http_vs_grpc.py [--window-ms 3000] [--rounds 2] [--no-triton] [--write]

Run through `make bench-http` (builds, installs the Triton peer). Raw outputs go to
benches/out/<UTC time>.http/; --write replaces the "make bench http" section of
benches/RESULTS.md.

Targets (issue 19): light_resnet50 over HTTP (binary data) serves within 10% of gRPC; tern-node's
server CPU per request over HTTP on tiny_add is at most a third of Triton's over HTTP.
"""
import argparse
import datetime as dt
import shutil
import signal
import sys
import time
from pathlib import Path

import bench  # the same Server, perf_analyzer point and CPU accounting as `make bench`

CASES = [("tiny_add", 1), ("tiny_add", 16), ("light_resnet50", 1), ("light_resnet50", 16)]
PROTOCOLS = ("grpc", "http")


class Via:
    """One server seen through one protocol: perf_analyzer dials `addr`; statistics, CPU and the
    latency histogram still come from the server itself."""

    def __init__(self, server, protocol):
        self.server, self.protocol = server, protocol
        self.kind = f"{server.kind}.{protocol}"
        self.addr = server.http_addr if protocol == "http" else server.addr
        self.proc = server.proc

    def served(self, model):
        return self.server.served(model)

    def latency_hist(self, model):
        return self.server.latency_hist(model)


def med(rows, key):
    """The median of `key` over the rows that measured it (bench.median), or None."""
    return bench.median([r.get(key) for r in rows])


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser()
    ap.add_argument("--window-ms", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-triton", action="store_true")
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    if not 1 <= a.rounds <= 10 or not 500 <= a.window_ms <= 30000:
        sys.exit("--rounds must be 1..10 and --window-ms 500..30000")

    plan = bench.Plan(quick=True)
    plan.window_ms, plan.stability, plan.trials = a.window_ms, 25, 4
    kinds = ["tern"] + ([] if a.no_triton else ["triton"])
    plan.points = {k: {} for k in kinds}
    started = dt.datetime.now(dt.timezone.utc)
    out = bench.ROOT / "benches/out" / (started.strftime("%Y%m%dT%H%M%SZ") + ".http")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bin").mkdir(exist_ok=True)
    node = out / "bin" / bench.NODE.name
    shutil.copy2(bench.NODE, node)
    bench.NODE = node
    commands = []
    repos = bench.make_repos(out, plan)
    mach = bench.machine()
    servers, rows = {}, []
    try:
        for kind in kinds:
            servers[kind] = bench.Server(kind, repos[kind], out, commands, label=f"{kind}.http", http=True)
            if not servers[kind].http_addr:
                sys.exit(f"{kind} did not report an HTTP address; see {servers[kind].logpath}")
        for rnd in range(a.rounds):
            for model, conc in CASES:
                # Who goes first alternates round by round, so neither always follows the other.
                order = kinds if rnd % 2 == 0 else kinds[::-1]
                protos = PROTOCOLS if rnd % 2 == 0 else PROTOCOLS[::-1]
                for kind in order:
                    for proto in protos:
                        via = Via(servers[kind], proto)
                        r = bench.pa_point(plan, via, model, conc, out, commands,
                                           client_args=("-i", proto), tag_suffix=f".r{rnd}")
                        r.update(kind=kind, protocol=proto, round=rnd)
                        rows.append(r)
                        if "error" in r:
                            print(f"[http] r{rnd} {kind} {proto} {model} c{conc}: FAILED {r['error'][-300:]}",
                                  flush=True)
                        else:
                            print(f"[http] r{rnd} {kind} {proto} {model} c{conc}: {r['ips']:.1f} infer/s, p50 "
                                  f"{r['p50']:.2f} ms, server {bench.fmt(r['srv_us_per_req'])} µs/request",
                                  flush=True)
    finally:
        for srv in servers.values():
            srv.stop()
    finished = dt.datetime.now(dt.timezone.utc)
    section = report(rows, kinds, mach, commands, out, a, started, finished)
    (out / "RESULTS.section.md").write_text(section)
    print(section)
    if a.write:
        bench.write_results(bench.ROOT / "benches/RESULTS.md", section, "http")


def report(rows, kinds, mach, commands, out, a, started, finished):
    ok = [r for r in rows if "error" not in r]
    failed = [r for r in rows if "error" in r]

    def pick(kind, proto, model, conc):
        return [r for r in ok if (r["kind"], r["protocol"], r["model"], r["conc"]) == (kind, proto, model, conc)]

    lines = [bench.BEGIN.format(mode="http"), "",
             "## HTTP against gRPC (`make bench-http`)", "",
             f"Run {started:%Y-%m-%d %H:%M} UTC, {(finished - started).total_seconds() / 60:.1f} min, "
             f"{a.rounds} round(s), {a.window_ms} ms windows; machine: {mach.get('cpu', '?')}, "
             f"{mach.get('cores', '?')} cores. Both protocols are served by the same process at once; "
             "perf_analyzer `-b 1`, `-i http` sends and receives binary tensor data (its default). "
             "Medians over rounds. CPU µs/req = the server's CPU time over the run divided by the "
             "requests it served.", "",
             "| model | c | server | protocol | infer/s | p50 ms | p99 ms | server CPU µs/req | HTTP / gRPC infer/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model, conc in CASES:
        for kind in kinds:
            grpc_ips = med(pick(kind, "grpc", model, conc), "ips")
            for proto in PROTOCOLS:
                rs = pick(kind, proto, model, conc)
                ips = med(rs, "ips")
                ratio = f"{ips / grpc_ips:.0%}" if proto == "http" and ips and grpc_ips else ""
                lines.append(f"| {model} | {conc} | {kind} | {proto} | {bench.fmt(ips)} | {bench.fmt(med(rs, 'p50'), 2)} "
                             f"| {bench.fmt(med(rs, 'p99'), 2)} | {bench.fmt(med(rs, 'srv_us_per_req'))} | {ratio} |")
    lines += ["", "Targets:"]
    for conc in (1, 16):
        h = med(pick("tern", "http", "light_resnet50", conc), "ips")
        g = med(pick("tern", "grpc", "light_resnet50", conc), "ips")
        if h and g:
            lines.append(f"- light_resnet50 c={conc}: HTTP serves {h / g:.0%} of gRPC (target ≥ 90%): "
                         f"{'met' if h / g >= 0.9 else 'NOT met'}.")
    if "triton" in kinds:
        for conc in (1, 16):
            t = med(pick("tern", "http", "tiny_add", conc), "srv_us_per_req")
            tr = med(pick("triton", "http", "tiny_add", conc), "srv_us_per_req")
            if t and tr:
                lines.append(f"- tiny_add c={conc} over HTTP: tern-node uses {t / tr:.0%} of Triton's server CPU "
                             f"per request (target ≤ 33%): {'met' if t / tr <= 1 / 3 else 'NOT met'}.")
    if failed:
        lines += ["", "Failed points:"] + [f"- {r['kind']} {r['protocol']} {r['model']} c{r['conc']}: "
                                           f"{r['error'][-200:]!r}" for r in failed]
    lines += ["", f"Raw outputs: {bench.rel(out)}. Commands:", "", "```"] + commands + [
        "# perf_analyzer: see the .try*.txt files next to each CSV", "```", "",
        bench.END.format(mode="http"), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
