"""Inference through tritonclient (raw_input_contents): every datatype, outputs, ids, batching,
BYTES edge cases, compression and streaming."""

from __future__ import annotations

import base64
import queue
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tern_testlib import ADD_TYPES, IDENTITY_TYPES, TRITON_TYPES, np_dtype

TIMEOUT = 60  # client-side seconds per call


def sample(suffix: str, shape, seed: int = 0, small: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    if suffix == "bool":
        return rng.integers(0, 2, shape).astype(np.bool_)
    if suffix == "string":
        words = [b"", b"tern", "h\u00e9llo".encode(), "\u65e5\u672c\u8a9e".encode(), b"x" * 100]
        return np.array([words[i % len(words)] + str(i).encode() for i in range(n)],
                        dtype=np.object_).reshape(shape)
    dtype = np_dtype(suffix)
    if suffix in ("fp16", "bf16", "fp32", "fp64"):
        return (rng.standard_normal(shape) * 8).astype(dtype)
    info = np.iinfo(dtype)
    lo, hi = (0, 100) if small else (info.min, info.max)
    return rng.integers(lo, hi, size=n, dtype=dtype, endpoint=True).reshape(shape)


def make_input(name: str, arr: np.ndarray, datatype: str) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr)
    return inp


def tiny_add_inputs(a: np.ndarray, b: np.ndarray):
    return [make_input("INPUT0", a, "FP32"), make_input("INPUT1", b, "FP32")]


# === every datatype ===========================================================================


@pytest.mark.parametrize("suffix", IDENTITY_TYPES)
def test_identity(client, suffix):
    datatype = TRITON_TYPES[suffix][0]
    x = sample(suffix, (3, 16))
    result = client.infer(f"identity_{suffix}", [make_input("INPUT0", x, datatype)], client_timeout=TIMEOUT)
    resp = result.get_response()
    assert resp.model_name == f"identity_{suffix}"
    assert resp.model_version == "1"
    assert [(o.name, o.datatype, list(o.shape)) for o in resp.outputs] == [("OUTPUT0", datatype, [3, 16])]
    y = result.as_numpy("OUTPUT0")
    assert y.shape == (3, 16)
    if suffix == "string":
        assert y.dtype == np.object_
        assert y.tolist() == x.tolist()
    else:
        assert y.dtype == x.dtype
        assert y.tobytes() == x.tobytes()


@pytest.mark.parametrize("suffix", ADD_TYPES)
def test_add_sub(client, suffix):
    datatype = TRITON_TYPES[suffix][0]
    a, b = sample(suffix, (2, 16), 1, small=True), sample(suffix, (2, 16), 2, small=True)
    if np.issubdtype(a.dtype, np.unsignedinteger):
        a = (a + b).astype(a.dtype)  # keep INPUT0 - INPUT1 non-negative
    result = client.infer(
        f"add_{suffix}",
        [make_input("INPUT0", a, datatype), make_input("INPUT1", b, datatype)],
        client_timeout=TIMEOUT,
    )
    out0, out1 = result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
    assert out0.dtype == a.dtype and out1.dtype == a.dtype
    assert out0.shape == (2, 16) and out1.shape == (2, 16)
    np.testing.assert_array_equal(out0, (a + b).astype(a.dtype))
    np.testing.assert_array_equal(out1, (a - b).astype(a.dtype))
    assert {o.datatype for o in result.get_response().outputs} == {datatype}


def test_tiny_add_matches_reference(client, reference):
    ref = reference["infer.tiny_add.response"]["ok"]
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    b = np.ones((2, 16), np.float32)
    result = client.infer("tiny_add", tiny_add_inputs(a, b), client_timeout=TIMEOUT)
    got = result.get_response(as_json=True)
    assert got == ref
    assert base64.b64decode(ref["raw_output_contents"][0]) == (a + b).tobytes()


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_tiny_add_batch_sizes(client, batch):
    a = np.random.default_rng(batch).standard_normal((batch, 16)).astype(np.float32)
    b = np.full((batch, 16), 0.5, np.float32)
    result = client.infer("tiny_add", tiny_add_inputs(a, b), client_timeout=TIMEOUT)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


def test_explicit_version(client):
    a = np.ones((1, 16), np.float32)
    result = client.infer("tiny_add", tiny_add_inputs(a, a), model_version="1", client_timeout=TIMEOUT)
    assert result.get_response().model_version == "1"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)


