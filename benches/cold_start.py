#!/usr/bin/env python3
"""Cold start (issue 25): time to READY of tern-node with and without ONNX Runtime's optimized
model cache (`--model-cache-dir`), and of real Triton on the same model where it runs here.

    .venv/bin/python benches/cold_start.py [--rounds 5] [--no-triton] [--write]

For each model (light_resnet50, and the example language model tiny_llm), one repository holding
only it, and in every round, in an order that rotates round by round:
  - `no cache`:   tern-node without --model-cache-dir (ONNX Runtime optimizes the graph);
  - `cold cache`: a fresh, empty --model-cache-dir (optimizes and saves the graph);
  - `warm cache`: a --model-cache-dir primed once before the rounds (opens the saved graph);
  - `triton`:     real Triton (PyPI nvidia-pytriton's tritonserver 2.51, Python backend running
                  onnxruntime 1.31.1 in model.py, benches/peer/), light_resnet50 only: its
                  ONNX Runtime backend is not in that build and it has no genai backend.
Time to READY is from the process's start to the node's ready line (every model loaded;
Triton: ServerReady true). `load ms` is the node's own "loaded ... elapsed_ms" for the model.
Medians over the rounds; the ratio is no cache / warm cache from the same rounds. The load
average is printed beside the numbers: other work on the machine slows every variant alike,
which the alternating rounds spread out.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

ROOT = benchlib.ROOT
NODE = ROOT / "target/release/tern-node"
EXAMPLES = ROOT / "examples/model_repository"
PEER_VENV = ROOT / "benches/.peer-venv"
PEER_DIST = ROOT / "benches/out/peer/tritonserver"
MODELS = ["light_resnet50", "tiny_llm"]
LOADED_RE = re.compile(r"elapsed_ms=(\d+)")
TITLE = "## Cold start (`make bench-cold-start`)"


def tern_ready(repo: Path, cache: Path | None, log: Path) -> tuple[float, int | None]:
    cmd = [str(NODE), "--model-repository", str(repo), "--grpc-address", "127.0.0.1", "--grpc-port", "0",
           "--metrics-port", "0", "--allow-http", "false"]
    if cache is not None:
        cmd += ["--model-cache-dir", str(cache)]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=benchlib.ENV, cwd=ROOT)
    try:
        while True:
            text = log.read_text(errors="replace")
            if "tern-node ready" in text:
                ready = time.monotonic() - started
                break
            if proc.poll() is not None:
                sys.exit(f"tern-node exited ({proc.returncode}):\n{text[-3000:]}")
            if time.monotonic() - started > 300:
                sys.exit(f"tern-node not ready in 300 s:\n{text[-3000:]}")
            time.sleep(0.01)
        loads = [int(m.group(1)) for line in text.splitlines() if " loaded" in line
                 for m in [LOADED_RE.search(line)] if m]
        return ready, (loads[-1] if loads else None)
    finally:
        proc.terminate()
        proc.wait(30)


def triton_available() -> bool:
    return (PEER_DIST / "bin/tritonserver").is_file() and (PEER_VENV / "bin/python").is_file()


def triton_repo(out: Path, model: str) -> Path:
    site = subprocess.run([str(PEER_VENV / "bin/python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    repo = out / "triton" / model
    subprocess.run([sys.executable, str(ROOT / "benches/peer/make_repo.py"), str(EXAMPLES), str(repo), model,
                    "--site", site], check=True)
    return repo


def triton_ready(repo: Path, log: Path) -> float:
    import tritonclient.grpc as grpcclient

    site, libdir = subprocess.run(
        [str(PEER_VENV / "bin/python"), "-c",
         "import sysconfig; print(sysconfig.get_paths()['purelib']); print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True, text=True, check=True).stdout.split()
    port = benchlib.free_port()
    cmd = [str(PEER_DIST / "bin/tritonserver"), "--model-repository", str(repo),
           "--backend-directory", str(PEER_DIST / "backends"), "--cache-directory", str(PEER_DIST / "caches"),
           "--grpc-address", "127.0.0.1", "--grpc-port", str(port), "--allow-http", "false",
           "--allow-metrics", "false", "--log-verbose", "0"]
    env = dict(os.environ, LD_LIBRARY_PATH=f"{site}/nvidia_pytriton.libs:{libdir}")
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        while time.monotonic() - started < 300:
            if proc.poll() is not None:
                sys.exit(f"tritonserver exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if client.is_server_ready():
                    return time.monotonic() - started
            except Exception:  # not listening yet
                pass
            time.sleep(0.01)
        sys.exit(f"tritonserver not ready in 300 s:\n{log.read_text()[-3000:]}")
    finally:
        client.close()
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-triton", action="store_true")
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    if not 1 <= a.rounds <= 20:
        sys.exit("--rounds must be 1..20")
    if not NODE.is_file():
        sys.exit(f"{NODE} is missing: make build")
    triton = not a.no_triton and triton_available()
    started = dt.datetime.now(dt.timezone.utc)
    out = Path(tempfile.mkdtemp(prefix="tern-cold-start-"))
    loads: list[float] = []
    rows = []
    for model in MODELS:
        if not (EXAMPLES / model).is_dir():
            sys.exit(f"{EXAMPLES / model} is missing: make examples")
        repo = out / "repos" / model
        shutil.copytree(EXAMPLES / model, repo / model)
        warm = out / "warm" / model
        tern_ready(repo, warm, out / f"{model}.prime.log")  # primes the warm cache
        variants = ["no cache", "cold cache", "warm cache"]
        if triton and model == "light_resnet50":
            variants.append("triton")
            troot = triton_repo(out, model)
        times: dict[str, list[float]] = {v: [] for v in variants}
        load_ms: dict[str, list[int]] = {v: [] for v in variants}
        for rnd in range(a.rounds):
            order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]
            for v in order:
                log = out / f"{model}.{v.replace(' ', '_')}.r{rnd}.log"
                loads.append(os.getloadavg()[0])
                if v == "triton":
                    times[v].append(triton_ready(troot, log))
                    continue
                cache = {"no cache": None, "warm cache": warm}.get(v, out / f"cold.{model}.r{rnd}")
                ready, ms = tern_ready(repo, cache, log)
                if v == "warm cache" and "opened the optimized graph from the model cache" not in log.read_text():
                    sys.exit(f"the warm round did not open the model from the cache: see {log}")
                times[v].append(ready)
                if ms is not None:
                    load_ms[v].append(ms)
                print(f"[cold-start] {model} r{rnd} {v}: ready {ready * 1000:.0f} ms"
                      + (f", load {ms} ms" if ms is not None else ""), flush=True)
        rows.append((model, variants, times, load_ms))
    finished = dt.datetime.now(dt.timezone.utc)

    med = statistics.median
    lines = [TITLE, "",
             f"Run {started:%Y-%m-%d %H:%M} UTC, {a.rounds} rounds, variants in rotating order; "
             f"load average during the run {min(loads):.1f}-{max(loads):.1f} (2 cores, other builds running). "
             "Time to READY = process start to the ready line (Triton: ServerReady); load = the node's own "
             "`loaded ... elapsed_ms` for the model. Medians; ratio = no cache / warm cache.", "",
             "| model | variant | time to READY ms | load ms | READY ratio vs warm | load ratio vs warm |",
             "|---|---|---:|---:|---:|---:|"]
    for model, variants, times, load_ms in rows:
        warm_t = med(times["warm cache"])
        warm_l = med(load_ms["warm cache"]) if load_ms["warm cache"] else None
        for v in variants:
            t = med(times[v])
            lm = med(load_ms[v]) if load_ms[v] else None
            lr = f"{lm / warm_l:.2f}x" if lm and warm_l else "-"
            lines.append(f"| {model} | {v} | {t * 1000:.0f} | {lm if lm is not None else '-'} | "
                         f"{t / warm_t:.2f}x | {lr} |")
    if not triton:
        lines += ["", "Triton: not measured in this run ("
                  + ("--no-triton" if a.no_triton else "benches/peer/setup.sh has not installed it") + ")."]
    lines += ["", "Triton's peer here is tritonserver with the Python backend (no ONNX Runtime backend in "
              "nvidia-pytriton's build): its model.py opens an onnxruntime session with all optimizations, "
              "as Tern without a cache does; tiny_llm has no Triton counterpart here (no genai backend).",
              "", "Command: `make bench-cold-start` (`.venv/bin/python benches/cold_start.py --rounds "
              f"{a.rounds}{' --no-triton' if a.no_triton else ''} --write`); logs in {out}."]
    print("\n".join(lines))
    if a.write:
        benchlib.write_section(TITLE, lines)


if __name__ == "__main__":
    main()
