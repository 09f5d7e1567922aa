"""A real cluster on loopback: tern-router plus tern-node processes registering with it, driven
by the real tritonclient and perf_analyzer. Placement (replicas, lazy loading, eviction),
routing (balance, sequences), failover under SIGKILL, and the aggregated answers.
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from tern_clusterlib import (Cluster, NodeProc, RouterProc, holders, node_status, router_binary, tiny_add_inputs,
                             wait_until)
from test_perf_analyzer import check_success, run_perf_analyzer


def infer_tiny(client, value: float = 1.0, **kw):
    r = client.infer("tiny_add", tiny_add_inputs(value=value), **kw)
    out = r.as_numpy("OUTPUT0")
    assert np.allclose(out, 2 * value), out
    return r


def test_lazy_load_replicas_index_and_statistics(model_repo, tmp_path):
    with Cluster(model_repo, 3, tmp_path, router_args=["--replicas", "2"]) as c:
        client = c.client()
        assert client.is_server_ready()
        assert not client.is_model_ready("tiny_add"), "nothing is placed before a request"
        # The first request loads the model on one node and waits for it.
        infer_tiny(client)
        assert client.is_model_ready("tiny_add")
        # The controller then tops the model up to 2 replicas.
        holders = wait_until(lambda: len(c.holders("tiny_add")) == 2 and c.holders("tiny_add"), 15,
                             "tiny_add on 2 nodes")
        assert set(holders) <= {n.addr for n in c.nodes}
        held = [n for n in c.nodes if "tiny_add" in n.ready_models()]
        assert sorted(n.addr for n in held) == holders
        for i in range(40):
            infer_tiny(client, value=float(i))
        # Balanced across both replicas, and the router's statistics are the nodes' sum.
        counts = [n.inference_count("tiny_add") for n in held]
        assert sum(counts) == 41, counts
        assert min(counts) >= 5, f"least-outstanding balancing left a replica idle: {counts}"
        stats = client.get_inference_statistics("tiny_add").model_stats
        assert [(s.name, s.version, s.inference_count) for s in stats] == [("tiny_add", "1", 41)]
        # The merged index lists every model of the shared repository, unloaded ones by name.
        names = {m.name for m in client.get_model_repository_index().models}
        assert {"tiny_add", "light_resnet50", "identity_fp32"} <= names
        metrics = c.router.metrics()
        assert 'tern_router_requests_total{code="OK",model="tiny_add"} 41' in metrics, metrics
        assert 'tern_router_placements_total{model="tiny_add"} 2' in metrics


def test_errors_through_the_router(model_repo, tmp_path):
    with Cluster(model_repo, 1, tmp_path) as c:
        client = c.client()
        with pytest.raises(InferenceServerException) as e:
            client.infer("no_such_model", tiny_add_inputs())
        assert e.value.status() == "StatusCode.NOT_FOUND"
        assert "Request for unknown model: 'no_such_model' is not found" in e.value.message()
        # A bad tensor: the node's INVALID_ARGUMENT naming model and input comes back unchanged.
        bad = grpcclient.InferInput("INPUT0", [1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
        with pytest.raises(InferenceServerException) as e:
            client.infer("tiny_add", [bad, tiny_add_inputs()[1]])
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "INPUT0" in e.value.message() and "tiny_add" in e.value.message()
        # The router keeps serving everyone else.
        infer_tiny(client)
        # Unload through the router: no lazy reload until loaded again.
        client.unload_model("tiny_add")
        wait_until(lambda: not client.is_model_ready("tiny_add"), 10, "tiny_add unloaded")
        # An unload does not make the node, nor so the router, not ready (Triton's IsReady).
        assert client.is_server_ready(), "router not ready after an unload"
        assert c.nodes[0].client().is_server_ready(), "node not ready after an unload"
        with pytest.raises(InferenceServerException):
            client.infer("tiny_add", tiny_add_inputs())
        client.load_model("tiny_add")
        assert client.is_model_ready("tiny_add")
        infer_tiny(client)


def test_no_nodes_is_unavailable(tmp_path):
    router = RouterProc(log_dir=tmp_path)
    router.start()
    try:
        client = grpcclient.InferenceServerClient(router.url)
        assert client.is_server_live()
        assert not client.is_server_ready()
        with pytest.raises(InferenceServerException) as e:
            client.infer("tiny_add", tiny_add_inputs())
        assert e.value.status() == "StatusCode.UNAVAILABLE"
        assert "no node of the cluster is healthy" in e.value.message()
    finally:
        assert router.stop() == 0


def test_static_and_dns_nodes(model_repo, tmp_path):
    """Nodes the router finds itself (--node, --node-dns), in the default control mode."""
    nodes = [NodeProc(model_repo, log_dir=tmp_path, label=f"static{i}") for i in range(2)]
    for n in nodes:
        n.start()
    router = RouterProc(["--node", nodes[0].addr, "--node-dns", f"localhost:{nodes[1].grpc_port}",
                         "--dns-refresh-secs", "1"], log_dir=tmp_path)
    router.start()
    try:
        client = grpcclient.InferenceServerClient(router.url)
        wait_until(client.is_server_ready, 10, "router ready")
        wait_until(lambda: len(holders(client, "tiny_add")) == 2, 10, "both nodes routed")
        for i in range(20):
            infer_tiny(client, value=float(i))
        assert [n.inference_count("tiny_add") > 0 for n in nodes] == [True, True]
    finally:
        router.stop()
        for n in nodes:
            n.kill()


def test_readiness_after_unload_and_failed_load_with_dns_discovery(model_repo, tmp_path):
    """The shipped topology: an explicit-mode node with strict readiness, found by the router
    through DNS (--node-dns). Unloading a model, or unloading a model that failed to load,
    leaves node and router ready."""
    import shutil

    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(model_repo / "tiny_add", repo / "tiny_add")
    (repo / "broken" / "1").mkdir(parents=True)  # no model file: its load fails
    (repo / "broken" / "config.pbtxt").write_text(
        (repo / "tiny_add" / "config.pbtxt").read_text().replace('name: "tiny_add"', 'name: "broken"'))
    node = NodeProc(repo, ["--model-control-mode", "explicit", "--strict-readiness", "true"],
                    log_dir=tmp_path, label="dns-node")
    node.start()
    router = RouterProc(["--node-dns", f"localhost:{node.grpc_port}", "--dns-refresh-secs", "1"],
                        log_dir=tmp_path)
    router.start()
    try:
        client = grpcclient.InferenceServerClient(router.url)
        wait_until(client.is_server_ready, 10, "router ready")
        client.load_model("tiny_add")
        infer_tiny(client)
        client.unload_model("tiny_add")
        wait_until(lambda: not client.is_model_ready("tiny_add"), 10, "tiny_add unloaded")
        assert node.client().is_server_ready(), "node not ready after an unload"
        assert client.is_server_ready(), "router not ready after an unload"

        with pytest.raises(InferenceServerException):
            client.load_model("broken")
        assert not node.client().is_server_ready(), "a failed load makes the node not ready"
        wait_until(lambda: not client.is_server_ready(), 10, "router sees its only node not ready")
        client.unload_model("broken")
        assert node.client().is_server_ready(), "node ready once the failed model is unloaded"
        wait_until(client.is_server_ready, 10, "router ready again")
        # Loaded again, it serves: the cluster recovered without a restart.
        client.load_model("tiny_add")
        infer_tiny(client)
    finally:
        router.stop()
        node.kill()


def test_draining_node_reports_not_ready_and_routers_stop_sending(model_repo, tmp_path):
    """SIGTERM with a request in flight: the node keeps answering while it drains, says it is
    not ready (ServerReady, NodeControl status with every model UNLOADING), the router stops
    sending to it before it closes, and it exits 0 once the request is done."""
    import shutil
    import signal

    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(model_repo / "tiny_add", repo / "tiny_add")
    # slow_add: one request alone waits the full 6 s queue delay for a batch of 64.
    shutil.copytree(model_repo / "tiny_add", repo / "slow_add")
    (repo / "slow_add" / "config.pbtxt").write_text(
        (repo / "tiny_add" / "config.pbtxt").read_text().replace('name: "tiny_add"', 'name: "slow_add"')
        .replace("max_queue_delay_microseconds: 100", "max_queue_delay_microseconds: 6000000"))
    a = NodeProc(repo, ["--exit-timeout-secs", "30"], log_dir=tmp_path, label="drain-a")
    b = NodeProc(repo, log_dir=tmp_path, label="drain-b")
    a.start()
    b.start()
    router = RouterProc(["--node", a.addr, "--node", b.addr, "--health-interval-ms", "200",
                         "--heartbeat-timeout-ms", "5000"], log_dir=tmp_path)
    router.start()
    try:
        client = grpcclient.InferenceServerClient(router.url)
        wait_until(lambda: holders(client, "tiny_add") == sorted([a.addr, b.addr]), 10, "both nodes routed")
        assert node_status(a.addr)["ready"]
        slow: queue.Queue = queue.Queue()

        def in_flight():
            try:
                r = a.client().infer("slow_add", tiny_add_inputs(value=2.0), client_timeout=30)
                slow.put(r.as_numpy("OUTPUT0").tolist())
            except Exception as e:  # noqa: BLE001 - reported by the assertion below
                slow.put(e)

        worker = threading.Thread(target=in_flight)
        worker.start()
        wait_until(lambda: node_status(a.addr)["in_flight"] == 1, 5, "the slow request in flight on node a")
        a.proc.send_signal(signal.SIGTERM)

        status = wait_until(lambda: (s := node_status(a.addr)) and not s["ready"] and s, 3,
                            "node a reporting not ready while it drains")
        assert {m[2] for m in status["models"]} == {"UNLOADING"}, status
        with pytest.raises(InferenceServerException) as e:
            a.client().is_server_ready()
        assert "Server exiting" in e.value.message()
        # The router polls node a every 200 ms: within a second its routing view has it draining.
        time.sleep(1.0)
        assert holders(client, "tiny_add") == [b.addr]
        assert a.alive() and worker.is_alive(), "still draining: the slow request has not finished"
        a_before, b_before = a.inference_count("tiny_add"), b.inference_count("tiny_add")
        for i in range(20):
            infer_tiny(client, value=float(i))
        assert b.inference_count("tiny_add") - b_before == 20
        assert a.inference_count("tiny_add") == a_before, "no request sent to the draining node"
        assert a.alive() and worker.is_alive(), "the router stopped sending before node a closed"

        worker.join(30)
        assert slow.get_nowait() == [[4.0] * 16], "the request in flight finished"
        assert a.proc.wait(15) == 0, a.log_tail()
        retries = [line for line in router.metrics().splitlines()
                   if line.startswith("tern_router_retries_total") and not line.endswith(" 0")]
        assert not retries, retries
    finally:
        router.stop()
        a.kill()
        b.kill()


def test_failover_sigkill_under_load_zero_failures(model_repo, tmp_path):
    """Concurrency 16 through the router; one of two replicas is SIGKILLed mid-run and restarted
    at the same address: no request fails, and the restarted node takes traffic again."""
    with Cluster(model_repo, 2, tmp_path, router_args=["--replicas", "2", "--load-model", "tiny_add"]) as c:
        client = c.client()
        wait_until(lambda: len(c.holders("tiny_add")) == 2, 20, "tiny_add on both nodes")
        stop = threading.Event()
        ok = [0] * 16
        failures: list[str] = []

        def worker(i):
            cl = grpcclient.InferenceServerClient(c.url)
            deadline = time.monotonic() + 60  # bounded even if `stop` never comes
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    infer_tiny(cl, value=float(i))
                    ok[i] += 1
                except Exception as e:  # noqa: BLE001 - every failure is recorded and fails the test
                    # tritonclient's exception has an empty repr: keep its status and message.
                    status = getattr(e, "status", lambda: None)()
                    failures.append(f"{type(e).__name__}({status}: {e})")

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        victim = c.nodes[0]
        time.sleep(2)
        before = sum(ok)
        victim.kill()  # SIGKILL
        time.sleep(3)
        during = sum(ok)
        victim.restarts += 1
        victim.start()
        # Placement puts tiny_add back on the restarted node; it takes traffic again.
        wait_until(lambda: victim.inference_count("tiny_add") > 20, 30, "traffic on the restarted node")
        stop.set()
        for t in threads:
            t.join(30)
        assert not failures, f"{len(failures)} failed requests, first: {failures[:3]}"
        assert during > before, "requests kept succeeding while a replica was down"
        metrics = c.router.metrics()
        retries = [line for line in metrics.splitlines() if line.startswith("tern_router_retries_total")]
        print(f"failover: {sum(ok)} requests, 0 failures; {retries}")


def weights_model(path, mib: float):
    """A real ONNX model Y = X + W with a `mib` MiB initializer (placement's memory estimate)."""
    n = int(mib * (1 << 20) / 4)
    w = numpy_helper.from_array(np.ones((1, n), dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "W"], ["Y"])], "weights",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, n])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def slow_model(repo, name: str, seconds: float, warmup: int = 0, n: int = 512) -> float:
    """A real ONNX model whose inference takes about `seconds` here: X [1, 1] is expanded to an
    n x n matrix that goes through a chain of MatMuls with W = 1/n (so Y = X), the chain's length
    calibrated with onnxruntime on this machine. `warmup`: model_warmup runs before READY, so a
    load takes about warmup x seconds. Returns the calibrated seconds per inference."""
    import onnxruntime as ort

    def build(k, path):
        w = numpy_helper.from_array(np.full((n, n), 1.0 / n, dtype=np.float32), "W")
        shape = numpy_helper.from_array(np.array([n, n], dtype=np.int64), "S")
        nodes = [helper.make_node("Expand", ["X", "S"], ["h0"])]
        nodes += [helper.make_node("MatMul", [f"h{i}", "W"], [f"h{i + 1}"]) for i in range(k)]
        nodes.append(helper.make_node("ReduceMean", [f"h{k}"], ["Y"], axes=[0, 1], keepdims=1))
        graph = helper.make_graph(
            nodes, name, [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 1])], initializer=[w, shape])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        onnx.save(model, path)

    (repo / name / "1").mkdir(parents=True)
    path = repo / name / "1" / "model.onnx"
    probe_k = 16
    build(probe_k, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = {"X": np.full((1, 1), 2.0, dtype=np.float32)}
    session.run(None, x)
    t = time.monotonic()
    for _ in range(3):
        session.run(None, x)
    per_matmul = (time.monotonic() - t) / 3 / probe_k
    k = max(1, min(2000, round(seconds / per_matmul)))
    build(k, path)
    warm = ""
    if warmup:
        warm = ('model_warmup [ { name: "w" batch_size: 1 count: %d inputs { key: "X" value '
                '{ data_type: TYPE_FP32 dims: [ 1, 1 ] zero_data: true } } } ]\n' % warmup)
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
        'input [ { name: "X", data_type: TYPE_FP32, dims: [ 1, 1 ] } ]\n'
        'output [ { name: "Y", data_type: TYPE_FP32, dims: [ 1, 1 ] } ]\n'
        f'instance_group [ {{ count: 1, kind: KIND_CPU }} ]\n{warm}')
    return k * per_matmul


