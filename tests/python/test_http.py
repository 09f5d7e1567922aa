"""Triton's HTTP/REST protocol (KServe v2 REST with Triton's extensions) on tern-node,
tern-router and `tern serve`, spoken by the real `tritonclient.http` (sync and asyncio) and by
raw HTTP requests where a test must send what tritonclient will not.

Each server runs on loopback with `--http-port 0`; its ready line gives `http=ADDR`.
"""

from __future__ import annotations

import asyncio
import http.client
import json

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException

from tern_clusterlib import NodeProc, RouterProc, wait_until
from tern_testlib import ADD_TYPES, IDENTITY_TYPES, ROOT, TRITON_TYPES, TernServer

TERN = ROOT / "target" / "release" / "tern"
TIMEOUT = 30.0


class Serve(TernServer):
    """`tern serve` (router and node in one process)."""

    ready_mark = "tern ready"

    def binary(self):
        return TERN

    def command(self):
        cmd = [str(TERN), "serve"]
        for r in self.repos:
            cmd += ["--model-repository", str(r)]
        return cmd + ["--grpc-address", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0",
                      "--http-address", "127.0.0.1", "--http-port", "0", *self.extra_args]


def http_ready(addr: str, model: str = "tiny_add") -> bool:
    c = httpclient.InferenceServerClient(addr)
    try:
        return c.is_server_ready() and c.is_model_ready(model)
    finally:
        c.close()


@pytest.fixture(scope="module")
def router_http(model_repo, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("http-router")
    node = NodeProc(model_repo, ["--allow-http", "false"], log_dir=log_dir, label="http-node").start()
    router = RouterProc(["--node", node.addr], log_dir=log_dir, label="http-router").start()
    try:
        assert router.http_addr, router.log_tail()
        wait_until(lambda: http_ready(router.http_addr), 30, "the router's HTTP port to report tiny_add ready")
        yield router.http_addr
    finally:
        router.stop()
        node.stop()


@pytest.fixture(scope="module")
def serve_http(model_repo, tmp_path_factory):
    srv = Serve([model_repo], log_dir=tmp_path_factory.mktemp("http-serve"), label="http-serve").start()
    try:
        assert srv.http_addr, srv.log_tail()
        wait_until(lambda: http_ready(srv.http_addr), 30, "tern serve's HTTP port to report tiny_add ready")
        yield srv.http_addr
    finally:
        srv.stop()


@pytest.fixture(params=["node", "router", "serve"])
def http_addr(request, server):
    """The HTTP address of each server kind in turn."""
    if request.param == "node":
        assert server.http_addr, f"no http=ADDR in the node's ready line:\n{server.log_tail()}"
        return server.http_addr
    return request.getfixturevalue(f"{request.param}_http")


@pytest.fixture
def hclient(http_addr):
    c = httpclient.InferenceServerClient(http_addr, network_timeout=TIMEOUT, connection_timeout=TIMEOUT)
    yield c
    c.close()


def sample(suffix: str, shape, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if suffix == "bool":
        return rng.integers(0, 2, shape).astype(np.bool_)
    if suffix == "string":
        return np.array([b"s%d\x00x" % i for i in range(int(np.prod(shape)))], dtype=np.object_).reshape(shape)
    if suffix == "bf16":
        import ml_dtypes

        return rng.integers(-8, 8, shape).astype(ml_dtypes.bfloat16)
    dtype = TRITON_TYPES[suffix][2]
    if np.issubdtype(dtype, np.floating):
        return rng.integers(-20, 20, shape).astype(dtype) / 4
    return rng.integers(0, 10, shape).astype(dtype)


def make_input(name: str, data: np.ndarray, datatype: str, binary: bool):
    i = httpclient.InferInput(name, list(data.shape), datatype)
    i.set_data_from_numpy(data, binary_data=binary)
    return i


# --- inference ------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("suffix", ADD_TYPES)
def test_add_every_datatype(hclient, suffix, binary):
    datatype = TRITON_TYPES[suffix][0]
    a, b = sample(suffix, (2, 16), 1), sample(suffix, (2, 16), 2)
    if np.issubdtype(a.dtype, np.unsignedinteger):
        a = (a + b).astype(a.dtype)
    inputs = [make_input("INPUT0", a, datatype, binary), make_input("INPUT1", b, datatype, binary)]
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1")]
    if suffix == "fp16" and not binary:
        # Triton refuses FP16 in JSON (http_server.cc, ReadDataFromJson): 400 naming the input.
        with pytest.raises(InferenceServerException) as e:
            hclient.infer(f"add_{suffix}", inputs, outputs=outputs)
        assert "FP16" in str(e.value) and "INPUT0" in str(e.value), e.value
        return
    result = hclient.infer(f"add_{suffix}", inputs, outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), (a + b).astype(a.dtype))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), (a - b).astype(a.dtype))
    assert result.get_response()["model_name"] == f"add_{suffix}"
    for o in result.get_response()["outputs"]:
        assert o["datatype"] == datatype and o["shape"] == [2, 16]
        assert ("data" in o) != binary, o


@pytest.mark.parametrize("suffix", IDENTITY_TYPES)
def test_identity_every_datatype_binary(hclient, suffix):
    datatype = TRITON_TYPES[suffix][0]
    x = sample(suffix, (3, 16))
    result = hclient.infer(f"identity_{suffix}", [make_input("INPUT0", x, datatype, True)])
    out = result.as_numpy("OUTPUT0")
    if suffix == "string":
        assert out.tolist() == x.tolist()  # embedded NULs survive
    else:
        np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("suffix", ["bool", "string", "int64", "uint64", "fp64"])
