#!/usr/bin/env python3
"""Batching that tunes itself (issue 25 item 3): Tern's `queue_delay: auto` against batching off
and Triton's fixed `max_queue_delay_microseconds` of 0, 100 µs, 1 ms and 5 ms, on tiny_add and
light_resnet50 at concurrency 1 and 16, all served by ONE tern-node (one model per variant, the
same model.onnx), perf_analyzer over gRPC, the variants in alternating rounds.

    .venv/bin/python benches/autobatch.py [--window-ms 2000] [--rounds 2] [--quiet-wait 120] [--write]

Run through `make bench-autobatch` (builds first); `make bench` (full) runs it too. Raw outputs go
to benches/out/<UTC time>.autobatch/; --write replaces the "make bench autobatch" section of
benches/RESULTS.md.

Targets (issue 25 item 3): at concurrency 1, auto's client p50 within 10% of batching off; at
concurrency 16, auto's throughput at least that of the best fixed delay. Also reported: the
node's CPU per request (utime + stime of the process over a perf_analyzer run, divided by the
requests it served), to show the controller keeps the hot path cheap.
"""
import argparse
import datetime as dt
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import bench  # the same Server, perf_analyzer point and CPU accounting as `make bench`

MODELS = ["tiny_add", "light_resnet50"]
CONCURRENCIES = [1, 16]
# Variant name -> the dynamic batching the model's config gets (None: the block removed).
VARIANTS = {
    "off": None,
    "fixed0": "max_queue_delay_microseconds: 0",
    "fixed100us": "max_queue_delay_microseconds: 100",
    "fixed1ms": "max_queue_delay_microseconds: 1000",
    "fixed5ms": "max_queue_delay_microseconds: 5000",
    "auto": "max_queue_delay_microseconds: 0",
}
FIXED = ["fixed0", "fixed100us", "fixed1ms", "fixed5ms"]
AUTO_PARAMS = 'parameters { key: "queue_delay" value { string_value: "auto" } }\n'


def variant_config(text, model, variant):
    """The example config of `model` as variant `variant`: renamed, its dynamic_batching's delay
    replaced (preferred sizes kept), or the block removed for `off`."""
    text = re.sub(r'^name: "[^"]*"', f'name: "{model}_{variant}"', text, count=1, flags=re.M)
    body = VARIANTS[variant]
    if body is None:
        return bench.strip_batching(text)
    text = re.sub(r"max_queue_delay_microseconds:\s*\d+", body, text, count=1)
    if variant == "auto":
        text += AUTO_PARAMS
    return text


def link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def make_repo(out):
    repo = out / "repo"
    for model in MODELS:
        src = bench.EXAMPLES / model
        for variant in VARIANTS:
            dst = repo / f"{model}_{variant}"
            dst.mkdir(parents=True)
            # Hard links where the file system allows: the variants share one model file.
            shutil.copytree(src, dst, copy_function=link_or_copy, dirs_exist_ok=True)
            (dst / "config.pbtxt").unlink()
            (dst / "config.pbtxt").write_text(variant_config((src / "config.pbtxt").read_text(), model, variant))
    return repo


def queue_delay_gauge(server, model):
    """tern-node's `tern_batch_queue_delay_us` for `model` (auto only), if exported."""
    import urllib.request

    if not server.metrics_url:
        return None
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    m = re.search(r'tern_batch_queue_delay_us\{[^}]*model="' + re.escape(model) + r'"[^}]*\} (\S+)', text)
    return float(m.group(1)) if m else None


