"""Model lifecycle through the real tritonclient: explicit load/unload, a config override and
uploaded model files (tritonclient's load_model(config=..., files=...)), the repository index,
and memory that does not grow across load/unload cycles (a tight per-cycle bound; the 50-cycle
measurement is benches/memory_cycles.py)."""
import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tern_clusterlib import tiny_add_inputs
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
    assert client.is_server_ready()
    client.unload_model("versioned_scale")
    assert not client.is_model_ready("versioned_scale")
    # Triton's strict readiness counts a version unloaded on purpose as fine (server.cc,
    # InferenceServer::IsReady skips state reason "unloaded").
    assert client.is_server_ready(), "an unload must not make the node not ready"
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
    assert client.is_server_ready(), "unloading an uploaded model must not make the node not ready"

    # A config or a file name the node cannot use fails the load in Triton's words, which
    # Triton's simple_grpc_model_control.py checks ("failed to load"; INTERNAL and "failed to
    # poll from model repository" for a file name longer than NAME_MAX), with the reason after.
    with pytest.raises(InferenceServerException) as e:
        client.load_model("versioned_scale", config="{ not json")
    assert e.value.status() == "StatusCode.INTERNAL"
    assert e.value.message().startswith(
        "failed to load 'versioned_scale', failed to poll from model repository: 'config' parameter"), e.value
    with pytest.raises(InferenceServerException) as e:
        client.load_model("versioned_scale", config="{}", files={"file:" + "A" * 256: b"a"})
    assert e.value.status() == "StatusCode.INTERNAL"
    assert "failed to poll from model repository" in e.value.message(), e.value
    assert client.is_server_live()
    with pytest.raises(InferenceServerException) as e:
        client.load_model("../outside")
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as e:
        client.load_model("no_such_model")
    assert e.value.status() == "StatusCode.INTERNAL"
    assert e.value.message() == "failed to load 'no_such_model', failed to poll from model repository"
    assert scale(client) == ("2", [2.0, 4.0, 6.0, 8.0]), "still serving after the errors"
    # Refused requests (bad JSON, bad name, no such model) change no model: still ready.
    assert client.is_server_ready()


# The memory test's cycles: (warm-up, measured). Over the warm-up glibc's arenas and ORT's caches
# settle (the after-unload RSS stops rising by about the 8th light_resnet50 cycle).
RESNET_CYCLES = (8, 16)
TINY_CYCLES = (30, 300)
# Largest growth per load/unload cycle allowed, KiB. Measured on the 2-core dev VM (allocator
# set as in the test, 6 runs): light_resnet50 3 to 15 KiB/cycle, tiny_add -0.3 to 0.1. With a
# leak put into the node's unload on purpose: of 32 KiB, 53 and 32 KiB/cycle measured; of 64 KiB,
# 73 and 68; of 512 KiB, 513 and 516.
RESNET_MAX_GROWTH_KIB = 128
TINY_MAX_GROWTH_KIB = 16


def growth_per_cycle_kib(rss_mib: list[float]) -> float:
    """Theil-Sen slope (the median of the slopes between every two cycles) of the after-unload
    RSS, KiB per cycle: a leak raises every sample after it, while a sample or a few sitting
    high for a while (memory freed late, kept until a later trim) barely move the median."""
    slopes = [(rss_mib[j] - rss_mib[i]) / (j - i) for i in range(len(rss_mib)) for j in range(i + 1, len(rss_mib))]
    return float(np.median(slopes)) * 1024