def test_identity_json_both_ways(hclient, suffix):
    datatype = TRITON_TYPES[suffix][0]
    x = sample(suffix, (2, 16), 5)
    if suffix == "string":
        # JSON BYTES are strings; an embedded NUL travels as \\u0000.
        x = np.array([("t%d\x00é" % i).encode() for i in range(32)], dtype=np.object_).reshape(2, 16)
    result = hclient.infer(f"identity_{suffix}", [make_input("INPUT0", x, datatype, False)],
                           outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)])
    out = result.as_numpy("OUTPUT0")
    if suffix == "string":
        assert [v if isinstance(v, bytes) else v.encode() for v in out.ravel()] == list(x.ravel())
    else:
        np.testing.assert_array_equal(out, x)


def test_async_client(http_addr):
    async def run():
        c = aiohttpclient.InferenceServerClient(http_addr)
        try:
            assert await c.is_server_live() and await c.is_model_ready("tiny_add")
            a = np.arange(32, dtype=np.float32).reshape(2, 16)
            inputs = []
            for name in ("INPUT0", "INPUT1"):
                i = aiohttpclient.InferInput(name, [2, 16], "FP32")
                i.set_data_from_numpy(a)
                inputs.append(i)
            results = await asyncio.gather(*[c.infer("tiny_add", inputs, request_id=f"a{k}") for k in range(8)])
            for k, r in enumerate(results):
                np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a + a)
                assert r.get_response()["id"] == f"a{k}"
        finally:
            await c.close()

    asyncio.run(run())


def test_classification_and_request_id(hclient):
    a = np.array([[0.5, 3.0, -1.0, 2.0] + [0.0] * 12], dtype=np.float32)
    b = np.zeros_like(a)
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=False, class_count=2)
    result = hclient.infer("add_fp32", [make_input("INPUT0", a, "FP32", True), make_input("INPUT1", b, "FP32", True)],
                           outputs=[out], request_id="req-é-7")
    resp = result.get_response()
    assert resp["id"] == "req-é-7"
    classes = [c.decode() if isinstance(c, bytes) else c for c in result.as_numpy("OUTPUT0").ravel()]
    assert [(float(c.split(":")[0]), int(c.split(":")[1])) for c in classes] == [(3.0, 1), (2.0, 3)], classes


def test_compressed_request_and_response(hclient):
    a = np.ones((1, 16), np.float32)
    inputs = [make_input("INPUT0", a, "FP32", True), make_input("INPUT1", a, "FP32", True)]
    for req_alg, resp_alg in [("gzip", "deflate"), ("deflate", "gzip")]:
        r = hclient.infer("tiny_add", inputs, request_compression_algorithm=req_alg,
                          response_compression_algorithm=resp_alg)
        np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a + a)


# --- metadata, health, statistics -------------------------------------------------------------


def test_health_metadata_config(hclient):
    assert hclient.is_server_live() and hclient.is_server_ready()
    assert hclient.is_model_ready("tiny_add")
    assert not hclient.is_model_ready("no_such_model")
    meta = hclient.get_server_metadata()
    assert meta["name"] and "model_repository" in meta["extensions"]
    model = hclient.get_model_metadata("tiny_add")
    assert model["name"] == "tiny_add" and "1" in model["versions"]
    assert {i["name"]: (i["datatype"], i["shape"]) for i in model["inputs"]}["INPUT0"] == ("FP32", [-1, 16])
    config = hclient.get_model_config("tiny_add")
    assert config["max_batch_size"] == 64
    assert config["input"][0]["data_type"] == "TYPE_FP32" and config["input"][0]["dims"] == [16]
    with pytest.raises(InferenceServerException) as e:
        hclient.get_model_metadata("no_such_model")
    assert "no_such_model" in str(e.value)


def test_statistics_count_http_requests(hclient):
    def count():
        stats = hclient.get_inference_statistics("add_int32")["model_stats"]
        return sum(int(s["inference_count"]) for s in stats)

    before = count()
    a = np.ones((1, 16), np.int32)
    for _ in range(3):
        hclient.infer("add_int32", [make_input("INPUT0", a, "INT32", True), make_input("INPUT1", a, "INT32", True)])
    wait_until(lambda: count() >= before + 3, 10, "three more counted inferences")
    assert count() == before + 3
    everything = hclient.get_inference_statistics()["model_stats"]
    assert any(s["name"] == "add_int32" for s in everything)


def test_shared_memory_as_triton_answers_with_client_shm_off(hclient, http_addr):
    # Triton's HandleSystemSharedMemory / HandleCudaSharedMemory with --allow-client-shm=false
    # (its default): status lists no region; register and unregister answer 501 with its words.
    disabled = "Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable."
    assert hclient.get_system_shared_memory_status() == []
    assert hclient.get_cuda_shared_memory_status() == []
    with pytest.raises(InferenceServerException) as e:
        hclient.get_cuda_shared_memory_status("in0")
    assert (e.value.status(), e.value.message()) == ("404", "Unable to find cuda shared memory region: 'in0'")
    for call in [
        lambda: hclient.register_system_shared_memory("in0", "/tern_no_such_shm", 64),
        lambda: hclient.unregister_system_shared_memory(),
        lambda: hclient.unregister_system_shared_memory("in0"),
        lambda: hclient.register_cuda_shared_memory("in0", b"\x00" * 64, 0, 64),
        lambda: hclient.unregister_cuda_shared_memory(),
    ]:
        with pytest.raises(InferenceServerException) as e:
            call()
        assert (e.value.status(), e.value.message()) == ("501", disabled)
    host, port = http_addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    try:
        conn.request("POST", "/v2/systemsharedmemory/status")
        resp = conn.getresponse()
        assert (resp.status, json.loads(resp.read())) == (405, {"error": "Method Not Allowed"})
    finally:
        conn.close()
