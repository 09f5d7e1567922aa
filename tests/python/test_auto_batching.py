"""Tern's `queue_delay: auto` end to end (tritonclient over gRPC): a batched model whose dynamic
batcher chooses its own queue delay answers concurrent requests of varied batch sizes each with
its own rows (numpy's answer), counts them as Triton does, and exports the delay it chose as
`tern_batch_queue_delay_us`; a config with a bad `queue_delay` value fails to load with a message
naming the model and the parameter. One node for the module.
"""
import re
import shutil
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tern_testlib import TernServer, copy_models

MODEL = "tiny_add"
AUTO = 'parameters { key: "queue_delay" value { string_value: "auto" } }\n'


@pytest.fixture(scope="module")
def node(model_repo, tmp_path_factory):
    repo = copy_models(model_repo, tmp_path_factory.mktemp("auto_batching_repo"), [MODEL])
    config = repo / MODEL / "config.pbtxt"
    config.write_text(config.read_text() + AUTO)
    bad = repo / "tiny_add_bad"
    bad.mkdir()
    shutil.copytree(repo / MODEL / "1", bad / "1")
    text = config.read_text().replace(f'name: "{MODEL}"', 'name: "tiny_add_bad"').replace(AUTO, "")
    (bad / "config.pbtxt").write_text(text + 'parameters { key: "queue_delay" value { string_value: "soon" } }\n')
    srv = TernServer([repo], log_dir=tmp_path_factory.mktemp("auto_batching_logs"), label="auto_batching").start()
    yield srv
    assert srv.stop() == 0, srv.log_tail()


def infer(url, a, b):
    with grpcclient.InferenceServerClient(url) as client:
        inputs = [grpcclient.InferInput(n, list(x.shape), "FP32") for n, x in (("INPUT0", a), ("INPUT1", b))]
        for i, x in zip(inputs, (a, b)):
            i.set_data_from_numpy(x)
        return client.infer(MODEL, inputs).as_numpy("OUTPUT0")


def test_auto_delay_answers_each_request_with_its_own_rows_and_exports_its_delay(node):
    with grpcclient.InferenceServerClient(node.url) as client:
        before = client.get_inference_statistics(MODEL).model_stats[0]
    rng = np.random.default_rng(0)
    sizes = [1, 3, 2, 1, 4, 1, 2, 1] * 4
    pairs = [(rng.normal(size=(n, 16)).astype(np.float32), rng.normal(size=(n, 16)).astype(np.float32))
             for n in sizes]
    with ThreadPoolExecutor(16) as pool:
        outputs = list(pool.map(lambda p: infer(node.url, *p), pairs))
    for (a, b), y in zip(pairs, outputs):
        np.testing.assert_array_equal(y, a + b)
    with grpcclient.InferenceServerClient(node.url) as client:
        after = client.get_inference_statistics(MODEL).model_stats[0]
    assert after.inference_count - before.inference_count == sum(sizes)
    assert 0 < after.execution_count - before.execution_count <= len(sizes)
    addr = next(m.group(1) for line in node.lines if (m := re.search(r"metrics=(\S+)", line)))
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()
    delay = re.search(r'tern_batch_queue_delay_us\{model="tiny_add",version="1"\} (\S+)', text)
    assert delay, "the chosen delay is exported"
    # The budget is the example config's max_queue_delay_microseconds (100).
    assert 0 <= float(delay.group(1)) <= 100


def test_a_bad_queue_delay_names_the_model_and_the_parameter(node):
    with grpcclient.InferenceServerClient(node.url) as client:
        index = {m.name: m for m in client.get_model_repository_index().models}
    assert index["tiny_add_bad"].state == "UNAVAILABLE"
    assert "parameters 'queue_delay': 'soon' is not one of 'auto', 'fixed'" in index["tiny_add_bad"].reason
    assert "tiny_add_bad" in index["tiny_add_bad"].reason or any(
        "tiny_add_bad" in l and "queue_delay" in l for l in node.lines), node.log_tail()