def test_unloading_frees_memory(model_repo, tmp_path, monkeypatch):
    """Load, infer, unload, many times, on nodes of its own.

    1. With glibc's defaults, as deployed: every unload of light_resnet50 gives its memory back
       (~250 MB loaded; the node's malloc_trim returns what glibc would keep).
    2. After a warm-up the after-unload RSS grows by less than RESNET_MAX_GROWTH_KIB per
       light_resnet50 cycle and TINY_MAX_GROWTH_KIB per tiny_add cycle (a small model: the
       bookkeeping of a load, measured finely). A session kept alive grows by 100 MB and more a
       cycle; a leaked arena, tensor or table entry by KBs to MBs.

    Part 2 runs its node with MALLOC_ARENA_MAX=2 and a fixed MALLOC_MMAP_THRESHOLD_ (64 KiB):
    with glibc's defaults, new arenas opening as ORT's threads come and go, and large buffers
    landing in the heap once the dynamic mmap threshold has risen, leave the after-unload RSS
    10 to 80 MB high for one cycle or ten, in steps and plateaus (measured: a standard
    deviation of 10 MB against 0.13 MB so). That is the allocator's cache, not a leak; memory
    leaked stays resident whatever the allocator's settings."""
    repo = copy_models(model_repo, tmp_path / "repo", ["light_resnet50", "tiny_add"])
    image = grpcclient.InferInput("input", [1, 3, 224, 224], "FP32")
    image.set_data_from_numpy(np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32))
    pair = []
    for name in ("INPUT0", "INPUT1"):
        x = grpcclient.InferInput(name, [1, 16], "FP32")
        x.set_data_from_numpy(np.ones((1, 16), np.float32))
        pair.append(x)

    def cycles(srv, model, inputs, count):
        client = grpcclient.InferenceServerClient(srv.url)
        loaded, unloaded = [], []
        for _ in range(count):
            client.load_model(model)
            assert client.infer(model, inputs).get_response().outputs
            loaded.append(rss_mb(srv.proc.pid))
            client.unload_model(model)
            unloaded.append(rss_mb(srv.proc.pid))
        return loaded, unloaded

    srv = TernServer([repo], ["--model-control-mode", "explicit"], log_dir=tmp_path, label="memory").start()
    try:
        loaded, unloaded = cycles(srv, "light_resnet50", [image], 3)
        assert all(l - u > 100 for l, u in zip(loaded, unloaded)), (loaded, unloaded)
    finally:
        assert srv.stop() == 0, srv.log_tail()

    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(64 << 10))
    srv = TernServer([repo], ["--model-control-mode", "explicit"], log_dir=tmp_path, label="memory-cycles").start()
    try:
        warm, measured = RESNET_CYCLES
        loaded, unloaded = cycles(srv, "light_resnet50", [image], warm + measured)
        assert all(l - u > 100 for l, u in zip(loaded, unloaded)), (loaded, unloaded)
        resnet = growth_per_cycle_kib(unloaded[warm:])
        warm, measured = TINY_CYCLES
        tiny = growth_per_cycle_kib(cycles(srv, "tiny_add", pair, warm + measured)[1][warm:])
        print(f"\nafter-unload RSS growth: light_resnet50 {resnet:.1f} KiB/cycle "
              f"({' '.join(f'{u:.1f}' for u in unloaded)} MB), tiny_add {tiny:.1f} KiB/cycle")
        assert resnet < RESNET_MAX_GROWTH_KIB, (resnet, unloaded)
        assert tiny < TINY_MAX_GROWTH_KIB, tiny
    finally:
        assert srv.stop() == 0, srv.log_tail()


# === readiness after unloads and failed loads =================================================


def tiny_add_ok(client, model="tiny_add"):
    assert client.infer(model, tiny_add_inputs()).as_numpy("OUTPUT0").tolist() == [[2.0] * 16]


def broken_model(repo, name="broken"):
    """A model directory whose only version has no model file: its load fails."""
    (repo / name / "1").mkdir(parents=True)
    config = (repo / "tiny_add" / "config.pbtxt").read_text().replace('name: "tiny_add"', f'name: "{name}"')
    (repo / name / "config.pbtxt").write_text(config)


