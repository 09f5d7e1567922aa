"""Triton's HTTP extensions beyond inference, and HTTP errors, on real servers on loopback:
model control (load with a config override and uploaded files, unload, index) through
`tritonclient.http`; bad requests sent raw (malformed JSON, wrong datatypes, an oversize body,
a header that lies about its length, a truncated binary section), each answered with Triton's
status and a message naming the field, after which the server keeps serving; tokens and
per-model permissions as on gRPC; perf_analyzer in its default HTTP mode through tern-node,
tern-router and `tern serve` with no errors.
"""

from __future__ import annotations

import http.client
import json
import subprocess

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tern_clusterlib import NodeProc, RouterProc, wait_until
from tern_testlib import ROOT, TernServer, copy_models
from test_http import Serve, http_ready, router_http, serve_http  # noqa: F401 - fixtures
from test_perf_analyzer import PA_BIN, PA_DIR, check_success

TERN = ROOT / "target" / "release" / "tern"
TINY_ONES = {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}


def post(addr: str, path: str, body: bytes, headers=None, timeout: float = 30) -> tuple[int, dict, dict]:
    """POSTs raw bytes; returns (status, JSON body or {}, headers)."""
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, (json.loads(data) if data else {}), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def tiny_infer_ok(addr: str) -> None:
    body = json.dumps({"inputs": [TINY_ONES, dict(TINY_ONES, name="INPUT1")]}).encode()
    status, reply, _ = post(addr, "/v2/models/tiny_add/infer", body)
    assert status == 200, reply
    assert reply["outputs"][0]["data"] == [2.0] * 16


# --- errors ---------------------------------------------------------------------------------


def test_bad_requests_get_tritons_status_and_name_the_field(server):
    addr = server.http_addr
    infer = "/v2/models/tiny_add/infer"
    cases = [
        # (body, extra headers, status, words the error must contain)
        (b'{"inputs": [{"name": "INPUT0"', {}, 400, ["malformed", "tiny_add"]),
        (json.dumps({"inputs": [dict(TINY_ONES, datatype="FP99"), dict(TINY_ONES, name="INPUT1")]}).encode(),
         {}, 400, ["INPUT0", "'datatype'", "FP99"]),
        (json.dumps({"inputs": [dict(TINY_ONES, datatype="INT32", data=[1] * 16),
                                dict(TINY_ONES, name="INPUT1")]}).encode(), {}, 400, ["INPUT0", "INT32", "FP32"]),
        (json.dumps({"inputs": [dict(TINY_ONES, data=["x"] * 16), dict(TINY_ONES, name="INPUT1")]}).encode(),
         {}, 400, ["INPUT0", "'data'", "FP32"]),
        (json.dumps({"inputs": [dict(TINY_ONES, shape=[1, 15]), dict(TINY_ONES, name="INPUT1")]}).encode(),
         {}, 400, ["INPUT0", "'data'", "15"]),
    ]
    head = json.dumps({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}},
        dict(TINY_ONES, name="INPUT1")]}).encode()
    # The header says the JSON part is longer than the whole body.
    cases.append((head, {"Inference-Header-Content-Length": str(len(head) + 100)}, 400,
                  ["Inference-Header-Content-Length"]))
    # The binary section is cut short: 10 of INPUT0's 64 bytes.
    cases.append((head + b"\0" * 10, {"Inference-Header-Content-Length": str(len(head))}, 400,
                  ["INPUT0", "54 additional bytes", "binary_data_size"]))
    # Bytes after the last input's binary data.
    cases.append((head + b"\0" * 70, {"Inference-Header-Content-Length": str(len(head))}, 400,
                  ["unexpected additional input data", "tiny_add"]))
    for body, headers, status, words in cases:
        got, reply, got_headers = post(addr, infer, body, headers)
        assert got == status, (got, reply, body[:120])
        assert got_headers.get("content-type") == "application/json", got_headers
        assert all(w in reply["error"] for w in words), (words, reply)
        tiny_infer_ok(addr)  # the server keeps serving
    status, reply, _ = post(addr, "/v2/models/no_such_model/infer", json.dumps({"inputs": [TINY_ONES]}).encode())
    assert status in (400, 404) and "no_such_model" in reply["error"], (status, reply)
    # A known path with the wrong method, and an unknown path.
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/v2/models/tiny_add/infer")
    r = conn.getresponse()
    assert r.status == 405 and json.loads(r.read())["error"] == "Method Not Allowed"
    conn.request("GET", "/v2/nothing/here")
    r = conn.getresponse()
    assert r.status == 404 and "error" in json.loads(r.read())
    # Trace and log settings answer as their gRPC calls do (test_trace_log_settings.py).
    for path, key in (("/v2/trace/setting", "trace_mode"), ("/v2/logging", "log_verbose_level")):
        conn.request("GET", path)
        r = conn.getresponse()
        reply = json.loads(r.read())
        assert r.status == 200 and key in reply, (path, reply)
    conn.close()


