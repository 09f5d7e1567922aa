#!/usr/bin/env python3
"""Generation benchmark (issue 20): generated tokens per second and time to first token (TTFT)
p50/p99 at concurrency 1, 4, 16 and 64, on examples/build_tiny_llm.py's model (`--model tiny`,
the example repository's tiny_llm, 16 MB of weights) or its benchmark shape (`--model small`,
165 MB of weights, built into benches/out/small_llm/1: a decode step that streams its weights
from memory, as a real language model's does on any machine), for

  (a) tern-node with continuous batching (`max_batch` = the highest concurrency),
  (b) tern-node with batching off (`max_batch: 1`, a second model over the same folder),
  (c) the in-process ceiling: crates/generate's `ceiling` example (a plain Rust loop on the
      same ONNX Runtime) when it builds, else a plain Python onnxruntime loop (labelled so);
      batch 1 at concurrency 1, the other concurrencies as one static left-padded batch,
  (d) PyPI onnxruntime-genai's `og.Generator`, one generator per concurrent client (threads),
  (e) tern-generate's engine in process with no server (crates/generate's `engine_load`): with
      (c) and (a) it splits the gap to the ceiling into the engine's share and serving's.

Same model, same prompts (tests/python/llm_reference.PROMPTS, round robin), every request
`max_tokens` tokens with `ignore_eos` so each does the same work. Clients of (a) and (b) are
tritonclient's asyncio gRPC streams, one per concurrent request, TTFT measured from sending the
request to its first token's response. Each cell: `--warmup` s, then `--seconds` s measured.
The served clients are tern-client's native `llm_load` example (`--client python`: tritonclient's
asyncio client, which on a 2-core machine takes a quarter of a core from the server at c=1).
`--rounds N` runs (a), (b), (e) and the c=1 ceiling N times, concurrency by concurrency so the
rows a ratio compares run side by side, their order reversed every other round; each cell is its
median round.

    .venv/bin/python benches/llm.py [--model tiny|small] [--seconds 4] [--warmup 1] [--max-tokens 64]
        [--rounds 3] [--concurrency 1,4,16,64] [--only abcde] [--client rust|python] [--write]

Needs target/release/tern-node (make build) and the example repository (make examples).
Prints a markdown table; --write replaces the section "Generation" (--model tiny) or
"Generation, the memory-bound model" (--model small) of benches/RESULTS.md.
Targets (reported, not asserted): (a) at c=1 >= 90% of (c); (a) at c=16 >= 4x (b) at c=16;
(a) TTFT p99 at c=16 < 5x its p50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from llm_reference import PROMPTS, Reference  # noqa: E402

sys.path.insert(0, str(ROOT / "benches"))
from benchlib import ENV, REL, free_port, start_server, write_section  # noqa: E402

REPO = ROOT / "examples" / "model_repository"
# --model: (name in the bench's repository, folder, how the folder is made, what the report says)
MODELS = {
    "tiny": ("tiny_llm", REPO / "tiny_llm" / "1", None,
             "examples/build_tiny_llm.py's tiny_llm (4 layers, hidden 256, 8/2 heads, vocab 2048, context 512; "
             "16 MB of float32 weights)"),
    "small": ("small_llm", ROOT / "benches" / "out" / "small_llm" / "1", "small",
              "examples/build_tiny_llm.py --shape small (6 layers, hidden 768, 12/4 heads, MLP 2048, vocab 2048, "
              "context 512; 41 M parameters, 165 MB of float32 weights, more than any CPU cache holds)"),
}
MODEL_NAME, MODEL_DIR, _, MODEL_LABEL = MODELS["tiny"]
CONCURRENCY = [1, 4, 16, 64]


@dataclass
class Cell:
    tokens: int = 0
    ttft_s: list[float] = field(default_factory=list)
    seconds: float = 0.0
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.ttft_s, q)) * 1e3 if self.ttft_s else float("nan")


class Window:
    """Counts what happens between `start` and `end` (after a warm-up)."""

    def __init__(self, warmup: float, seconds: float) -> None:
        now = time.monotonic()
        self.start = now + warmup
        self.end = self.start + seconds
        self.lock = threading.Lock()
        self.cell = Cell(seconds=seconds)

    def open(self) -> bool:
        return time.monotonic() < self.end

    def token(self, n: int = 1) -> None:
        t = time.monotonic()
        if self.start <= t < self.end:
            with self.lock:
                self.cell.tokens += n

    def first(self, sent: float, at: float) -> None:
        if self.start <= sent < self.end:
            with self.lock:
                self.cell.ttft_s.append(at - sent)
                self.cell.requests += 1


# === (a), (b): tern-node over gRPC streams =====================================================


def bench_repo(tmp: Path, max_batch: int) -> Path:
    repo = tmp / "repo"
    for name, batch in ((MODEL_NAME, max_batch), (f"{MODEL_NAME}_nobatch", 1)):
        (repo / name).mkdir(parents=True)
        os.symlink(MODEL_DIR, repo / name / "1")
        (repo / name / "config.pbtxt").write_text(
            f'name: "{name}"\nbackend: "onnxruntime_genai"\nmax_batch_size: 0\n'
            "model_transaction_policy { decoupled: true }\n"
            f'parameters {{ key: "max_batch" value {{ string_value: "{batch}" }} }}\n')
    return repo


def start_node(repo: Path, port: int, log: Path) -> subprocess.Popen:
    cmd = [str(REL / "tern-node"), "--model-repository", str(repo), "--grpc-address", "127.0.0.1",
           "--grpc-port", str(port), "--metrics-port", "0", "--allow-http", "false"]
    return start_server(cmd, "tern-node ready", log)


def grpc_inputs(prompt: str, max_tokens: int):
    import tritonclient.grpc as g

    def one(name, dtype, value, np_dtype):
        t = g.InferInput(name, [1], dtype)
        t.set_data_from_numpy(np.array([value], dtype=np_dtype))
        return t

    return [one("text_input", "BYTES", prompt.encode(), np.object_),
            one("max_tokens", "INT32", max_tokens, np.int32),
            one("ignore_eos", "BOOL", True, np.bool_)]


async def tern_cell(url: str, model: str, conc: int, args) -> Cell:
    import tritonclient.grpc.aio as aio

    win = Window(args.warmup, args.seconds)
    client = aio.InferenceServerClient(url)

    async def one_request(prompt: str) -> None:
        done = asyncio.Event()

        async def requests():
            yield {"model_name": model, "inputs": grpc_inputs(prompt, args.max_tokens)}
            await done.wait()  # keep the stream open until the final response

        sent = time.monotonic()
        first = True
        call = client.stream_infer(requests())
        try:
            async for result, error in call:
                if error is not None:
                    win.cell.errors.append(str(error))
                    break
                ids = result.as_numpy("output_ids")
                n = 0 if ids is None else ids.size
                if n and first:
                    win.first(sent, time.monotonic())
                    first = False
                win.token(n)
                params = result.get_response().parameters
                if params["triton_final_response"].bool_param:
                    break
        finally:
            done.set()
            call.cancel()

    async def worker(w: int) -> None:
        k = w
        while win.open():
            await one_request(PROMPTS[k % len(PROMPTS)])
            k += conc

    await asyncio.gather(*(worker(w) for w in range(conc)))
    await client.close()
    return win.cell


# === (c): the in-process ceiling ===============================================================


def rust_ceiling(binary: Path | None, ref: Reference, args) -> Cell | None:
    """crates/generate's `ceiling` example (a plain greedy loop on ort, one sequence, EOS
    ignored), once per test prompt's length: None when the branch lacks it or it fails."""
    if binary is None:
        return None
    cell = Cell()
    for prompt in PROMPTS:
        cmd = [str(binary), "--model", str(MODEL_DIR), "--prompt-tokens",
               str(len(ref.encode(prompt))), "--max-tokens", str(args.max_tokens), "--runs", "1"]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=600)
        lines = [line for line in r.stdout.splitlines() if line.strip().startswith("{")]
        if r.returncode != 0 or not lines:
            print(f"ceiling failed ({' '.join(cmd)}); using the Python loop:\n{r.stderr[-2000:]}", file=sys.stderr)
            return None
        out = json.loads(lines[-1])
        cell.tokens += int(out["generated_tokens"])
        cell.seconds += float(out["total_ms"]) / 1e3
        cell.ttft_s.append(float(out["ttft_ms"]) / 1e3)
        cell.requests += 1
    return cell