def run_slow(client, model: str, value: float = 2.0, **kw):
    x = grpcclient.InferInput("X", [1, 1], "FP32")
    x.set_data_from_numpy(np.full((1, 1), value, dtype=np.float32))
    y = client.infer(model, [x], **kw).as_numpy("Y")
    assert abs(float(y[0, 0]) - value) < 1e-3, y
    return y


HEAVY_N = int(1.5 * (1 << 20) / 4)


def heavy_models(repo, *names):
    """Models of 1.5 MiB each (placement's memory estimate), fast to run."""
    for name in names:
        (repo / name / "1").mkdir(parents=True)
        weights_model(repo / name / "1" / "model.onnx", 1.5)
        (repo / name / "config.pbtxt").write_text(
            f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
            'instance_group [ { count: 1, kind: KIND_CPU } ]\n')


def run_heavy(client, model):
    x = grpcclient.InferInput("X", [1, HEAVY_N], "FP32")
    x.set_data_from_numpy(np.full((1, HEAVY_N), 2.0, dtype=np.float32))
    y = client.infer(model, [x]).as_numpy("Y")
    assert float(y[0, 0]) == 3.0


def test_eviction_under_memory_budget(tmp_path):
    repo = tmp_path / "repo"
    heavy_models(repo, "heavy_a", "heavy_b", "heavy_c")
    with Cluster(repo, 1, tmp_path, node_args=["--model-memory-budget-mb", "4"]) as c:
        client = c.client()
        node = c.nodes[0]
        run_heavy(client, "heavy_a")
        run_heavy(client, "heavy_b")
        assert node.ready_models() == {"heavy_a", "heavy_b"}, "3 MiB fits the 4 MiB budget"
        time.sleep(2.5)  # past the eviction grace: heavy_a and heavy_b are now idle
        run_heavy(client, "heavy_b")  # heavy_b is now the more recently used
        run_heavy(client, "heavy_c")  # 4.5 MiB > 4 MiB: the least recently used (heavy_a) goes
        wait_until(lambda: node.ready_models() == {"heavy_b", "heavy_c"}, 15, "heavy_a evicted")
        wait_until(lambda: 'tern_router_evictions_total{model="heavy_a"} 1' in c.router.metrics(), 5,
                   "the eviction counted")
        # An evicted model comes back on its next request.
        run_heavy(client, "heavy_a")
        assert "heavy_a" in node.ready_models()