def test_oversize_body_is_refused_before_it_is_read(model_repo, tmp_path):
    limit = 1 << 20
    srv = TernServer([model_repo], ["--grpc-max-message-size", str(limit)], log_dir=tmp_path,
                     label="http-limit").start()
    try:
        host, port = srv.http_addr.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        # Only the headers: the declared length alone is refused.
        conn.putrequest("POST", "/v2/models/tiny_add/infer")
        conn.putheader("Content-Length", str(4 * limit))
        conn.endheaders()
        r = conn.getresponse()
        reply = json.loads(r.read())
        assert r.status == 400 and "--grpc-max-message-size" in reply["error"] and str(limit) in reply["error"], reply
        conn.close()
        # A gzip body that inflates past the limit is refused too.
        import gzip

        bomb = gzip.compress(b"{" + b" " * (2 * limit) + b"}")
        status, reply, _ = post(srv.http_addr, "/v2/models/tiny_add/infer", bomb, {"Content-Encoding": "gzip"})
        assert status == 400 and "--grpc-max-message-size" in reply["error"], reply
        status, reply, headers = post(srv.http_addr, "/v2/models/tiny_add/infer", b"{}", {"Content-Encoding": "br"})
        assert status == 501 and reply["error"] == "Unsupported compression type", reply
        tiny_infer_ok(srv.http_addr)
    finally:
        srv.stop()


# --- model control --------------------------------------------------------------------------


def test_model_control_with_config_override_and_uploaded_files(model_repo, tmp_path):
    repo = copy_models(model_repo, tmp_path / "repo", ["tiny_add", "versioned_scale"])
    srv = TernServer([repo], ["--model-control-mode", "explicit"], log_dir=tmp_path, label="http-explicit").start()
    try:
        c = httpclient.InferenceServerClient(srv.http_addr)
        index = {m["name"]: m for m in c.get_model_repository_index()}
        assert set(index) == {"tiny_add", "versioned_scale"}
        assert not c.is_model_ready("tiny_add")
        c.load_model("tiny_add")
        assert c.is_model_ready("tiny_add")
        config = c.get_model_config("tiny_add")
        config["max_batch_size"] = 8
        config["dynamic_batching"]["preferred_batch_size"] = [8]
        c.load_model("tiny_add", config=json.dumps(config))
        assert c.get_model_config("tiny_add")["max_batch_size"] == 8
        tiny_infer_ok(srv.http_addr)

        scale_config = {
            "name": "uploaded", "backend": "onnxruntime", "max_batch_size": 8,
            "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
            "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
        }
        model_bytes = (repo / "versioned_scale" / "1" / "model.onnx").read_bytes()
        c.load_model("uploaded", config=json.dumps(scale_config), files={"file:5/model.onnx": model_bytes})
        x = np.array([[1, 2, 3, 4]], np.float32)
        i = httpclient.InferInput("INPUT0", [1, 4], "FP32")
        i.set_data_from_numpy(x)
        r = c.infer("uploaded", [i])
        assert r.get_response()["model_version"] == "5"
        np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), x)
        c.unload_model("uploaded")
        assert not c.is_model_ready("uploaded")

        with pytest.raises(InferenceServerException) as e:
            c.load_model("tiny_add", config="{ not json")
        # Triton's poll failure (INTERNAL -> 500), as tritonclient's model-control example expects.
        assert e.value.status() == "500" and "failed to load 'tiny_add'" in str(e.value), e.value
        with pytest.raises(InferenceServerException) as e:
            c.load_model("no_such_model")
        assert e.value.status() == "500" and "no_such_model" in str(e.value), e.value
        c.unload_model("tiny_add")
        assert not c.is_model_ready("tiny_add")
        ready = {m["name"] for m in c.get_model_repository_index() if m.get("state") == "READY"}
        assert ready == set(), ready
        c.close()
    finally:
        srv.stop()


