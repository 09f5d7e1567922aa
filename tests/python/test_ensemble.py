"""Triton ensembles end to end with tritonclient (gRPC and HTTP): `platform: "ensemble"` with
`ensemble_scheduling` steps over other models of the repository.

What is matched (triton-inference-server/core): an explicit load of an ensemble loads its
composing models (src/model_repository_manager/model_repository_manager.cc, `PollModels`); an
ensemble is refused at load with Triton's words when a composing model is missing
(`ConnectDependencyGraph`), when the graph is invalid (src/model_config_utils.cc,
`ValidateEnsembleSchedulingConfig`), when it disagrees with a step's config
(src/ensemble_scheduler/ensemble_utils.cc), or when ensembles depend on each other in a cycle
(`CircularDependencyCheck`); a step's failure fails the request, prefixed "in ensemble '<name>'"
(src/ensemble_scheduler/ensemble_scheduler.cc, `FinishEnsemble`); the ensemble's statistics
count one execution per request, and each composing model keeps its own, so a step with dynamic
batching batches concurrent ensemble requests. Unloading a composing model unloads the
ensembles that run it.

Also (issue 22): an unload with `unload_dependents` takes the ensemble's composing models that
nothing else needs (model_repository_manager.cc, `DependencyGraph::RemoveNodes`); an ensemble
with `response_cache { enable: true }` answers repeated requests from the cache without running
its steps (src/ensemble_scheduler/ensemble_scheduler.cc, `CacheLookUp`,
`CacheEnsembleTopLevelRequest`) until a step reloads; a request timeout or a client's deadline
while a step is queued ends the ensemble request and takes the step out of its queue.

One explicit-mode node for the module (with a response cache), over a copy of the example
ensemble and its steps plus ensembles written here.
"""
import json
import re
import sys
import urllib.request
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tern_testlib import ROOT, TernServer, copy_models

sys.path.insert(0, str(ROOT / "examples"))
from build_ensemble import MEAN, STD, reference  # noqa: E402

STEPS = ["ens_preprocess", "tiny_add", "ens_postprocess"]


def ensemble_config(name, steps, inputs=None, outputs=None, max_batch_size=8):
    """An ensemble's config.pbtxt; `steps` are (model, {input: tensor}, {output: tensor})."""
    inputs = inputs or [("RAW", "TYPE_FP32", [16])]
    outputs = outputs or [("OUT", "TYPE_FP32", [16])]

    def io(tensors):
        return ", ".join(f'{{ name: "{n}" data_type: {t} dims: {json.dumps(d)} }}' for n, t, d in tensors)

    def step(model, ins, outs):
        maps = "".join(f' input_map {{ key: "{k}" value: "{v}" }}' for k, v in ins.items())
        maps += "".join(f' output_map {{ key: "{k}" value: "{v}" }}' for k, v in outs.items())
        return f'{{ model_name: "{model}" model_version: -1{maps} }}'

    return (
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {max_batch_size}\n'
        f"input [ {io(inputs)} ]\noutput [ {io(outputs)} ]\n"
        f"ensemble_scheduling {{ step [ {', '.join(step(*s) for s in steps)} ] }}\n"
    )


INVALID = {
    # A composing model no repository holds.
    "ens_missing_step": ensemble_config("ens_missing_step", [("no_such_model", {"INPUT0": "RAW"}, {"OUTPUT0": "OUT"})]),
    # tiny_add's INPUT1 is not mapped.
    "ens_unmapped": ensemble_config("ens_unmapped", [("tiny_add", {"INPUT0": "RAW"}, {"OUTPUT0": "OUT"})]),
    # RAW is INT32 but ens_preprocess takes FP32.
    "ens_dtype": ensemble_config(
        "ens_dtype", [("ens_preprocess", {"INPUT0": "RAW"}, {"OUTPUT0": "OUT"})], inputs=[("RAW", "TYPE_INT32", [16])]
    ),
    # Two ensembles that run each other.
    "ens_cycle_a": ensemble_config("ens_cycle_a", [("ens_cycle_b", {"RAW": "RAW"}, {"OUT": "OUT"})]),
    "ens_cycle_b": ensemble_config("ens_cycle_b", [("ens_cycle_a", {"RAW": "RAW"}, {"OUT": "OUT"})]),
    # Valid: RAW [-1] fits ens_preprocess's [16] at load; a request of another width fails at the step.
    "ens_variable": ensemble_config(
        "ens_variable", [("ens_preprocess", {"INPUT0": "RAW"}, {"OUTPUT0": "OUT"})],
        inputs=[("RAW", "TYPE_FP32", [-1])], outputs=[("OUT", "TYPE_FP32", [-1])],
    ),
}


