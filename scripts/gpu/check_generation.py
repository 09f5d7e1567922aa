#!/usr/bin/env python3
"""Checks what a running tern-node generates against a plain onnxruntime greedy loop on the CPU.

    .venv/bin/python scripts/gpu/check_generation.py --url 127.0.0.1:8001 \
        --folder examples/model_repository/tiny_llm/1 --model tiny_llm_gpu [--model tiny_llm_cpu] \
        [--max-tokens 32]

For each served model: the 16 test prompts (tests/python/llm_reference.PROMPTS) one at a time,
then all 16 at once on separate streams (one continuous batch), each greedy with EOS ignored;
every request's token ids (its responses' `output_ids`) must equal the reference loop's
(tests/python/llm_reference.Reference, onnxruntime on the CPU, one sequence, no padding). The
prompts keep a top-1 margin of at least 0.01 at every step, far above the rounding differences
between devices, so greedy ids must match exactly. Exit status 1 on any difference or failed
request. `make test-gpu` runs it on a KIND_GPU and a KIND_CPU copy of tiny_llm (issue 20).
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from llm_reference import PROMPTS, Reference  # noqa: E402


def generate(url: str, model: str, prompt: str, max_tokens: int, timeout_s: float = 120.0) -> list[int]:
    """One streamed greedy generation; the token ids of all its responses."""
    import tritonclient.grpc as grpcclient

    def tensor(name, dtype, value, np_dtype):
        t = grpcclient.InferInput(name, [1], dtype)
        t.set_data_from_numpy(np.array([value], dtype=np_dtype))
        return t

    inputs = [tensor("text_input", "BYTES", prompt.encode(), np.object_),
              tensor("max_tokens", "INT32", max_tokens, np.int32),
              tensor("ignore_eos", "BOOL", True, np.bool_),
              tensor("temperature", "FP32", 0.0, np.float32)]
    client = grpcclient.InferenceServerClient(url)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    ids: list[int] = []
    try:
        client.async_stream_infer(model, inputs)
        while True:
            result, error = responses.get(timeout=timeout_s)
            if error is not None:
                raise RuntimeError(f"{model}: {error}")
            out = result.as_numpy("output_ids")
            if out is not None:
                ids += [int(i) for i in out.reshape(-1)]
            if result.get_response().parameters["triton_final_response"].bool_param:
                return ids
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--folder", required=True, help="the model folder (genai_config.json, model.onnx, tokenizer)")
    ap.add_argument("--model", action="append", required=True, help="a served model name (repeatable)")
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    ref = Reference(args.folder)
    want = {p: ref.greedy_ids(ref.encode(p), args.max_tokens, ignore_eos=True).ids for p in PROMPTS}
    failures = 0
    for model in args.model:
        alone_bad = []
        for p in PROMPTS:
            try:
                got = generate(args.url, model, p, args.max_tokens)
            except Exception as e:  # noqa: BLE001 - reported and counted
                got = [f"error: {e}"]
            if got != want[p]:
                alone_bad.append((p, got))
        results: dict[str, list] = {}

        def one(p: str) -> None:
            try:
                results[p] = generate(args.url, model, p, args.max_tokens)
            except Exception as e:  # noqa: BLE001
                results[p] = [f"error: {e}"]

        threads = [threading.Thread(target=one, args=(p,)) for p in PROMPTS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        batch_bad = [(p, results.get(p)) for p in PROMPTS if results.get(p) != want[p]]
        ok = not alone_bad and not batch_bad
        print(f"check {model}: {len(PROMPTS)} prompts alone, {len(PROMPTS)} in one continuous batch, "
              f"{args.max_tokens} greedy tokens each: "
              + ("OK (token ids equal the CPU reference loop's)" if ok else
                 f"FAIL ({len(alone_bad)} alone and {len(batch_bad)} batched differ)"))
        for p, got in (alone_bad + batch_bad)[:4]:
            print(f"  prompt {p!r}: got {got[:12]}..., want {want[p][:12]}...")
        failures += not ok
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