# === requested outputs and ids ================================================================


def add_fp32_inputs():
    a = np.arange(16, dtype=np.float32).reshape(1, 16) * 3
    b = np.arange(16, dtype=np.float32).reshape(1, 16)
    return a, b, [make_input("INPUT0", a, "FP32"), make_input("INPUT1", b, "FP32")]


def test_requested_output_subset(client):
    a, b, inputs = add_fp32_inputs()
    result = client.infer("add_fp32", inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT1")],
                          client_timeout=TIMEOUT)
    resp = result.get_response()
    assert [o.name for o in resp.outputs] == ["OUTPUT1"]
    assert len(resp.raw_output_contents) == 1
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.as_numpy("OUTPUT0") is None


def test_requested_outputs_reversed(client):
    a, b, inputs = add_fp32_inputs()
    outputs = [grpcclient.InferRequestedOutput("OUTPUT1"), grpcclient.InferRequestedOutput("OUTPUT0")]
    result = client.infer("add_fp32", inputs, outputs=outputs, client_timeout=TIMEOUT)
    resp = result.get_response()
    assert sorted(o.name for o in resp.outputs) == ["OUTPUT0", "OUTPUT1"]
    assert len(resp.raw_output_contents) == 2
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_all_outputs_when_none_requested(client):
    a, b, inputs = add_fp32_inputs()
    resp = client.infer("add_fp32", inputs, client_timeout=TIMEOUT).get_response()
    assert sorted(o.name for o in resp.outputs) == ["OUTPUT0", "OUTPUT1"]


def test_request_id_echo(client):
    a = np.ones((1, 16), np.float32)
    result = client.infer("tiny_add", tiny_add_inputs(a, a), request_id="req-\u00e9-42", client_timeout=TIMEOUT)
    assert result.get_response().id == "req-\u00e9-42"


def test_no_request_id(client):
    a = np.ones((1, 16), np.float32)
    result = client.infer("tiny_add", tiny_add_inputs(a, a), client_timeout=TIMEOUT)
    assert result.get_response().id == ""


# === concurrency / dynamic batching ===========================================================


def test_concurrent_requests_get_their_own_results(client):
    """16 requests in flight on a dynamic-batching model: each answer belongs to its request."""
    n = 16
    done: "queue.Queue" = queue.Queue()
    expected = {}
    for i in range(n):
        rows = 1 + i % 3
        a = np.full((rows, 16), float(i), np.float32) + np.arange(16, dtype=np.float32)
        b = np.full((rows, 16), 1000.0 * i, np.float32)
        expected[f"r{i}"] = a + b
        client.async_infer("tiny_add", tiny_add_inputs(a, b), request_id=f"r{i}",
                           callback=lambda result, error: done.put((result, error)),
                           client_timeout=TIMEOUT)
    for _ in range(n):
        result, error = done.get(timeout=TIMEOUT)
        assert error is None, error
        rid = result.get_response().id
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), expected.pop(rid))
    assert not expected


def test_concurrent_mixed_types(client):
    """Concurrent requests to several add_* models (separate batchers) all answer correctly."""
    done: "queue.Queue" = queue.Queue()
    expected = {}
    for k, suffix in enumerate(["int8", "fp16", "uint64", "fp64", "int32"] * 2):
        dt = TRITON_TYPES[suffix][0]
        a, b = sample(suffix, (2, 16), 10 + k, small=True), sample(suffix, (2, 16), 20 + k, small=True)
        rid = f"{suffix}-{k}"
        expected[rid] = (a + b).astype(a.dtype)
        client.async_infer(f"add_{suffix}", [make_input("INPUT0", a, dt), make_input("INPUT1", b, dt)],
                           outputs=[grpcclient.InferRequestedOutput("OUTPUT0")], request_id=rid,
                           callback=lambda result, error: done.put((result, error)), client_timeout=TIMEOUT)
    for _ in range(len(expected)):
        result, error = done.get(timeout=TIMEOUT)
        assert error is None, error
        rid = result.get_response().id
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), expected.pop(rid))


# === BYTES ====================================================================================


STRINGS = [b"", "h\u00e9llo w\u00f6rld".encode(), "\u65e5\u672c\u8a9e\u30c6\u30ad\u30b9\u30c8".encode(),
           "\U0001f426 tern".encode(), b"", b"plain ascii", b"a" * 1000]


