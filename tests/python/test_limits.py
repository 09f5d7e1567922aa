"""Limits end to end: every limit a client can hit answers RESOURCE_EXHAUSTED or
INVALID_ARGUMENT naming the flag that sets it, nothing is allocated from a size a request only
claims, and the node keeps answering well-formed requests afterwards.

Flags: --grpc-max-message-size, --max-tensor-bytes, --max-request-bytes,
--grpc-max-concurrent-streams, --grpc-http2-max-header-list-size, --max-pending-request-bytes
(see docs/security.md), and their defaults.
Models are built here with onnx (an Add over FP32 [-1]), so this file needs no example repository.
"""
from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tern_testlib import (
    TernServer, expect_rpc_error, expect_triton_error, http2_settings, infer_request, output_array, raw_stub,
)

MESSAGE_LIMIT = 1 << 20  # 1 MiB
TENSOR_LIMIT = 400_000
REQUEST_LIMIT = 600_000
HEADER_LIMIT = 4096
TIMEOUT = 30
DEFAULT_MAX_MESSAGE = 256 * 1024 * 1024  # the defaults, with no flag given
DEFAULT_MAX_STREAMS = 1024


def add_model_bytes() -> bytes:
    from onnx import TensorProto, checker, helper

    def vi(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N"])

    graph = helper.make_graph([helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"])], "add",
                              [vi("INPUT0"), vi("INPUT1")], [vi("OUTPUT0")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    checker.check_model(model)
    return model.SerializeToString()


CONFIG = """name: "vec_add"
backend: "onnxruntime"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    repo = tmp_path_factory.mktemp("limits_repo")
    (repo / "vec_add" / "1").mkdir(parents=True)
    (repo / "vec_add" / "config.pbtxt").write_text(CONFIG)
    (repo / "vec_add" / "1" / "model.onnx").write_bytes(add_model_bytes())
    srv = TernServer([repo], [
        "--grpc-max-message-size", str(MESSAGE_LIMIT),
        "--max-tensor-bytes", str(TENSOR_LIMIT),
        "--max-request-bytes", str(REQUEST_LIMIT),
        "--grpc-max-concurrent-streams", "2",
        "--grpc-http2-max-header-list-size", str(HEADER_LIMIT),
    ], label="limits").start()
    yield srv
    assert srv.stop() == 0, srv.log_tail()


@pytest.fixture
def client(limited):
    c = grpcclient.InferenceServerClient(limited.url)
    yield c
    c.close()


@pytest.fixture
def stub(limited):
    channel, s = raw_stub(limited.url)
    yield s
    channel.close()


def vec_inputs(n0: int, n1: int | None = None):
    n1 = n0 if n1 is None else n1
    inputs = []
    for name, n in (("INPUT0", n0), ("INPUT1", n1)):
        i = grpcclient.InferInput(name, [n], "FP32")
        i.set_data_from_numpy(np.ones(n, dtype=np.float32))
        inputs.append(i)
    return inputs


def well_formed(client):
    a = np.arange(8, dtype=np.float32)
    inputs = [grpcclient.InferInput("INPUT0", [8], "FP32"), grpcclient.InferInput("INPUT1", [8], "FP32")]
    for i in inputs:
        i.set_data_from_numpy(a)
    np.testing.assert_array_equal(client.infer("vec_add", inputs, client_timeout=TIMEOUT).as_numpy("OUTPUT0"), a + a)


def test_oversize_message_is_resource_exhausted(client):
    # 2 x 300,000 floats = 2.4 MB, over the 1 MiB message limit.
    msg = expect_triton_error(lambda: client.infer("vec_add", vec_inputs(300_000), client_timeout=TIMEOUT),
                              "StatusCode.RESOURCE_EXHAUSTED")
    assert "--grpc-max-message-size" in msg and str(MESSAGE_LIMIT) in msg, msg
    well_formed(client)


def test_oversize_message_in_a_stream_is_resource_exhausted(stub, client):
    big = np.ones(300_000, dtype=np.float32).tobytes()
    req = infer_request("vec_add", [("INPUT0", "FP32", [300_000], None), ("INPUT1", "FP32", [300_000], None)],
                        raw=[big, big])
    msg = expect_rpc_error(lambda: list(stub.ModelStreamInfer(iter([req]), timeout=TIMEOUT)),
                           grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "--grpc-max-message-size" in msg, msg
    well_formed(client)


def test_shape_claiming_2_pow_40_elements_is_refused_before_allocating(stub, client):
    # A few bytes claiming a 4 TiB tensor: refused by the claim, not by trying to allocate it.
    small = np.ones(16, dtype=np.float32).tobytes()
    req = infer_request("vec_add", [("INPUT0", "FP32", [1 << 40], None), ("INPUT1", "FP32", [16], None)],
                        raw=[small, small])
    msg = expect_rpc_error(lambda: stub.ModelInfer(req, timeout=TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT)
    assert "'INPUT0'" in msg and "[1099511627776]" in msg and "--max-tensor-bytes" in msg, msg
    # Typed contents take the same path.
    req = infer_request("vec_add", [("INPUT0", "FP32", [1 << 40], {"fp32_contents": [1.0] * 16}),
                                    ("INPUT1", "FP32", [16], {"fp32_contents": [1.0] * 16})])
    msg = expect_rpc_error(lambda: stub.ModelInfer(req, timeout=TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT)
    assert "--max-tensor-bytes" in msg, msg
    # More elements than 64 bits count.
    req = infer_request("vec_add", [("INPUT0", "FP32", [1 << 62, 1 << 62], None), ("INPUT1", "FP32", [16], None)],
                        raw=[small, small])
    msg = expect_rpc_error(lambda: stub.ModelInfer(req, timeout=TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT)
    assert "more than 2^64 elements" in msg, msg
    well_formed(client)


def test_tensor_and_request_limits(client):
    # One tensor of 480,000 bytes: over --max-tensor-bytes (INVALID_ARGUMENT).
    msg = expect_triton_error(lambda: client.infer("vec_add", vec_inputs(120_000), client_timeout=TIMEOUT),
                              "StatusCode.INVALID_ARGUMENT")
    assert "--max-tensor-bytes" in msg and str(TENSOR_LIMIT) in msg, msg
    # Two tensors of 320,000 bytes each: each within, together over --max-request-bytes.
    msg = expect_triton_error(lambda: client.infer("vec_add", vec_inputs(80_000), client_timeout=TIMEOUT),
                              "StatusCode.RESOURCE_EXHAUSTED")
    assert "--max-request-bytes" in msg and str(REQUEST_LIMIT) in msg and "640000" in msg, msg
    # Just within every limit: served.
    result = client.infer("vec_add", vec_inputs(70_000), client_timeout=TIMEOUT)
    assert result.as_numpy("OUTPUT0").shape == (70_000,)
    well_formed(client)


def test_oversize_headers_are_refused_and_the_node_serves_on(limited, client):
    channel, stub = raw_stub(limited.url)
    try:
        req = infer_request("vec_add", [("INPUT0", "FP32", [1], {"fp32_contents": [1.0]}),
                                        ("INPUT1", "FP32", [1], {"fp32_contents": [1.0]})])
        call = lambda n: stub.ModelInfer(req, timeout=TIMEOUT, metadata=[("x-padding", "a" * n)])  # noqa: E731
        msg = expect_rpc_error(lambda: call(HEADER_LIMIT + 1000), grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "--grpc-http2-max-header-list-size" in msg and str(HEADER_LIMIT) in msg, msg
        # Far over it (more than twice), HTTP/2 itself refuses the headers (431) without reading them.
        with pytest.raises(grpc.RpcError) as e:
            call(4 * HEADER_LIMIT)
        assert e.value.code() != grpc.StatusCode.OK
        # Within the limit: served.
        resp = call(100)
        assert resp.model_name == "vec_add"
    finally:
        channel.close()
    well_formed(client)


def test_concurrent_streams_beyond_the_limit_wait_rather_than_fail(limited, client):
    # --grpc-max-concurrent-streams 2: the node tells every connection so in its first SETTINGS
    # frame (SETTINGS_MAX_CONCURRENT_STREAMS, id 3); without a limit it would send none.
    assert http2_settings(limited.url).get(3) == 2, http2_settings(limited.url)
    # One connection, 16 requests at once: the client queues them behind the 2 streams.
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: well_formed(client), range(16)))
    assert len(results) == 16


def test_limit_flags_are_validated(tmp_path):
    for args, says in [(["--grpc-max-message-size", "0"], "--grpc-max-message-size"),
                       (["--grpc-max-message-size", "4294967296"], "--grpc-max-message-size"),
                       (["--max-tensor-bytes", "0"], "--max-tensor-bytes"),
                       (["--grpc-max-concurrent-streams", "0"], "--grpc-max-concurrent-streams"),
                       (["--max-pending-request-bytes", "0"], "--max-pending-request-bytes")]:
        srv = TernServer([tmp_path], args, label="bad-limits")
        proc = subprocess.run(srv.command(), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and says in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_router_applies_its_own_transport_limits(limited, tmp_path):
    # A router in front of the limited node, with its own (lower) message and header limits:
    # oversize requests are refused at the router, unary and in streams, as a node refuses them.
    from tern_clusterlib import RouterProc, wait_until

    node_addr = limited.url
    router = RouterProc(["--node", node_addr, "--grpc-max-message-size", str(MESSAGE_LIMIT // 2),
                         "--grpc-http2-max-header-list-size", str(HEADER_LIMIT)], log_dir=tmp_path)
    router.start()
    try:
        client = grpcclient.InferenceServerClient(router.url)
        wait_until(lambda: client.is_model_ready("vec_add"), 15, "the router sees vec_add")
        # No stream flag given to the router: the default limit, advertised to every client.
        assert http2_settings(router.url).get(3) == DEFAULT_MAX_STREAMS, http2_settings(router.url)
        n = 100_000  # 2 x 400 KB: under the node's limit, over the router's 512 KiB
        msg = expect_triton_error(lambda: client.infer("vec_add", vec_inputs(n), client_timeout=TIMEOUT),
                                  "StatusCode.RESOURCE_EXHAUSTED")
        assert "--grpc-max-message-size" in msg and str(MESSAGE_LIMIT // 2) in msg, msg
        channel, stub = raw_stub(router.url)
        try:
            big = np.ones(n, dtype=np.float32).tobytes()
            req = infer_request("vec_add", [("INPUT0", "FP32", [n], None), ("INPUT1", "FP32", [n], None)],
                                raw=[big, big])
            msg = expect_rpc_error(lambda: list(stub.ModelStreamInfer(iter([req]), timeout=TIMEOUT)),
                                   grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert "--grpc-max-message-size" in msg, msg
            small = infer_request("vec_add", [("INPUT0", "FP32", [1], {"fp32_contents": [1.0]}),
                                              ("INPUT1", "FP32", [1], {"fp32_contents": [1.0]})])
            msg = expect_rpc_error(lambda: stub.ModelInfer(small, timeout=TIMEOUT,
                                                           metadata=[("x-padding", "a" * (HEADER_LIMIT + 1000))]),
                                   grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert "--grpc-http2-max-header-list-size" in msg, msg
        finally:
            channel.close()
        well_formed(client)
    finally:
        router.stop()


# === defaults a deployment should not have to set ================================================

def test_defaults_bound_streams_and_messages(tmp_path):
    """Without any limit flag: at most 1024 streams per connection (advertised in SETTINGS), and
    messages up to 256 MiB: one just over it is refused naming the flag, one within it served."""
    repo = tmp_path / "repo"
    (repo / "vec_add" / "1").mkdir(parents=True)
    (repo / "vec_add" / "config.pbtxt").write_text(CONFIG)
    (repo / "vec_add" / "1" / "model.onnx").write_bytes(add_model_bytes())
    srv = TernServer([repo], label="default-limits").start()
    try:
        assert http2_settings(srv.url).get(3) == DEFAULT_MAX_STREAMS, http2_settings(srv.url)
        channel = grpc.insecure_channel(srv.url, options=[("grpc.max_send_message_length", -1),
                                                          ("grpc.max_receive_message_length", -1)])
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            n = DEFAULT_MAX_MESSAGE // 8 + 16  # two FP32 inputs of n: just over 256 MiB in all
            big = bytes(4 * n)
            req = infer_request("vec_add", [("INPUT0", "FP32", [n], None), ("INPUT1", "FP32", [n], None)],
                                raw=[big, big])
            del big
            msg = expect_rpc_error(lambda: stub.ModelInfer(req, timeout=120), grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert "--grpc-max-message-size" in msg and str(DEFAULT_MAX_MESSAGE) in msg, msg
            del req
            n = 4 * 1024 * 1024  # 2 x 16 MiB in, 16 MiB out: far over tonic's own 4 MiB default
            ones = np.ones(n, dtype=np.float32).tobytes()
            req = infer_request("vec_add", [("INPUT0", "FP32", [n], None), ("INPUT1", "FP32", [n], None)],
                                raw=[ones, ones])
            resp = stub.ModelInfer(req, timeout=120)
            assert list(resp.outputs[0].shape) == [n] and resp.raw_output_contents[0][:8] == bytes(
                np.full(2, 2.0, np.float32).tobytes())
        finally:
            channel.close()
    finally:
        assert srv.stop() == 0, srv.log_tail()


# === the node-wide bound on bytes of pending requests =============================================

PENDING_LIMIT = 1_000_000
QUEUED_CONFIG = """name: "queued_add"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
dynamic_batching { preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 3000000 }
"""


def batched_add_model_bytes() -> bytes:
    from onnx import TensorProto, checker, helper

    def vi(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", "N"])

    graph = helper.make_graph([helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"])], "add",
                              [vi("INPUT0"), vi("INPUT1")], [vi("OUTPUT0")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    checker.check_model(model)
    return model.SerializeToString()


def test_pending_request_bytes_are_bounded_node_wide(tmp_path):
    """A request that would take the bytes of requests queued or running past
    --max-pending-request-bytes is refused at once (RESOURCE_EXHAUSTED naming the flag); the
    bytes are given back when a request is answered."""
    repo = tmp_path / "repo"
    (repo / "queued_add" / "1").mkdir(parents=True)
    (repo / "queued_add" / "config.pbtxt").write_text(QUEUED_CONFIG)
    (repo / "queued_add" / "1" / "model.onnx").write_bytes(batched_add_model_bytes())
    srv = TernServer([repo], ["--max-pending-request-bytes", str(PENDING_LIMIT)], label="pending").start()
    channel, stub = raw_stub(srv.url)
    try:
        n = 100_000  # 2 x 400,000 bytes per request: one fits under the limit, two do not
        x = np.arange(n, dtype=np.float32)
        req = infer_request("queued_add", [("INPUT0", "FP32", [1, n], None), ("INPUT1", "FP32", [1, n], None)],
                            raw=[x.tobytes(), x.tobytes()])
        with ThreadPoolExecutor(1) as pool:
            # Waits in the queue for its batch (3 s max queue delay) holding 800,000 bytes.
            first = pool.submit(stub.ModelInfer, req, timeout=TIMEOUT)
            time.sleep(1.0)
            msg = expect_rpc_error(lambda: stub.ModelInfer(req, timeout=TIMEOUT), grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert not first.done(), "the first request was no longer pending when the second came"
            assert "--max-pending-request-bytes" in msg and str(PENDING_LIMIT) in msg and "'queued_add'" in msg, msg
            np.testing.assert_array_equal(output_array(first.result(), "OUTPUT0"), (x + x).reshape(1, n))
        # Answered: its bytes are free again, for one request after another.
        for _ in range(2):
            np.testing.assert_array_equal(output_array(stub.ModelInfer(req, timeout=TIMEOUT), "OUTPUT0"),
                                          (x + x).reshape(1, n))
    finally:
        channel.close()
        assert srv.stop() == 0, srv.log_tail()