def test_pinned_models_are_never_evicted(tmp_path):
    """--load-model pins a model: under memory pressure the router evicts others, even though
    the pinned one was never requested (the least recently used of all)."""
    repo = tmp_path / "repo"
    heavy_models(repo, "heavy_a", "heavy_b", "heavy_c")
    with Cluster(repo, 1, tmp_path, router_args=["--load-model", "heavy_a"],
                 node_args=["--model-memory-budget-mb", "4"]) as c:
        client = c.client()
        node = c.nodes[0]
        wait_until(lambda: node.ready_models() == {"heavy_a"}, 15, "heavy_a placed at start")
        run_heavy(client, "heavy_b")
        time.sleep(2.5)  # past the eviction grace
        run_heavy(client, "heavy_c")  # 4.5 MiB > 4 MiB: heavy_b goes, not the pinned heavy_a
        wait_until(lambda: node.ready_models() == {"heavy_a", "heavy_c"}, 15, "heavy_b evicted")
        # A few placement rounds: the pinned model stays, and heavy_b (still "in use") is not
        # placed again where it does not fit, only to be evicted again (churn).
        time.sleep(3.5)
        assert node.ready_models() == {"heavy_a", "heavy_c"}
        metrics = c.router.metrics()
        assert 'tern_router_evictions_total{model="heavy_a"}' not in metrics
        assert 'tern_router_evictions_total{model="heavy_b"} 1' in metrics, \
            [line for line in metrics.splitlines() if "evictions_total{" in line]


