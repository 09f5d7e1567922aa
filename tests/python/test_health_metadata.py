"""Health, server/model metadata, model configuration (incl. auto-complete), repository index,
statistics and shared-memory RPCs, compared with what a real Triton 2.51 answers."""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tern_testlib import (
    ALL_MODELS,
    IDENTITY_TYPES,
    TRITON_TYPES,
    expect_triton_error,
)

# Extensions a Triton-compatible server may advertise (Triton 2.51's list).
PLAUSIBLE_EXTENSIONS = {
    "classification", "sequence", "model_repository", "model_repository(unload_dependents)",
    "schedule_policy", "model_configuration", "system_shared_memory", "cuda_shared_memory",
    "binary_tensor_data", "parameters", "statistics", "trace", "logging",
}


def onnx_model_config(ref_config: dict) -> dict:
    """The reference config as Triton reports it for the same model on the ONNX Runtime backend."""
    cfg = copy.deepcopy(ref_config)
    cfg["platform"] = "onnxruntime_onnx"
    cfg["backend"] = "onnxruntime"
    cfg["default_model_filename"] = "model.onnx"
    return cfg


# === health ===================================================================================


def test_server_live(client):
    assert client.is_server_live() is True


def test_server_ready(client):
    assert client.is_server_ready() is True


@pytest.mark.parametrize("model", ALL_MODELS)
def test_model_ready(client, model):
    assert client.is_model_ready(model) is True


def test_model_ready_with_version(client):
    assert client.is_model_ready("tiny_add", "1") is True


def test_model_not_ready_unknown(client):
    # Triton answers OK with ready=false (not an error) for an unknown model.
    assert client.is_model_ready("no_such_model") is False


def test_model_not_ready_unknown_version(client):
    assert client.is_model_ready("tiny_add", "7") is False


# === server metadata ==========================================================================


def test_server_metadata(client):
    md = client.get_server_metadata(as_json=True)
    assert md["name"] == "tern"
    assert md.get("version"), md
    exts = md.get("extensions", [])
    assert exts, "no extensions advertised"
    assert set(exts) <= PLAUSIBLE_EXTENSIONS, set(exts) - PLAUSIBLE_EXTENSIONS
    assert len(exts) == len(set(exts)), exts
    # Each is exercised by this suite (sequence: test_sequence.py; shared memory:
    # test_shared_memory.py; trace and logging: test_trace_log_settings.py), so it must be
    # advertised; CUDA shared memory is not served on a node without a GPU.
    for ext in ["classification", "model_configuration", "sequence", "system_shared_memory",
                "binary_tensor_data", "statistics", "trace", "logging"]:
        assert ext in exts, (ext, exts)
    assert "cuda_shared_memory" not in exts


# === model metadata ===========================================================================


@pytest.mark.parametrize("model", ["tiny_add", "light_resnet50"])
def test_model_metadata_matches_reference(client, reference, model):
    expected = copy.deepcopy(reference[f"get_model_metadata.{model}"]["ok"])
    expected["platform"] = "onnxruntime_onnx"
    got = client.get_model_metadata(model, as_json=True)
    assert got == expected


def test_model_metadata_with_version(client, reference):
    got = client.get_model_metadata("tiny_add", "1", as_json=True)
    assert got["name"] == "tiny_add" and got["versions"] == ["1"]


@pytest.mark.parametrize("suffix", IDENTITY_TYPES)
def test_model_metadata_identity_types(client, suffix):
    dt = TRITON_TYPES[suffix][0]
    got = client.get_model_metadata(f"identity_{suffix}", as_json=True)
    assert got == {
        "name": f"identity_{suffix}",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "INPUT0", "datatype": dt, "shape": ["-1", "16"]}],
        "outputs": [{"name": "OUTPUT0", "datatype": dt, "shape": ["-1", "16"]}],
    }


def test_model_metadata_add_sub(client):
    got = client.get_model_metadata("add_int32", as_json=True)
    shape = ["-1", "16"]
    assert got["inputs"] == [
        {"name": "INPUT0", "datatype": "INT32", "shape": shape},
        {"name": "INPUT1", "datatype": "INT32", "shape": shape},
    ]
    assert got["outputs"] == [
        {"name": "OUTPUT0", "datatype": "INT32", "shape": shape},
        {"name": "OUTPUT1", "datatype": "INT32", "shape": shape},
    ]


def test_model_metadata_no_batching(client):
    # max_batch_size 0: no batch dimension is prepended.
    got = client.get_model_metadata("string_identity", as_json=True)
    assert got["inputs"] == [{"name": "INPUT0", "datatype": "BYTES", "shape": ["-1"]}]
    assert got["outputs"] == [{"name": "OUTPUT0", "datatype": "BYTES", "shape": ["-1"]}]


def test_model_metadata_unknown(client, reference):
    ref = reference["get_model_metadata.missing"]["error"]
    msg = expect_triton_error(lambda: client.get_model_metadata("no_such_model"), ref["status"])
    assert msg == ref["message"]


