"""Writes the small ONNX models tern-backend-ort's tests load into the folder given as argv[1].

Models (DT is a KServe datatype name: BOOL, UINT8, ..., FP32, BYTES):
  identity_<DT>.onnx  every DT      INPUT0 [batch, 2] -> OUTPUT0 [batch, 2]            (Identity)
  concat_<DT>.onnx    every DT      INPUT0 [batch, 2], INPUT1 [batch, 3]
                                    -> OUTPUT0 [batch, 5]                      (Concat, axis 1)
  add_sub_<DT>.onnx   numeric DTs   INPUT0 [4], INPUT1 [4]
                      but BF16      -> OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1
                                    (ORT's CPU Add/Sub have no bool, bf16 or string kernels)
  passthrough.onnx                  INPUT0 FP32 [batch, 2] is also the graph's output (no node):
                                    ORT returns the input buffer itself as the output
  sequence_input.onnx               SEQ: sequence(tensor(float)) -> LEN int64 (SequenceLength)
  mlp.onnx                          INPUT0 FP32 [batch, 4] -> OUTPUT0 FP32 [batch, 3] =
                                    softmax(INPUT0 @ (W * 2) + B), W and B seeded (the Mul is
                                    constant-folded, so the optimized graph differs from the file)
  corrupt.onnx                      bytes that are not a model
"""

import os
import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper

TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "BF16": TensorProto.BFLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}
NO_ARITHMETIC = {"BOOL", "BF16", "BYTES"}


def save(graph, path):
    # IR 8 / opset 17: well inside what ONNX Runtime 1.31 accepts.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with open(path, "wb") as f:
        f.write(model.SerializeToString())


def tensor(name, elem, dims):
    return helper.make_tensor_value_info(name, elem, dims)


def main(out):
    os.makedirs(out, exist_ok=True)
    for dt, elem in TYPES.items():
        save(
            helper.make_graph(
                [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
                f"identity_{dt}",
                [tensor("INPUT0", elem, ["batch", 2])],
                [tensor("OUTPUT0", elem, ["batch", 2])],
            ),
            os.path.join(out, f"identity_{dt}.onnx"),
        )
        save(
            helper.make_graph(
                [helper.make_node("Concat", ["INPUT0", "INPUT1"], ["OUTPUT0"], axis=1)],
                f"concat_{dt}",
                [tensor("INPUT0", elem, ["batch", 2]), tensor("INPUT1", elem, ["batch", 3])],
                [tensor("OUTPUT0", elem, ["batch", 5])],
            ),
            os.path.join(out, f"concat_{dt}.onnx"),
        )
        if dt not in NO_ARITHMETIC:
            save(
                helper.make_graph(
                    [
                        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
                        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
                    ],
                    f"add_sub_{dt}",
                    [tensor("INPUT0", elem, [4]), tensor("INPUT1", elem, [4])],
                    [tensor("OUTPUT0", elem, [4]), tensor("OUTPUT1", elem, [4])],
                ),
                os.path.join(out, f"add_sub_{dt}.onnx"),
            )

    passthrough = tensor("INPUT0", TensorProto.FLOAT, ["batch", 2])
    save(
        helper.make_graph([], "passthrough", [passthrough], [passthrough]),
        os.path.join(out, "passthrough.onnx"),
    )

    seq = helper.make_tensor_sequence_value_info("SEQ", TensorProto.FLOAT, None)
    save(
        helper.make_graph(
            [helper.make_node("SequenceLength", ["SEQ"], ["LEN"])],
            "sequence_input",
            [seq],
            [tensor("LEN", TensorProto.INT64, [])],
        ),
        os.path.join(out, "sequence_input.onnx"),
    )

    rng = np.random.default_rng(0)
    save(
        helper.make_graph(
            [
                helper.make_node("Mul", ["W", "two"], ["W2"]),
                helper.make_node("MatMul", ["INPUT0", "W2"], ["xw"]),
                helper.make_node("Add", ["xw", "B"], ["logits"]),
                helper.make_node("Softmax", ["logits"], ["OUTPUT0"], axis=1),
            ],
            "mlp",
            [tensor("INPUT0", TensorProto.FLOAT, ["batch", 4])],
            [tensor("OUTPUT0", TensorProto.FLOAT, ["batch", 3])],
            [
                numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "W"),
                numpy_helper.from_array(np.array(2.0, np.float32), "two"),
                numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), "B"),
            ],
        ),
        os.path.join(out, "mlp.onnx"),
    )

    with open(os.path.join(out, "corrupt.onnx"), "wb") as f:
        f.write(b"\x08\x07this is not an ONNX model\xff\xfe" * 8)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_models.py OUT_DIR")
    main(sys.argv[1])
