"""The image models Triton's client examples call, built by examples/build_model_repository.py.

Names, inputs, outputs and configs follow Triton's docs/examples/model_repository; the networks
are small ones with seeded random weights (what is being tested is the serving path, not the
accuracy of DenseNet or Inception):

  densenet_onnx          data_0 FP32 [3,224,224] (reshaped to [1,3,224,224]) -> fc6_1 FP32 [1000]
                         (reshaped from [1,1000,1,1]), densenet_labels.txt; image_client.py,
                         grpc_image_client.py and grpc_client.py call it.
  inception_onnx         "input:0" FP32 [299,299,3] NHWC -> "InceptionV3/Predictions/Softmax:0"
                         FP32 [1001], inception_labels.txt. Unlike Triton's (max_batch_size 0)
                         it batches (max_batch_size 8), as an ensemble step must.
  image_preprocess_onnx  INPUT BYTES [1] (the bytes of a .jpg or .png file) -> OUTPUT FP32
                         [299,299,3]: decode (the DecodeImage op of the custom-op library
                         libtern_imageops.so, loaded through `model_operations`), bilinear
                         resize to 299x299, INCEPTION scaling (x / 127.5 - 1).
  preprocess_inception_ensemble
                         image_preprocess_onnx -> inception_onnx: encoded image in, classes out
                         (ensemble_image_client.py).
  custom_identity_int32  INPUT0 -> OUTPUT0, INT32 [-1] (memory_growth_test.py).

The builder copies the custom-op library it finds (TERN_IMAGEOPS_LIB, else
target/release/libtern_imageops.so, built by `make build`) into the preprocessing model's
directory and names it there by a relative name, which Tern resolves in the model directory, so
the repository can be moved or mounted into a container. (Triton hands the name to `dlopen` as
written: for Triton, write an absolute path.) Without the library those two models are skipped
with a warning.

`python examples/build_images.py images DIR` writes a few test images (JPEG and PNG) there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
OPSET = 18
IMAGEOPS_DOMAIN = "ai.tern.image"
INCEPTION_SIDE = 299
DENSENET_SIDE = 224
MAX_BATCH = 8

DENSENET_CONFIG = """name: "densenet_onnx"
platform: "onnxruntime_onnx"
max_batch_size : 0
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
    reshape { shape: [ 1, 3, 224, 224 ] }
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    reshape { shape: [ 1, 1000, 1, 1 ] }
    label_filename: "densenet_labels.txt"
  }
]
"""

INCEPTION_CONFIG = """name: "inception_onnx"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "input:0"
    data_type: TYPE_FP32
    format: FORMAT_NHWC
    dims: [ 299, 299, 3 ]
  }
]
output [
  {
    name: "InceptionV3/Predictions/Softmax:0"
    data_type: TYPE_FP32
    dims: [ 1001 ]
    label_filename: "inception_labels.txt"
  }
]
"""

PREPROCESS_CONFIG = """name: "image_preprocess_onnx"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "INPUT" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ 299, 299, 3 ] }} ]
# Native code from the repository, as in Triton: only serve repositories you trust.
model_operations {{ op_library_filename: [ "{library}" ] }}
"""

ENSEMBLE_CONFIG = """name: "preprocess_inception_ensemble"
platform: "ensemble"
max_batch_size: 8
input [ { name: "INPUT" data_type: TYPE_STRING dims: [ 1 ] } ]
output [
  { name: "OUTPUT" data_type: TYPE_FP32 dims: [ 1001 ] label_filename: "inception_labels.txt" }
]
ensemble_scheduling {
  step [
    {
      model_name: "image_preprocess_onnx"
      model_version: -1
      input_map { key: "INPUT" value: "INPUT" }
      output_map { key: "OUTPUT" value: "preprocessed_image" }
    },
    {
      model_name: "inception_onnx"
      model_version: -1
      input_map { key: "input:0" value: "preprocessed_image" }
      output_map { key: "InceptionV3/Predictions/Softmax:0" value: "OUTPUT" }
    }
  ]
}
"""

IDENTITY_CONFIG = """name: "custom_identity_int32"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ -1 ] } ]
"""


def labels(count: int, first: str | None = None) -> bytes:
    names = ([first] if first else []) + [f"class_{i:04d}" for i in range(count - (1 if first else 0))]
    return ("\n".join(names) + "\n").encode()


def imageops_library() -> Path | None:
    env = os.environ.get("TERN_IMAGEOPS_LIB")
    candidate = Path(env) if env else ROOT / "target" / "release" / "libtern_imageops.so"
    return candidate.resolve() if candidate.is_file() else None


def _model(graph: onnx.GraphProto, custom: bool = False) -> bytes:
    opsets = [helper.make_opsetid("", OPSET)]
    if custom:
        opsets.append(helper.make_opsetid(IMAGEOPS_DOMAIN, 1))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _weights(rng: np.random.Generator, name: str, shape: tuple) -> onnx.TensorProto:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    w = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape).astype(np.float32)
    return numpy_helper.from_array(w, name)


def densenet_bytes() -> bytes:
    """data_0 [1,3,224,224] -> strided conv -> relu -> global pool -> 1x1 conv -> fc6_1 [1,1000,1,1]."""
    rng = np.random.default_rng(22)
    nodes = [
        helper.make_node("Conv", ["data_0", "w1", "b1"], ["c1"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["p1"]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["fc6_1"], kernel_shape=[1, 1]),
    ]
    inits = [
        _weights(rng, "w1", (16, 3, 8, 8)),
        numpy_helper.from_array(np.zeros(16, np.float32), "b1"),
        _weights(rng, "w2", (1000, 16, 1, 1)),
        numpy_helper.from_array(rng.normal(0, 0.1, 1000).astype(np.float32), "b2"),
    ]
    graph = helper.make_graph(
        nodes, "densenet_onnx",
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("fc6_1", TensorProto.FLOAT, [1, 1000, 1, 1])],
        inits,
    )
    return _model(graph)


def inception_bytes() -> bytes:
    """"input:0" [N,299,299,3] -> NCHW -> strided conv -> relu -> pool -> dense -> softmax [N,1001]."""
    rng = np.random.default_rng(23)
    nodes = [
        helper.make_node("Transpose", ["input:0"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w1", "b1"], ["c1"], kernel_shape=[13, 13], strides=[13, 13]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["p1"]),
        helper.make_node("Flatten", ["p1"], ["f1"]),
        helper.make_node("Gemm", ["f1", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["InceptionV3/Predictions/Softmax:0"], axis=1),
    ]
    inits = [
        _weights(rng, "w1", (16, 3, 13, 13)),
        numpy_helper.from_array(np.zeros(16, np.float32), "b1"),
        _weights(rng, "w2", (16, 1001)),
        numpy_helper.from_array(rng.normal(0, 0.1, 1001).astype(np.float32), "b2"),
    ]
    graph = helper.make_graph(
        nodes, "inception_onnx",
        [helper.make_tensor_value_info("input:0", TensorProto.FLOAT, ["N", 299, 299, 3])],
        [helper.make_tensor_value_info("InceptionV3/Predictions/Softmax:0", TensorProto.FLOAT, ["N", 1001])],
        inits,
    )
    return _model(graph)


def preprocess_bytes() -> bytes:
    """INPUT string [N,1] -> for each row: DecodeImage -> resize -> x/127.5 - 1 -> OUTPUT [N,299,299,3]."""
    side = INCEPTION_SIDE
    body = helper.make_graph(
        [
            helper.make_node("Gather", ["INPUT", "i"], ["encoded"], axis=0),  # [1] string
            helper.make_node("DecodeImage", ["encoded"], ["hwc_u8"], domain=IMAGEOPS_DOMAIN),
            helper.make_node("Cast", ["hwc_u8"], ["hwc"], to=TensorProto.FLOAT),
            # Bilinear, antialiased when shrinking, like PIL's resize in Triton's image_client.py.
            helper.make_node("Resize", ["hwc", "", "", "sizes"], ["resized"], axes=[0, 1],
                             mode="linear", antialias=1),
            helper.make_node("Div", ["resized", "half_range"], ["scaled"]),
            helper.make_node("Sub", ["scaled", "one"], ["image"]),  # INCEPTION: [-1, 1]
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "preprocess_one",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("image", TensorProto.FLOAT, [side, side, 3]),
        ],
        [
            numpy_helper.from_array(np.array([side, side], np.int64), "sizes"),
            numpy_helper.from_array(np.array(127.5, np.float32), "half_range"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        ],
    )
    nodes = [
        helper.make_node("Shape", ["INPUT"], ["shape"], start=0, end=1),
        helper.make_node("Squeeze", ["shape"], ["count"]),
        helper.make_node("Loop", ["count", "true"], ["OUTPUT"], body=body),
    ]
    graph = helper.make_graph(
        nodes, "image_preprocess_onnx",
        [helper.make_tensor_value_info("INPUT", TensorProto.STRING, ["N", 1])],
        [helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["N", side, side, 3])],
        [numpy_helper.from_array(np.array(True), "true")],
    )
    return _model(graph, custom=True)


def identity_bytes() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], "custom_identity_int32",
        [helper.make_tensor_value_info("INPUT0", TensorProto.INT32, ["N", "D"])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.INT32, ["N", "D"])],
    )
    return _model(graph)


def run_preprocess(model: bytes, library: Path, encoded: list[bytes]) -> np.ndarray:
    """Run the preprocessing model in Python's onnxruntime on these encoded images.

    Python's onnxruntime turns a `bytes` object into the text of its repr (and refuses non-UTF-8
    numpy bytes), so the images go in as a constant STRING tensor (raw bytes, as a server gets
    them) that replaces the graph input of the same model.
    """
    m = onnx.load_from_string(model)
    (graph_input,) = [i for i in m.graph.input if i.name == "INPUT"]
    m.graph.input.remove(graph_input)
    const = helper.make_tensor("INPUT", TensorProto.STRING, [len(encoded), 1], list(encoded))
    m.graph.initializer.append(const)
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(str(library))
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {})[0]


def write_test_images(out: Path) -> list[Path]:
    """A few small pictures (gradients and shapes) as JPEG and PNG, made here, none committed."""
    from PIL import Image, ImageDraw

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (w, h, fmt) in enumerate([(320, 240, "JPEG"), (200, 300, "PNG"), (299, 299, "JPEG")]):
        y, x = np.mgrid[0:h, 0:w]
        rgb = np.stack([(x * 255 // w), (y * 255 // h), ((x + y + 40 * i) % 256)], axis=-1).astype(np.uint8)
        img = Image.fromarray(rgb, "RGB")
        ImageDraw.Draw(img).ellipse([w // 4, h // 4, 3 * w // 4, 3 * h // 4], fill=(200, 30 * i, 60))
        path = out / f"image_{i}.{'jpg' if fmt == 'JPEG' else 'png'}"
        img.save(path, fmt)
        written.append(path)
    return written


def build(out: Path, built: list, skipped: list) -> None:
    from build_model_repository import install_model

    densenet = densenet_bytes()
    install_model(out, "densenet_onnx", densenet, DENSENET_CONFIG, {"densenet_labels.txt": labels(1000)})
    built.append(("densenet_onnx", "Triton's densenet_onnx I/O, small seeded net, 1000 labels", "config.pbtxt"))

    inception = inception_bytes()
    install_model(out, "inception_onnx", inception, INCEPTION_CONFIG,
                  {"inception_labels.txt": labels(1001, first="background")})
    built.append(("inception_onnx", "Triton's inception_onnx I/O (batching), small seeded net", "config.pbtxt"))

    install_model(out, "custom_identity_int32", identity_bytes(), IDENTITY_CONFIG)
    built.append(("custom_identity_int32", "INT32 identity (memory_growth_test.py)", "config.pbtxt"))

    library = imageops_library()
    if library is None:
        print("WARNING: libtern_imageops.so not found (cargo build --release -p tern-imageops, or set "
              "TERN_IMAGEOPS_LIB): image_preprocess_onnx and preprocess_inception_ensemble skipped",
              flush=True)
        skipped += ["image_preprocess_onnx", "preprocess_inception_ensemble"]
        return
    preprocess = preprocess_bytes()
    # Check the pipeline with onnxruntime before writing it.
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(buf, "PNG")
    pre = run_preprocess(preprocess, library, [buf.getvalue()] * 2)
    assert pre.shape == (2, INCEPTION_SIDE, INCEPTION_SIDE, 3), pre.shape
    assert np.allclose(pre[0, 10, 10], [1.0, -1.0, -1.0]), pre[0, 10, 10]
    probs = ort.InferenceSession(inception, providers=["CPUExecutionProvider"]).run(None, {"input:0": pre})[0]
    assert probs.shape == (2, 1001) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)

    install_model(out, "image_preprocess_onnx", preprocess, PREPROCESS_CONFIG.format(library=library.name),
                  {library.name: library.read_bytes()})
    built.append(("image_preprocess_onnx", f"encoded image -> INCEPTION-scaled 299x299 ({library.name})",
                  "config.pbtxt"))
    mdir = out / "preprocess_inception_ensemble"
    from build_model_repository import write_if_changed

    write_if_changed(mdir / "config.pbtxt", ENSEMBLE_CONFIG.encode())
    write_if_changed(mdir / "inception_labels.txt", labels(1001, first="background"))
    (mdir / "1").mkdir(parents=True, exist_ok=True)
    built.append(("preprocess_inception_ensemble", "image_preprocess_onnx -> inception_onnx", "config.pbtxt"))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "images":
        for p in write_test_images(Path(sys.argv[2])):
            print(p)
        sys.exit(0)
    print(__doc__)
    sys.exit(2)