def test_model_metadata_unknown_version(client):
    msg = expect_triton_error(lambda: client.get_model_metadata("tiny_add", "7"), "StatusCode.NOT_FOUND")
    assert msg == "Request for unknown model: 'tiny_add' version 7 is not found"


# === model config =============================================================================


def test_model_config_tiny_add_matches_reference(client, reference):
    expected = onnx_model_config(reference["get_model_config.tiny_add"]["ok"]["config"])
    got = client.get_model_config("tiny_add", as_json=True)["config"]
    assert got == expected


def test_model_config_light_resnet50_matches_reference(client, reference):
    expected = onnx_model_config(reference["get_model_config.light_resnet50"]["ok"]["config"])
    expected["output"][0]["label_filename"] = "labels.txt"
    got = client.get_model_config("light_resnet50", as_json=True)["config"]
    assert got == expected


def test_model_config_unknown(client, reference):
    ref = reference["get_model_config.missing"]["error"]
    msg = expect_triton_error(lambda: client.get_model_config("no_such_model"), ref["status"])
    assert msg == ref["message"]


def test_model_config_name_filled_from_directory(client):
    # identity_* configs have no `name:`; Triton fills it from the directory name, and
    # `backend: "onnxruntime"` implies platform "onnxruntime_onnx".
    cfg = client.get_model_config("identity_fp32", as_json=True)["config"]
    assert cfg["name"] == "identity_fp32"
    assert cfg["platform"] == "onnxruntime_onnx"
    assert cfg["backend"] == "onnxruntime"
    assert cfg["max_batch_size"] == 8
    assert cfg["input"] == [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": ["16"]}]
    assert cfg["output"] == [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": ["16"]}]
    assert cfg["instance_group"] == [{"name": "identity_fp32_0", "count": 1, "kind": "KIND_CPU"}]
    assert "dynamic_batching" not in cfg


def test_model_config_platform_implies_backend(client):
    cfg = client.get_model_config("add_fp16", as_json=True)["config"]
    assert cfg["platform"] == "onnxruntime_onnx"
    assert cfg["backend"] == "onnxruntime"
    # `dynamic_batching {}`: Triton's normalization sets preferred_batch_size to [max_batch_size].
    assert cfg["dynamic_batching"] == {"preferred_batch_size": [8]}
    assert [i["data_type"] for i in cfg["input"]] == ["TYPE_FP16", "TYPE_FP16"]
    assert [o["name"] for o in cfg["output"]] == ["OUTPUT0", "OUTPUT1"]


def test_model_config_string_no_batching(client):
    cfg = client.get_model_config("string_identity", as_json=True)["config"]
    assert cfg.get("max_batch_size", 0) == 0
    assert cfg["input"] == [{"name": "INPUT0", "data_type": "TYPE_STRING", "dims": ["-1"]}]


def test_autocomplete_dynamic_batch_model(client):
    """light_densenet121 has no config.pbtxt: Triton's ONNX auto-complete fills it in."""
    cfg = client.get_model_config("light_densenet121", as_json=True)["config"]
    assert cfg["name"] == "light_densenet121"
    assert cfg["platform"] == "onnxruntime_onnx"
    assert cfg["backend"] == "onnxruntime"
    assert cfg["default_model_filename"] == "model.onnx"
    assert cfg["max_batch_size"] == 4
    assert cfg["dynamic_batching"] == {"preferred_batch_size": [4]}
    assert cfg["input"] == [{"name": "data_0", "data_type": "TYPE_FP32", "dims": ["3", "224", "224"]}]
    assert cfg["output"] == [{"name": "fc6_1", "data_type": "TYPE_FP32", "dims": ["1000", "1", "1"]}]
    assert cfg["version_policy"] == {"latest": {"num_versions": 1}}
    # Triton adds one group named after the model (model_config_utils.cc) with two CPU instances,
    # the onnxruntime backend default.
    assert cfg["instance_group"] == [{"name": "light_densenet121", "count": 2, "kind": "KIND_CPU"}]
    md = client.get_model_metadata("light_densenet121", as_json=True)
    assert md["inputs"] == [{"name": "data_0", "datatype": "FP32", "shape": ["-1", "3", "224", "224"]}]
    assert md["outputs"] == [{"name": "fc6_1", "datatype": "FP32", "shape": ["-1", "1000", "1", "1"]}]


def test_autocomplete_squeezenet(client):
    cfg = client.get_model_config("light_squeezenet", as_json=True)["config"]
    assert cfg["max_batch_size"] == 4
    assert cfg["input"] == [{"name": "data_0", "data_type": "TYPE_FP32", "dims": ["3", "224", "224"]}]
    assert cfg["output"] == [{"name": "softmaxout_1", "data_type": "TYPE_FP32", "dims": ["1000", "1", "1"]}]


def test_autocomplete_fixed_batch_model(client):
    """light_inception_v1: first dim fixed at 1 -> no batching, full dims; its IR-3 graph lists
    every initializer as a graph input, and those are not model inputs."""
    cfg = client.get_model_config("light_inception_v1", as_json=True)["config"]
    assert cfg.get("max_batch_size", 0) == 0
    assert "dynamic_batching" not in cfg
    assert cfg["input"] == [{"name": "data_0", "data_type": "TYPE_FP32", "dims": ["1", "3", "224", "224"]}]
    assert cfg["output"] == [{"name": "prob_1", "data_type": "TYPE_FP32", "dims": ["1", "1000"]}]
    md = client.get_model_metadata("light_inception_v1", as_json=True)
    assert md["inputs"] == [{"name": "data_0", "datatype": "FP32", "shape": ["1", "3", "224", "224"]}]


# === repository index =========================================================================


def test_repository_index(client):
    index = client.get_model_repository_index(as_json=True)
    models = index.get("models", [])
    by_name = {m["name"]: m for m in models}
    assert sorted(by_name) == ALL_MODELS
    for m in models:
        # versioned_scale serves versions 1-3 (version_policy all): one row per version.
        expected_version = m["version"] if m["name"] == "versioned_scale" else "1"
        assert m == {"name": m["name"], "version": expected_version, "state": "READY"}, m
    scale_versions = [m["version"] for m in models if m["name"] == "versioned_scale"]
    assert scale_versions == ["1", "2", "3"]
    assert [m["name"] for m in models] == sorted(m["name"] for m in models)


# === statistics ===============================================================================


def test_statistics_after_inference(client):
    x = np.ones((2, 16), np.float32)
    inputs = [grpcclient.InferInput("INPUT0", [2, 16], "FP32"), grpcclient.InferInput("INPUT1", [2, 16], "FP32")]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(x)
    before = client.get_inference_statistics("tiny_add", as_json=True)["model_stats"][0]
    client.infer("tiny_add", inputs)
    # Statistics may be recorded just after the response is sent (Triton does so): poll briefly.
    deadline = time.monotonic() + 5
    while True:
        after = client.get_inference_statistics("tiny_add", as_json=True)["model_stats"][0]
        if int(after.get("inference_count", 0)) >= int(before.get("inference_count", 0)) + 2:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert after["name"] == "tiny_add" and after["version"] == "1"
    assert int(after["inference_count"]) >= int(before.get("inference_count", 0)) + 2
    assert int(after["execution_count"]) >= int(before.get("execution_count", 0)) + 1
    success = after["inference_stats"]["success"]
    assert int(success["count"]) >= int(before["inference_stats"].get("success", {}).get("count", 0)) + 1
    assert int(success["ns"]) > 0
    assert int(after["last_inference"]) > 0


def test_statistics_unknown_model(client, reference):
    ref = reference["get_inference_statistics.missing"]["error"]
    msg = expect_triton_error(lambda: client.get_inference_statistics("no_such_model"), ref["status"])
    assert msg == ref["message"]


# === shared memory ============================================================================

# Triton's refusal while --allow-client-shm is false, its default (server src/common.h
# kClientShmDisabledErrorStr, TRITONSERVER_ERROR_UNSUPPORTED: gRPC UNIMPLEMENTED, HTTP 501).
SHM_DISABLED = "Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable."


def test_shared_memory_as_triton_answers_with_client_shm_off(client, reference):
    # Status is not guarded by the flag: no region, as recorded from Triton 2.51.
    assert client.get_system_shared_memory_status(as_json=True) == reference["get_system_shared_memory_status"]["ok"]
    assert client.get_cuda_shared_memory_status(as_json=True) == reference["get_cuda_shared_memory_status"]["ok"]
    msg = expect_triton_error(lambda: client.get_system_shared_memory_status("in0"), "StatusCode.NOT_FOUND")
    assert msg == "Unable to find system shared memory region: 'in0'"
    msg = expect_triton_error(lambda: client.get_cuda_shared_memory_status("in0"), "StatusCode.NOT_FOUND")
    assert msg == "Unable to find cuda shared memory region: 'in0'"
    # Registering and unregistering (all regions or one) are refused, CUDA's too (Triton's GPU
    # build, with or without a GPU present).
    for call in [
        lambda: client.register_system_shared_memory("in0", "/tern_no_such_shm", 64),
        lambda: client.unregister_system_shared_memory(),
        lambda: client.unregister_system_shared_memory("in0"),
        lambda: client.register_cuda_shared_memory("in0", b"\x00" * 64, 0, 64),
        lambda: client.unregister_cuda_shared_memory(),
        lambda: client.unregister_cuda_shared_memory("in0"),
    ]:
        assert expect_triton_error(call, "StatusCode.UNIMPLEMENTED") == SHM_DISABLED


def test_statistics_unknown_version(client):
    msg = expect_triton_error(lambda: client.get_inference_statistics("tiny_add", "7"), "StatusCode.INVALID_ARGUMENT")
    assert msg == "requested model version is not available for model 'tiny_add'"