def test_readiness_recovers_after_failed_load(model_repo, tmp_path):
    """Strict readiness: a failed load makes the node not ready only until that model is
    unloaded, or loaded successfully; unloads never do."""
    repo = copy_models(model_repo, tmp_path / "repo", ["tiny_add"])
    broken_model(repo)
    srv = TernServer([repo], ["--model-control-mode", "explicit"], log_dir=tmp_path, label="readiness").start()
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        assert client.is_server_ready(), "nothing loaded yet"
        client.load_model("tiny_add")
        assert client.is_server_ready()
        client.unload_model("tiny_add")
        assert client.is_server_ready(), "unloaded on purpose"
        client.load_model("tiny_add")
        tiny_add_ok(client)

        with pytest.raises(InferenceServerException) as e:
            client.load_model("broken")
        assert "broken" in e.value.message()
        assert not client.is_server_ready(), "a failed load makes the node not ready"
        client.unload_model("broken")
        assert client.is_server_ready(), "the failed model was unloaded"
        index = {(m["name"], m.get("version", "")): m for m in client.get_model_repository_index(as_json=True)["models"]}
        assert index[("broken", "1")]["state"] == "UNAVAILABLE" and index[("broken", "1")]["reason"] == "unloaded"

        with pytest.raises(InferenceServerException):
            client.load_model("broken")
        assert not client.is_server_ready()
        # Fixed on disk and loaded again: ready.
        (repo / "broken" / "1" / "model.onnx").write_bytes((repo / "tiny_add" / "1" / "model.onnx").read_bytes())
        client.load_model("broken")
        assert client.is_server_ready(), "the failed model now loaded"
        tiny_add_ok(client, "broken")

        # A model whose config cannot be read at all fails with no version; unloading it
        # still makes the node ready again.
        (repo / "unparsable").mkdir()
        (repo / "unparsable" / "config.pbtxt").write_text("max_batch_size: [ oops")
        with pytest.raises(InferenceServerException):
            client.load_model("unparsable")
        assert not client.is_server_ready()
        client.unload_model("unparsable")
        assert client.is_server_ready()

        # A failed reload of a serving model keeps the previous load serving: Triton stays
        # ready (the serving version remains READY; model_lifecycle.cc loads in background).
        bad = {"name": "tiny_add", "backend": "onnxruntime", "max_batch_size": 64,
               "input": [{"name": "NO_SUCH_INPUT", "data_type": "TYPE_FP32", "dims": [16]}],
               "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [16]}]}
        with pytest.raises(InferenceServerException):
            client.load_model("tiny_add", config=json.dumps(bad))
        tiny_add_ok(client)
        assert client.is_server_ready()
    finally:
        assert srv.stop() == 0, srv.log_tail()


def test_readiness_recovers_when_failed_model_is_removed(model_repo, tmp_path):
    """Poll mode: a model that fails to load makes the node not ready until its directory is
    removed."""
    repo = copy_models(model_repo, tmp_path / "repo", ["tiny_add"])
    broken_model(repo)
    srv = TernServer([repo], ["--model-control-mode", "poll", "--repository-poll-secs", "1"],
                     log_dir=tmp_path, label="poll-readiness").start()
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        tiny_add_ok(client)
        assert not client.is_server_ready(), "a model failed to load"
        import shutil
        import time

        shutil.rmtree(repo / "broken")
        deadline = time.monotonic() + 15
        while not client.is_server_ready() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.is_server_ready(), "the failed model's directory was removed"
        tiny_add_ok(client)
    finally:
        assert srv.stop() == 0, srv.log_tail()


def test_config_numbers_past_the_limits_are_refused(explicit):
    """A config override whose max_batch_size is near 2^31 (once: a ~100 GB statistics
    vector, the node killed) is refused with INVALID_ARGUMENT naming the field and the limit;
    the node keeps serving, with its memory unchanged."""
    srv, _ = explicit
    client = grpcclient.InferenceServerClient(srv.url)
    client.load_model("versioned_scale")
    before = rss_mb(srv.proc.pid)
    base = {
        "name": "versioned_scale", "backend": "onnxruntime", "max_batch_size": 8,
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
    }
    cases = [
        ({"max_batch_size": 2147483647}, "max_batch_size 2147483647 is over the limit of 65536"),
        ({"instance_group": [{"name": "g", "count": 1000000, "kind": "KIND_CPU"}]},
         "instance_group 'g' count 1000000 is over the limit of 256"),
        ({"model_warmup": [{"name": "w", "batch_size": 1, "count": 4000000000,
                            "inputs": {"INPUT0": {"data_type": "TYPE_FP32", "dims": [4], "zero_data": True}}}]},
         "model_warmup 'w' count 4000000000 is over the limit of 1000"),
        ({"dynamic_batching": {"priority_levels": 1000000, "default_priority_level": 1}},
         "dynamic_batching.priority_levels 1000000 is over the limit of 128"),
        ({"dynamic_batching": {"default_queue_policy": {"max_queue_size": 4000000000}}},
         "dynamic_batching.default_queue_policy.max_queue_size 4000000000 is over the limit of 65536"),
    ]
    for change, message in cases:
        with pytest.raises(InferenceServerException) as e:
            client.load_model("versioned_scale", config=json.dumps(dict(base, **change)))
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT", (change, e.value)
        assert "versioned_scale" in e.value.message() and message in e.value.message(), e.value.message()
    # A sequence batcher setting Tern does not serve is refused rather than ignored: the version
    # fails to load, as a Triton load whose config fails validation does.
    with pytest.raises(InferenceServerException) as e:
        client.load_model("versioned_scale", config=json.dumps(dict(
            base, sequence_batching={"max_sequence_idle_microseconds": 5000000, "iterative_sequence": True})))
    assert e.value.status() == "StatusCode.INTERNAL", e.value
    assert ("failed to load 'versioned_scale'" in e.value.message()
            and "sequence_batching.iterative_sequence is not supported" in e.value.message()), e.value.message()
    # The served load is untouched and the node is ready and serving.
    assert scale(client)[0] == "3"
    assert client.is_server_ready()
    assert rss_mb(srv.proc.pid) - before < 50, "memory did not grow with the refused numbers"
    client.unload_model("versioned_scale")


def test_stalled_repository_reads_do_not_stall_the_node(model_repo, tmp_path):
    """A model whose config.pbtxt cannot be read (a FIFO: the read blocks, as on a hung mount)
    stalls only the loads of that model: with more loads of it in flight than the node has
    async workers, the node still serves other requests (its repository reads run on blocking
    threads)."""
    import os
    import threading

    from tern_testlib import StalledFile

    repo = copy_models(model_repo, tmp_path / "repo", ["tiny_add"])
    (repo / "stalled" / "1").mkdir(parents=True)
    (repo / "stalled" / "config.pbtxt").write_text('name: "stalled"\n')
    srv = TernServer([repo], ["--model-control-mode", "explicit", "--load-model", "tiny_add"],
                     log_dir=tmp_path, label="stalled-repo").start()
    stalled = StalledFile(repo / "stalled" / "config.pbtxt")
    loads = []
    try:
        def load():
            try:
                grpcclient.InferenceServerClient(srv.url).load_model("stalled", client_timeout=60)
            except Exception:  # noqa: BLE001 - the model has no model file: its load fails
                pass

        for _ in range(min(64, 4 * (os.cpu_count() or 2) + 4)):
            t = threading.Thread(target=load, daemon=True)
            t.start()
            loads.append(t)
        import time

        time.sleep(1.0)
        assert any(t.is_alive() for t in loads), "the loads wait on the stalled read"
        client = grpcclient.InferenceServerClient(srv.url)
        out = client.infer("tiny_add", tiny_add_inputs(), client_timeout=10).as_numpy("OUTPUT0")
        assert out.tolist() == [[2.0] * 16], "the node serves while repository reads stall"
        assert client.is_server_live(client_timeout=10)
    finally:
        stalled.release(done=lambda: not any(t.is_alive() for t in loads))
        for t in loads:
            t.join(30)
        if srv.alive():
            srv.kill()
