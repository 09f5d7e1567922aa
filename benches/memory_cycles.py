"""RSS of tern-node over repeated load/unload cycles of one model (issue: unloading must free).

    .venv/bin/python benches/memory_cycles.py [--model light_resnet50] [--cycles 50]

Starts target/release/tern-node in explicit mode on a copy of the example model, then loads
and unloads it through tritonclient (the repository API), reading VmRSS from /proc after every
unload. Prints a table and the growth of the last cycle over the first; exits non-zero when the
growth is over --max-growth (10 % by default).
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="light_resnet50")
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--max-growth", type=float, default=0.10)
    args = ap.parse_args()

    repo = Path(tempfile.mkdtemp(prefix="tern-mem-"))
    shutil.copytree(ROOT / "examples/model_repository" / args.model, repo / args.model)
    env = dict(os.environ)
    env.setdefault("ORT_DYLIB_PATH", str(ROOT / ".tern/onnxruntime/libonnxruntime.so.1.31.1"))
    node = subprocess.Popen(
        [str(ROOT / "target/release/tern-node"), "--model-repository", str(repo), "--grpc-address", "127.0.0.1",
         "--grpc-port", "0", "--metrics-port", "0", "--allow-http", "false", "--model-control-mode", "explicit"],
        stderr=subprocess.PIPE, text=True, env=env)
    try:
        addr = None
        deadline = time.time() + 60
        while time.time() < deadline and addr is None:
            line = node.stderr.readline()
            m = re.search(r"grpc=([0-9.]+:\d+)", line)
            if m and "tern-node ready" in line:
                addr = m.group(1)
        if addr is None:
            print("tern-node did not start", file=sys.stderr)
            return 1
        # Keep draining the log so the node never blocks on a full pipe.
        import threading
        threading.Thread(target=lambda: [None for _ in node.stderr], daemon=True).start()
        client = grpcclient.InferenceServerClient(addr)
        rows = []
        for i in range(1, args.cycles + 1):
            client.load_model(args.model)
            loaded = rss_mb(node.pid)
            client.unload_model(args.model)
            rows.append((i, loaded, rss_mb(node.pid)))
        print(f"model {args.model}, {args.cycles} load/unload cycles, RSS in MB (VmRSS)")
        print("| cycle | after load | after unload |")
        print("|---:|---:|---:|")
        for i, loaded, unloaded in rows:
            if i <= 3 or i % 10 == 0 or i == len(rows):
                print(f"| {i} | {loaded:.1f} | {unloaded:.1f} |")
        first, last = rows[0][2], rows[-1][2]
        growth = (last - first) / first
        print(f"after-unload RSS: cycle 1 {first:.1f} MB, cycle {len(rows)} {last:.1f} MB, growth {growth:+.1%}")
        return 0 if growth <= args.max_growth else 2
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=30)
        shutil.rmtree(repo, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