# ens_preprocess with a 5 s queue delay unless 8 rows arrive, and request timeouts honoured:
# a one-row request waits in its queue.
SLOW_STEP = """name: "ens_slow_pre"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
dynamic_batching {
  preferred_batch_size: [ 8 ]
  max_queue_delay_microseconds: 5000000
  default_queue_policy { allow_timeout_override: true }
}
"""

MORE = {
    "ens_slow": ensemble_config("ens_slow", [("ens_slow_pre", {"INPUT0": "RAW"}, {"OUTPUT0": "OUT"})]),
}


@pytest.fixture(scope="module")
def node(model_repo, tmp_path_factory):
    repo = copy_models(model_repo, tmp_path_factory.mktemp("ensemble_repo"), STEPS + ["ensemble_pipeline"])
    for name, config in {**INVALID, **MORE}.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(config)
    (repo / "ens_cached" / "1").mkdir(parents=True)
    pipeline = (repo / "ensemble_pipeline" / "config.pbtxt").read_text()
    (repo / "ens_cached" / "config.pbtxt").write_text(
        pipeline.replace('name: "ensemble_pipeline"', 'name: "ens_cached"') + "response_cache { enable: true }\n"
    )
    (repo / "ens_slow_pre" / "1").mkdir(parents=True)
    (repo / "ens_slow_pre" / "1" / "model.onnx").write_bytes((repo / "ens_preprocess" / "1" / "model.onnx").read_bytes())
    (repo / "ens_slow_pre" / "config.pbtxt").write_text(SLOW_STEP)
    srv = TernServer(
        [repo], ["--model-control-mode", "explicit", "--cache-config", "local,size=1048576"],
        log_dir=tmp_path_factory.mktemp("ensemble_logs"), label="ensemble",
    ).start()
    client = grpcclient.InferenceServerClient(srv.url)
    # Nothing is loaded yet: loading the ensemble loads its steps.
    assert not any(client.is_model_ready(m) for m in STEPS)
    client.load_model("ensemble_pipeline")
    yield srv, client
    client.close()
    assert srv.stop() == 0, srv.log_tail()


def raw_batch(rows, seed=0):
    return np.random.default_rng(seed).normal(size=(rows, 16)).astype(np.float32)


def grpc_infer(client, raw, model="ensemble_pipeline", outputs=None):
    inp = grpcclient.InferInput("RAW", list(raw.shape), "FP32")
    inp.set_data_from_numpy(raw)
    wanted = [grpcclient.InferRequestedOutput(o) for o in outputs] if outputs else None
    return client.infer(model, [inp], outputs=wanted)


def stats(client, model):
    (s,) = client.get_inference_statistics(model, as_json=True)["model_stats"]
    return int(s.get("inference_count", 0)), int(s.get("execution_count", 0)), s


def test_loading_the_ensemble_loaded_its_steps(node):
    _, client = node
    assert client.is_model_ready("ensemble_pipeline")
    assert all(client.is_model_ready(m) for m in STEPS)
    meta = client.get_model_metadata("ensemble_pipeline", as_json=True)
    assert meta["platform"] == "ensemble"
    assert [o["name"] for o in meta["outputs"]] == ["PROBABILITIES", "CLASS"]