def med(rows, key):
    """The median of `key` over the rows that measured it (bench.median), or None."""
    return bench.median([r.get(key) for r in rows])


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser()
    ap.add_argument("--window-ms", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--resnet-rounds", type=int, default=None, help="rounds for light_resnet50 (default: --rounds)")
    ap.add_argument("--resnet-requests", type=int, default=16,
                    help="light_resnet50 windows hold at least this many requests at c=16 (a quarter at c=1), "
                         "so a slow machine still completes some in each window")
    ap.add_argument("--quiet-wait", type=float, default=bench.QUIET_WAIT,
                    help="seconds to wait before each point for other CPU work to stop")
    ap.add_argument("--stability", type=int, default=25,
                    help="perf_analyzer's --stability-percentage; on a machine others load, a large value "
                         "(1000) takes every point after 3 windows, and the alternating rounds absorb drift")
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    if (not 1 <= a.rounds <= 10 or not 500 <= a.window_ms <= 30000 or not 0 <= a.quiet_wait <= 600
            or not 1 <= a.stability <= 10000 or not 1 <= a.resnet_requests <= 1000
            or not 1 <= (a.resnet_rounds or a.rounds) <= 10):
        sys.exit("--rounds must be 1..10, --window-ms 500..30000, --quiet-wait 0..600 and --stability 1..10000")
    bench.QUIET_WAIT = a.quiet_wait

    plan = bench.Plan(quick=True)
    plan.window_ms, plan.stability, plan.trials = a.window_ms, a.stability, 4 if a.stability < 1000 else 3
    started = dt.datetime.now(dt.timezone.utc)
    load_start = os.getloadavg()
    out = bench.ROOT / "benches/out" / (started.strftime("%Y%m%dT%H%M%SZ") + ".autobatch")
    (out / "bin").mkdir(parents=True, exist_ok=True)
    node = out / "bin" / bench.NODE.name
    shutil.copy2(bench.NODE, node)
    bench.NODE = node
    commands = []
    repo = make_repo(out)
    mach = bench.machine()
    rows = []
    server = bench.Server("tern", repo, out, commands, label="autobatch")
    try:
        variants = list(VARIANTS)
        rounds = {"tiny_add": a.rounds, "light_resnet50": a.resnet_rounds or a.rounds}
        for rnd in range(max(rounds.values())):
            for model in (m for m in MODELS if rnd < rounds[m]):
                for conc in CONCURRENCIES:
                    client_args = ()
                    if model == "light_resnet50":
                        count = a.resnet_requests if conc > 1 else max(2, a.resnet_requests // 4)
                        client_args = ("--measurement-mode", "count_windows", "--measurement-request-count", str(count))
                    # Each round starts one variant later, so none always follows the same one.
                    shift = rnd % len(variants)
                    for variant in variants[shift:] + variants[:shift]:
                        name = f"{model}_{variant}"
                        r = bench.pa_point(plan, server, name, conc, out, commands, client_args=client_args,
                                           tag_suffix=f".r{rnd}")
                        r.update(base=model, variant=variant, round=rnd)
                        if variant == "auto" and "error" not in r:
                            r["delay_us"] = queue_delay_gauge(server, name)
                        rows.append(r)
                        if "error" in r:
                            print(f"[autobatch] r{rnd} {name} c{conc}: FAILED {r['error'][-300:]}", flush=True)
                        else:
                            print(f"[autobatch] r{rnd} {name} c{conc}: {r['ips']:.1f} infer/s, p50 {r['p50']:.3f} ms, "
                                  f"avg batch {bench.fmt(r['avg_batch'], 2)}, node {bench.fmt(r['srv_us_per_req'])} "
                                  f"µs/request", flush=True)
    finally:
        server.stop()
    finished = dt.datetime.now(dt.timezone.utc)
    section = report(rows, mach, commands, out, a, started, finished, load_start, os.getloadavg())
    (out / "RESULTS.section.md").write_text(section)
    print(section)
    if a.write:
        bench.write_results(bench.ROOT / "benches/RESULTS.md", section, "autobatch")


def report(rows, mach, commands, out, a, started, finished, load_start, load_end):
    ok = [r for r in rows if "error" not in r]
    failed = [r for r in rows if "error" in r]

    def pick(model, conc, variant):
        return [r for r in ok if (r["base"], r["conc"], r["variant"]) == (model, conc, variant)]

    lines = [bench.BEGIN.format(mode="autobatch"), "",
             "## Batching that tunes itself (`make bench-autobatch`)", "",
             f"Run {started:%Y-%m-%d %H:%M} UTC, {(finished - started).total_seconds() / 60:.1f} min, "
             f"{a.rounds} round(s) of tiny_add, {a.resnet_rounds or a.rounds} of light_resnet50; {a.window_ms} ms "
             f"windows (light_resnet50: windows of at least {a.resnet_requests} requests at c=16, "
             f"{max(2, a.resnet_requests // 4)} at c=1); machine: {mach.get('cpu', '?')}, "
             f"{mach.get('cores', '?')} cores; load average {load_start[0]:.2f} at the start, "
             f"{load_end[0]:.2f} at the end (other work on the machine shares the cores). "
             "One tern-node serves every variant (a model per variant, same model.onnx, one CPU "
             "instance); the variants run in alternating rounds; medians over rounds. `off` has no "
             "`dynamic_batching`; `fixedX` is the example config with `max_queue_delay_microseconds` "
             "X (preferred sizes kept: tiny_add [64], light_resnet50 [4, 8]); `auto` is the same with "
             "`parameters { key: \"queue_delay\" value { string_value: \"auto\" } }` and the default "
             "budget (1 ms). perf_analyzer `-b 1` over gRPC. Node CPU µs/req = the node's utime + stime "
             "over the perf_analyzer run divided by the requests it served.", "",
             "| model | c | variant | infer/s per round | infer/s | p50 ms | p99 ms | avg batch | node CPU µs/req | vs off (p50) | vs best fixed (infer/s) |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    targets = []
    for model in MODELS:
        for conc in CONCURRENCIES:
            off_p50 = med(pick(model, conc, "off"), "p50")
            fixed = {v: med(pick(model, conc, v), "ips") for v in FIXED}
            best_v = max((v for v in FIXED if fixed[v]), key=lambda v: fixed[v], default=None)
            for variant in VARIANTS:
                rs = pick(model, conc, variant)
                if not rs:
                    continue
                ips, p50 = med(rs, "ips"), med(rs, "p50")
                vs_off = f"{p50 / off_p50:.2f}" if variant != "off" and p50 and off_p50 else ""
                vs_best = f"{ips / fixed[best_v]:.2f}" if best_v and ips and variant != best_v else ("best" if variant == best_v else "")
                lines.append(
                    f"| {model} | {conc} | {variant} | {', '.join(bench.fmt(r['ips']) for r in rs)} | {bench.fmt(ips)} "
                    f"| {bench.fmt(p50, 3)} | {bench.fmt(med(rs, 'p99'), 2)} | {bench.fmt(med(rs, 'avg_batch'), 2)} "
                    f"| {bench.fmt(med(rs, 'srv_us_per_req'))} | {vs_off} | {vs_best} |")
            auto = pick(model, conc, "auto")
            if not auto:
                continue
            if conc == 1 and off_p50:
                ratio = med(auto, "p50") / off_p50
                targets.append(f"- {model} c=1: auto p50 {med(auto, 'p50'):.3f} ms vs off {off_p50:.3f} ms = "
                               f"×{ratio:.2f} (target ≤ ×1.10): {'met' if ratio <= 1.10 else 'NOT met'}.")
            if conc == 16 and best_v:
                ratio = med(auto, "ips") / fixed[best_v]
                targets.append(f"- {model} c=16: auto {med(auto, 'ips'):.1f} infer/s vs best fixed ({best_v}) "
                               f"{fixed[best_v]:.1f} = ×{ratio:.2f} (target ≥ ×1.00): "
                               f"{'met' if ratio >= 1.0 else 'NOT met'}.")
    cpu_auto = med(pick("tiny_add", 16, "auto"), "srv_us_per_req")
    cpu_fixed = med(pick("tiny_add", 16, "fixed100us"), "srv_us_per_req")
    lines += ["", "Targets (reported, not asserted):"] + targets
    if cpu_auto and cpu_fixed:
        lines.append(f"- Hot path: tiny_add c=16 node CPU per request, auto {cpu_auto:.1f} µs vs fixed 100 µs "
                     f"{cpu_fixed:.1f} µs (×{cpu_auto / cpu_fixed:.2f}).")
    delays = [r["delay_us"] for r in ok if r.get("delay_us") is not None]
    if delays:
        lines.append("- Delay auto chose for the last batch after each auto point (`tern_batch_queue_delay_us`): "
                     + ", ".join(f"{r['base']} c={r['conc']} {r['delay_us']:.0f} µs" for r in ok
                                 if r.get("delay_us") is not None) + ".")
    if failed:
        lines += ["", "Failed points:"] + [f"- {r['base']} {r['variant']} c{r['conc']}: {r['error'][-200:]!r}"
                                           for r in failed]
    lines += ["", f"Raw outputs: {bench.rel(out)} (not committed). Commands:", "", "```",
              f".venv/bin/python benches/autobatch.py --window-ms {a.window_ms} --rounds {a.rounds} "
              f"--resnet-rounds {a.resnet_rounds or a.rounds} --resnet-requests {a.resnet_requests} "
              f"--quiet-wait {a.quiet_wait:g} --stability {a.stability}" + (" --write" if a.write else "")] + commands + [
        "# perf_analyzer: see the .try*.txt files next to each CSV", "```", "",
        bench.END.format(mode="autobatch"), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
