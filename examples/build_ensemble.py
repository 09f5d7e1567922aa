"""The example ensemble, built by examples/build_model_repository.py: a Triton ensemble
(`platform: "ensemble"`, no model file) and the two small ONNX models it runs beside tiny_add.

    RAW ──> ens_preprocess ──> normalized ──┐
     └─────────────────────────────────────>├─> tiny_add ──> summed ──> ens_postprocess ──> PROBABILITIES, CLASS

ens_preprocess: OUTPUT0 = (INPUT0 - MEAN) / STD, FP32 [N,16], with dynamic batching and a
20 ms queue delay, so concurrent ensemble requests are batched at this step.
ens_postprocess: PROBS = softmax(INPUT0), CLASS = argmax(INPUT0) (INT64 [N,1]).
`reference(raw)` is the same pipeline in numpy; build() checks the ONNX models against it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from build_model_repository import DIM, install_model, small_config, small_model, vi, write_if_changed

MEAN = np.linspace(-1.0, 1.0, DIM, dtype=np.float32)
STD = np.linspace(0.5, 2.0, DIM, dtype=np.float32)

ENSEMBLE_CONFIG = """name: "ensemble_pipeline"
platform: "ensemble"
max_batch_size: 8
input [ { name: "RAW" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [
  { name: "PROBABILITIES" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "CLASS" data_type: TYPE_INT64 dims: [ 1 ] }
]
ensemble_scheduling {
  step [
    {
      model_name: "ens_preprocess"
      model_version: -1
      input_map { key: "INPUT0" value: "RAW" }
      output_map { key: "OUTPUT0" value: "normalized" }
    },
    {
      model_name: "tiny_add"
      model_version: -1
      input_map { key: "INPUT0" value: "normalized" }
      input_map { key: "INPUT1" value: "RAW" }
      output_map { key: "OUTPUT0" value: "summed" }
    },
    {
      model_name: "ens_postprocess"
      model_version: -1
      input_map { key: "INPUT0" value: "summed" }
      output_map { key: "PROBS" value: "PROBABILITIES" }
      output_map { key: "CLASS" value: "CLASS" }
    }
  ]
}
"""


def reference(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PROBABILITIES and CLASS for a batch `raw` of FP32 [N,16], in numpy."""
    summed = (raw - MEAN) / STD + raw
    e = np.exp(summed - summed.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True), summed.argmax(axis=1).astype(np.int64).reshape(-1, 1)


def preprocess_bytes() -> bytes:
    g = helper.make_graph(
        [helper.make_node("Sub", ["INPUT0", "MEAN"], ["centered"]),
         helper.make_node("Div", ["centered", "STD"], ["OUTPUT0"])],
        "ens_preprocess",
        [vi("INPUT0", TensorProto.FLOAT, ["N", DIM])],
        [vi("OUTPUT0", TensorProto.FLOAT, ["N", DIM])],
        initializer=[numpy_helper.from_array(MEAN, "MEAN"), numpy_helper.from_array(STD, "STD")],
    )
    return small_model(g)


def postprocess_bytes() -> bytes:
    g = helper.make_graph(
        [helper.make_node("Softmax", ["INPUT0"], ["PROBS"], axis=1),
         helper.make_node("ArgMax", ["INPUT0"], ["CLASS"], axis=1, keepdims=1)],
        "ens_postprocess",
        [vi("INPUT0", TensorProto.FLOAT, ["N", DIM])],
        [vi("PROBS", TensorProto.FLOAT, ["N", DIM]), vi("CLASS", TensorProto.INT64, ["N", 1])],
    )
    return small_model(g)


def build(out: Path, built: list) -> None:
    pre, post = preprocess_bytes(), postprocess_bytes()
    raw = np.random.default_rng(7).normal(size=(3, DIM)).astype(np.float32)
    normalized = ort.InferenceSession(pre, providers=["CPUExecutionProvider"]).run(None, {"INPUT0": raw})[0]
    probs, cls = ort.InferenceSession(post, providers=["CPUExecutionProvider"]).run(
        None, {"INPUT0": normalized + raw})
    want_probs, want_cls = reference(raw)
    assert np.allclose(probs, want_probs, rtol=1e-5, atol=1e-6), "ensemble pipeline: softmax mismatch"
    assert np.array_equal(cls, want_cls), "ensemble pipeline: argmax mismatch"

    install_model(out, "ens_preprocess", pre, small_config(
        "ens_preprocess", 'backend: "onnxruntime"', 8,
        [("INPUT0", "TYPE_FP32", [DIM])], [("OUTPUT0", "TYPE_FP32", [DIM])],
        dynamic_batching="\n  preferred_batch_size: [ 8 ]\n  max_queue_delay_microseconds: 20000\n",
    ))
    install_model(out, "ens_postprocess", post, small_config(
        "ens_postprocess", 'backend: "onnxruntime"', 8,
        [("INPUT0", "TYPE_FP32", [DIM])], [("PROBS", "TYPE_FP32", [DIM]), ("CLASS", "TYPE_INT64", [1])],
    ))
    # An ensemble has no model file, yet Triton wants a version directory: an empty '1/'.
    write_if_changed(out / "ensemble_pipeline" / "config.pbtxt", ENSEMBLE_CONFIG.encode())
    (out / "ensemble_pipeline" / "1").mkdir(parents=True, exist_ok=True)
    built.append(("ens_preprocess", "FP32 [N,16] (x - mean) / std, dynamic batching 20 ms", "config.pbtxt"))
    built.append(("ens_postprocess", "FP32 [N,16] -> softmax, argmax (INT64 [N,1])", "config.pbtxt"))
    built.append(("ensemble_pipeline", "ensemble: ens_preprocess, tiny_add, ens_postprocess", "config.pbtxt"))