def python_ceiling_cell(ref: Reference, conc: int, args) -> Cell:
    """Plain onnxruntime: batch 1 (conc 1) or one static left-padded batch of `conc` prompts."""
    win = Window(args.warmup, args.seconds)
    k = 0
    while win.open():
        prompts = [ref.encode(PROMPTS[(k + i) % len(PROMPTS)]) for i in range(conc)]
        k += conc
        sent = time.monotonic()
        if conc == 1:
            logits, past = ref.step(prompts[0], None, 0)
            win.first(sent, time.monotonic())
            win.token(1)
            total = len(prompts[0])
            nxt = int(np.argmax(logits))
            for _ in range(args.max_tokens - 1):
                logits, past = ref.step([nxt], past, total)
                total += 1
                nxt = int(np.argmax(logits))
                win.token(1)
        else:
            first_at = []
            ref_batch_timed(ref, prompts, args.max_tokens, win, first_at)
            for _ in prompts:
                win.first(sent, first_at[0])
    return win.cell


def ref_batch_timed(ref: Reference, prompts, max_tokens: int, win: Window, first_at: list) -> None:
    b = len(prompts)
    width = max(len(p) for p in prompts)
    ids = np.zeros((b, width), np.int64)
    mask = np.zeros((b, width), np.int64)
    pos = np.zeros((b, width), np.int64)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = p
        mask[r, width - len(p):] = 1
        pos[r, width - len(p):] = np.arange(len(p))
    lengths = np.array([len(p) for p in prompts], np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
    for layer in range(ref.layers):
        for name in ref._past_names(layer):
            feeds[name] = np.zeros((b, ref.kv_heads, 0, ref.head_size), np.float32)
    for step in range(max_tokens):
        out = dict(zip(ref.output_names, ref.session.run(ref.output_names, feeds)))
        nxt = out["logits"][:, -1].argmax(-1)
        if step == 0:
            first_at.append(time.monotonic())
        win.token(b)
        mask = np.concatenate([mask, np.ones((b, 1), np.int64)], axis=1)
        feeds = {"input_ids": nxt[:, None].astype(np.int64), "attention_mask": mask,
                 "position_ids": lengths[:, None].copy()}
        lengths += 1
        for layer in range(ref.layers):
            for pn, qn in zip(ref._past_names(layer), ref._present_names(layer)):
                feeds[pn] = out[qn]


# === (d): onnxruntime-genai ====================================================================


def genai_cell(model, ref: Reference, conc: int, args) -> Cell:
    import onnxruntime_genai as og

    win = Window(args.warmup, args.seconds)

    def worker(w: int) -> None:
        k = w
        while win.open():
            ids = ref.encode(PROMPTS[k % len(PROMPTS)])
            k += conc
            params = og.GeneratorParams(model)
            params.set_search_options(do_sample=False, max_length=len(ids) + args.max_tokens)
            sent = time.monotonic()
            gen = og.Generator(model, params)
            gen.append_tokens(np.array(ids, dtype=np.int32))
            n = 0
            while not gen.is_done() and n < args.max_tokens:
                gen.generate_next_token()
                if n == 0:
                    win.first(sent, time.monotonic())
                n += 1
                win.token(1)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return win.cell


# === report ====================================================================================


def fmt(cell: Cell | None) -> tuple[str, str, str]:
    if cell is None:
        return "—", "—", "—"
    if cell.errors and not cell.tokens:
        return "error", "—", "—"
    if not cell.ttft_s:  # no request got its first token inside the window (a long queue)
        return f"{cell.tps:.0f}", "—", "—"
    return f"{cell.tps:.0f}", f"{cell.pct(50):.1f}", f"{cell.pct(99):.1f}"


def report(results: dict, rounds: dict, args, ceiling_label: str, notes: list[str]) -> list[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    rows = [("a", "tern-node, continuous batching", f"max_batch {args.max_batch}"),
            ("b", "tern-node, batching off", "max_batch 1"),
            ("e", "tern-generate's engine in process, no server (`engine_load`)", f"max_batch {args.max_batch}"),
            ("c", ceiling_label, "c=1 batch 1; c>1 one static batch"),
            ("d", "onnxruntime-genai og.Generator", "a generator per client (threads)")]
    L = [section_title(args), "",
         f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} cores ({cpu}), "
         f"{platform.platform()}; server, clients and loops share the machine. Model: {MODEL_LABEL}; the 16 test prompts (2-90 tokens) round "
         f"robin; {args.max_tokens} tokens per request (ignore_eos); {args.warmup} s warm-up, {args.seconds} s "
         f"measured per cell. TTFT from sending a request to its first token. Client of (a) and (b): "
         f"{args.client_label}, one stream per request. {args.rounds} round(s), (a), (b) and the c=1 ceiling "
         "run concurrency by concurrency, side by side, their order reversed every other round; each of their cells is its median round.", "",
         f"Command: `.venv/bin/python benches/llm.py{model_flag(args)} --seconds {args.seconds} --warmup {args.warmup} "
         f"--max-tokens {args.max_tokens} --rounds {args.rounds}{' --write' if args.write else ''}` (`make bench-llm{'-small' if args.model == 'small' else ''}`)",
         "",
         "| | engine | setting | " + " | ".join(f"c={c} tok/s | c={c} TTFT p50/p99 ms" for c in CONCURRENCY) + " |",
         "|---|---|---|" + "---|---|" * len(CONCURRENCY)]
    for key, name, setting in rows:
        cells = []
        for c in CONCURRENCY:
            tps, p50, p99 = fmt(results.get((key, c)))
            cells += [tps, f"{p50} / {p99}" if p50 != "—" else "—"]
        L.append(f"| ({key}) | {name} | {setting} | " + " | ".join(cells) + " |")
    L += ["", "Targets (reported, not asserted; each ratio is taken within a round, then the median of the "
          "rounds, since the machine's speed drifts between rounds more than between rows):", ""]
    a16 = results.get(("a", 16))

    def ratio(num: tuple, den: tuple) -> tuple[float, str] | None:
        """The median over rounds of num/den in the same round, and the per-round values."""
        nums, dens = rounds.get(num, []), rounds.get(den, [])
        per = [n.tps / d.tps for n, d in zip(nums, dens) if d.tps]
        if not per:
            return None
        return statistics.median(per), ", ".join(f"{x:.2f}" for x in per)

    r = ratio(("a", 1), ("c", 1))
    if r:
        L.append(f"- c=1, (a) vs the ceiling (c): {100 * r[0]:.0f}% (target >= 90%; rounds: {r[1]})")
        e, s_ = ratio(("e", 1), ("c", 1)), ratio(("a", 1), ("e", 1))
        if e and s_:
            L.append(f"  - where it goes: the engine alone (e) is {100 * e[0]:.0f}% of (c) (rounds: {e[1]}); "
                     f"serving it (a) is {100 * s_[0]:.0f}% of (e) (rounds: {s_[1]})")
    r = ratio(("a", 16), ("b", 16))
    if r:
        L.append(f"- c=16, (a) vs batching off (b): {r[0]:.1f}x (target >= 4x; rounds: {r[1]})")
        g, s_ = ratio(("e", 16), ("e", 1)), ratio(("a", 16), ("e", 16))
        if g and s_:
            L.append(f"  - what batching can give on this machine: the engine in process with no server (e) makes "
                     f"{g[0]:.1f}x the tokens/s at c=16 that it makes at c=1 (rounds: {g[1]}); served (a) at c=16 "
                     f"is {100 * s_[0]:.0f}% of (e) at c=16")
    if a16 and a16.ttft_s:
        L.append(f"- c=16, (a) TTFT p99 / p50: {a16.pct(99) / a16.pct(50):.1f}x (target < 5x)")
    errs = [f"({k}) c={c}: {len(v.errors)} errors, first: {v.errors[0][:200]}"
            for (k, c), v in results.items() if v.errors]
    L += [f"- {n}" for n in notes + errs]
    return L


def section_title(args) -> str:
    if args.model == "small":
        return "## Generation, the memory-bound model (`benches/llm.py --model small`)"
    return "## Generation (`benches/llm.py`)"


def model_flag(args) -> str:
    return f" --model {args.model}" if args.model != "tiny" else ""


def ensure_model(key: str) -> None:
    """Selects --model's folder, building the benchmark shape when it is missing (the builder
    rewrites nothing that is already there)."""
    global MODEL_NAME, MODEL_DIR, MODEL_LABEL
    MODEL_NAME, MODEL_DIR, shape, MODEL_LABEL = MODELS[key]
    if shape is None:
        if not (MODEL_DIR / "genai_config.json").is_file():
            sys.exit(f"no {MODEL_DIR}: run `make examples` first")
        return
    cmd = [sys.executable, str(ROOT / "examples" / "build_tiny_llm.py"), "--shape", shape, str(MODEL_DIR)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    print(r.stdout.strip(), flush=True)


def built_example(crate_dir: str, package: str, example: str, instead: str) -> Path | None:
    """A Rust example of this repository (crates/CRATE_DIR/examples/EXAMPLE.rs), built on demand;
    None when the branch lacks it or it does not build (`instead` says what is used then)."""
    if not (ROOT / "crates" / crate_dir / "examples" / f"{example}.rs").exists():
        return None
    build = subprocess.run(["cargo", "build", "--release", "--locked", "-p", package, "--example", example],
                           cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if build.returncode != 0:
        print(f"{example} did not build; {instead}:\n{build.stderr[-2000:]}", file=sys.stderr)
        return None
    return REL / "examples" / example


def rust_client() -> Path | None:
    """tern-client's `llm_load` example (a native streaming client)."""
    return built_example("client", "tern-client", "llm_load", "using the Python client")


def run_json(cmd: list[str], cell: Cell, timeout: float) -> dict | None:
    """Runs one of the Rust load examples and returns the JSON line it prints last; None (with
    the failure in `cell.errors`) when it fails."""
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode != 0 or not lines:
        cell.errors.append(f"{Path(cmd[0]).name} failed (exit {r.returncode}): {r.stderr[-500:]}")
        return None
    return json.loads(lines[-1])


def rust_cell(binary: Path, prompts_file: Path, url: str, model: str, conc: int, args) -> Cell:
    cmd = [str(binary), "--url", url, "--model", model, "--prompts", str(prompts_file), "--concurrency", str(conc),
           "--seconds", str(args.seconds), "--warmup", str(args.warmup), "--max-tokens", str(args.max_tokens),
           "--ignore-eos", "true"]
    cell = Cell(seconds=args.seconds)
    out = run_json(cmd, cell, timeout=args.warmup + args.seconds + 120)
    if out is None:
        return cell
    cell.tokens = int(out["tokens"])
    cell.requests = int(out["requests"])
    cell.ttft_s = [t / 1e3 for t in out["ttft_ms"]]
    if out["errors"]:
        cell.errors += [str(out["first_error"])] * int(out["errors"])
    return cell


def engine_binary() -> Path | None:
    """crates/generate's `engine_load` example (the engine in process, no server)."""
    return built_example("generate", "tern-generate", "engine_load", "row (e) is left out")


def engine_cell(binary: Path, prompts_file: Path, conc: int, args) -> Cell:
    """The engine in process: `conc` clients, each `max(2, 32 // conc)` requests back to back."""
    cmd = [str(binary), "--model", str(MODEL_DIR), "--prompts", str(prompts_file), "--concurrency", str(conc),
           "--max-batch", str(args.max_batch), "--max-tokens", str(args.max_tokens),
           "--requests", str(max(2, 32 // conc))]
    cell = Cell()
    out = run_json(cmd, cell, timeout=600)
    if out is None:
        return cell
    cell.tokens = int(out["generated_tokens"])
    cell.seconds = cell.tokens / float(out["tokens_per_s"]) if out["tokens_per_s"] else 0.0
    cell.requests = int(out["requests"])
    cell.ttft_s = [t / 1e3 for t in out["ttft_ms"]]
    return cell


def median_cell(cells: list[Cell]) -> Cell:
    """The round with the median throughput (its TTFT with it)."""
    return sorted(cells, key=lambda c: c.tps)[(len(cells) - 1) // 2]


def main() -> None:
    global CONCURRENCY
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="tiny",
                    help="tiny: the example repository's tiny_llm; small: the memory-bound benchmark shape")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=max(CONCURRENCY))
    ap.add_argument("--only", default="abcde", help="which rows to run (letters)")
    ap.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)),
                    help="comma-separated concurrencies (default: 1,4,16,64)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="rounds of (a), (b), (e) and the c=1 ceiling, each concurrency's rows side by side; "
                         "each cell reports its median round")
    ap.add_argument("--client", choices=["rust", "python"], default="rust",
                    help="client of (a) and (b): tern-client's llm_load (default) or tritonclient's asyncio")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    CONCURRENCY = [int(c) for c in args.concurrency.split(",")]
    ensure_model(args.model)
    rounds: dict = {}
    notes: list[str] = []
    ref = Reference(MODEL_DIR, threads=0)
    binary = rust_client() if args.client == "rust" and ("a" in args.only or "b" in args.only) else None
    # The Rust examples are built once, before the rounds.
    engine = engine_binary() if "e" in args.only else None
    ceiling = (built_example("generate", "tern-generate", "ceiling", "using the Python loop")
               if "c" in args.only else None)
    args.client_label = ("tern-client's llm_load (Rust, one tokio thread)" if binary
                         else "tritonclient.grpc.aio (Python)")
    ceiling_label = "in-process ceiling, Python onnxruntime loop"
    rust = None
    tmp = Path(tempfile.mkdtemp(prefix="tern-llm-bench-"))
    prompts_file = tmp / "prompts.json"
    prompts_file.write_text(json.dumps(PROMPTS))
    node = None
    try:
        if "a" in args.only or "b" in args.only:
            port = free_port()
            node = start_node(bench_repo(tmp, args.max_batch), port, tmp / "node.log")
        url = f"127.0.0.1:{port}" if node is not None else ""
        # Concurrency outermost, so the rows a ratio compares run next to each other (the
        # machine drifts over minutes); the rows' order flips every round (ABBA).
        for r in range(max(1, args.rounds)):
            for c in CONCURRENCY:
                order = ["a", "b", "e", "c"] if r % 2 == 0 else ["c", "e", "b", "a"]
                for key in order:
                    if key not in args.only:
                        continue
                    if key in "ab" and node is not None:
                        model = MODEL_NAME if key == "a" else f"{MODEL_NAME}_nobatch"
                        if binary:
                            cell = rust_cell(binary, prompts_file, url, model, c, args)
                        else:
                            cell = asyncio.run(tern_cell(url, model, c, args))
                        print(f"round {r + 1} ({key}) {model} c={c}: {cell.tps:.0f} tok/s, TTFT p50 "
                              f"{cell.pct(50):.1f} ms p99 {cell.pct(99):.1f} ms, {cell.requests} requests, "
                              f"{len(cell.errors)} errors", flush=True)
                    elif key == "e" and engine:
                        cell = engine_cell(engine, prompts_file, c, args)
                        print(f"round {r + 1} (e) engine in process c={c}: {cell.tps:.0f} tok/s, "
                              f"TTFT p50 {cell.pct(50):.1f} ms", flush=True)
                    elif key == "c" and c == 1:
                        rust = rust_ceiling(ceiling, ref, args)
                        if rust is None:
                            continue
                        cell = rust
                        ceiling_label = ("in-process ceiling: c=1 crates/generate's `ceiling` (Rust loop on ort), "
                                         "c>1 Python loop")
                        print(f"round {r + 1} (c) rust ceiling c=1: {rust.tps:.0f} tok/s, "
                              f"TTFT p50 {rust.pct(50):.1f} ms", flush=True)
                    else:
                        continue
                    rounds.setdefault((key, c), []).append(cell)
    finally:
        if node is not None:
            node.terminate()
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                node.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    results = {k: median_cell(v) for k, v in rounds.items()}

    if "c" in args.only:
        for c in CONCURRENCY:
            if c == 1 and rust is not None:
                continue
            cell = python_ceiling_cell(ref, c, args)
            results[("c", c)] = cell
            print(f"(c) python loop c={c}: {cell.tps:.0f} tok/s, TTFT p50 {cell.pct(50):.1f} ms", flush=True)

    if "d" in args.only:
        try:
            import onnxruntime_genai as og

            model = og.Model(str(MODEL_DIR))
            for c in CONCURRENCY:
                cell = genai_cell(model, ref, c, args)
                results[("d", c)] = cell
                print(f"(d) genai c={c}: {cell.tps:.0f} tok/s, TTFT p50 {cell.pct(50):.1f} ms", flush=True)
        except ImportError as e:
            notes.append(f"(d) onnxruntime-genai not installed: {e}")

    lines = report(results, rounds, args, ceiling_label, notes)
    print("\n" + "\n".join(lines))
    if args.write:
        write_section(section_title(args), lines)


if __name__ == "__main__":
    main()
