"""Error cases: exact gRPC status codes, and Triton's messages where clients see them (exact where
the reference recorded them, key facts otherwise). The last test checks that the server still
serves after all of them."""

from __future__ import annotations

import struct

import grpc
import numpy as np
import tritonclient.grpc as grpcclient

from tern_testlib import expect_rpc_error, expect_triton_error, infer_request, output_array

TIMEOUT = 60
INVALID = "StatusCode.INVALID_ARGUMENT"
NOT_FOUND = "StatusCode.NOT_FOUND"


def fp32_input(name: str, arr: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(arr.shape), "FP32")
    inp.set_data_from_numpy(arr.astype(np.float32))
    return inp


def good_inputs(rows: int = 1):
    x = np.ones((rows, 16), np.float32)
    return [fp32_input("INPUT0", x), fp32_input("INPUT1", x)]


def raw_f32(rows: int = 1) -> bytes:
    return np.ones((rows, 16), np.float32).tobytes()


# === model resolution =========================================================================


def test_unknown_model(client, reference):
    ref = reference["infer.error.missing_model"]["error"]
    msg = expect_triton_error(lambda: client.infer("no_such_model", good_inputs(), client_timeout=TIMEOUT), ref["status"])
    assert msg == ref["message"]


def test_non_numeric_version(stub):
    req = infer_request("tiny_add", [("INPUT0", "FP32", [1, 16], None), ("INPUT1", "FP32", [1, 16], None)],
                        raw=[raw_f32(), raw_f32()], version="abc")
    msg = expect_rpc_error(lambda: stub.ModelInfer(req, timeout=TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT)
    # Triton 2.51: "failed to get model version from specified version string 'abc' (details: stol),
    # version should be an integral value > 0"
    assert "'abc'" in msg, msg


def test_unknown_version(client):
    msg = expect_triton_error(
        lambda: client.infer("tiny_add", good_inputs(), model_version="7", client_timeout=TIMEOUT), NOT_FOUND)
    assert msg == "Request for unknown model: 'tiny_add' version 7 is not found"


# === inputs ===================================================================================


def test_wrong_input_name(client, reference):
    ref = reference["infer.error.wrong_input_name"]["error"]
    x = np.ones((1, 16), np.float32)
    inputs = [fp32_input("INPUT0", x), fp32_input("NOPE", x)]
    msg = expect_triton_error(lambda: client.infer("tiny_add", inputs, client_timeout=TIMEOUT), ref["status"])
    assert msg == ref["message"]


def test_wrong_shape(client, reference):
    ref = reference["infer.error.wrong_shape"]["error"]
    inputs = [fp32_input("INPUT0", np.ones((2, 8))), fp32_input("INPUT1", np.ones((2, 16)))]
    msg = expect_triton_error(lambda: client.infer("tiny_add", inputs, client_timeout=TIMEOUT), ref["status"])
    assert msg == ref["message"]


def test_wrong_shape_names_request_id(client):
    inputs = [fp32_input("INPUT0", np.ones((2, 8))), fp32_input("INPUT1", np.ones((2, 16)))]
    msg = expect_triton_error(
        lambda: client.infer("tiny_add", inputs, request_id="my-id", client_timeout=TIMEOUT), INVALID)
    assert msg.startswith("[request id: my-id] unexpected shape for input 'INPUT0' for model 'tiny_add'. "
                          "Expected [-1,16], got [2,8]."), msg


def test_wrong_rank_no_batching(client):
    inp = grpcclient.InferInput("INPUT0", [2, 2], "BYTES")
    inp.set_data_from_numpy(np.array([[b"a", b"b"], [b"c", b"d"]], dtype=np.object_))
    msg = expect_triton_error(lambda: client.infer("string_identity", [inp], client_timeout=TIMEOUT), INVALID)
    assert "'INPUT0'" in msg and "string_identity" in msg and "[-1]" in msg and "[2,2]" in msg, msg


def test_batch_too_large(client, reference):
    ref = reference["infer.error.batch_too_large"]["error"]
    msg = expect_triton_error(lambda: client.infer("tiny_add", good_inputs(65), client_timeout=TIMEOUT), ref["status"])
    assert msg == ref["message"]


def test_batch_too_large_resnet(client):
    x = np.zeros((9, 3, 224, 224), np.float32)
    msg = expect_triton_error(
        lambda: client.infer("light_resnet50", [fp32_input("input", x)], client_timeout=TIMEOUT), INVALID)
    assert msg.endswith("inference request batch-size must be <= 8 for 'light_resnet50'"), msg


def test_batch_mismatch_between_inputs(client):
    inputs = [fp32_input("INPUT0", np.ones((2, 16))), fp32_input("INPUT1", np.ones((3, 16)))]
    msg = expect_triton_error(lambda: client.infer("tiny_add", inputs, client_timeout=TIMEOUT), INVALID)
    assert "INPUT1" in msg or "INPUT0" in msg, msg


def test_wrong_datatype(client):
    x = np.ones((1, 16), np.int32)
    inp0 = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
    inp0.set_data_from_numpy(x)
    inputs = [inp0, fp32_input("INPUT1", np.ones((1, 16)))]
    msg = expect_triton_error(lambda: client.infer("tiny_add", inputs, client_timeout=TIMEOUT), INVALID)
    # Triton 2.51: "[request id: <id_unknown>] inference input 'INPUT0' data-type is 'INT32', but model
    # 'tiny_add' expects 'FP32'"
    assert "'INPUT0'" in msg and "INT32" in msg and "FP32" in msg and "tiny_add" in msg, msg


def test_unknown_datatype_name(stub):
    req = infer_request("tiny_add", [("INPUT0", "FLOAT32", [1, 16], None), ("INPUT1", "FP32", [1, 16], None)],
                        raw=[raw_f32(), raw_f32()])
    msg = expect_rpc_error(lambda: stub.ModelInfer(req, timeout=TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT)
    # Triton 2.51: "... inference input 'INPUT0' data-type is '<invalid>', but model 'tiny_add' expects 'FP32'"
    assert "INPUT0" in msg, msg


def test_byte_size_mismatch(client):
    inp0 = fp32_input("INPUT0", np.ones((1, 8)))
    inp0.set_shape([1, 16])  # 32 bytes of data for a [1,16] FP32 tensor (64 bytes)
    inputs = [inp0, fp32_input("INPUT1", np.ones((1, 16)))]
    msg = expect_triton_error(lambda: client.infer("tiny_add", inputs, client_timeout=TIMEOUT), INVALID)
    # Triton 2.51: "[request id: <id_unknown>] input byte size mismatch for input 'INPUT0' for model
    # 'tiny_add'. Expected 64, got 32"
    assert "'INPUT0'" in msg and "64" in msg and "32" in msg, msg


def test_byte_size_too_large(stub):
    req = infer_request("tiny_add", [("INPUT0", "FP32", [1, 16], None), ("INPUT1", "FP32", [1, 16], None)],
                        raw=[raw_f32(1) + b"\x00\x00\x00\x00", raw_f32(1)])
    msg = expect_rpc_error(lambda: stub.ModelInfer(req, timeout=TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT)
    assert "'INPUT0'" in msg and "64" in msg and "68" in msg, msg


def test_missing_input(client):
    inputs = [fp32_input("INPUT0", np.ones((1, 16)))]
    msg = expect_triton_error(lambda: client.infer("tiny_add", inputs, client_timeout=TIMEOUT), INVALID)
    # Triton 2.51: "[request id: <id_unknown>] expected 2 inputs but got 1 inputs for model 'tiny_add'.
    # Got input(s) ['INPUT0'], but missing required input(s) ['INPUT1']. Please provide all required
    # input(s)."
    assert "INPUT1" in msg and "tiny_add" in msg, msg


def test_no_inputs(stub):
    req = infer_request("tiny_add", [])
    msg = expect_rpc_error(lambda: stub.ModelInfer(req, timeout=TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT)
    assert "INPUT0" in msg and "INPUT1" in msg, msg


def test_duplicate_input(stub):
    req = infer_request(
        "tiny_add",
        [("INPUT0", "FP32", [1, 16], None), ("INPUT0", "FP32", [1, 16], None), ("INPUT1", "FP32", [1, 16], None)],
        raw=[raw_f32(), raw_f32(), raw_f32()],
    )
    msg = expect_rpc_error(lambda: stub.ModelInfer(req, timeout=TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT)
    # Triton 2.51: "[request id: <id_unknown>] input 'INPUT0' already exists in request"
    assert "INPUT0" in msg, msg


def test_fewer_raw_contents_than_inputs(stub):
    req = infer_request("tiny_add", [("INPUT0", "FP32", [1, 16], None), ("INPUT1", "FP32", [1, 16], None)],
                        raw=[raw_f32()])
    msg = expect_rpc_error(lambda: stub.ModelInfer(req, timeout=TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT)
    # Triton 2.51: "unable to find data for input tensor 'INPUT1' for model 'tiny_add' in request."
    assert "INPUT1" in msg, msg


def test_raw_and_typed_contents_together(stub):
    req = infer_request(
        "tiny_add",
        [("INPUT0", "FP32", [1, 16], {"fp32_contents": [1.0] * 16}), ("INPUT1", "FP32", [1, 16], None)],
        raw=[raw_f32()],
    )
    msg = expect_rpc_error(lambda: stub.ModelInfer(req, timeout=TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT)
    # Triton 2.51: "contents field must not be specified when using raw_input_contents for 'INPUT0'
    # for model 'tiny_add'"
    assert "INPUT0" in msg and "raw_input_contents" in msg, msg


def test_typed_contents_wrong_field_for_datatype(stub):
    req = infer_request("tiny_add", [("INPUT0", "FP32", [1, 16], {"int_contents": list(range(16))}),
                                     ("INPUT1", "FP32", [1, 16], {"fp32_contents": [1.0] * 16})])
    msg = expect_rpc_error(lambda: stub.ModelInfer(req, timeout=TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT)
    # Triton 2.51: "unexpected explicit tensor data for input tensor 'INPUT0' for model 'tiny_add' of
    # type 'INT32', expected datatype 'FP32'"
    assert "INPUT0" in msg, msg


def test_typed_contents_wrong_count(stub):
    req = infer_request("tiny_add", [("INPUT0", "FP32", [1, 16], {"fp32_contents": [1.0] * 15}),
                                     ("INPUT1", "FP32", [1, 16], {"fp32_contents": [1.0] * 16})])
    msg = expect_rpc_error(lambda: stub.ModelInfer(req, timeout=TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT)
    # Triton 2.51: "[request id: <id_unknown>] input byte size mismatch for input 'INPUT0' for model
    # 'tiny_add'. Expected 64, got 60"
    assert "INPUT0" in msg, msg


def test_negative_dimension(stub):
    req = infer_request("tiny_add", [("INPUT0", "FP32", [-1, 16], None), ("INPUT1", "FP32", [1, 16], None)],
                        raw=[raw_f32(), raw_f32()])
    expect_rpc_error(lambda: stub.ModelInfer(req, timeout=TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT)


# === BYTES ====================================================================================


def bytes_request(raw: bytes, n: int):
    return infer_request("string_identity", [("INPUT0", "BYTES", [n], None)], raw=[raw])


def test_bytes_truncated_length_prefix(stub):
    raw = struct.pack("<I", 2) + b"ab" + b"\x05\x00"  # second element: 2 of 4 length bytes
    msg = expect_rpc_error(lambda: stub.ModelInfer(bytes_request(raw, 2), timeout=TIMEOUT),
                           grpc.StatusCode.INVALID_ARGUMENT)
    # Triton 2.51: "[request id: <id_unknown>] incomplete string length indicator for inference input
    # 'INPUT0' for model 'string_identity', expecting 4 bytes but only 2 bytes available. Please make
    # sure the string length indicator is in one buffer."
    assert "'INPUT0'" in msg and "string_identity" in msg, msg


def test_bytes_length_past_end(stub):
    raw = struct.pack("<I", 10) + b"abc"  # claims 10 bytes, carries 3
    msg = expect_rpc_error(lambda: stub.ModelInfer(bytes_request(raw, 1), timeout=TIMEOUT),
                           grpc.StatusCode.INVALID_ARGUMENT)
    # Triton 2.51: "incomplete string data for inference input 'INPUT0', expecting string of length 10
    # but only 3 bytes available"
    assert "'INPUT0'" in msg, msg


def test_bytes_element_count_mismatch(stub):
    raw = struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b"
    msg = expect_rpc_error(lambda: stub.ModelInfer(bytes_request(raw, 3), timeout=TIMEOUT),
                           grpc.StatusCode.INVALID_ARGUMENT)
    # Triton 2.51: "[request id: <id_unknown>] expected 3 string elements for inference input 'INPUT0'
    # for model 'string_identity', got 2"
    assert "'INPUT0'" in msg and "3" in msg and "2" in msg, msg


def test_bytes_too_many_elements(stub):
    raw = b"".join(struct.pack("<I", 1) + bytes([97 + i]) for i in range(3))
    msg = expect_rpc_error(lambda: stub.ModelInfer(bytes_request(raw, 2), timeout=TIMEOUT),
                           grpc.StatusCode.INVALID_ARGUMENT)
    # Triton 2.51: "[request id: <id_unknown>] unexpected number of string elements 3 for inference
    # input 'INPUT0' for model 'string_identity', expecting 2"
    assert "'INPUT0'" in msg, msg


# === outputs ==================================================================================


def test_unknown_requested_output(client):
    outputs = [grpcclient.InferRequestedOutput("NOPE")]
    msg = expect_triton_error(
        lambda: client.infer("tiny_add", good_inputs(), outputs=outputs, client_timeout=TIMEOUT), INVALID)
    assert msg == "unexpected inference output 'NOPE' for model 'tiny_add'"


def test_classification_on_unknown_output(client):
    outputs = [grpcclient.InferRequestedOutput("NOPE", class_count=3)]
    expect_triton_error(lambda: client.infer("tiny_add", good_inputs(), outputs=outputs, client_timeout=TIMEOUT),
                        INVALID)


# === the server survived ======================================================================


def test_zz_server_still_serves_after_errors(client, stub):
    assert client.is_server_live() and client.is_server_ready()
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    result = client.infer("tiny_add", [fp32_input("INPUT0", a), fp32_input("INPUT1", a)], client_timeout=TIMEOUT)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)
    raw = struct.pack("<I", 3) + b"abc"
    resp = stub.ModelInfer(bytes_request(raw, 1), timeout=TIMEOUT)
    assert output_array(resp, "OUTPUT0").tolist() == [b"abc"]
