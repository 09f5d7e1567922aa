"""Security end to end: encrypted models at rest (`model.onnx.enc`, `tern model
keygen|encrypt|decrypt`, `--model-key-file` / `TERN_MODEL_KEY`) and refusal of path traversal
through the repository API (model names, `file:` upload paths, names inside a `config`).

Models are built here with onnx (a tiny Add), so this file needs no example repository.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tern_testlib import ROOT, TernServer

MAGIC = b"TERNENC1"
INVALID = "StatusCode.INVALID_ARGUMENT"


def tern_binary() -> Path:
    path = Path(os.environ.get("TERN_BIN", ROOT / "target" / "release" / "tern"))
    if not path.exists():
        pytest.fail(f"tern binary not found at {path}: build it with `cargo build --release -p tern-cli`")
    return path


def tern(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(tern_binary()), *map(str, args)], capture_output=True, text=True,
                          timeout=60, env=env)


def add_model_bytes() -> bytes:
    """OUTPUT0 = INPUT0 + INPUT1, FP32 [N,16] with a symbolic batch (auto-complete: max_batch_size 4)."""
    from onnx import TensorProto, checker, helper

    def vi(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 16])

    graph = helper.make_graph([helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"])], "add",
                              [vi("INPUT0"), vi("INPUT1")], [vi("OUTPUT0")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    checker.check_model(model)
    return model.SerializeToString()


ADD_CONFIG = """name: "{name}"
backend: "onnxruntime"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }}, {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
"""


def add(client, model: str) -> list[float]:
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "FP32"), grpcclient.InferInput("INPUT1", [1, 16], "FP32")]
    for i in inputs:
        i.set_data_from_numpy(a)
    return client.infer(model, inputs).as_numpy("OUTPUT0").tolist()[0]


def index(client) -> dict:
    return {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    for name in ("good", "other"):
        r = tern("crypt", "keygen", d / name)
        assert r.returncode == 0, r.stderr
    return d


@pytest.fixture(scope="module")
def encrypted_repo(tmp_path_factory, keys):
    """plain, enc_auto (no config: auto-complete), enc_config, enc_wrong_key, enc_tampered."""
    repo = tmp_path_factory.mktemp("encrypted_repo")
    clear = tmp_path_factory.mktemp("clear") / "model.onnx"
    clear.write_bytes(add_model_bytes())
    for name in ("plain", "enc_auto", "enc_config", "enc_wrong_key", "enc_tampered"):
        (repo / name / "1").mkdir(parents=True)
        if name != "enc_auto":
            (repo / name / "config.pbtxt").write_text(ADD_CONFIG.format(name=name))
    (repo / "plain" / "1" / "model.onnx").write_bytes(clear.read_bytes())
    for name, key in [("enc_auto", "good"), ("enc_config", "good"), ("enc_wrong_key", "other"),
                      ("enc_tampered", "good")]:
        r = tern("crypt", "encrypt", "--key-file", keys / key, clear, repo / name / "1" / "model.onnx.enc")
        assert r.returncode == 0, r.stderr
    tampered = repo / "enc_tampered" / "1" / "model.onnx.enc"
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0x40
    tampered.write_bytes(bytes(data))
    return repo


def test_file_format_and_cli_round_trip(keys, tmp_path):
    clear = tmp_path / "model.onnx"
    clear.write_bytes(add_model_bytes())
    enc = tmp_path / "model.onnx.enc"
    assert tern("crypt", "encrypt", "--key-file", keys / "good", clear, enc).returncode == 0
    data = enc.read_bytes()
    # magic, 12-byte nonce, ciphertext as long as the model, 16-byte tag
    assert data.startswith(MAGIC) and len(data) == 8 + 12 + clear.stat().st_size + 16
    assert clear.read_bytes() not in data
    out = tmp_path / "back.onnx"
    r = tern("crypt", "decrypt", "--key-file", keys / "good", enc, out)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == clear.read_bytes()
    # `tern model` is the old name of `tern crypt`, kept as an alias for one release.
    r = tern("model", "decrypt", "--key-file", keys / "good", enc, "-")
    assert r.returncode == 0, r.stderr
    # The key as text in TERN_MODEL_KEY works too (hex or base64).
    hex_key = (keys / "good").read_text().strip()
    b64_key = base64.b64encode(bytes.fromhex(hex_key)).decode()
    for text in (hex_key, b64_key):
        r = tern("crypt", "decrypt", enc, "-", env=dict(os.environ, TERN_MODEL_KEY=text))
        assert r.returncode == 0, r.stderr
    # Wrong key, no key, an existing key file: refused, and the key is never printed.
    r = tern("crypt", "decrypt", "--key-file", keys / "other", enc, tmp_path / "x")
    assert r.returncode == 1 and "wrong key" in r.stderr and not (tmp_path / "x").exists()
    env = {k: v for k, v in os.environ.items() if k != "TERN_MODEL_KEY"}
    r = tern("crypt", "encrypt", clear, tmp_path / "y", env=env)
    assert r.returncode == 1 and "--key-file" in r.stderr
    r = tern("crypt", "keygen", keys / "good")
    assert r.returncode == 1 and hex_key not in r.stderr + r.stdout
    assert (keys / "good").stat().st_mode & 0o077 == 0, "key files are private to their owner"


def test_encrypted_models_serve_and_bad_ones_are_unavailable(encrypted_repo, keys, tmp_path):
    before = sorted(p.relative_to(encrypted_repo) for p in encrypted_repo.rglob("*"))
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    saved = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(scratch)  # the node's temporary files, if it wrote any
    try:
        srv = TernServer([encrypted_repo], ["--model-key-file", str(keys / "good")], label="encrypted").start()
    finally:
        if saved is None:
            os.environ.pop("TMPDIR")
        else:
            os.environ["TMPDIR"] = saved
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        expected = [2.0 * i for i in range(16)]
        for model in ("plain", "enc_auto", "enc_config"):
            assert client.is_model_ready(model), srv.log_tail()
            assert add(client, model) == expected
        # Auto-complete read the decrypted model: inputs, outputs, batching.
        cfg = client.get_model_config("enc_auto", as_json=True)["config"]
        assert cfg["max_batch_size"] == 4 and [i["name"] for i in cfg["input"]] == ["INPUT0", "INPUT1"]
        assert cfg["output"][0]["dims"] == ["16"]

        rows = index(client)
        for model, says in [("enc_wrong_key", "wrong key"), ("enc_tampered", "authentication failed")]:
            assert rows[model]["state"] == "UNAVAILABLE"
            reason = rows[model]["reason"]
            assert f"model '{model}'" in reason and f"{model}/1/model.onnx.enc" in reason and says in reason, reason
            assert not client.is_model_ready(model)
        assert not client.is_server_ready(), "strict readiness: two models failed"
        # The clear model was never written: nothing new in the repository or the temp dir.
        assert sorted(p.relative_to(encrypted_repo) for p in encrypted_repo.rglob("*")) == before
        # (ONNX Runtime itself leaves a small `.ses` session-id file in TMPDIR.)
        clear = add_model_bytes()
        for f in (p for p in scratch.rglob("*") if p.is_file()):
            assert clear not in f.read_bytes(), f"{f} holds the clear model"
        log = "\n".join(srv.lines)
        assert (keys / "good").read_text().strip() not in log, "the key must never be logged"
    finally:
        assert srv.stop() == 0, srv.log_tail()


def test_key_from_environment_and_missing_key(encrypted_repo, keys):
    hex_key = (keys / "good").read_text().strip()
    saved = os.environ.get("TERN_MODEL_KEY")
    os.environ["TERN_MODEL_KEY"] = base64.b64encode(bytes.fromhex(hex_key)).decode()
    try:
        srv = TernServer([encrypted_repo], label="env-key").start()
    finally:
        os.environ.pop("TERN_MODEL_KEY")
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        assert add(client, "enc_auto") == [2.0 * i for i in range(16)]
    finally:
        assert srv.stop() == 0, srv.log_tail()

    srv = TernServer([encrypted_repo], label="no-key").start()
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        assert add(client, "plain") == [2.0 * i for i in range(16)], "other models keep serving"
        reason = index(client)["enc_config"]["reason"]
        assert "model 'enc_config'" in reason and "model.onnx.enc" in reason, reason
        assert "no key is configured" in reason and "--model-key-file" in reason, reason
    finally:
        assert srv.stop() == 0, srv.log_tail()
    if saved is not None:
        os.environ["TERN_MODEL_KEY"] = saved


def test_bad_key_file_is_a_configuration_error(encrypted_repo, tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    for key_file in (bad, tmp_path / "missing.key"):
        srv = TernServer([encrypted_repo], ["--model-key-file", str(key_file)], label="bad-key")
        proc = subprocess.run(srv.command(), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        out = proc.stdout + proc.stderr
        assert "--model-key-file" in out and str(key_file) in out, out


# === path traversal through the repository API ================================================


@pytest.fixture(scope="module")
def explicit(encrypted_repo, keys):
    srv = TernServer([encrypted_repo], ["--model-control-mode", "explicit", "--model-key-file",
                                        str(keys / "good")], label="explicit-security").start()
    yield srv
    assert srv.stop() == 0, srv.log_tail()


def expect_invalid(fn) -> str:
    with pytest.raises(InferenceServerException) as e:
        fn()
    assert e.value.status() == INVALID, f"{e.value.status()}: {e.value.message()}"
    return e.value.message()


def upload_config(name: str, **extra) -> str:
    cfg = {
        "name": name, "backend": "onnxruntime", "max_batch_size": 8,
        "input": [{"name": n, "data_type": "TYPE_FP32", "dims": [16]} for n in ("INPUT0", "INPUT1")],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [16]}],
    }
    cfg.update(extra)
    return json.dumps(cfg)


def test_model_names_cannot_traverse(explicit):
    client = grpcclient.InferenceServerClient(explicit.url)
    for name in ("../plain", "..", ".", "a/b", "/etc", "..\\x", ".hidden", "plain/../plain", ""):
        expect_invalid(lambda n=name: client.load_model(n))
        expect_invalid(lambda n=name: client.unload_model(n))
    client.load_model("enc_config")
    assert add(client, "enc_config") == [2.0 * i for i in range(16)]


def test_upload_paths_cannot_traverse(explicit, tmp_path):
    client = grpcclient.InferenceServerClient(explicit.url)
    model = add_model_bytes()
    outside = Path(tempfile.gettempdir()) / "tern-traversal-probe.onnx"
    outside.unlink(missing_ok=True)
    for key in ("file:../1/model.onnx", "file:1/../../model.onnx", "file:1/../model.onnx",
                f"file:../../../..{outside}", f"file:{outside}", "file:1/sub/model.onnx",
                "file:0/model.onnx", "file:1/.model.onnx", "file:model.onnx", "file:1\\..\\model.onnx"):
        with pytest.raises(InferenceServerException) as e:
            client.load_model("uploaded", config=upload_config("uploaded"), files={key: model})
        # Triton's poll failure, with the parameter named after it.
        assert e.value.status() == "StatusCode.INTERNAL", e.value
        msg = e.value.message()
        assert "failed to poll from model repository" in msg and "file:" in msg, msg
    assert not outside.exists()
    # Names inside the config may not lead out of the model directory either.
    for extra, field in [({"default_model_filename": "../../plain/1/model.onnx"}, "default_model_filename"),
                         ({"default_model_filename": "/etc/passwd"}, "default_model_filename"),
                         ({"output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [16],
                                       "label_filename": "../../../etc/passwd"}]}, "label_filename")]:
        msg = expect_invalid(lambda e=extra: client.load_model(
            "uploaded", config=upload_config("uploaded", **e), files={"file:1/model.onnx": model}))
        assert field in msg, msg
        msg = expect_invalid(lambda e=extra: client.load_model("plain", config=upload_config("plain", **e)))
        assert field in msg, msg
    # A well-formed upload, encrypted, loads and serves.
    enc = (Path(explicit.repos[0]) / "enc_config" / "1" / "model.onnx.enc").read_bytes()
    client.load_model("uploaded", config=upload_config("uploaded"), files={"file:3/model.onnx.enc": enc})
    assert add(client, "uploaded") == [2.0 * i for i in range(16)]
    client.unload_model("uploaded")


# === execution accelerator parameters (config that would reach native code) ====================


def accelerators(gpu: list[tuple[str, dict]]) -> dict:
    return {"optimization": {"execution_accelerators": {"gpu_execution_accelerator": [
        {"name": name, "parameters": params} for name, params in gpu]}}}


def test_accelerator_parameters_that_reach_native_code_are_refused(encrypted_repo, keys):
    """A RepositoryModelLoad config override may not hand ONNX Runtime a shared library to load,
    a raw address, a path out of the model's directories, an unknown or out-of-range option, or
    (for an encrypted model) a cache that would write the engine to disk. The check runs on a
    CPU-only node too: a GPU instance would pass these options to the CUDA / TensorRT providers.
    Each refusal names the model, the accelerator, the key and why; the node keeps serving."""
    plugin = Path(tempfile.gettempdir()) / "tern-accelerator-probe.so"
    srv = TernServer([encrypted_repo], ["--model-control-mode", "explicit", "--load-model", "plain",
                                        "--model-key-file", str(keys / "good")], label="accelerators").start()
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        expected = [2.0 * i for i in range(16)]
        assert add(client, "plain") == expected
        cases = [
            ("plain", "tensorrt", {"trt_extra_plugin_lib_paths": str(plugin)}, "trt_extra_plugin_lib_paths",
             "loads native code"),
            ("plain", "cuda", {"gpu_external_alloc": "140737488355328"}, "gpu_external_alloc", "raw address"),
            ("plain", "cuda", {"user_compute_stream": "4096"}, "user_compute_stream", "raw address"),
            ("plain", "tensorrt", {"trt_engine_cache_enable": "1", "trt_engine_cache_path": "/etc"},
             "trt_engine_cache_path", "outside"),
            ("plain", "tensorrt", {"trt_timing_cache_enable": "1", "trt_timing_cache_path": "../../../../tmp"},
             "trt_timing_cache_path", ".."),
            ("plain", "tensorrt", {"trt_engine_cache_enable": "1"}, "trt_engine_cache_enable",
             "--accelerator-cache-dir"),
            ("plain", "tensorrt", {"trt_dump_subgraphs": "1"}, "trt_dump_subgraphs", "working directory"),
            ("plain", "cuda", {"some_future_option": "1"}, "some_future_option", "unknown parameter"),
            ("plain", "cuda", {"gpu_mem_limit": str(1 << 62)}, "gpu_mem_limit", "at most"),
            ("plain", "tensorrt", {"trt_builder_optimization_level": "9"}, "trt_builder_optimization_level",
             "0 to 5"),
            ("enc_config", "tensorrt", {"trt_engine_cache_enable": "1"}, "trt_engine_cache_enable", "encrypted"),
            ("enc_config", "tensorrt", {"trt_dump_ep_context_model": "1"}, "trt_dump_ep_context_model",
             "encrypted"),
        ]
        for model, accelerator, params, key, says in cases:
            config = upload_config(model, **accelerators([(accelerator, params)]))
            with pytest.raises(InferenceServerException) as e:
                client.load_model(model, config=config)
            msg = e.value.message()
            for part in (f"model '{model}'", f"'{accelerator}'", key, says):
                assert part in msg, f"{key}: {part!r} not in {msg!r}"
            # The model that served before still serves, unchanged.
            assert client.is_model_ready("plain") and add(client, "plain") == expected, srv.log_tail()
        assert not plugin.exists()
        # The same keys at allowed values load (the options only take effect on a GPU instance).
        ok = accelerators([("tensorrt", {"precision_mode": "FP16", "trt_builder_optimization_level": "3",
                                         "trt_dump_subgraphs": "off"}),
                           ("cuda", {"gpu_mem_limit": str(1 << 30), "cudnn_conv_algo_search": "HEURISTIC"})])
        client.load_model("plain", config=upload_config("plain", **ok))
        client.load_model("enc_config", config=upload_config("enc_config", **ok))
        for model in ("plain", "enc_config"):
            assert add(client, model) == expected
    finally:
        assert srv.stop() == 0, srv.log_tail()


def test_accelerator_cache_dir_confines_paths(encrypted_repo, keys, tmp_path):
    """`--accelerator-cache-dir DIR` gives each model DIR/<model>: caches without a path go there,
    relative paths resolve there, the model's own directory is allowed for caches, anything else
    (another model's cache directory, a symlink out) is refused. The flag must name a directory."""
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    cache.mkdir()
    outside.mkdir()
    srv = TernServer([encrypted_repo], ["--model-control-mode", "explicit", "--load-model", "plain",
                                        "--accelerator-cache-dir", str(cache)], label="accelerator-cache").start()
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        expected = [2.0 * i for i in range(16)]
        for params in ({"trt_engine_cache_enable": "1"},
                       {"trt_engine_cache_enable": "1", "trt_engine_cache_path": "fp16/engines"},
                       {"trt_timing_cache_enable": "1", "trt_timing_cache_path": str(encrypted_repo / "plain" / "t")},
                       {"trt_dump_ep_context_model": "1", "trt_ep_context_file_path": "ctx.onnx"}):
            client.load_model("plain", config=upload_config("plain", **accelerators([("tensorrt", params)])))
            assert add(client, "plain") == expected
        for params, key in [({"trt_engine_cache_path": str(cache / "enc_config")}, "trt_engine_cache_path"),
                            ({"trt_ep_context_file_path": str(encrypted_repo / "plain" / "1" / "model.onnx")},
                             "trt_ep_context_file_path")]:
            with pytest.raises(InferenceServerException) as e:
                client.load_model("plain", config=upload_config("plain", **accelerators([("tensorrt", params)])))
            assert key in e.value.message() and "outside" in e.value.message(), e.value.message()
        (cache / "plain").symlink_to(outside, target_is_directory=True)
        with pytest.raises(InferenceServerException) as e:
            client.load_model("plain", config=upload_config(
                "plain", **accelerators([("tensorrt", {"trt_engine_cache_enable": "1"})])))
        msg = e.value.message()
        assert "trt_engine_cache_enable" in msg and str(outside) in msg and "outside" in msg, msg
        assert add(client, "plain") == expected
        assert list(outside.iterdir()) == []
    finally:
        assert srv.stop() == 0, srv.log_tail()
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    srv = TernServer([encrypted_repo], ["--accelerator-cache-dir", str(not_a_dir)], label="accelerator-cache-bad")
    proc = subprocess.run(srv.command(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--accelerator-cache-dir" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
