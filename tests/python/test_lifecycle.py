"""Model lifecycle through the real tritonclient: explicit load/unload, a config override and
uploaded model files (tritonclient's load_model(config=..., files=...)), the repository index,
and memory that does not grow across load/unload cycles (a generous bound; the 50-cycle
measurement is benches/memory_cycles.py)."""
import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tern_testlib import TernServer, copy_models


@pytest.fixture(scope="module")
def explicit(model_repo, tmp_path_factory):
    repo = copy_models(model_repo, tmp_path_factory.mktemp("explicit_repo"), ["versioned_scale", "light_resnet50"])
    srv = TernServer([repo], ["--model-control-mode", "explicit"], label="explicit").start()
    yield srv, repo
    assert srv.stop() == 0, srv.log_tail()


def scale(client, model="versioned_scale", version=""):
    inp = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    inp.set_data_from_numpy(np.array([[1, 2, 3, 4]], dtype=np.float32))
    res = client.infer(model, [inp], model_version=version)
    return res.get_response().model_version, res.as_numpy("OUTPUT0").tolist()[0]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def test_load_infer_unload(explicit):
    srv, _ = explicit
    client = grpcclient.InferenceServerClient(srv.url)
    assert not client.is_model_ready("versioned_scale")
    client.load_model("versioned_scale")
    assert client.is_model_ready("versioned_scale")
    assert scale(client) == ("3", [3.0, 6.0, 9.0, 12.0])
    assert scale(client, version="1") == ("1", [1.0, 2.0, 3.0, 4.0])  # versioned_scale serves all
    index = {(m["name"], m.get("version", "")): m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert index[("versioned_scale", "3")]["state"] == "READY"
    client.unload_model("versioned_scale")
    assert not client.is_model_ready("versioned_scale")
    with pytest.raises(InferenceServerException) as e:
        scale(client)
    assert "has no available versions" in e.value.message()
    index = {(m["name"], m.get("version", "")): m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert index[("versioned_scale", "3")]["state"] == "UNAVAILABLE"
    assert index[("versioned_scale", "3")]["reason"] == "unloaded"


def test_config_override_and_uploaded_files(explicit):
    srv, repo = explicit
    client = grpcclient.InferenceServerClient(srv.url)
    config = {
        "name": "versioned_scale", "backend": "onnxruntime", "max_batch_size": 8,
        "version_policy": {"specific": {"versions": [2]}},
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
    }
    client.load_model("versioned_scale", config=json.dumps(config))
    assert scale(client) == ("2", [2.0, 4.0, 6.0, 8.0])
    cfg = client.get_model_config("versioned_scale", as_json=True)["config"]
    assert cfg["version_policy"] == {"specific": {"versions": ["2"]}}

    model_bytes = (repo / "versioned_scale" / "1" / "model.onnx").read_bytes()
    uploaded = dict(config, name="uploaded_scale", version_policy={"latest": {"num_versions": 1}})
    client.load_model("uploaded_scale", config=json.dumps(uploaded), files={"file:7/model.onnx": model_bytes})
    assert scale(client, model="uploaded_scale") == ("7", [1.0, 2.0, 3.0, 4.0])
    client.unload_model("uploaded_scale")

    with pytest.raises(InferenceServerException) as e:
        client.load_model("versioned_scale", config="{ not json")
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as e:
        client.load_model("../outside")
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as e:
        client.load_model("no_such_model")
    assert e.value.status() == "StatusCode.INTERNAL"
    assert e.value.message() == "failed to load 'no_such_model', failed to poll from model repository"
    assert scale(client) == ("2", [2.0, 4.0, 6.0, 8.0]), "still serving after the errors"


def test_unloading_frees_memory(explicit):
    """Each unload gives light_resnet50's memory back (~250 MB loaded), and 8 cycles leave the
    after-unload RSS within 40 MB of the first cycle's (benches/memory_cycles.py runs 50).

    A single cycle's after-unload RSS can sit 10 to 70 MB high and drop back at the next unload
    (seen in CI and in both 50-cycle bench runs of 2026-11-23), most likely memory freed just
    after that unload's malloc_trim, kept by the process until the next trim. A leak grows, so
    the trend is judged on the lowest of the last three cycles: a session or model kept alive
    (100 MB and more per cycle) still fails."""
    srv, _ = explicit
    client = grpcclient.InferenceServerClient(srv.url)
    loaded, unloaded = [], []
    for _ in range(8):
        client.load_model("light_resnet50")
        assert client.is_model_ready("light_resnet50")
        loaded.append(rss_mb(srv.proc.pid))
        client.unload_model("light_resnet50")
        unloaded.append(rss_mb(srv.proc.pid))
    assert all(l - u > 100 for l, u in zip(loaded, unloaded)), (loaded, unloaded)
    assert min(unloaded[-3:]) - unloaded[0] < 40, unloaded