def test_eviction_spares_a_model_executing_a_request(tmp_path):
    """A model whose request is executing (not queued: the node's queue is empty) is busy, and
    is not evicted even when it is the least recently used."""
    repo = tmp_path / "repo"
    heavy_models(repo, "heavy_a", "heavy_c")
    per_run = slow_model(repo, "slow", seconds=7.0, n=640)  # 1.6 MB of weights
    with Cluster(repo, 1, tmp_path, node_args=["--model-memory-budget-mb", "4"]) as c:
        client = c.client()
        node = c.nodes[0]
        done = threading.Event()
        errors = []

        def slow_request():
            try:
                run_slow(grpcclient.InferenceServerClient(c.url), "slow", client_timeout=60)
            except Exception as e:  # noqa: BLE001 - recorded and asserted below
                errors.append(e)
            done.set()

        started = time.monotonic()
        worker = threading.Thread(target=slow_request)
        worker.start()
        wait_until(lambda: "slow" in node.ready_models(), 15, "slow placed")
        time.sleep(0.5)
        run_heavy(client, "heavy_a")  # more recently used than slow
        time.sleep(2.5)  # both past the eviction grace; slow's request is still executing
        run_heavy(client, "heavy_c")  # over budget: the idle heavy_a goes, not the busy slow
        wait_until(lambda: node.ready_models() == {"slow", "heavy_c"}, 15, "heavy_a evicted")
        still_running = not done.is_set()
        worker.join(60)
        assert still_running, f"the slow request ended before the eviction ({time.monotonic() - started:.1f} s, per run {per_run:.1f} s)"
        assert not errors, errors
        assert 'tern_router_evictions_total{model="slow"}' not in c.router.metrics()


