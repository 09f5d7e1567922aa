"""Which outputs a response carries: only those config.pbtxt lists, as in Triton (core
src/infer_request.cc, InferenceRequest::Normalize: no requested output means every output of
the model *config*; a named output the config lacks is INVALID_ARGUMENT "unexpected inference
output 'X' for model 'M'", src/model.cc Model::GetOutput).

The model is built here with onnx: FP32 X [N,4] -> Y = X + 1, BYTES S [N,2] -> T = S, and two
outputs the config leaves out: H4, a constant [4,4] (its first dimension equals the rows of
the 4-row batch below, so a batcher that split every output would silently hand each request
a slice of it) and H7, a constant [7] (no batch dimension at all). A config with no outputs
is auto-completed from the model, which serves all four (Triton's auto-complete).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from tern_testlib import TernServer, expect_rpc_error, infer_request, output_array, raw_stub, serialize_bytes

TIMEOUT = 30
BATCH_DELAY_US = 3_000_000  # the batch waits for its 4th row; the 4 requests arrive well within


def model_bytes(batching: bool = True) -> bytes:
    from onnx import TensorProto, checker, helper, numpy_helper

    n = "N" if batching else 2
    one = numpy_helper.from_array(np.ones([4], np.float32), "one")
    h4 = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4) + 100, "h4")
    h7 = numpy_helper.from_array(np.arange(7, dtype=np.float32) + 200, "h7")
    nodes = [
        helper.make_node("Add", ["X", "one"], ["Y"]),
        helper.make_node("Identity", ["S"], ["T"]),
        helper.make_node("Constant", [], ["H4"], value=h4),
        helper.make_node("Constant", [], ["H7"], value=h7),
    ]
    graph = helper.make_graph(
        nodes, "outputs",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [n, 4]),
         helper.make_tensor_value_info("S", TensorProto.STRING, [n, 2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [n, 4]),
         helper.make_tensor_value_info("T", TensorProto.STRING, [n, 2]),
         helper.make_tensor_value_info("H4", TensorProto.FLOAT, [4, 4]),
         helper.make_tensor_value_info("H7", TensorProto.FLOAT, [7])],
        initializer=[one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    checker.check_model(model)
    return model.SerializeToString()


LISTED = f"""name: "listed"
backend: "onnxruntime"
max_batch_size: 8
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 4 ] }}, {{ name: "S" data_type: TYPE_STRING dims: [ 2 ] }} ]
output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 4 ] }}, {{ name: "T" data_type: TYPE_STRING dims: [ 2 ] }} ]
dynamic_batching {{ preferred_batch_size: [ 4 ] max_queue_delay_microseconds: {BATCH_DELAY_US} }}
"""

# No outputs listed: auto-complete fills them from the model (all four).
AUTO = """name: "auto"
backend: "onnxruntime"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ 2, 4 ] }, { name: "S" data_type: TYPE_STRING dims: [ 2, 2 ] } ]
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    repo = tmp_path_factory.mktemp("outputs_repo")
    for name, config, batching in (("listed", LISTED, True), ("auto", AUTO, False)):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(config)
        (repo / name / "1" / "model.onnx").write_bytes(model_bytes(batching))
    srv = TernServer([repo], label="outputs").start()
    yield srv
    assert srv.stop() == 0, srv.log_tail()


@pytest.fixture
def stub(node):
    channel, s = raw_stub(node.url)
    yield s
    channel.close()


def request(model, rows, first, outputs=()):
    """`rows` rows: X = first, first+1, ... in every element of a row; S = b'r<i>a', b'r<i>b'."""
    x = np.repeat(np.arange(first, first + rows, dtype=np.float32)[:, None], 4, axis=1)
    s = [f"r{first + i}{c}".encode() for i in range(rows) for c in "ab"]
    return infer_request(model, [("X", "FP32", [rows, 4], None), ("S", "BYTES", [rows, 2], None)],
                         outputs=outputs, raw=[x.tobytes(), serialize_bytes(s)]), x, s


def names(resp):
    return [o.name for o in resp.outputs]


def check_rows(resp, x, s, want):
    assert names(resp) == want, names(resp)
    if "Y" in want:
        np.testing.assert_array_equal(output_array(resp, "Y"), x + 1)
    if "T" in want:
        got = output_array(resp, "T")
        assert got.shape == (len(s) // 2, 2), got.shape
        assert [bytes(b) for b in got.reshape(-1)] == s


def test_unlisted_outputs_are_never_returned(stub):
    req, x, s = request("listed", 2, 10)
    # Nothing named: the config's outputs, in the config's order, and nothing else. The batch
    # waits for 4 rows, so this one also proves a 2-row request alone runs after the delay.
    resp = stub.ModelInfer(req, timeout=TIMEOUT)
    check_rows(resp, x, s, ["Y", "T"])


def test_naming_an_unlisted_output_is_invalid_argument(stub):
    for hidden in ("H4", "H7"):
        req, _, _ = request("listed", 1, 0, outputs=[hidden])
        msg = expect_rpc_error(lambda: stub.ModelInfer(req, timeout=TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT)
        # Triton's text (core src/model.cc, Model::GetOutput).
        assert f"unexpected inference output '{hidden}' for model 'listed'" in msg, msg


def test_mixed_output_selections_share_one_batch(stub):
    """Four rows in one execution: a 1-row request for Y, a 2-row request for T only (multi-row
    BYTES), a 1-row request naming nothing. Each gets its own rows of what it asked for."""
    before = stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name="listed"), timeout=TIMEOUT).model_stats[0]
    cases = [request("listed", 1, 1, ["Y"]), request("listed", 2, 2, ["T"]), request("listed", 1, 4)]
    wants = [["Y"], ["T"], ["Y", "T"]]
    with ThreadPoolExecutor(len(cases)) as pool:
        futures = []
        for req, _, _ in cases:
            futures.append(pool.submit(stub.ModelInfer, req, timeout=TIMEOUT))
            time.sleep(0.05)
        replies = [f.result() for f in futures]
    for resp, (_, x, s), want in zip(replies, cases, wants):
        check_rows(resp, x, s, want)
    after = stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name="listed"), timeout=TIMEOUT).model_stats[0]
    assert after.execution_count - before.execution_count == 1, (before, after)
    assert after.inference_count - before.inference_count == 4, (before, after)
    four = [b for b in after.batch_stats if b.batch_size == 4]
    assert four and four[0].compute_infer.count >= 1, after.batch_stats


def test_config_without_outputs_serves_the_models_outputs(stub):
    req, x, s = request("auto", 2, 0)
    resp = stub.ModelInfer(req, timeout=TIMEOUT)
    assert sorted(names(resp)) == ["H4", "H7", "T", "Y"], names(resp)
    np.testing.assert_array_equal(output_array(resp, "Y"), x + 1)
    np.testing.assert_array_equal(output_array(resp, "H7"), np.arange(7, dtype=np.float32) + 200)
    assert [bytes(b) for b in output_array(resp, "T").reshape(-1)] == s