def test_outputs_equal_numpy_over_grpc_and_http(node):
    srv, client = node
    raw = raw_batch(5, seed=1)
    want_probs, want_class = reference(raw)
    res = grpc_infer(client, raw)
    np.testing.assert_allclose(res.as_numpy("PROBABILITIES"), want_probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(res.as_numpy("CLASS"), want_class)
    assert res.get_response().model_name == "ensemble_pipeline"

    http = httpclient.InferenceServerClient(srv.http_addr)
    inp = httpclient.InferInput("RAW", list(raw.shape), "FP32")
    inp.set_data_from_numpy(raw, binary_data=True)
    res = http.infer("ensemble_pipeline", [inp], outputs=[httpclient.InferRequestedOutput("CLASS", binary_data=False)])
    np.testing.assert_array_equal(res.as_numpy("CLASS"), want_class)
    assert res.as_numpy("PROBABILITIES") is None, "only the output asked for comes back"
    http.close()


def test_statistics_of_the_ensemble_and_of_each_step(node):
    _, client = node
    before = {m: stats(client, m)[:2] for m in STEPS + ["ensemble_pipeline"]}
    for rows in (1, 3):
        grpc_infer(client, raw_batch(rows))
    after = {m: stats(client, m)[:2] for m in STEPS + ["ensemble_pipeline"]}
    # Triton: one execution per ensemble request, inferences by its batch size.
    assert after["ensemble_pipeline"][0] - before["ensemble_pipeline"][0] == 4
    assert after["ensemble_pipeline"][1] - before["ensemble_pipeline"][1] == 2
    for m in STEPS:
        assert after[m][0] - before[m][0] == 4, m
    _, _, s = stats(client, "ensemble_pipeline")
    assert int(s["inference_stats"]["success"]["count"]) >= 2


def test_concurrent_requests_are_batched_at_a_step_with_dynamic_batching(node):
    _, client = node
    inference0, execution0, _ = stats(client, "ens_preprocess")
    raw = raw_batch(1, seed=3)
    want = reference(raw)[1]
    results, errors = [], []
    lock, done = threading.Lock(), threading.Event()

    def callback(result, error):
        with lock:
            (errors if error else results).append(error or result)
            if len(results) + len(errors) == 8:
                done.set()

    inp = grpcclient.InferInput("RAW", [1, 16], "FP32")
    inp.set_data_from_numpy(raw)
    for _ in range(8):
        client.async_infer("ensemble_pipeline", [inp], callback)
    assert done.wait(timeout=30), f"{len(results)} answers of 8"
    assert not errors, errors
    assert all(np.array_equal(r.as_numpy("CLASS"), want) for r in results)
    inference, execution, _ = stats(client, "ens_preprocess")
    assert inference - inference0 == 8
    assert execution - execution0 < 8, "ens_preprocess (20 ms queue delay) batched none of them"


def metrics(srv) -> str:
    addr = next(m.group(1) for line in srv.lines if (m := re.search(r'metrics(?:=|"\s*:\s*")([0-9.]+:\d+)', line)))
    host, port = addr.rsplit(":", 1)
    with urllib.request.urlopen(f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/metrics") as r:
        return r.read().decode()


def test_metrics_carry_the_ensemble_and_each_step_under_their_names(node):
    srv, client = node
    grpc_infer(client, raw_batch(2))
    text = metrics(srv)
    for model in ["ensemble_pipeline", *STEPS]:
        line = next((x for x in text.splitlines() if x.startswith(f'nv_inference_count{{model="{model}",')), None)
        assert line is not None and float(line.split()[-1]) >= 2, (model, line)
    executions = next(x for x in text.splitlines() if x.startswith('nv_inference_exec_count{model="ensemble_pipeline",'))
    assert float(executions.split()[-1]) >= 1


@pytest.mark.parametrize(
    "model, words",
    [
        ("ens_missing_step", "ensemble ens_missing_step contains models that are not available or ambiguous: no_such_model"),
        ("ens_unmapped", "in ensemble ens_unmapped, input INPUT1 in model tiny_add is not mapped to any ensemble tensors"),
        (
            "ens_dtype",
            "in ensemble ens_dtype, ensemble tensor RAW: inconsistent data type: TYPE_INT32 is inferred from model "
            "ens_dtype while TYPE_FP32 is inferred from model ens_preprocess",
        ),
        ("ens_cycle_a", "circular dependency between ensembles: ens_cycle_a -> ... -> ens_cycle_b -> ens_cycle_a"),
    ],
)
def test_invalid_ensembles_are_refused_at_load(node, model, words):
    _, client = node
    with pytest.raises(InferenceServerException) as err:
        client.load_model(model)
    assert words in err.value.message(), err.value.message()
    assert not client.is_model_ready(model)
    index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert words in index[model].get("reason", ""), index[model]


def test_a_step_failure_names_the_step(node):
    _, client = node
    client.load_model("ens_variable")
    ok = grpc_infer(client, raw_batch(2), model="ens_variable")
    np.testing.assert_allclose(ok.as_numpy("OUT"), (raw_batch(2) - MEAN) / STD, rtol=1e-6)
    inp = grpcclient.InferInput("RAW", [1, 8], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 8), dtype=np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("ens_variable", [inp])
    message = err.value.message()
    assert message.startswith("in ensemble 'ens_variable', step 0 (model 'ens_preprocess'): "), message
    assert "unexpected shape for input 'INPUT0' for model 'ens_preprocess'" in message
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_unloading_a_step_unloads_the_ensemble_and_loading_it_again_brings_both_back(node):
    _, client = node
    client.unload_model("ens_postprocess")
    assert not client.is_model_ready("ensemble_pipeline")
    with pytest.raises(InferenceServerException):
        grpc_infer(client, raw_batch(1))
    # A step's reload keeps the ensemble serving (the step is looked up per request).
    client.load_model("ensemble_pipeline")
    assert client.is_model_ready("ens_postprocess")
    client.load_model("ens_preprocess")
    res = grpc_infer(client, raw_batch(2, seed=5))
    np.testing.assert_array_equal(res.as_numpy("CLASS"), reference(raw_batch(2, seed=5))[1])


def test_through_a_router_the_lazy_load_of_an_ensemble_loads_its_steps(model_repo, tmp_path):
    from tern_clusterlib import Cluster

    repo = copy_models(model_repo, tmp_path / "repo", STEPS + ["ensemble_pipeline"])
    (tmp_path / "logs").mkdir()
    with Cluster(repo, 1, tmp_path / "logs") as cluster:
        client = cluster.client()
        raw = raw_batch(2, seed=9)
        res = grpc_infer(client, raw)
        np.testing.assert_array_equal(res.as_numpy("CLASS"), reference(raw)[1])
        assert {"ensemble_pipeline", *STEPS} <= cluster.nodes[0].ready_models()
        # The router passes `unload_dependents` on: the steps, loaded only for the ensemble, go.
        client.unload_model("ensemble_pipeline", unload_dependents=True)
        assert not ({"ensemble_pipeline", *STEPS} & cluster.nodes[0].ready_models())
        client.close()


def test_a_step_reloaded_so_that_the_ensemble_no_longer_fits_unloads_it_with_the_reason(node):
    _, client = node
    client.load_model("ensemble_pipeline")
    narrow = {
        "name": "ens_postprocess", "backend": "onnxruntime", "max_batch_size": 4,
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [16]}],
        "output": [{"name": "PROBS", "data_type": "TYPE_FP32", "dims": [16]},
                   {"name": "CLASS", "data_type": "TYPE_INT64", "dims": [1]}],
    }
    client.load_model("ens_postprocess", config=json.dumps(narrow))
    assert not client.is_model_ready("ensemble_pipeline")
    index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert ("ensemble ensemble_pipeline allows maximum batch size 8, but it contains model ens_postprocess which "
            "only allows maximum batch size to be 4") in index["ensemble_pipeline"]["reason"], index["ensemble_pipeline"]
    client.load_model("ens_postprocess")
    client.load_model("ensemble_pipeline")
    assert client.is_model_ready("ensemble_pipeline")