def test_node_join_triggers_placement(model_repo, tmp_path):
    with Cluster(model_repo, 1, tmp_path, router_args=["--replicas", "2", "--load-model", "tiny_add"]) as c:
        wait_until(lambda: len(c.holders("tiny_add")) == 1, 15, "tiny_add on the first node")
        joiner = c.new_node(1)
        c.nodes.append(joiner)
        joiner.start()
        wait_until(lambda: "tiny_add" in joiner.ready_models(), 15, "tiny_add placed on the joining node")
        assert len(c.holders("tiny_add")) == 2


def test_sequences_stick_to_one_node(model_repo, tmp_path):
    with Cluster(model_repo, 3, tmp_path, router_args=["--replicas", "3", "--load-model", "tiny_add"]) as c:
        client = c.client()
        wait_until(lambda: len(c.holders("tiny_add")) == 3, 20, "tiny_add on 3 nodes")
        for seq in (11, 12, 13, 14):
            before = [n.inference_count("tiny_add") for n in c.nodes]
            for step in range(8):
                infer_tiny(client, sequence_id=seq, sequence_start=step == 0, sequence_end=step == 7)
            delta = [n.inference_count("tiny_add") - b for n, b in zip(c.nodes, before)]
            assert sorted(delta) == [0, 0, 8], f"sequence {seq} spread over nodes: {delta}"
        # Without a sequence, the same client spreads over the replicas.
        before = [n.inference_count("tiny_add") for n in c.nodes]
        for _ in range(30):
            infer_tiny(client)
        delta = [n.inference_count("tiny_add") - b for n, b in zip(c.nodes, before)]
        assert sum(1 for d in delta if d > 0) >= 2, delta