def test_bytes_no_batching_utf8_and_empty(client):
    x = np.array(STRINGS, dtype=np.object_)
    result = client.infer("string_identity", [make_input("INPUT0", x, "BYTES")], client_timeout=TIMEOUT)
    resp = result.get_response()
    assert [(o.name, o.datatype, list(o.shape)) for o in resp.outputs] == [("OUTPUT0", "BYTES", [len(STRINGS)])]
    assert result.as_numpy("OUTPUT0").tolist() == STRINGS


def test_bytes_from_python_str(client):
    x = np.array(["caf\u00e9", "", "\u00fc\u00f1\u00ee\u00e7\u00f8d\u00e9"], dtype=np.object_)
    result = client.infer("string_identity", [make_input("INPUT0", x, "BYTES")], client_timeout=TIMEOUT)
    assert [s.decode("utf-8") for s in result.as_numpy("OUTPUT0")] == x.tolist()


def test_bytes_all_empty(client):
    x = np.array([b""] * 5, dtype=np.object_)
    result = client.infer("string_identity", [make_input("INPUT0", x, "BYTES")], client_timeout=TIMEOUT)
    assert result.as_numpy("OUTPUT0").tolist() == [b""] * 5


def test_bytes_batched(client):
    x = np.array([STRINGS[i % len(STRINGS)] + bytes([65 + i % 26]) for i in range(32)],
                 dtype=np.object_).reshape(2, 16)
    result = client.infer("identity_string", [make_input("INPUT0", x, "BYTES")], client_timeout=TIMEOUT)
    y = result.as_numpy("OUTPUT0")
    assert y.shape == (2, 16)
    assert y.tolist() == x.tolist()


def test_bytes_arbitrary_binary(client):
    """BYTES elements are arbitrary bytes in the protocol, embedded NULs included."""
    items = [b"\x00", b"a\x00b", bytes(range(256)), b"\xff\xfe"]
    x = np.array(items, dtype=np.object_)
    result = client.infer("string_identity", [make_input("INPUT0", x, "BYTES")], client_timeout=TIMEOUT)
    assert result.as_numpy("OUTPUT0").tolist() == items


# === compression ==============================================================================


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request(client, algorithm):
    a = np.linspace(-1, 1, 64 * 16, dtype=np.float32).reshape(64, 16)
    b = np.ones((64, 16), np.float32)
    result = client.infer("tiny_add", tiny_add_inputs(a, b), compression_algorithm=algorithm,
                          client_timeout=TIMEOUT)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_bytes_request(client, algorithm):
    x = np.array(STRINGS * 3, dtype=np.object_)
    result = client.infer("string_identity", [make_input("INPUT0", x, "BYTES")],
                          compression_algorithm=algorithm, client_timeout=TIMEOUT)
    assert result.as_numpy("OUTPUT0").tolist() == x.tolist()


# === streaming ================================================================================


class StreamCollector:
    def __init__(self):
        self.q: "queue.Queue" = queue.Queue()

    def __call__(self, result, error):
        self.q.put((result, error))

    def take(self, n: int, timeout: float = TIMEOUT):
        return [self.q.get(timeout=timeout) for _ in range(n)]


def test_stream_with_bad_request_in_the_middle(url):
    client = grpcclient.InferenceServerClient(url)
    collector = StreamCollector()
    client.start_stream(callback=collector)
    try:
        expected = {}
        for i in range(6):
            a = np.full((1, 16), float(i), np.float32)
            b = np.arange(16, dtype=np.float32).reshape(1, 16)
            if i == 2:  # wrong shape for INPUT0
                bad = np.ones((1, 8), np.float32)
                client.async_stream_infer("tiny_add", tiny_add_inputs(bad, b), request_id=f"s{i}")
                continue
            expected[f"s{i}"] = a + b
            client.async_stream_infer("tiny_add", tiny_add_inputs(a, b), request_id=f"s{i}")
        got = collector.take(6)
    finally:
        client.stop_stream()
        client.close()
    errors = [e for r, e in got if e is not None]
    results = [r for r, e in got if e is None]
    assert len(errors) == 1, [str(e) for e in errors]
    assert "INPUT0" in errors[0].message() and "tiny_add" in errors[0].message()
    assert len(results) == 5
    for r in results:
        rid = r.get_response().id
        np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), expected.pop(rid))
    assert not expected


