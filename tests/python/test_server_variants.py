"""Servers started with other repositories or flags: models that fail to load, two repositories,
--strict-model-config, --server-name, --log-format json, and graceful shutdown on SIGTERM.
Each test module fixture starts its own small tern-node."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tern_testlib import READY_MARK, TernServer, copy_models, expect_triton_error

TIMEOUT = 60
BAD_CONFIG = 'name: "bad_config"\nplatform: "onnxruntime_onnx"\nmax_batch_size: eight\ninput [ { name: \n'


def tiny_add_ok(client) -> None:
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "FP32"), grpcclient.InferInput("INPUT1", [1, 16], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    result = client.infer("tiny_add", inputs, client_timeout=TIMEOUT)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)


def stop_cleanly(srv: TernServer) -> None:
    if not srv.alive():
        pytest.fail(f"tern-node died (exit {srv.proc.returncode}); log:\n{srv.log_tail()}")
    rc = srv.stop()
    assert rc == 0, f"tern-node did not exit 0 on SIGTERM (exit {rc}); log:\n{srv.log_tail()}"


@pytest.fixture
def small_client():
    clients = []

    def make(srv: TernServer):
        c = grpcclient.InferenceServerClient(srv.url)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


# === a repository with broken models ==========================================================


@pytest.fixture(scope="module")
def broken_server(model_repo, tmp_path_factory):
    """Two repositories: good models in one, a corrupt model and a bad config in the other."""
    good = copy_models(model_repo, tmp_path_factory.mktemp("good_repo"), ["tiny_add", "identity_fp32"])
    bad = tmp_path_factory.mktemp("bad_repo")
    (bad / "corrupt_model" / "1").mkdir(parents=True)
    (bad / "corrupt_model" / "1" / "model.onnx").write_bytes(b"this is not an onnx model\x00\xff" * 10)
    copy_models(model_repo, bad, ["identity_int32"])
    (bad / "identity_int32").rename(bad / "bad_config")
    (bad / "bad_config" / "config.pbtxt").write_text(BAD_CONFIG)
    srv = TernServer([good, bad], log_dir=tmp_path_factory.mktemp("logs_broken"), label="broken")
    srv.start()
    yield srv
    stop_cleanly(srv)


def test_broken_models_do_not_take_server_down(broken_server, small_client):
    client = small_client(broken_server)
    assert client.is_server_live() is True
    # Triton's readiness is strict: a model that failed to load makes the server not ready.
    assert client.is_server_ready() is False


def test_good_models_from_both_repositories_still_serve(broken_server, small_client):
    client = small_client(broken_server)
    assert client.is_model_ready("tiny_add") is True
    assert client.is_model_ready("identity_fp32") is True
    tiny_add_ok(client)


def test_failed_models_not_ready(broken_server, small_client):
    client = small_client(broken_server)
    assert client.is_model_ready("corrupt_model") is False
    assert client.is_model_ready("bad_config") is False


def test_infer_on_failed_model_not_found(broken_server, small_client):
    client = small_client(broken_server)
    for model in ("corrupt_model", "bad_config"):
        inp = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_data_from_numpy(np.ones((1, 16), np.float32))
        msg = expect_triton_error(lambda: client.infer(model, [inp], client_timeout=TIMEOUT), "StatusCode.NOT_FOUND")
        assert msg.startswith(f"Request for unknown model: '{model}'"), msg


def test_repository_index_shows_failure(broken_server, small_client):
    client = small_client(broken_server)
    try:
        index = client.get_model_repository_index(as_json=True)
    except InferenceServerException as e:
        if e.status() == "StatusCode.UNIMPLEMENTED":
            return  # the index is optional here; the rest of this test needs it
        raise
    by_name = {}
    for m in index.get("models", []):
        by_name.setdefault(m["name"], []).append(m)
    assert [m.get("state") for m in by_name["tiny_add"]] == ["READY"]
    assert [m.get("state") for m in by_name["identity_fp32"]] == ["READY"]
    (corrupt,) = by_name["corrupt_model"]
    assert corrupt["state"] == "UNAVAILABLE"
    assert corrupt.get("reason"), corrupt
    for m in by_name.get("bad_config", []):
        assert m.get("state") != "READY", m


# === strict model config ======================================================================


@pytest.fixture(scope="module")
def strict_server(model_repo, tmp_path_factory):
    repo = copy_models(model_repo, tmp_path_factory.mktemp("strict_repo"), ["tiny_add", "light_squeezenet"])
    srv = TernServer([repo], ["--strict-model-config", "true"], log_dir=tmp_path_factory.mktemp("logs_strict"),
                     label="strict")
    srv.start()
    yield srv
    stop_cleanly(srv)


def test_strict_model_config_rejects_config_less_model(strict_server, small_client):
    client = small_client(strict_server)
    assert client.is_model_ready("tiny_add") is True
    assert client.is_model_ready("light_squeezenet") is False
    tiny_add_ok(client)


# === server name, JSON logs ===================================================================


@pytest.fixture(scope="module")
def named_server(model_repo, tmp_path_factory):
    repo = copy_models(model_repo, tmp_path_factory.mktemp("named_repo"), ["tiny_add"])
    srv = TernServer([repo], ["--server-name", "triton", "--log-format", "json"],
                     log_dir=tmp_path_factory.mktemp("logs_named"), label="named")
    srv.start()
    yield srv
    stop_cleanly(srv)


def test_server_name_flag(named_server, small_client):
    client = small_client(named_server)
    md = client.get_server_metadata(as_json=True)
    assert md["name"] == "triton"
    assert md.get("version")
    tiny_add_ok(client)


def test_json_log_format(named_server):
    ready = [line for line in named_server.lines if READY_MARK in line]
    assert ready, named_server.log_tail()
    record = json.loads(ready[0])
    assert isinstance(record, dict)


# === shutdown =================================================================================


def test_sigterm_graceful_exit(model_repo, tmp_path):
    repo = copy_models(model_repo, tmp_path / "repo", ["tiny_add", "string_identity"])
    srv = TernServer([repo], log_dir=tmp_path, label="shutdown")
    srv.start()
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        tiny_add_ok(client)
        client.close()
    finally:
        rc = srv.stop()
    assert rc == 0, f"exit code {rc} after SIGTERM; log:\n{srv.log_tail()}"
