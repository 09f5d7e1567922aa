"""Triton's response cache end to end with tritonclient (gRPC and HTTP): `--cache-config
local,size=N` on the node, `response_cache { enable: true }` per model.

What is matched (triton-inference-server/core): a hit is a success with its queue time and a
cache hit, no inference and no execution (src/infer_stats.cc, UpdateSuccessCacheHit); a miss runs
the model and counts a cache miss (UpdateSuccessCacheMiss), also when the response is too large
to be stored; the per-model families nv_cache_* exist only for models that use the cache
(src/metric_model_reporter.cc); a decoupled model's cache is refused at load with Triton's words
(src/model_config_utils.cc). Tern's own guarantee on top: a reload never answers from the
previous load's entries.

One node for the module (explicit model control, a small cache so eviction is reachable).
"""
import json
import re
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tern_testlib import TernServer, copy_models

# Room for a few batch-8 entries of versioned_scale (about 200 bytes each: the output with its
# name and shape, and the key), never for a batch-64 entry of tiny_add (4 KiB of output).
CACHE_BYTES = 1000
METRICS_ADDR_RE = re.compile(r'metrics(?:=|"\s*:\s*")([0-9.]+:\d+)')


def scale_config(name="versioned_scale", versions=(1,), cache=True, **extra):
    config = {
        "name": name, "backend": "onnxruntime", "max_batch_size": 8,
        "version_policy": {"specific": {"versions": list(versions)}},
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
        "response_cache": {"enable": cache},
    }
    config.update(extra)
    return json.dumps(config)


@pytest.fixture(scope="module")
def node(model_repo, tmp_path_factory):
    repo = copy_models(model_repo, tmp_path_factory.mktemp("cache_repo"), ["versioned_scale", "tiny_add"])
    srv = TernServer(
        [repo],
        ["--model-control-mode", "explicit", "--load-model", "tiny_add",
         # Triton's forms; repeated settings of one cache merge, the later value winning.
         "--cache-config", "local,size=100", f"--cache-config=local,size={CACHE_BYTES}",
         # Triton's latency summaries, checked here beside the cache they interact with.
         "--metrics-config", "summary_latencies=true", "--metrics-config", "summary_quantiles=0.5:0.05,0.99:0.001"],
        log_dir=tmp_path_factory.mktemp("cache_logs"), label="cache",
    ).start()
    client = grpcclient.InferenceServerClient(srv.url)
    client.load_model("versioned_scale", config=scale_config())
    yield srv, repo, client
    client.close()
    assert srv.stop() == 0, srv.log_tail()


def scale(client, rows, model="versioned_scale"):
    x = np.asarray(rows, dtype=np.float32).reshape(-1, 4)
    inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("OUTPUT0")


def stats(client, model, version="1"):
    s = client.get_inference_statistics(model, version, as_json=True)["model_stats"][0]
    i = s["inference_stats"]
    n = lambda k: int(i.get(k, {}).get("count", 0))  # noqa: E731
    return {
        "hit": n("cache_hit"), "miss": n("cache_miss"), "success": n("success"),
        "inferences": int(s.get("inference_count", 0)), "executions": int(s.get("execution_count", 0)),
    }


def delta(after, before):
    return {k: after[k] - before[k] for k in after}


def test_first_request_misses_identical_request_hits_other_bytes_miss(node):
    _, _, client = node
    before = stats(client, "versioned_scale")
    first = scale(client, [1, 2, 3, 4])
    again = scale(client, [1, 2, 3, 4])
    assert first.tolist() == [[1, 2, 3, 4]]
    assert np.array_equal(again, first) and again.dtype == first.dtype
    other = scale(client, [1, 2, 3, 5])
    assert other.tolist() == [[1, 2, 3, 5]]
    # A hit is a success, and neither an inference nor an execution (Triton's counting).
    assert delta(stats(client, "versioned_scale"), before) == {
        "hit": 1, "miss": 2, "success": 3, "inferences": 2, "executions": 2,
    }
    s = client.get_inference_statistics("versioned_scale", "1", as_json=True)["model_stats"][0]
    assert int(s["inference_stats"]["cache_hit"]["ns"]) > 0
    assert int(s["inference_stats"]["cache_miss"]["ns"]) > 0


def test_http_shares_the_cache_and_reports_it(node):
    srv, _, client = node
    scale(client, [7, 7, 7, 7])  # stored through gRPC
    before = stats(client, "versioned_scale")
    http = httpclient.InferenceServerClient(srv.http_addr)
    for binary in (True, False):
        inp = httpclient.InferInput("INPUT0", [1, 4], "FP32")
        inp.set_data_from_numpy(np.full((1, 4), 7, dtype=np.float32), binary_data=binary)
        out = http.infer("versioned_scale", [inp]).as_numpy("OUTPUT0")
        assert out.tolist() == [[7, 7, 7, 7]]
    assert delta(stats(client, "versioned_scale"), before)["hit"] == 2
    over_http = http.get_inference_statistics("versioned_scale", "1")["model_stats"][0]["inference_stats"]
    assert over_http["cache_hit"]["count"] == stats(client, "versioned_scale")["hit"]
    assert over_http["cache_miss"]["count"] == stats(client, "versioned_scale")["miss"]
    http.close()