def ready(client, *models):
    return {m: client.is_model_ready(m) for m in models}


def test_unload_dependents_takes_the_steps_nothing_else_needs(node):
    srv, client = node
    # Start over: a plain unload forgets that a model was loaded by name.
    for model in ["ensemble_pipeline", "ens_variable", *STEPS]:
        client.unload_model(model)
    client.load_model("ensemble_pipeline")  # its steps load as composing models
    client.load_model("ens_variable")  # runs ens_preprocess too
    client.load_model("tiny_add")  # now loaded by name
    http = httpclient.InferenceServerClient(srv.http_addr)
    http.unload_model("ensemble_pipeline", unload_dependents=True)
    assert ready(client, "ensemble_pipeline", "ens_postprocess", "tiny_add", "ens_preprocess", "ens_variable") == {
        "ensemble_pipeline": False,
        "ens_postprocess": False,  # loaded only for the ensemble
        "tiny_add": True,  # loaded by name
        "ens_preprocess": True,  # ens_variable still runs it
        "ens_variable": True,
    }
    client.unload_model("ens_variable", unload_dependents=True)
    assert ready(client, "ens_variable", "ens_preprocess") == {"ens_variable": False, "ens_preprocess": False}
    http.close()
    # Without the parameter the composing models stay, as in Triton.
    client.load_model("ensemble_pipeline")
    client.unload_model("ensemble_pipeline")
    assert all(ready(client, *STEPS).values())
    assert "model_repository(unload_dependents)" in client.get_server_metadata(as_json=True)["extensions"]
    client.load_model("ensemble_pipeline")


