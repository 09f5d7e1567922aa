"""Real networks: golden outputs, agreement with Python onnxruntime on the same model file,
dynamic batching of a heavy model, and the classification extension."""

from __future__ import annotations

import queue

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient

from tern_testlib import light_expected, light_input

TIMEOUT = 120
SHAPE1 = [1, 3, 224, 224]


@pytest.fixture(scope="module")
def ort_session(model_repo):
    """Python onnxruntime sessions on the very files the server loaded (cached per model)."""
    sessions = {}

    def get(model: str) -> ort.InferenceSession:
        if model not in sessions:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.log_severity_level = 3
            sessions[model] = ort.InferenceSession(str(model_repo / model / "1" / "model.onnx"), opts,
                                                   providers=["CPUExecutionProvider"])
        return sessions[model]

    return get


def fp32_input(name: str, arr: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(arr.shape), "FP32")
    inp.set_data_from_numpy(arr)
    return inp


def random_images(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 3, 224, 224), dtype=np.float32)


def parse_classes(arr: np.ndarray):
    """'score:index[:label]' strings -> list of rows of (score, index, label or None)."""
    rows = []
    for row in arr:
        parsed = []
        for item in row:
            parts = item.decode().split(":")
            assert len(parts) in (2, 3), item
            parsed.append((float(parts[0]), int(parts[1]), parts[2] if len(parts) == 3 else None))
        rows.append(parsed)
    return rows


# === golden outputs ===========================================================================


def test_light_resnet50_golden(client, reference):
    x = light_input(SHAPE1)
    result = client.infer("light_resnet50", [fp32_input("input", x)], client_timeout=TIMEOUT)
    resp = result.get_response()
    assert [(o.name, o.datatype, list(o.shape)) for o in resp.outputs] == [("output", "FP32", [1, 1000])]
    y = result.as_numpy("output")
    np.testing.assert_allclose(y, light_expected("resnet50"), atol=1e-4, rtol=0)
    ref = reference["infer.light_resnet50.response"]
    assert list(y.shape) == ref["output_shape"]
    assert abs(float(y.sum()) - ref["output_sum"]) < 1e-4


def test_light_inception_v1_fixed_batch_golden(client):
    x = light_input(SHAPE1)  # max_batch_size 0: the full shape, batch dim included
    result = client.infer("light_inception_v1", [fp32_input("data_0", x)], client_timeout=TIMEOUT)
    np.testing.assert_allclose(result.as_numpy("prob_1"), light_expected("inception_v1"), atol=1e-4, rtol=0)


def test_light_squeezenet_autocompleted_batch2(client, ort_session):
    x = np.concatenate([light_input(SHAPE1), random_images(1, 5)])
    result = client.infer("light_squeezenet", [fp32_input("data_0", x)], client_timeout=TIMEOUT)
    y = result.as_numpy("softmaxout_1")
    assert y.shape == (2, 1000, 1, 1)
    np.testing.assert_allclose(y[:1], light_expected("squeezenet"), atol=1e-4, rtol=0)
    np.testing.assert_allclose(y, ort_session("light_squeezenet").run(None, {"data_0": x})[0], atol=1e-4, rtol=0)


def test_light_densenet121_autocompleted(client):
    x = light_input(SHAPE1)
    result = client.infer("light_densenet121", [fp32_input("data_0", x)], client_timeout=TIMEOUT)
    np.testing.assert_allclose(result.as_numpy("fc6_1"), light_expected("densenet121"), atol=1e-4, rtol=0)


# === random weights vs Python onnxruntime =====================================================


@pytest.mark.parametrize("batch", [1, 4])
def test_resnet50_random_matches_onnxruntime(client, ort_session, batch):
    x = random_images(batch, seed=batch)
    result = client.infer("resnet50_random", [fp32_input("input", x)], client_timeout=TIMEOUT)
    y = result.as_numpy("output")
    assert y.shape == (batch, 1000) and y.dtype == np.float32
    expected = ort_session("resnet50_random").run(None, {"input": x})[0]
    np.testing.assert_allclose(y, expected, atol=1e-4, rtol=0)
    assert float(y.max()) > 0.01  # not the uniform 0.001 of the constant-weight model


