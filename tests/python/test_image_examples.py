"""The image models of Triton's client examples (image_client.py, grpc_image_client.py,
grpc_client.py, ensemble_image_client.py, memory_growth_test.py), end to end with tritonclient
over gRPC and HTTP, and `model_operations` (Triton's custom-op libraries for ONNX Runtime).

What is matched: classification with `class_count` answers "score:index:label" strings, top
first (Triton core src/infer_response.cc and the labels of `label_filename`); an ensemble that
takes the bytes of encoded image files as a BYTES tensor, decodes, resizes and scales them in an
ONNX model whose DecodeImage op comes from a library named by `model_operations {
op_library_filename }` (onnxruntime_backend src/onnxruntime.cc registers each with ONNX
Runtime's RegisterCustomOpsLibrary before the session), and classifies them. The reference is
onnxruntime in Python on the same model files and image bytes.

One explicit-mode node for the module over a copy of the example models, plus a model whose
library is missing.
"""
import io
import json
import shutil
import sys

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from tern_testlib import ROOT, TernServer, copy_models

sys.path.insert(0, str(ROOT / "examples"))
import build_images  # noqa: E402

MODELS = ["densenet_onnx", "inception_onnx", "image_preprocess_onnx", "preprocess_inception_ensemble",
          "custom_identity_int32"]
ENSEMBLE = "preprocess_inception_ensemble"


@pytest.fixture(scope="module")
def node(model_repo, tmp_path_factory):
    if build_images.imageops_library() is None:
        pytest.fail("libtern_imageops.so is not built: cargo build --release -p tern-imageops")
    repo = copy_models(model_repo, tmp_path_factory.mktemp("image_repo"), MODELS)
    broken = repo / "missing_op_library"
    shutil.copytree(repo / "image_preprocess_onnx", broken)
    config = (broken / "config.pbtxt").read_text()
    config = config.replace('name: "image_preprocess_onnx"', 'name: "missing_op_library"')
    (broken / "libtern_imageops.so").unlink()
    (broken / "config.pbtxt").write_text(config.replace('"libtern_imageops.so"', '"libnot_there.so"'))
    srv = TernServer(
        [repo], ["--model-control-mode", "explicit", *sum((["--load-model", m] for m in MODELS), [])],
        log_dir=tmp_path_factory.mktemp("image_logs"), label="images",
    ).start()
    client = grpcclient.InferenceServerClient(srv.url)
    yield srv, client, repo
    client.close()
    assert srv.stop() == 0, srv.log_tail()