# --- authorization --------------------------------------------------------------------------


def new_token(name: str, groups: str, models: str = "*") -> tuple[str, str]:
    out = subprocess.run([str(TERN), "token", "new", name, "-", "--groups", groups, "--models", models],
                         capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()
    return out[0], out[1]


@pytest.mark.parametrize("kind", ["node", "serve"])
def test_tokens_and_model_permissions_as_on_grpc(model_repo, tmp_path, kind):
    tokens = tmp_path / "tokens"
    alice, alice_line = new_token("alice", "inference,metadata,health", "tiny_add")
    bob, bob_line = new_token("bob", "health")
    tokens.write_text(alice_line + "\n" + bob_line + "\n")
    cls = Serve if kind == "serve" else TernServer
    srv = cls([model_repo], ["--auth-token-file", str(tokens)], log_dir=tmp_path, label=f"http-auth-{kind}").start()
    try:
        addr = srv.http_addr
        wait_until(lambda: http_ready(addr), 30, "ready")  # health is public
        body = json.dumps({"inputs": [TINY_ONES, dict(TINY_ONES, name="INPUT1")]}).encode()
        status, reply, headers = post(addr, "/v2/models/tiny_add/infer", body)
        assert status == 401 and "bearer token" in reply["error"], reply
        assert headers.get("www-authenticate", "").startswith("Bearer"), headers
        status, reply, _ = post(addr, "/v2/models/tiny_add/infer", body, {"Authorization": f"Bearer {bob}"})
        assert status == 403 and "inference" in reply["error"], reply
        status, reply, _ = post(addr, "/v2/models/tiny_add/infer", body, {"Authorization": f"Bearer {alice}"})
        assert status == 200, reply
        add_body = json.dumps({"inputs": [dict(TINY_ONES, datatype="FP32"), dict(TINY_ONES, name="INPUT1")]}).encode()
        status, reply, _ = post(addr, "/v2/models/add_fp32/infer", add_body, {"Authorization": f"Bearer {alice}"})
        assert status == 403 and "add_fp32" in reply["error"], reply
        c = httpclient.InferenceServerClient(addr)
        with pytest.raises(InferenceServerException) as e:
            c.get_model_config("add_fp32", headers={"Authorization": f"Bearer {alice}"})
        assert e.value.status() == "403", e.value
        c.close()
    finally:
        srv.stop()


# --- perf_analyzer --------------------------------------------------------------------------


def run_pa_http(addr: str, model: str, csv_path, extra=()):
    if not PA_BIN.exists():
        pytest.fail(f"perf_analyzer not found at {PA_BIN}: run scripts/setup.sh")
    import os

    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = f"{PA_DIR / 'lib'}:{env.get('LD_LIBRARY_PATH', '')}"
    cmd = [str(PA_BIN), "-m", model, "-u", addr, "-i", "http", "--stability-percentage", "100",
           "--max-trials", "6", "-f", str(csv_path), *extra]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"perf_analyzer did not finish within 120 s:\n{e.stdout}\n{e.stderr}")