def test_streaming_through_the_router(model_repo, tmp_path):
    with Cluster(model_repo, 2, tmp_path) as c:
        client = c.client()
        results: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        for i in range(10):
            client.async_stream_infer("tiny_add", tiny_add_inputs(value=float(i)), request_id=str(i))
        client.async_stream_infer("no_such_model", tiny_add_inputs(), request_id="bad")
        got = [results.get(timeout=30) for _ in range(11)]
        client.stop_stream()
        ids = [r.get_response().id for r, e in got if r is not None]
        errors = [str(e) for r, e in got if e is not None]
        assert ids == [str(i) for i in range(10)], "responses in request order"
        assert len(errors) == 1 and "no_such_model" in errors[0], errors
        for r, e in got[:10]:
            i = float(r.get_response().id)
            assert np.allclose(r.as_numpy("OUTPUT0"), 2 * i)


def test_perf_analyzer_through_the_router(model_repo, tmp_path):
    with Cluster(model_repo, 2, tmp_path, router_args=["--replicas", "2"]) as c:
        for model, extra in (("tiny_add", ["--concurrency-range", "4"]),
                             ("light_resnet50", ["--concurrency-range", "2", "--shape", "input:1,3,224,224"])):
            csv = tmp_path / f"{model}.csv"
            proc = run_perf_analyzer(c.url, model, csv, extra=["--measurement-interval", "2000", *extra],
                                     timeout=180)
            assert check_success(proc, csv) > 0