def encoded(seed: int, fmt: str, size=(64, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, fmt)
    return buf.getvalue()


def parse_classes(values) -> list[tuple[float, int, str]]:
    out = []
    for v in values:
        score, index, label = (v.decode() if isinstance(v, bytes) else v).split(":")
        out.append((float(score), int(index), label))
    return out


def top(scores: np.ndarray, k: int) -> list[int]:
    return list(np.argsort(-scores, kind="stable")[:k])


def test_densenet_classifies_with_labels_over_grpc_and_http(node):
    srv, client, repo = node
    image = np.random.default_rng(3).uniform(-1, 1, size=(3, 224, 224)).astype(np.float32)
    sess = ort.InferenceSession(str(repo / "densenet_onnx" / "1" / "model.onnx"))
    scores = sess.run(None, {"data_0": image[None]})[0].reshape(1000)
    want = top(scores, 3)

    inp = grpcclient.InferInput("data_0", [3, 224, 224], "FP32")
    inp.set_data_from_numpy(image)
    res = client.infer("densenet_onnx", [inp], outputs=[grpcclient.InferRequestedOutput("fc6_1", class_count=3)])
    got = parse_classes(res.as_numpy("fc6_1"))
    assert [i for _, i, _ in got] == want
    assert [label for _, _, label in got] == [f"class_{i:04d}" for i in want]
    np.testing.assert_allclose([s for s, _, _ in got], scores[want], rtol=1e-4)

    http = httpclient.InferenceServerClient(srv.http_addr)
    hinp = httpclient.InferInput("data_0", [3, 224, 224], "FP32")
    hinp.set_data_from_numpy(image, binary_data=True)
    res = http.infer("densenet_onnx", [hinp],
                     outputs=[httpclient.InferRequestedOutput("fc6_1", binary_data=True, class_count=3)])
    assert [i for _, i, _ in parse_classes(res.as_numpy("fc6_1"))] == want
    http.close()


def test_the_ensemble_decodes_jpeg_and_png_bytes_as_onnxruntime_does(node):
    srv, client, repo = node
    images = [encoded(1, "JPEG"), encoded(2, "PNG", size=(320, 200)), encoded(3, "JPEG", size=(299, 299))]
    library = build_images.imageops_library()
    pre = build_images.run_preprocess(
        (repo / "image_preprocess_onnx" / "1" / "model.onnx").read_bytes(), library, images)
    sess = ort.InferenceSession(str(repo / "inception_onnx" / "1" / "model.onnx"))
    want = sess.run(None, {"input:0": pre})[0]
    # The PNG is lossless: the decoded pixels, before resizing, are PIL's.
    png = build_images.run_preprocess(
        (repo / "image_preprocess_onnx" / "1" / "model.onnx").read_bytes(), library, [encoded(4, "PNG", (299, 299))])
    pil = np.asarray(Image.open(io.BytesIO(encoded(4, "PNG", (299, 299)))).convert("RGB"), np.float32)
    np.testing.assert_allclose(png[0], pil / 127.5 - 1, atol=1e-6)

    batch = np.array([[b] for b in images], dtype=np.object_)
    inp = grpcclient.InferInput("INPUT", list(batch.shape), "BYTES")
    inp.set_data_from_numpy(batch)
    res = client.infer(ENSEMBLE, [inp])
    np.testing.assert_allclose(res.as_numpy("OUTPUT"), want, rtol=1e-5, atol=1e-7)

    # As ensemble_image_client.py asks over HTTP: binary BYTES in, classes out.
    http = httpclient.InferenceServerClient(srv.http_addr)
    hinp = httpclient.InferInput("INPUT", list(batch.shape), "BYTES")
    hinp.set_data_from_numpy(batch, binary_data=True)
    res = http.infer(ENSEMBLE, [hinp],
                     outputs=[httpclient.InferRequestedOutput("OUTPUT", binary_data=True, class_count=2)])
    classes = res.as_numpy("OUTPUT")
    assert classes.shape == (3, 2)
    for row, scores in zip(classes, want):
        got = parse_classes(row)
        assert [i for _, i, _ in got] == top(scores, 2)
        assert all(label == ("background" if i == 0 else f"class_{i - 1:04d}") for _, i, label in got)
    http.close()


def test_an_image_that_does_not_decode_fails_the_request_with_the_reason(node):
    _, client, _ = node
    batch = np.array([[b"not an image"]], dtype=np.object_)
    inp = grpcclient.InferInput("INPUT", [1, 1], "BYTES")
    inp.set_data_from_numpy(batch)
    with pytest.raises(InferenceServerException) as err:
        client.infer(ENSEMBLE, [inp])
    assert "DecodeImage" in str(err.value) and "unsupported image format" in str(err.value)
    # The node serves on.
    assert client.is_model_ready(ENSEMBLE)


def test_custom_identity_int32_round_trip(node):
    _, client, _ = node
    data = np.arange(16, dtype=np.int32)[None]
    inp = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
    inp.set_data_from_numpy(data)
    out = client.infer("custom_identity_int32", [inp]).as_numpy("OUTPUT0")
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, data)


def test_a_missing_op_library_fails_the_load_naming_model_and_file(node):
    _, client, _ = node
    with pytest.raises(InferenceServerException) as err:
        client.load_model("missing_op_library")
    msg = str(err.value)
    assert "missing_op_library" in msg and "libnot_there.so" in msg and "op_library_filename" in msg, msg
    assert not client.is_model_ready("missing_op_library")


def test_a_load_requests_config_may_not_name_an_op_library(node):
    _, client, _ = node
    config = json.dumps({
        "name": "custom_identity_int32", "platform": "onnxruntime_onnx", "max_batch_size": 8,
        "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [-1]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [-1]}],
        "model_operations": {"op_library_filename": [str(build_images.imageops_library())]},
    })
    with pytest.raises(InferenceServerException) as err:
        client.load_model("custom_identity_int32", config=config)
    assert "native code" in str(err.value) and "custom_identity_int32" in str(err.value), str(err.value)
    # Refused before anything loaded: the model serves on.
    assert client.is_model_ready("custom_identity_int32")