def test_resnet50_random_concurrent_requests_batched(client, ort_session):
    """Four single-image requests in flight at once (the dynamic batcher may merge them): each
    answer must equal Python onnxruntime on that image alone."""
    images = [random_images(1, seed=100 + i) for i in range(4)]
    done: "queue.Queue" = queue.Queue()
    for i, x in enumerate(images):
        client.async_infer("resnet50_random", [fp32_input("input", x)], request_id=str(i),
                           callback=lambda result, error: done.put((result, error)), client_timeout=TIMEOUT)
    sess = ort_session("resnet50_random")
    for _ in images:
        result, error = done.get(timeout=TIMEOUT)
        assert error is None, error
        i = int(result.get_response().id)
        expected = sess.run(None, {"input": images[i]})[0]
        np.testing.assert_allclose(result.as_numpy("output"), expected, atol=1e-4, rtol=0)


# === classification extension =================================================================


def test_classification_with_labels(client):
    x = light_input(SHAPE1)
    outputs = [grpcclient.InferRequestedOutput("output", class_count=3)]
    result = client.infer("light_resnet50", [fp32_input("input", x)], outputs=outputs, client_timeout=TIMEOUT)
    resp = result.get_response()
    assert [(o.name, o.datatype, list(o.shape)) for o in resp.outputs] == [("output", "BYTES", [1, 3])]
    (row,) = parse_classes(result.as_numpy("output"))
    assert len(row) == 3
    for score, index, label in row:
        assert 0 <= index < 1000
        assert label == f"class_{index:04d}"  # from labels.txt
        assert abs(score - 0.001) < 1e-5  # constant weights: every class scores 0.001
    assert len({index for _, index, _ in row}) == 3


def test_classification_without_labels_batch2(client, ort_session):
    x = random_images(2, seed=7)
    outputs = [grpcclient.InferRequestedOutput("output", class_count=5)]
    result = client.infer("resnet50_random", [fp32_input("input", x)], outputs=outputs, client_timeout=TIMEOUT)
    arr = result.as_numpy("output")
    assert arr.shape == (2, 5)
    probs = ort_session("resnet50_random").run(None, {"input": x})[0]
    for b, row in enumerate(parse_classes(arr)):
        scores = [s for s, _, _ in row]
        assert scores == sorted(scores, reverse=True)
        assert all(label is None for _, _, label in row)  # no label_filename -> "score:index"
        top = np.argsort(-probs[b])[:5]
        assert [i for _, i, _ in row] == top.tolist()
        for score, index, _ in row:
            assert abs(score - float(probs[b, index])) < 1e-5


def test_classification_mixed_with_plain_output(client):
    """One request can ask for a classification of one output and the plain tensor of another
    (add_fp32: OUTPUT0 classified, OUTPUT1 raw)."""
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    b = np.zeros((1, 16), np.float32)
    outputs = [grpcclient.InferRequestedOutput("OUTPUT0", class_count=2), grpcclient.InferRequestedOutput("OUTPUT1")]
    result = client.infer("add_fp32", [fp32_input("INPUT0", a), fp32_input("INPUT1", b)], outputs=outputs,
                          client_timeout=TIMEOUT)
    (row,) = parse_classes(result.as_numpy("OUTPUT0"))
    assert [(i, s) for s, i, _ in row] == [(15, 15.0), (14, 14.0)]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a)
    assert result.get_output("OUTPUT1").datatype == "FP32"


def test_compressed_resnet_request(client, ort_session):
    x = random_images(1, seed=42)
    result = client.infer("resnet50_random", [fp32_input("input", x)], compression_algorithm="gzip",
                          client_timeout=TIMEOUT)
    np.testing.assert_allclose(result.as_numpy("output"), ort_session("resnet50_random").run(None, {"input": x})[0],
                               atol=1e-4, rtol=0)