def test_deadline_through_the_router(tmp_path):
    """A client's deadline that expires while the router lazily loads its model (a load that takes
    seconds: warmup) ends that request; the load carries on, owned by the router, not by the
    request, so the next request is served as soon as the load is done (it used to wait the whole
    lazy-load timeout and fail). A deadline during a warm inference is enforced too, and the
    router keeps serving."""
    repo = tmp_path / "repo"
    per_run = slow_model(repo, "slow_load", seconds=0.4, warmup=10)  # load: ~4 s of warmup
    with Cluster(repo, 1, tmp_path, router_args=["--lazy-load-timeout-secs", "20"]) as c:
        client = c.client()
        started = time.monotonic()
        with pytest.raises(InferenceServerException) as e:
            run_slow(client, "slow_load", client_timeout=1.0)
        assert e.value.status() in ("StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED"), e.value
        assert time.monotonic() - started < 3, "the deadline ended the request during the load"
        assert "slow_load" not in c.nodes[0].ready_models(), "the load was still running"
        # Well before the router's 20 s lazy-load timeout: the load it started goes on.
        run_slow(client, "slow_load", client_timeout=15)
        assert time.monotonic() - started < 10 * per_run + 10
        assert 'tern_router_placements_total{model="slow_load"} 1' in c.router.metrics(), \
            "the second request waited for the load in progress rather than starting another"
        # A deadline during a warm inference: the client's, or the server's answer to it (tonic,
        # router and node alike, ends a request whose grpc-timeout expired with CANCELLED).
        with pytest.raises(InferenceServerException) as e:
            run_slow(client, "slow_load", client_timeout=per_run / 4)
        assert e.value.status() in ("StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED"), e.value
        run_slow(client, "slow_load")


