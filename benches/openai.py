#!/usr/bin/env python3
"""OpenAI-compatible chat completions against Triton's generate extension on the same tern-node:
generated tokens per second through `/v1/chat/completions` (stream, include_usage) and through
`/v2/models/tiny_llm/generate_stream`, at concurrency 1 and 16, in one run on one server.

Same model (examples/build_tiny_llm.py's tiny_llm, continuous batching, max_batch 16), same
prompts: the 16 test prompts as one user message each, rendered with the model's chat template
for the generate route (so both do the same engine work), `max_tokens` tokens per request with
`ignore_eos`, greedy. Clients: httpx async streams, one per concurrent request, reading every
event. Cells run in the order openai, generate, generate, openai per concurrency and the two
runs of each are summed, so slow drift of the machine falls on both alike.

    .venv/bin/python benches/openai.py [--seconds 4] [--max-tokens 64] [--write]

Needs target/release/tern-node and the example repository (make build examples; or
TERN_MODEL_REPOSITORY=DIR). --write
replaces the section "OpenAI API vs generate extension" of benches/RESULTS.md.
Target (reported, not asserted): the OpenAI route within 5% of the generate route.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import jinja2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from llm_reference import PROMPTS  # noqa: E402

sys.path.insert(0, str(ROOT / "benches"))
from benchlib import ENV, REL, start_server, write_section  # noqa: E402

MODEL_DIR = Path(os.environ.get("TERN_MODEL_REPOSITORY", ROOT / "examples" / "model_repository")) / "tiny_llm" / "1"
SECTION = "## OpenAI API vs generate extension (`benches/openai.py`)"


def start_node(tmp: Path) -> tuple[subprocess.Popen, str]:
    repo = tmp / "repo" / "tiny_llm"
    repo.mkdir(parents=True)
    os.symlink(MODEL_DIR, repo / "1")
    (repo / "config.pbtxt").write_text(
        'name: "tiny_llm"\nbackend: "onnxruntime_genai"\nmax_batch_size: 0\n'
        "model_transaction_policy { decoupled: true }\n"
        'parameters { key: "max_batch" value { string_value: "16" } }\n')
    log = tmp / "node.log"
    cmd = [str(REL / "tern-node"), "--model-repository", str(tmp / "repo"), "--grpc-address", "127.0.0.1",
           "--grpc-port", "0", "--metrics-port", "0", "--http-address", "127.0.0.1", "--http-port", "0"]
    p = start_server(cmd, "tern-node ready", log)
    m = re.search(r'http(?:=|"\s*:\s*")([0-9.]+:\d+)', log.read_text(errors="replace"))
    if not m:
        p.kill()
        sys.exit(f"tern-node logged no HTTP address:\n{log.read_text()}")
    return p, m.group(1)


def chat_prompt(messages) -> str:
    cfg = json.loads((MODEL_DIR / "tokenizer_config.json").read_text())
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(cfg["chat_template"]).render(
        messages=messages, bos_token=cfg.get("bos_token", ""), eos_token=cfg.get("eos_token", ""),
        add_generation_prompt=True)


async def one_openai(h: httpx.AsyncClient, addr: str, i: int, max_tokens: int) -> int:
    body = {"model": "tiny_llm", "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    tokens = 0
    async with h.stream("POST", f"http://{addr}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                event = json.loads(line[6:])
                if "error" in event:
                    raise RuntimeError(event["error"])
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
    return tokens


async def one_generate(h: httpx.AsyncClient, addr: str, i: int, max_tokens: int) -> int:
    prompt = chat_prompt([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}])
    body = {"text_input": prompt, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0}
    tokens = 0
    async with h.stream("POST", f"http://{addr}/v2/models/tiny_llm/generate_stream", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if "error" in event:
                    raise RuntimeError(event["error"])
                ids = event.get("output_ids", [])
                tokens += len(ids) if isinstance(ids, list) else 1
    return tokens


async def cell(kind: str, addr: str, conc: int, seconds: float, max_tokens: int) -> tuple[int, float]:
    """Tokens of the requests that finished within `seconds`, and the seconds they took."""
    one = one_openai if kind == "openai" else one_generate
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(timeout=120, limits=limits) as h:
        await asyncio.gather(*[one(h, addr, i, max_tokens) for i in range(conc)])  # warm-up
        total, start = 0, time.monotonic()
        end = start + seconds

        async def client(k: int) -> int:
            got, i = 0, k
            while time.monotonic() < end:
                got += await one(h, addr, i, max_tokens)
                i += conc
            return got

        total = sum(await asyncio.gather(*[client(k) for k in range(conc)]))
        return total, time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3,
                    help="ABBA rounds per concurrency (cells on this shared 2-core machine move by 30%%)")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        node, addr = start_node(Path(tmp))
        try:
            results = {}
            for conc in (1, 16):
                for kind in ("openai", "generate", "generate", "openai") * args.rounds:
                    tokens, secs = asyncio.run(cell(kind, addr, conc, args.seconds, args.max_tokens))
                    t, s = results.get((kind, conc), (0, 0.0))
                    results[(kind, conc)] = (t + tokens, s + secs)
                    print(f"{kind} c={conc}: {tokens / secs:.0f} tok/s", file=sys.stderr)
        finally:
            node.terminate()
            node.wait(30)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    lines = [SECTION, "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} cores ({cpu}), "
             f"{platform.platform()}; server and clients share the machine. tiny_llm, max_batch 16, the 16 test "
             f"prompts as chat messages (rendered with the chat template for the generate route), {args.max_tokens} "
             f"tokens per request (ignore_eos, greedy), streamed; {2 * args.rounds} x {args.seconds} s per route and "
             f"concurrency, in ABBA order.", "",
             f"Command: `.venv/bin/python benches/openai.py --seconds {args.seconds} --max-tokens {args.max_tokens} "
             f"--rounds {args.rounds}"
             f"{' --write' if args.write else ''}`", "",
             "| concurrency | /v1/chat/completions tok/s | /v2/.../generate_stream tok/s | ratio |", "|---|---|---|---|"]
    for conc in (1, 16):
        o = results[("openai", conc)][0] / results[("openai", conc)][1]
        g = results[("generate", conc)][0] / results[("generate", conc)][1]
        lines.append(f"| {conc} | {o:.0f} | {g:.0f} | {o / g:.3f} |")
    lines += ["", "Target (reported, not asserted): ratio >= 0.95 at both concurrencies."]
    print("\n".join(lines))
    if args.write:
        write_section(SECTION, lines)

if __name__ == "__main__":
    main()
