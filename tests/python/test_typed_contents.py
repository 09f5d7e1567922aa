"""Typed `contents` inputs (fp32_contents, int_contents, ...), which tritonclient never sends:
requests are built with the generated protobuf and sent through the raw gRPC stub. Triton
narrows int_contents/uint_contents to 8/16-bit types and always answers with raw outputs."""

from __future__ import annotations

import numpy as np
import pytest

from tern_testlib import infer_request, output_array

TIMEOUT = 60

# (identity model suffix, Triton datatype, contents field, python values, numpy dtype)
CASES = [
    ("fp32", "FP32", "fp32_contents", [0.5 * i - 4 for i in range(32)], np.float32),
    ("fp64", "FP64", "fp64_contents", [1e300, -2.5e-300] + [i / 7 for i in range(30)], np.float64),
    ("int8", "INT8", "int_contents", [-128, 127] + [i - 15 for i in range(30)], np.int8),
    ("int16", "INT16", "int_contents", [-32768, 32767] + [i * 1000 - 15000 for i in range(30)], np.int16),
    ("int32", "INT32", "int_contents", [-2**31, 2**31 - 1] + [i * 99991 - 1500000 for i in range(30)], np.int32),
    ("int64", "INT64", "int64_contents", [-2**63, 2**63 - 1] + [i * 10**12 for i in range(30)], np.int64),
    ("uint8", "UINT8", "uint_contents", [0, 255] + list(range(30)), np.uint8),
    ("uint16", "UINT16", "uint_contents", [0, 65535] + [i * 2000 for i in range(30)], np.uint16),
    ("uint32", "UINT32", "uint_contents", [0, 2**32 - 1] + [i * 100003 for i in range(30)], np.uint32),
    ("uint64", "UINT64", "uint64_contents", [0, 2**64 - 1] + [i * 10**15 for i in range(30)], np.uint64),
    ("bool", "BOOL", "bool_contents", [i % 3 == 0 for i in range(32)], np.bool_),
]


@pytest.mark.parametrize("suffix,datatype,field,values,dtype", CASES, ids=[c[0] for c in CASES])
def test_typed_contents_identity(stub, suffix, datatype, field, values, dtype):
    req = infer_request(f"identity_{suffix}", [("INPUT0", datatype, [2, 16], {field: values})])
    resp = stub.ModelInfer(req, timeout=TIMEOUT)
    assert [(o.name, o.datatype, list(o.shape)) for o in resp.outputs] == [("OUTPUT0", datatype, [2, 16])]
    # Triton answers with raw_output_contents, whatever the request used.
    assert len(resp.raw_output_contents) == 1
    np.testing.assert_array_equal(output_array(resp, "OUTPUT0"), np.array(values, dtype=dtype).reshape(2, 16))


def test_typed_contents_two_inputs(stub):
    a = [float(i) for i in range(16)]
    b = [0.25] * 16
    req = infer_request("add_fp32", [("INPUT0", "FP32", [1, 16], {"fp32_contents": a}),
                                     ("INPUT1", "FP32", [1, 16], {"fp32_contents": b})])
    resp = stub.ModelInfer(req, timeout=TIMEOUT)
    np.testing.assert_array_equal(output_array(resp, "OUTPUT0"), (np.array(a) + 0.25).astype(np.float32).reshape(1, 16))
    np.testing.assert_array_equal(output_array(resp, "OUTPUT1"), (np.array(a) - 0.25).astype(np.float32).reshape(1, 16))


def test_typed_contents_int8_add(stub):
    a = [i - 8 for i in range(16)]
    b = [3] * 16
    req = infer_request("add_int8", [("INPUT0", "INT8", [1, 16], {"int_contents": a}),
                                     ("INPUT1", "INT8", [1, 16], {"int_contents": b})])
    resp = stub.ModelInfer(req, timeout=TIMEOUT)
    np.testing.assert_array_equal(output_array(resp, "OUTPUT0"), np.array([x + 3 for x in a], np.int8).reshape(1, 16))
    np.testing.assert_array_equal(output_array(resp, "OUTPUT1"), np.array([x - 3 for x in a], np.int8).reshape(1, 16))


def test_bytes_contents_batched(stub):
    items = [b"", "\u00e9t\u00e9".encode(), b"tern", "\u65e5\u672c".encode()] * 8
    req = infer_request("identity_string", [("INPUT0", "BYTES", [2, 16], {"bytes_contents": items})])
    resp = stub.ModelInfer(req, timeout=TIMEOUT)
    assert [(o.name, o.datatype, list(o.shape)) for o in resp.outputs] == [("OUTPUT0", "BYTES", [2, 16])]
    assert output_array(resp, "OUTPUT0").ravel().tolist() == items


def test_bytes_contents_no_batching(stub):
    items = [b"", b"", "\u00fcber".encode(), b"z" * 300]
    req = infer_request("string_identity", [("INPUT0", "BYTES", [4], {"bytes_contents": items})])
    resp = stub.ModelInfer(req, timeout=TIMEOUT)
    assert output_array(resp, "OUTPUT0").tolist() == items


def test_raw_request_through_stub(stub):
    """Sanity check of the raw path with the stub itself: request id and version echo."""
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    req = infer_request("tiny_add", [("INPUT0", "FP32", [1, 16], None), ("INPUT1", "FP32", [1, 16], None)],
                        raw=[a.tobytes(), a.tobytes()], request_id="raw-1", version="1")
    resp = stub.ModelInfer(req, timeout=TIMEOUT)
    assert resp.id == "raw-1" and resp.model_name == "tiny_add" and resp.model_version == "1"
    np.testing.assert_array_equal(output_array(resp, "OUTPUT0"), a + a)