def test_router_flags_rejected_clearly(tmp_path):
    import subprocess

    proc = subprocess.run([str(router_binary()), "--node", "no-port"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "--node no-port: expected host:port" in proc.stdout + proc.stderr


def test_sequence_request_is_not_resent_after_its_node_dies(tmp_path):
    """A node SIGKILLed while executing a sequence request may have run it: the router answers
    UNAVAILABLE rather than re-sending it to another replica (a sequence step must not run twice,
    nor on a node without the sequence's state). Requests without a sequence are idempotent and
    are retried (test_failover_sigkill_under_load_zero_failures)."""
    repo = tmp_path / "repo"
    per_run = slow_model(repo, "slow", seconds=3.0)
    with Cluster(repo, 2, tmp_path, router_args=["--replicas", "2", "--load-model", "slow"]) as c:
        client = c.client()
        wait_until(lambda: len(c.holders("slow")) == 2, 30, "slow on both nodes")
        run_slow(client, "slow", sequence_id=77, sequence_start=True)
        counts = [n.inference_count("slow") for n in c.nodes]
        assert sorted(counts) == [0, 1], counts
        victim, other = (c.nodes[0], c.nodes[1]) if counts[0] else (c.nodes[1], c.nodes[0])
        result: queue.Queue = queue.Queue()

        def step():
            try:
                run_slow(grpcclient.InferenceServerClient(c.url), "slow", sequence_id=77, client_timeout=60)
                result.put(None)
            except InferenceServerException as e:
                result.put(e)

        worker = threading.Thread(target=step)
        worker.start()
        time.sleep(min(1.0, per_run / 3))  # the request is executing on the victim
        victim.kill()
        error = result.get(timeout=60)
        worker.join(10)
        assert error is not None, "the sequence request was re-sent to the other replica"
        assert error.status() == "StatusCode.UNAVAILABLE", error
        assert other.inference_count("slow") == 0, "the other replica ran the sequence's step"


def test_unknown_models_are_asked_once_and_not_labelled(model_repo, tmp_path):
    """Requests for a well-formed unknown model: the router asks one node (a load: a repository
    rescan) once per interval, not every node, nor once per request, and its metrics never name
    the model."""
    repo = tmp_path / "repo"
    heavy_models(repo, "heavy_a")
    with Cluster(repo, 2, tmp_path) as c:
        client = c.client()
        for _ in range(20):
            with pytest.raises(InferenceServerException) as e:
                client.infer("late_model", [])
            assert e.value.status() == "StatusCode.NOT_FOUND", e.value
        for i in range(20):
            with pytest.raises(InferenceServerException):
                client.infer(f"no_such_model_{i}", [])
        metrics = c.router.metrics()
        assert "late_model" not in metrics and "no_such_model" not in metrics, \
            [line for line in metrics.splitlines() if "model" in line and "_model" in line]
        asked = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                    if line.startswith("tern_router_placement_failures_total"))
        assert asked == 21, f"nodes were asked {asked:.0f} times for 21 distinct unknown names"
        # The answer is remembered only briefly: a model added to the repository is then served.
        heavy_models(repo, "late_model")
        wait_until(lambda: run_heavy(client, "late_model") is None, 15, "late_model served once added")
        assert "late_model" in c.router.metrics()


def test_stream_errors_through_the_router_keep_the_request_id(model_repo, tmp_path):
    """Triton puts the failed request's id in a stream error response; so does the router."""
    from tern_testlib import infer_request, raw_stub

    with Cluster(model_repo, 1, tmp_path) as c:
        channel, stub = raw_stub(c.url)
        try:
            requests = [infer_request("no_such_model", [], request_id="bad-1"),
                        infer_request("tiny_add", [("INPUT0", "FP32", [1, 3], None)], request_id="bad-2")]
            replies = list(stub.ModelStreamInfer(iter(requests), timeout=30))
        finally:
            channel.close()
        assert [r.infer_response.id for r in replies] == ["bad-1", "bad-2"], replies
        assert all(r.error_message for r in replies), replies
        assert "no_such_model" in replies[0].error_message
        assert [r.infer_response.model_name for r in replies] == ["no_such_model", "tiny_add"]


def test_inference_token_cannot_trigger_a_lazy_load(model_repo, tmp_path):
    """A token limited to inference may use a placed model but not cause a load through the
    router: an unplaced model answers UNAVAILABLE naming the missing group, and nothing loads."""
    from test_auth import Tokens

    tokens = Tokens(tmp_path / "tokens", predictor=("inference,metadata,health", "*"), operator=("*", "*"))
    node = NodeProc(model_repo, ["--model-control-mode", "explicit"], log_dir=tmp_path, label="node")
    node.start()
    router = RouterProc(["--node", node.addr, "--auth-token-file", str(tokens.path)], log_dir=tmp_path)
    router.start()
    try:
        predictor = tokens.client(router.url, "predictor")
        operator = tokens.client(router.url, "operator")
        wait_until(predictor.is_server_ready, 15, "router ready")
        with pytest.raises(InferenceServerException) as e:
            infer_tiny(predictor)
        assert e.value.status() == "StatusCode.UNAVAILABLE", e.value
        assert "model-repository" in e.value.message() and "predictor" in e.value.message(), e.value
        with pytest.raises(InferenceServerException) as e:
            predictor.get_model_metadata("tiny_add")
        assert "model-repository" in e.value.message(), e.value
        assert node.ready_models() == set(), "nothing was loaded for the inference-only token"
        infer_tiny(operator)  # the operator's request loads it
        infer_tiny(predictor)  # then the predictor is served
        assert node.ready_models() == {"tiny_add"}
    finally:
        router.stop()
        node.kill()


def test_a_sequence_whose_node_goes_away_fails_clearly(model_repo, tmp_path):
    """A sequence's implicit state lives on its node (Triton's sequence batcher): when that node
    leaves, the router refuses the sequence's next request with a clear error rather than moving
    it to a replica without the state; a new START for the same ID is served elsewhere."""

    def step(client, value, start=False):
        x = grpcclient.InferInput("INPUT", [1, 1], "INT32")
        x.set_data_from_numpy(np.array([[value]], np.int32))
        r = client.infer("seq_accumulate", [x], sequence_id=91, sequence_start=start)
        return int(r.as_numpy("OUTPUT")[0][0])

    with Cluster(model_repo, 2, tmp_path, router_args=["--replicas", "2", "--load-model", "seq_accumulate"]) as c:
        client = c.client()
        wait_until(lambda: len(c.holders("seq_accumulate")) == 2, 30, "seq_accumulate on both nodes")
        assert step(client, 5, start=True) == 5
        assert step(client, 6) == 11
        victim = next(n for n in c.nodes if n.inference_count("seq_accumulate") == 2)
        victim.kill()
        wait_until(lambda: len(c.holders("seq_accumulate")) == 1, 30, "the router saw the node leave")
        with pytest.raises(InferenceServerException) as e:
            step(client, 7)
        assert e.value.status() == "StatusCode.UNAVAILABLE", e.value
        assert "sequence 91 was served by node" in str(e.value) and "restart the sequence" in str(e.value)
        assert step(client, 7, start=True) == 7
        assert step(client, 1) == 8