def test_a_model_without_response_cache_is_never_cached(node):
    _, _, client = node
    before = stats(client, "tiny_add")
    x = np.ones((1, 16), dtype=np.float32)
    for _ in range(2):
        a, b = grpcclient.InferInput("INPUT0", [1, 16], "FP32"), grpcclient.InferInput("INPUT1", [1, 16], "FP32")
        a.set_data_from_numpy(x)
        b.set_data_from_numpy(x)
        assert client.infer("tiny_add", [a, b]).as_numpy("OUTPUT0").tolist() == [[2.0] * 16]
    assert delta(stats(client, "tiny_add"), before) == {
        "hit": 0, "miss": 0, "success": 2, "inferences": 2, "executions": 2,
    }


def metric_lines(srv):
    addr = next(m.group(1) for line in srv.lines if (m := METRICS_ADDR_RE.search(line)))
    host, port = addr.rsplit(":", 1)
    with urllib.request.urlopen(f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/metrics") as r:
        return r.read().decode()


def test_metrics_carry_triton_cache_families_for_cached_models_only(node):
    srv, _, client = node
    scale(client, [9, 9, 9, 9])
    scale(client, [9, 9, 9, 9])
    text = metric_lines(srv)
    s = stats(client, "versioned_scale")
    labels = '{model="versioned_scale",version="1"}'
    assert f"nv_cache_num_hits_per_model{labels} {s['hit']}" in text, text
    assert f"nv_cache_num_misses_per_model{labels} {s['miss']}" in text, text
    assert f"nv_cache_hit_duration_per_model{labels}" in text
    assert f"nv_cache_miss_duration_per_model{labels}" in text
    assert 'nv_cache_num_hits_per_model{model="tiny_add"' not in text
    # Hits count as successes but not as inferences.
    assert f"nv_inference_request_success{labels} {s['success']}" in text
    assert f"nv_inference_count{labels} {s['inferences']}" in text


def summary_series(text, family, labels):
    """{quantile: value} plus "_sum"/"_count" of one summary series, from an exposition."""
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(rf'{family}(_sum|_count)?\{{(.*)\}} (\S+)', line)
        if not m or not all(f'{k}="{v}"' in m.group(2) for k, v in labels.items()):
            continue
        q = re.search(r'quantile="([^"]+)"', m.group(2))
        out[m.group(1) or q.group(1)] = float(m.group(3))
    return out


def test_latency_summaries_follow_triton_with_and_without_the_cache(node):
    """`--metrics-config summary_latencies=true` (core src/metric_model_reporter.cc): every
    model gets queue and compute summaries with the configured quantiles; the request summary
    only where the cache is off; the cache hit/miss summaries only where it is on. Count and
    sum are cumulative and agree with the counters."""
    srv, _, client = node
    a = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    a.set_data_from_numpy(np.ones((1, 16), np.float32))
    b = grpcclient.InferInput("INPUT1", [1, 16], "FP32")
    b.set_data_from_numpy(np.ones((1, 16), np.float32))
    for _ in range(5):
        client.infer("tiny_add", [a, b])
    scale(client, [5, 6, 7, 8])
    scale(client, [5, 6, 7, 8])
    text = metric_lines(srv)
    assert "# TYPE nv_inference_request_summary_us summary" in text, text
    plain = {"model": "tiny_add", "version": "1"}
    success = stats(client, "tiny_add")["success"]
    for family in ["nv_inference_request_summary_us", "nv_inference_queue_summary_us",
                   "nv_inference_compute_input_summary_us", "nv_inference_compute_infer_summary_us",
                   "nv_inference_compute_output_summary_us"]:
        series = summary_series(text, family, plain)
        assert set(series) == {"0.5", "0.99", "_sum", "_count"}, (family, series)
        assert series["_count"] == success, (family, series, success)
        assert 0 <= series["0.5"] <= series["0.99"], (family, series)
    infer = summary_series(text, "nv_inference_compute_infer_summary_us", plain)
    assert infer["0.99"] > 0, infer
    # The request summary's sum is the request counter's, up to rounding each request to a µs.
    request = summary_series(text, "nv_inference_request_summary_us", plain)
    counter = float(re.search(r'nv_inference_request_duration_us\{model="tiny_add",version="1"\} (\S+)', text)[1])
    assert abs(request["_sum"] - counter) <= success, (request, counter)

    cached = {"model": "versioned_scale", "version": "1"}
    s = stats(client, "versioned_scale")
    assert summary_series(text, "nv_inference_request_summary_us", cached) == {}, "no request summary with a cache"
    assert summary_series(text, "nv_cache_hit_summary_per_model", cached)["_count"] == s["hit"]
    assert summary_series(text, "nv_cache_miss_summary_per_model", cached)["_count"] == s["miss"]
    # A hit counts its queue time, as a success does.
    assert summary_series(text, "nv_inference_queue_summary_us", cached)["_count"] == s["success"]
    assert summary_series(text, "nv_cache_hit_summary_per_model", plain) == {}


def test_a_reload_never_returns_the_previous_answer(node):
    _, repo, client = node
    one = (repo / "versioned_scale" / "1" / "model.onnx").read_bytes()
    three = (repo / "versioned_scale" / "3" / "model.onnx").read_bytes()
    config = scale_config("reloaded", versions=(1,))
    client.load_model("reloaded", config=config, files={"file:1/model.onnx": one})
    assert scale(client, [1, 2, 3, 4], "reloaded").tolist() == [[1, 2, 3, 4]]
    assert scale(client, [1, 2, 3, 4], "reloaded").tolist() == [[1, 2, 3, 4]]
    assert stats(client, "reloaded")["hit"] == 1
    # The same name and version, now multiplying by 3: the same request must run the new model.
    client.load_model("reloaded", config=config, files={"file:1/model.onnx": three})
    assert scale(client, [1, 2, 3, 4], "reloaded").tolist() == [[3, 6, 9, 12]]
    assert scale(client, [1, 2, 3, 4], "reloaded").tolist() == [[3, 6, 9, 12]]
    # And after an unload and a load of the same files, nothing of the old load is served.
    client.unload_model("reloaded")
    client.load_model("reloaded", config=config, files={"file:1/model.onnx": one})
    assert scale(client, [1, 2, 3, 4], "reloaded").tolist() == [[1, 2, 3, 4]]
    assert stats(client, "reloaded")["miss"] == 1 and stats(client, "reloaded")["hit"] == 0
    client.unload_model("reloaded")


def test_least_recently_used_entries_are_evicted_under_a_small_cache(node):
    _, _, client = node
    batches = [np.full((8, 4), v, dtype=np.float32) for v in range(101, 109)]
    for b in batches:
        scale(client, b)
    before = stats(client, "versioned_scale")
    # The newest is still there; the oldest was evicted to make room (8 entries of about 200
    # bytes in 1000).
    assert np.array_equal(scale(client, batches[-1]), batches[-1])
    assert np.array_equal(scale(client, batches[0]), batches[0])
    assert delta(stats(client, "versioned_scale"), before)["hit"] == 1
    assert delta(stats(client, "versioned_scale"), before)["miss"] == 1


def test_a_response_larger_than_the_cache_is_served_but_not_stored(node):
    _, repo, client = node
    tiny = (repo / "tiny_add" / "1" / "model.onnx").read_bytes()
    config = {
        "name": "big_add", "backend": "onnxruntime", "max_batch_size": 64,
        "input": [{"name": n, "data_type": "TYPE_FP32", "dims": [16]} for n in ("INPUT0", "INPUT1")],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [16]}],
        "response_cache": {"enable": True},
    }
    client.load_model("big_add", config=json.dumps(config), files={"file:1/model.onnx": tiny})
    x = np.ones((64, 16), dtype=np.float32)
    for _ in range(2):
        a, b = grpcclient.InferInput("INPUT0", [64, 16], "FP32"), grpcclient.InferInput("INPUT1", [64, 16], "FP32")
        a.set_data_from_numpy(x)
        b.set_data_from_numpy(x)
        assert np.array_equal(client.infer("big_add", [a, b]).as_numpy("OUTPUT0"), x * 2)
    # Triton counts every insert but an "already exists" as a miss (dynamic_batch_scheduler.cc).
    assert stats(client, "big_add") == {"hit": 0, "miss": 2, "success": 2, "inferences": 128, "executions": 2}
    client.unload_model("big_add")


def test_a_decoupled_model_with_response_cache_is_refused_with_tritons_words(node):
    _, repo, client = node
    one = (repo / "versioned_scale" / "1" / "model.onnx").read_bytes()
    config = scale_config("decoupled_scale", model_transaction_policy={"decoupled": True})
    with pytest.raises(InferenceServerException) as e:
        client.load_model("decoupled_scale", config=config, files={"file:1/model.onnx": one})
    assert (
        "Response Cache does not currently support model decoupled_scale with 'decoupled' "
        "transaction policy. Please disable the response cache."
    ) in e.value.message()
