"""Batch buckets and the optimized-model cache, end to end with tritonclient (gRPC).

Batch buckets (config `parameters { key: "batch_buckets" }`, on by default for GPU instances
only): a CPU model that opts in pads every batch up to 1, 2, 4 or 8 rows. Concurrent requests
of varied batch sizes must get exactly their own rows, equal to numpy's answer; statistics count
the requests' rows, never the padding (Triton's inference_count).

The cache (`--model-cache-dir`): the first load writes one entry, a restart opens the model
from it (its log says so) with the same outputs bit for bit, and a changed model file gets an
entry of its own instead of the stale graph.

IO binding (`parameters { key: "io_binding" }`, on by default for GPU instances only): a
second node serves the same model with it on; concurrent requests of mixed sizes still get
exactly their own rows.

One node for the module; the cache tests restart it on the same cache directory.
"""
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper, numpy_helper

from tern_testlib import TernServer

MODEL = "bucket_mlp"
CONFIG = f"""
name: "{MODEL}"
backend: "onnxruntime"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 3 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
dynamic_batching {{ max_queue_delay_microseconds: 20000 }}
parameters {{ key: "batch_buckets" value: {{ string_value: "on" }} }}
"""


def weights(seed: int):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)


def write_model(repo: Path, seed: int) -> None:
    """softmax(x @ (W * 2) + b): the doubled weight is constant-folded by ONNX Runtime, so the
    optimized graph differs from the file."""
    w, b = weights(seed)
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["W", "two"], ["W2"]),
            helper.make_node("MatMul", ["INPUT0", "W2"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["OUTPUT0"], axis=1),
        ],
        MODEL,
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 3])],
        [
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
            numpy_helper.from_array(b, "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    (repo / MODEL / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, repo / MODEL / "1" / "model.onnx")
    (repo / MODEL / "config.pbtxt").write_text(CONFIG)


def expected(x: np.ndarray, seed: int) -> np.ndarray:
    w, b = weights(seed)
    logits = x @ (w * 2) + b
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    repo = tmp_path_factory.mktemp("bucket_repo")
    cache = tmp_path_factory.mktemp("model_cache")
    write_model(repo, seed=0)
    srv = TernServer(
        [repo], ["--model-cache-dir", str(cache)], log_dir=tmp_path_factory.mktemp("bucket_logs"), label="buckets"
    ).start()
    yield srv, repo, cache
    if srv.alive():
        assert srv.stop() == 0, srv.log_tail()


def infer(url: str, x: np.ndarray) -> np.ndarray:
    with grpcclient.InferenceServerClient(url) as client:
        inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return client.infer(MODEL, [inp]).as_numpy("OUTPUT0")


def test_padded_batches_answer_each_request_with_its_own_rows(node):
    srv, _, _ = node
    assert any("batches padded to buckets" in l and "[1, 2, 4, 8]" in l for l in srv.lines), srv.log_tail()
    assert any("batch buckets warmed up" in l for l in srv.lines), srv.log_tail()
    with grpcclient.InferenceServerClient(srv.url) as client:
        before = client.get_inference_statistics(MODEL).model_stats[0]
    rng = np.random.default_rng(1)
    sizes = [1, 2, 3, 1, 3, 2, 1, 1, 2, 3, 1, 2] * 2
    inputs = [rng.normal(size=(n, 4)).astype(np.float32) for n in sizes]
    with ThreadPoolExecutor(len(inputs)) as pool:
        outputs = list(pool.map(lambda x: infer(srv.url, x), inputs))
    for x, y in zip(inputs, outputs):
        assert y.shape == (x.shape[0], 3), "padding rows must never reach a client"
        np.testing.assert_allclose(y, expected(x, seed=0), rtol=1e-5, atol=1e-6)
    with grpcclient.InferenceServerClient(srv.url) as client:
        after = client.get_inference_statistics(MODEL).model_stats[0]
    # Triton's inference_count: the requests' rows, not the padded batch.
    assert after.inference_count - before.inference_count == sum(sizes)
    executions = after.execution_count - before.execution_count
    assert 0 < executions <= len(sizes)
    assert all(1 <= s.batch_size <= 8 for s in after.batch_stats)
    assert sum(s.batch_size * s.compute_infer.count for s in after.batch_stats) == after.inference_count


def test_the_cache_is_written_once_and_reused_with_identical_outputs(node):
    srv, _, cache = node
    assert len(entries(cache)) == 1, entries(cache)
    assert any("saved the optimized graph in the model cache" in l for l in srv.lines), srv.log_tail()
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    cold = infer(srv.url, x)
    assert srv.stop() == 0, srv.log_tail()
    srv.restart()
    assert any("opened the optimized graph from the model cache" in l for l in srv.lines), srv.log_tail()
    assert not any("saved the optimized graph" in l for l in srv.lines), srv.log_tail()
    assert len(entries(cache)) == 1
    np.testing.assert_array_equal(infer(srv.url, x), cold)


def test_a_changed_model_never_reuses_the_stale_graph(node):
    srv, repo, cache = node
    before = entries(cache)
    assert srv.stop() == 0, srv.log_tail()
    write_model(repo, seed=5)
    srv.restart()
    assert any("saved the optimized graph in the model cache" in l for l in srv.lines), srv.log_tail()
    assert len(entries(cache)) == len(before) + 1
    x = np.random.default_rng(3).normal(size=(2, 4)).astype(np.float32)
    np.testing.assert_allclose(infer(srv.url, x), expected(x, seed=5), rtol=1e-5, atol=1e-6)


BOUND = "bound_mlp"


@pytest.fixture(scope="module")
def bound_node(tmp_path_factory):
    """A second node (no model cache) serving the same model with `io_binding` on, and asking for
    CUDA graphs, which a CPU instance ignores with a warning, as Triton's ONNX Runtime backend
    ignores the field."""
    repo = tmp_path_factory.mktemp("bound_repo")
    write_model(repo, seed=0)
    (repo / MODEL).rename(repo / BOUND)
    config = CONFIG.replace(f'name: "{MODEL}"', f'name: "{BOUND}"')
    config += 'parameters { key: "io_binding" value: { string_value: "on" } }\n'
    config += "optimization { cuda { graphs: true } }\n"
    (repo / BOUND / "config.pbtxt").write_text(config)
    srv = TernServer([repo], [], log_dir=tmp_path_factory.mktemp("bound_logs"), label="io_binding").start()
    yield srv
    assert srv.stop() == 0, srv.log_tail()


def test_io_binding_serves_each_request_its_own_rows(bound_node):
    srv = bound_node
    assert any("run through an IO binding" in l for l in srv.lines), srv.log_tail()
    assert any("optimization.cuda.graphs ignored" in l and "GPU instances only" in l for l in srv.lines), srv.log_tail()
    rng = np.random.default_rng(4)
    # Batches of mixed sizes, padded to buckets, their outputs in reused buffers: every answer is
    # its own rows', computed from its own inputs, even with many responses in flight.
    sizes = [1, 2, 3, 1, 3, 2, 4, 1, 2, 3, 1, 2] * 3
    inputs = [rng.normal(size=(n, 4)).astype(np.float32) for n in sizes]
    with ThreadPoolExecutor(16) as pool:
        outputs = list(pool.map(lambda x: infer_model(srv.url, BOUND, x), inputs))
    for x, y in zip(inputs, outputs):
        assert y.shape == (x.shape[0], 3), "padding rows must never reach a client"
        np.testing.assert_allclose(y, expected(x, seed=0), rtol=1e-5, atol=1e-6)


def infer_model(url: str, model: str, x: np.ndarray) -> np.ndarray:
    with grpcclient.InferenceServerClient(url) as client:
        inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return client.infer(model, [inp]).as_numpy("OUTPUT0")
