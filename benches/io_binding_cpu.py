"""IO binding on and off for bucketed batches (issue 25), on the CPU: one tern-node serving two
copies of light_resnet50 (KIND_CPU, batch buckets on, dynamic batching), one with
`io_binding` on and one with it off. Clients send one-row requests at a fixed concurrency to one
copy at a time, A/B alternated (A B, B A, A B, ...), so machine noise (other builds) spreads over
both. Reported per copy: requests/s and the node's CPU time per request (utime + stime of the
node's threads from /proc over each window, divided by the requests it answered), with the load
average around the run. Writes the "IO binding on the CPU" section of benches/RESULTS.md.

    .venv/bin/python benches/io_binding_cpu.py [--concurrency 8] [--seconds 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from benchlib import REL, ROOT, free_port, start_server, write_section

CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "input" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] }} ]
output [ {{ name: "output" data_type: TYPE_FP32 dims: [ 1000 ] }} ]
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
dynamic_batching {{ preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 5000 }}
parameters {{ key: "batch_buckets" value: {{ string_value: "on" }} }}
parameters {{ key: "io_binding" value: {{ string_value: "{binding}" }} }}
"""


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def window(url: str, model: str, x: np.ndarray, concurrency: int, seconds: float) -> int:
    """Requests answered by `model` in `seconds` with `concurrency` clients in a closed loop."""
    done = [0] * concurrency
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        with grpcclient.InferenceServerClient(url) as c:
            inp = grpcclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            while time.monotonic() < stop:
                c.infer(model, [inp])
                done[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    source = ROOT / "examples/model_repository/light_resnet50/1/model.onnx"
    if not source.is_file():
        raise SystemExit(f"{source} is missing: run `make examples`")
    tmp = Path(tempfile.mkdtemp(prefix="iobind-"))
    models = {"bound": "on", "unbound": "off"}
    for name, binding in models.items():
        (tmp / name / "1").mkdir(parents=True)
        shutil.copy(source, tmp / name / "1/model.onnx")
        (tmp / name / "config.pbtxt").write_text(CONFIG.format(name=name, binding=binding))
    port = free_port()
    cmd = [str(REL / "tern-node"), "--model-repository", str(tmp), "--grpc-address", "127.0.0.1",
           "--grpc-port", str(port), "--metrics-port", str(free_port()), "--allow-http", "false"]
    node = start_server(cmd, "tern-node ready", tmp / "node.log")
    url = f"127.0.0.1:{port}"
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    try:
        for name in models:  # warm each copy (first batches of each size) outside the windows
            window(url, name, x, args.concurrency, 3)
        load_before = os.getloadavg()
        totals = {name: [0, 0.0, 0.0] for name in models}  # requests, seconds, cpu seconds
        order = list(models)
        for r in range(args.rounds):
            for name in (order if r % 2 == 0 else order[::-1]):
                cpu0, t0 = cpu_seconds(node.pid), time.monotonic()
                n = window(url, name, x, args.concurrency, args.seconds)
                t1, cpu1 = time.monotonic(), cpu_seconds(node.pid)
                totals[name][0] += n
                totals[name][1] += t1 - t0
                totals[name][2] += cpu1 - cpu0
                print(f"round {r} {name}: {n} requests, {n / (t1 - t0):.2f} req/s, "
                      f"{1000 * (cpu1 - cpu0) / max(n, 1):.1f} ms CPU per request", flush=True)
        load_after = os.getloadavg()
    finally:
        node.terminate()
        node.wait(timeout=30)
    rows = []
    for name, (n, secs, cpu) in totals.items():
        rows.append(f"| {name} (io_binding {models[name]}) | {n} | {n / secs:.2f} | {1000 * cpu / max(n, 1):.1f} |")
        print(rows[-1])
    b, u = totals["bound"], totals["unbound"]
    ratio_tput = (b[0] / b[1]) / (u[0] / u[1])
    ratio_cpu = (b[2] / b[0]) / (u[2] / u[0])
    summary = (f"bound / unbound: throughput x{ratio_tput:.3f}, CPU time per request x{ratio_cpu:.3f}; "
               f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
               f"({os.cpu_count()} cores)")
    print(summary)
    if args.no_write:
        return
    write_section("## IO binding on the CPU (issue 25)", [
        "## IO binding on the CPU (issue 25)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on the 2-core development machine while other builds ran "
        "(see the load average). light_resnet50 (constant weights), one tern-node, two KIND_CPU copies "
        "(batch buckets on, max_batch_size 8, preferred 4/8, 5 ms queue delay), `io_binding` on and off; "
        f"one-row gRPC requests at concurrency {args.concurrency}, {args.rounds} rounds of "
        f"{args.seconds:.0f} s per copy, alternated. CPU time: the node's utime + stime over each window "
        "divided by the requests answered.",
        "",
        "```",
        f".venv/bin/python benches/io_binding_cpu.py --concurrency {args.concurrency} --seconds {args.seconds:g} "
        f"--rounds {args.rounds}",
        "```",
        "",
        "| copy | requests | requests/s | node CPU ms per request |",
        "|---|---:|---:|---:|",
        *rows,
        "",
        summary + ".",
    ])


if __name__ == "__main__":
    main()