def test_a_cached_ensemble_answers_a_repeated_request_without_running_its_steps(node):
    srv, client = node
    client.load_model("ens_cached")
    raw = raw_batch(2, seed=21)
    want = reference(raw)[1]
    first = grpc_infer(client, raw, model="ens_cached")
    steps_before = {m: stats(client, m)[0] for m in STEPS}
    _, executions_before, _ = stats(client, "ens_cached")
    second = grpc_infer(client, raw, model="ens_cached")
    http = httpclient.InferenceServerClient(srv.http_addr)
    inp = httpclient.InferInput("RAW", list(raw.shape), "FP32")
    inp.set_data_from_numpy(raw, binary_data=True)
    third = http.infer("ens_cached", [inp])
    http.close()
    for res in (first, second, third):
        np.testing.assert_array_equal(res.as_numpy("CLASS"), want)
    assert {m: stats(client, m)[0] for m in STEPS} == steps_before, "a hit runs no step"
    _, executions, s = stats(client, "ens_cached")
    assert executions == executions_before, "a hit is no execution (Triton's UpdateSuccessCacheHit)"
    cache = s["inference_stats"]
    assert (int(cache["cache_hit"]["count"]), int(cache["cache_miss"]["count"])) == (2, 1), cache
    assert int(cache["success"]["count"]) == 3

    # A step's reload: the cached answers are forgotten, the steps run again.
    client.load_model("ens_postprocess", config=json.dumps({"max_batch_size": 8, "backend": "onnxruntime"}))
    assert client.is_model_ready("ens_cached")
    res = grpc_infer(client, raw, model="ens_cached")
    np.testing.assert_array_equal(res.as_numpy("CLASS"), want)
    assert stats(client, "ens_postprocess")[0] >= 2, "the reloaded step ran"
    cache = stats(client, "ens_cached")[2]["inference_stats"]
    assert (int(cache["cache_hit"]["count"]), int(cache["cache_miss"]["count"])) == (2, 2), cache


def fails(model_stats):
    return int(model_stats["inference_stats"]["fail"].get("count", 0))


def pending(srv, model):
    line = next((x for x in metrics(srv).splitlines() if x.startswith(f'nv_inference_pending_request_count{{model="{model}",')), None)
    return float(line.split()[-1]) if line else 0.0


def wait_until(what, done, limit=4.0):
    deadline = time.monotonic() + limit
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def test_a_request_timeout_at_a_queued_step_fails_the_ensemble_request(node):
    _, client = node
    client.load_model("ens_slow")
    _, _, before = stats(client, "ens_slow")
    inp = grpcclient.InferInput("RAW", [1, 16], "FP32")
    inp.set_data_from_numpy(raw_batch(1))
    with pytest.raises(InferenceServerException) as err:
        client.infer("ens_slow", [inp], timeout=100_000)  # Triton's request timeout, microseconds
    message = err.value.message()
    assert message.startswith("in ensemble 'ens_slow', step 0 (model 'ens_slow_pre'): "), message
    assert "Request timeout expired" in message, message
    _, _, after = stats(client, "ens_slow")
    assert fails(after) == fails(before) + 1


def test_a_client_deadline_cancels_the_queued_step(node):
    srv, client = node
    client.load_model("ens_slow")
    executions_before = stats(client, "ens_slow_pre")[1]
    fails_before = fails(stats(client, "ens_slow")[2])
    inp = grpcclient.InferInput("RAW", [1, 16], "FP32")
    inp.set_data_from_numpy(raw_batch(1))
    with pytest.raises(InferenceServerException) as err:
        client.infer("ens_slow", [inp], client_timeout=0.3)
    # Whichever timer fires first: the client's own (DEADLINE_EXCEEDED) or the server's
    # grpc-timeout, which tonic answers with CANCELLED "Timeout expired".
    assert str(err.value.status()) in ("StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED"), err.value
    # The step's request leaves its queue long before the 5 s delay would have run it, and the
    # ensemble counts the request as failed.
    wait_until("the step's queue is empty", lambda: pending(srv, "ens_slow_pre") == 0)
    wait_until(
        "the ensemble counted the cancelled request",
        lambda: fails(stats(client, "ens_slow")[2]) == fails_before + 1,
    )
    assert stats(client, "ens_slow_pre")[1] == executions_before, "the cancelled step never ran"
    # A full batch runs at once: the model serves on.
    raw = raw_batch(8, seed=4)
    res = grpc_infer(client, raw, model="ens_slow")
    np.testing.assert_allclose(res.as_numpy("OUT"), (raw - MEAN) / STD, rtol=1e-6)
