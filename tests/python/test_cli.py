"""The `tern` client commands (target/release/tern) against one real tern-node for the module:
models, load/unload, infer (npy and JSON inputs, outputs printed, as JSON and saved as .npy,
checked against numpy), stats, health, generate (streamed and not) on the example language
model, bearer tokens, and the exit codes scripts rely on: 0 success, 1 the server answered an
error, 2 a usage error, 3 the server cannot be reached.

The node runs in explicit model-control mode with --auth-token-file: every call presents an
operator token through TERN_TOKEN (or --token-file), and health stays public as by default.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import numpy as np
import pytest

from tern_clusterlib import free_port
from tern_testlib import ROOT, TernServer, copy_models

TERN = ROOT / "target" / "release" / "tern"
LOADED = ["tiny_add", "string_identity", "tiny_llm"]
MODELS = [*LOADED, "versioned_scale"]
LLM = "tiny_llm"


def new_token(name: str) -> tuple[str, str]:
    """A token allowed everything, from `tern token new`, and its token-file line."""
    out = subprocess.run([str(TERN), "token", "new", name, "-", "--groups", "*", "--models", "*"],
                         capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()
    return out[0], out[1]


class Node:
    def __init__(self, server: TernServer, token: str, token_file):
        self.server = server
        self.token = token
        self.token_file = token_file

    @property
    def url(self) -> str:
        return self.server.url

    def tern(self, *args, token: str | None = "env", url: str | None = None, timeout: float = 120):
        """Runs `tern ARGS --url URL` with the token in TERN_TOKEN (token=None: no token)."""
        if not TERN.exists():
            pytest.fail(f"tern binary not found at {TERN}: build it with `cargo build --release -p tern-cli`")
        env = {k: v for k, v in os.environ.items() if k != "TERN_TOKEN"}
        if token is not None:
            env["TERN_TOKEN"] = self.token if token == "env" else token
        cmd = [str(TERN), *args, "--url", url or self.url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def node(model_repo, tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    repo = copy_models(model_repo, d / "repo", MODELS)
    token, line = new_token("operator")
    tokens = d / "tokens"
    tokens.write_text(line + "\n")
    token_file = d / "token"
    token_file.write_text(token + "\n")
    args = ["--model-control-mode", "explicit", "--auth-token-file", str(tokens)]
    for m in LOADED:
        args += ["--load-model", m]
    srv = TernServer([repo], args, log_dir=d, label="cli-node").start()
    yield Node(srv, token, token_file)
    assert srv.stop() == 0, srv.log_tail()


def tiny_add_arrays(rows: int = 2):
    a = np.arange(rows * 16, dtype=np.float32).reshape(rows, 16) / 7
    b = np.linspace(-3, 3, rows * 16, dtype=np.float32).reshape(rows, 16)
    return a, b


# === models, load, unload =====================================================================


def test_models_table_and_json(node):
    table = ok(node.tern("models")).splitlines()
    assert table[0].split() == ["NAME", "VERSION", "STATE", "REASON"]
    rows = {r.split()[0]: r.split() for r in table[1:]}
    assert rows["tiny_add"][1:3] == ["1", "READY"]
    assert set(LOADED) <= set(rows)
    models = json.loads(ok(node.tern("models", "--json")))
    by_name = {(m["name"], m["version"]): m for m in models}
    assert by_name[("tiny_add", "1")]["state"] == "READY"
    assert {m["name"] for m in json.loads(ok(node.tern("models", "--ready", "--json")))} == set(LOADED)


def test_load_with_config_then_unload(node):
    assert ok(node.tern("load", "versioned_scale")).strip() == "loaded versioned_scale"
    states = {(m["name"], m["version"]): m["state"] for m in json.loads(ok(node.tern("models", "--json")))}
    assert all(states[("versioned_scale", v)] == "READY" for v in ("1", "2", "3")), states
    x = np.array([[1, 2, 3, 4]], dtype=np.float32)
    got = json.loads(ok(node.tern("infer", "versioned_scale", "--input", f"INPUT0={x.tolist()}", "--json")))
    assert got["OUTPUT0"]["data"] == (x * 3).ravel().tolist()  # the latest version serves

    # A config override (Triton's load parameter `config`): only version 2.
    config = {"name": "versioned_scale", "backend": "onnxruntime", "max_batch_size": 8,
              "version_policy": {"specific": {"versions": [2]}},
              "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
              "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}]}
    ok(node.tern("load", "versioned_scale", "--config", json.dumps(config)))
    got = json.loads(ok(node.tern("infer", "versioned_scale", "--input", f"INPUT0={x.tolist()}", "--json")))
    assert got["OUTPUT0"]["data"] == (x * 2).ravel().tolist()

    assert ok(node.tern("unload", "versioned_scale")).strip() == "unloaded versioned_scale"
    models = json.loads(ok(node.tern("models", "--json")))
    unloaded = [m for m in models if m["name"] == "versioned_scale"]
    assert unloaded and all(m["state"] == "UNAVAILABLE" and m["reason"] == "unloaded" for m in unloaded), unloaded

    # Bad JSON is a usage error caught before anything is sent; an unknown model the server's.
    bad = node.tern("load", "versioned_scale", "--config", "{ not json")
    assert bad.returncode == 2 and "--config is not valid JSON" in bad.stderr, bad.stderr
    missing = node.tern("load", "no_such_model")
    assert missing.returncode == 1, missing
    assert missing.stderr.strip() == \
        "error: INTERNAL: failed to load 'no_such_model', failed to poll from model repository"


# === infer ====================================================================================


def test_infer_from_npy_and_json_matches_numpy(node, tmp_path):
    a, b = tiny_add_arrays()
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    (tmp_path / "b.json").write_text(json.dumps({"shape": list(b.shape), "data": b.ravel().tolist()}))

    from_npy = json.loads(ok(node.tern("infer", "tiny_add", "--input", f"INPUT0={tmp_path / 'a.npy'}",
                                       "--input", f"INPUT1={tmp_path / 'b.npy'}", "--json")))
    out = from_npy["OUTPUT0"]
    assert (out["datatype"], out["shape"]) == ("FP32", [2, 16])
    np.testing.assert_array_equal(np.array(out["data"], dtype=np.float32).reshape(2, 16), a + b)

    # JSON: a nested array on the command line and a {"shape", "data"} file; FP32 from metadata.
    from_json = json.loads(ok(node.tern("infer", "tiny_add", "--input", f"INPUT0={json.dumps(a.tolist())}",
                                        "--input", f"INPUT1={tmp_path / 'b.json'}", "--json")))
    assert from_json == from_npy

    # Printed for people: name, datatype, shape, the first values, how many more.
    printed = ok(node.tern("infer", "tiny_add", "--input", f"INPUT0={tmp_path / 'a.npy'}",
                           "--input", f"INPUT1={tmp_path / 'b.npy'}", "--max-values", "3"))
    head, values = printed.strip().split(": ", 1)
    assert head == "OUTPUT0 FP32 [2,16]"
    assert values.endswith("... (29 more)"), values
    shown = [float(v) for v in values.split("]")[0].lstrip("[").split(", ")]
    np.testing.assert_array_equal(np.array(shown, dtype=np.float32), (a + b).ravel()[:3])


def test_infer_saves_outputs_as_npy(node, tmp_path):
    a, b = tiny_add_arrays(3)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    out_dir = tmp_path / "out"
    printed = ok(node.tern("infer", "tiny_add", "--input", f"INPUT0={tmp_path / 'a.npy'}",
                           "--input", f"INPUT1={tmp_path / 'b.npy'}", "--output-dir", str(out_dir)))
    assert printed.strip() == f"OUTPUT0 FP32 [3,16] -> {out_dir / 'OUTPUT0.npy'}"
    saved = np.load(out_dir / "OUTPUT0.npy")
    assert saved.dtype == np.float32 and saved.shape == (3, 16)
    np.testing.assert_array_equal(saved, a + b)

    # BYTES: from a numpy bytes array (dtype S) and back, arbitrary bytes included.
    words = np.array([b"hello", b"", b"\xff\x00bin"], dtype=np.bytes_)
    np.save(tmp_path / "words.npy", words)
    ok(node.tern("infer", "string_identity", "--input", f"INPUT0={tmp_path / 'words.npy'}",
                 "--output-dir", str(out_dir)))
    back = np.load(out_dir / "OUTPUT0.npy")
    assert back.tolist() == words.tolist()
    # ... and from JSON strings (numpy 'U' arrays too), printed as JSON text.
    np.save(tmp_path / "text.npy", np.array(["h\u00e9llo", "w"]))
    got = json.loads(ok(node.tern("infer", "string_identity", "--input", f"INPUT0={tmp_path / 'text.npy'}",
                                  "--json")))
    assert got["OUTPUT0"] == {"datatype": "BYTES", "shape": [2], "data": ["h\u00e9llo", "w"]}
    got = json.loads(ok(node.tern("infer", "string_identity", "--input", 'INPUT0=["a", "bc"]', "--json")))
    assert got["OUTPUT0"]["data"] == ["a", "bc"]


# === stats, health ============================================================================


def test_stats_and_health(node):
    a, b = tiny_add_arrays(1)
    ok(node.tern("infer", "tiny_add", "--input", f"INPUT0={a.tolist()}", "--input", f"INPUT1={b.tolist()}"))
    stats = json.loads(ok(node.tern("stats", "tiny_add", "--json")))
    assert [s["name"] for s in stats] == ["tiny_add"]
    assert stats[0]["inference_count"] >= 1 and stats[0]["success"] >= 1
    table = ok(node.tern("stats")).splitlines()
    assert table[0].split()[:4] == ["MODEL", "VERSION", "INFERENCES", "EXECUTIONS"]
    assert any(r.split()[0] == "tiny_add" for r in table[1:])
    bad = node.tern("stats", "no_such_model")
    assert (bad.returncode, bad.stderr.strip()) == \
        (1, "error: INVALID_ARGUMENT: requested model 'no_such_model' is not available")

    # Health is public: no token needed (the model list is not, and is left out).
    public = node.tern("health", token=None)
    assert ok(public).splitlines() == ["live: true", "ready: true"]
    assert "models not listed: UNAUTHENTICATED" in public.stderr, public.stderr
    health = ok(node.tern("health")).splitlines()
    assert health[:2] == ["live: true", "ready: true"] and health[2].split() == ["MODEL", "VERSION", "READY"], health
    report = json.loads(ok(node.tern("health", "--json")))
    assert report["live"] and report["ready"]
    ready = {m["name"]: m["ready"] for m in report["models"] if m["version"] in ("1", "")}
    assert all(ready[m] for m in LOADED), ready


# === generate =================================================================================


def test_generate_streamed_and_whole(node):
    whole = node.tern("generate", LLM, "Once upon a time", "--max-tokens", "8")
    text = ok(whole)
    assert re.fullmatch(r"finish_reason: length, prompt_tokens: \d+, completion_tokens: 8", whole.stderr.strip()), \
        whole.stderr
    streamed = node.tern("generate", LLM, "Once upon a time", "--max-tokens", "8", "--stream")
    assert ok(streamed) == text, "greedy: the streamed pieces join to the same text"
    summary = json.loads(ok(node.tern("generate", LLM, "Once upon a time", "--max-tokens", "8", "--json")))
    assert summary["text"] + "\n" == text
    assert summary["finish_reason"] == "length" and summary["completion_tokens"] == 8
    assert summary["prompt_tokens"] > 0
    bad = node.tern("generate", "tiny_add", "hello")
    assert bad.returncode == 1 and "tiny_add" in bad.stderr, bad.stderr


# === tokens and exit codes ====================================================================


def test_tokens(node):
    no_token = node.tern("models", token=None)
    assert no_token.returncode == 1 and no_token.stderr.startswith("error: UNAUTHENTICATED: "), no_token.stderr
    wrong = node.tern("models", token="tern_not-a-real-token")
    assert wrong.returncode == 1 and "UNAUTHENTICATED" in wrong.stderr
    from_file = node.tern("models", "--json", "--token-file", str(node.token_file), token=None)
    assert {m["name"] for m in json.loads(ok(from_file))} >= set(LOADED)
    flag = node.tern("models", "--json", "--token", node.token, token=None)
    ok(flag)


def test_exit_codes(node):
    a, _ = tiny_add_arrays(1)
    unknown = node.tern("infer", "no_such_model", "--input", "INPUT0=[[1.0]]")
    assert (unknown.returncode, unknown.stderr.strip()) == \
        (1, "error: NOT_FOUND: Request for unknown model: 'no_such_model' is not found")
    bad_name = node.tern("infer", "tiny_add", "--input", f"NOPE={a.tolist()}")
    assert (bad_name.returncode, bad_name.stderr.strip()) == \
        (1, "error: INVALID_ARGUMENT: unexpected inference input 'NOPE' for model 'tiny_add'")
    wrong_shape = node.tern("infer", "tiny_add", "--input", "INPUT0=[[1.0, 2.0]]", "--input", "INPUT1=[[1.0, 2.0]]")
    assert wrong_shape.returncode == 1 and "INPUT0" in wrong_shape.stderr, wrong_shape.stderr

    unreachable = node.tern("models", url=f"127.0.0.1:{free_port()}")
    assert unreachable.returncode == 3, unreachable
    assert unreachable.stderr.startswith("error: cannot connect to 127.0.0.1:"), unreachable.stderr

    for args in (["infer", "tiny_add"], ["infer", "tiny_add", "--input", "no-equals-sign"], ["models", "--bogus"],
                 ["models", "--ssl"], ["infer", "tiny_add", "--input", "INPUT0=/no/such/file.npy"],
                 ["infer", "tiny_add", "--input", "INPUT0=[[1, 2"]):
        proc = node.tern(*args)
        assert proc.returncode == 2, (args, proc.returncode, proc.stderr)
        assert proc.stderr.startswith("error:"), (args, proc.stderr)
    out_of_range = node.tern("infer", "tiny_add", "--input", 'INPUT0={"shape": [1, 2], "data": [1]}')
    assert out_of_range.returncode == 2 and "input 'INPUT0'" in out_of_range.stderr, out_of_range.stderr