@pytest.mark.parametrize("kind", ["node", "router", "serve"])
def test_perf_analyzer_http(request, server, kind, tmp_path):
    addr = server.http_addr if kind == "node" else request.getfixturevalue(f"{kind}_http")
    proc = run_pa_http(addr, "tiny_add", tmp_path / "tiny.csv",
                       ["--concurrency-range", "4", "--measurement-interval", "1000"])
    check_success(proc, tmp_path / "tiny.csv")
    proc = run_pa_http(addr, "identity_string", tmp_path / "str.csv",
                       ["--concurrency-range", "2", "--measurement-interval", "1000", "--string-length", "12"])
    check_success(proc, tmp_path / "str.csv")


# --- TLS and metrics, shared with gRPC ------------------------------------------------------


def test_https_with_the_grpc_certificate(model_repo, tmp_path):
    """`--grpc-use-ssl` covers the HTTP port too: HTTPS with the same certificate, plaintext refused."""
    import ssl

    from test_tls import Pki

    pki = Pki(tmp_path)
    srv = TernServer([model_repo], pki.server_args(), log_dir=tmp_path, label="http-tls").start()
    try:
        context = ssl.create_default_context(cafile=str(pki.ca_path))
        host, port = srv.http_addr.rsplit(":", 1)
        conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
        conn.request("GET", "/v2/models/tiny_add")
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["name"] == "tiny_add"
        conn.close()
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            post(srv.http_addr, "/v2/models/tiny_add/infer", b"{}", timeout=5)
        c = httpclient.InferenceServerClient(srv.http_addr, ssl=True,
                                             ssl_options={"ca_certs": str(pki.ca_path)})
        assert c.is_model_ready("tiny_add")
        c.close()
    finally:
        srv.stop()


def test_metrics_count_each_http_request_once(server):
    import re
    import urllib.request

    import tritonclient.grpc as grpcclient

    addr = next(m.group(1) for line in server.lines if (m := re.search(r"metrics=([0-9.]+:\d+)", line)))
    addr = addr.replace("0.0.0.0", "127.0.0.1")

    def success() -> float:
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
            text = r.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("nv_inference_request_success{") and 'model="add_int16"' in line)

    before = success()
    ones = {"name": "INPUT0", "shape": [1, 16], "datatype": "INT16", "data": [1] * 16}
    body = json.dumps({"inputs": [ones, dict(ones, name="INPUT1")]}).encode()
    for _ in range(3):
        status, reply, _ = post(server.http_addr, "/v2/models/add_int16/infer", body)
        assert status == 200, reply
    g = grpcclient.InferenceServerClient(server.url)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        i = grpcclient.InferInput(name, [1, 16], "INT16")
        i.set_data_from_numpy(np.ones((1, 16), np.int16))
        inputs.append(i)
    g.infer("add_int16", inputs)
    g.infer("add_int16", inputs)
    wait_until(lambda: success() >= before + 5, 10, "five counted requests")
    assert success() == before + 5


def test_allow_http_false_and_thread_count_flag(model_repo, tmp_path):
    """`--allow-http false` serves no HTTP and says `http=off`; `--http-thread-count` is accepted."""
    repo = copy_models(model_repo, tmp_path / "repo", ["tiny_add"])
    srv = TernServer([repo], ["--allow-http", "false", "--http-thread-count", "4"], log_dir=tmp_path,
                     label="http-off").start()
    try:
        ready = next(line for line in srv.lines if srv.ready_mark in line)
        assert "http=off" in ready and srv.http_addr is None, ready
    finally:
        srv.stop()
    bad = subprocess.run([str(TernServer([repo]).binary()), "--model-repository", str(repo), "--http-thread-count", "0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--http-thread-count" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