def test_stream_unknown_model_then_good(url):
    client = grpcclient.InferenceServerClient(url)
    collector = StreamCollector()
    client.start_stream(callback=collector)
    try:
        a = np.ones((1, 16), np.float32)
        client.async_stream_infer("no_such_model", tiny_add_inputs(a, a), request_id="bad")
        (first,) = collector.take(1)
        client.async_stream_infer("tiny_add", tiny_add_inputs(a, a), request_id="good")
        (second,) = collector.take(1)
    finally:
        client.stop_stream()
        client.close()
    assert first[1] is not None
    assert first[1].message() == "Request for unknown model: 'no_such_model' is not found"
    assert second[1] is None, second[1]
    assert second[0].get_response().id == "good"
    np.testing.assert_array_equal(second[0].as_numpy("OUTPUT0"), a + a)


def test_stream_many_models_and_types(url):
    client = grpcclient.InferenceServerClient(url)
    collector = StreamCollector()
    client.start_stream(callback=collector)
    expected = {}
    try:
        for k, suffix in enumerate(["fp32", "int64", "string", "bool", "uint16"]):
            dt = TRITON_TYPES[suffix][0]
            x = sample(suffix, (2, 16), k)
            expected[f"id-{suffix}"] = x
            client.async_stream_infer(f"identity_{suffix}", [make_input("INPUT0", x, dt)],
                                      request_id=f"id-{suffix}")
        got = collector.take(len(expected))
    finally:
        client.stop_stream()
        client.close()
    for result, error in got:
        assert error is None, error
        rid = result.get_response().id
        x = expected.pop(rid)
        assert result.as_numpy("OUTPUT0").tolist() == x.tolist()


def test_parallel_streams(url):
    """Two clients streaming at once do not see each other's responses."""
    outcomes = {}

    def run(tag: str, offset: float):
        client = grpcclient.InferenceServerClient(url)
        collector = StreamCollector()
        client.start_stream(callback=collector)
        try:
            for i in range(10):
                a = np.full((1, 16), offset + i, np.float32)
                client.async_stream_infer("tiny_add", tiny_add_inputs(a, a), request_id=f"{tag}{i}")
            outcomes[tag] = collector.take(10)
        finally:
            client.stop_stream()
            client.close()

    threads = [threading.Thread(target=run, args=(t, o)) for t, o in (("a", 0.0), ("b", 1000.0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    for tag, offset in (("a", 0.0), ("b", 1000.0)):
        got = outcomes[tag]
        ids = set()
        for result, error in got:
            assert error is None, error
            rid = result.get_response().id
            assert rid.startswith(tag)
            i = int(rid[1:])
            ids.add(i)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 16), 2 * (offset + i), np.float32))
        assert ids == set(range(10))


def test_simple_model_family_of_tritons_client_examples(client):
    """The models Triton's client examples call besides `simple` (simple_*_string_infer_client,
    simple_*_shm_string_client, grpc_explicit_{byte,int8}_content_client): decimal strings
    added and subtracted by `simple_string`, INT8 by `simple_int8`, bytes with embedded NULs and
    non-UTF-8 blobs returned unchanged by `simple_identity`."""
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    strings = [make_input("INPUT0", a.astype(str).astype(np.object_), "BYTES"),
               make_input("INPUT1", b.astype(str).astype(np.object_), "BYTES")]
    r = client.infer("simple_string", strings)
    assert [int(v) for v in r.as_numpy("OUTPUT0").ravel()] == list((a + b).ravel())
    assert [int(v) for v in r.as_numpy("OUTPUT1").ravel()] == list((a - b).ravel())
    a8, b8 = a.astype(np.int8), np.full((1, 16), -3, np.int8)
    r = client.infer("simple_int8", [make_input("INPUT0", a8, "INT8"), make_input("INPUT1", b8, "INT8")])
    assert r.as_numpy("OUTPUT0").tolist() == (a8 + b8).tolist()
    assert r.as_numpy("OUTPUT1").tolist() == (a8 - b8).tolist()
    for blob in [b"he\x00llo", b"\x00\x01\x02\x03", "é".encode() + b"\xff"]:
        x = np.array([blob] * 16, dtype=np.object_).reshape(1, 16)
        got = client.infer("simple_identity", [make_input("INPUT0", x, "BYTES")]).as_numpy("OUTPUT0")
        assert got.ravel().tolist() == [blob] * 16
