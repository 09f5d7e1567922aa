"""Cluster state on etcd (`--cluster-store etcd://...`): two routers and three nodes on loopback
sharing one real etcd (Debian's etcd-server, started here with a temporary data dir).

Nodes 0 and 1 register with both routers; node 2 only with router A, so router B knows it only
through its record in etcd. The tests run in order on one cluster (module scope): operators'
unloads and pins are shared and survive restarts, a SIGKILLed node leaves every router when its
lease ends, and with etcd down routing goes on while operators' changes are refused.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import ssl
import threading
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tern_clusterlib import (NodeProc, RouterProc, cluster_token_files, free_port, node_status, tiny_add_inputs,
                             wait_until)

# etcd's own lower bound is about 1.5 s; short so the lease tests are quick.
LEASE_TTL_S = 2
UNLOADED = "was unloaded through the repository API"
# How long a request waits for a lazy load (and a follower for the leader, or for etcd).
LAZY_TIMEOUT_S = 10
PREFIX = "/tern-test"

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None,
                                reason="etcd not installed (scripts/setup.sh installs Debian's etcd-server)")


class EtcdProc:
    """A single-member etcd on loopback with fixed ports and data dir, so a restart keeps its data."""

    def __init__(self, log_dir: Path, tls=None):
        self.tls = tls  # a test_tls.Pki: etcd serves clients over mutual TLS
        self.data_dir = Path(tempfile.mkdtemp(prefix="tern-etcd-"))
        self.client_port, self.peer_port = free_port(), free_port()
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self):
        scheme = "https" if self.tls else "http"
        client, peer = f"{scheme}://127.0.0.1:{self.client_port}", f"http://127.0.0.1:{self.peer_port}"
        log = open(self.log_dir / f"etcd-{self.starts}.log", "w")
        self.starts += 1
        tls = []
        context = None
        if self.tls:
            tls = ["--cert-file", str(self.tls.server_cert), "--key-file", str(self.tls.server_key),
                   "--trusted-ca-file", str(self.tls.ca_path), "--client-cert-auth"]
            context = ssl.create_default_context(cafile=str(self.tls.ca_path))
            context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        self.proc = subprocess.Popen(
            ["etcd", "--data-dir", str(self.data_dir), "--listen-client-urls", client,
             "--advertise-client-urls", client, "--listen-peer-urls", peer,
             "--initial-advertise-peer-urls", peer, "--initial-cluster", f"default={peer}", *tls],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def healthy():
            assert self.proc.poll() is None, f"etcd exited with {self.proc.returncode}"
            with urllib.request.urlopen(f"{client}/health", timeout=1, context=context) as r:
                return b'"health":"true"' in r.read()

        wait_until(healthy, 20, "etcd healthy")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self):
        self.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class EtcdCluster:
    def __init__(self, repo, log_dir: Path):
        self.etcd = EtcdProc(log_dir)
        tokens, node_token = cluster_token_files(log_dir)
        store = ["--cluster-store", f"etcd://{self.etcd.endpoint}", "--cluster-store-prefix", "/tern-test",
                 "--node-lease-ttl-secs", str(LEASE_TTL_S), "--cluster-token-file", str(tokens),
                 "--lazy-load-timeout-secs", str(LAZY_TIMEOUT_S)]
        # The routers disagree on versioned_scale's replicas: an operator's intent must win.
        self.a = RouterProc([*store, "--router-id", "router-a", "--model-replicas", "versioned_scale=2"],
                            log_dir=log_dir, label="router-a")
        self.b = RouterProc([*store, "--router-id", "router-b", "--model-replicas", "versioned_scale=3"],
                            log_dir=log_dir, label="router-b")
        common = ["--model-control-mode", "explicit", "--router-token-file", str(node_token)]
        to_a = ["--router-address", f"127.0.0.1:{self.a.cluster_port}"]
        to_b = ["--router-address", f"127.0.0.1:{self.b.cluster_port}"]
        self.nodes = [NodeProc(repo, [*common, *to_a, *to_b], log_dir=log_dir, label="node0"),
                      NodeProc(repo, [*common, *to_a, *to_b], log_dir=log_dir, label="node1"),
                      NodeProc(repo, [*common, *to_a], log_dir=log_dir, label="node2")]

    def start(self):
        self.etcd.start()
        self.a.start()
        self.b.start()
        for n in self.nodes:
            n.start()

    def close(self):
        for n in self.nodes:
            n.kill()
        for r in (self.a, self.b):
            r.stop()
        self.etcd.close()


def healthy_nodes(router: RouterProc) -> set[str]:
    return set(re.findall(r'^tern_router_node_healthy\{node="([^"]+)"\} 1$', router.metrics(), re.M))


def known_nodes(router: RouterProc) -> set[str]:
    return set(re.findall(r'^tern_router_node_healthy\{node="([^"]+)"\}', router.metrics(), re.M))


def infer_tiny(url: str, value: float = 1.0):
    out = grpcclient.InferenceServerClient(url).infer("tiny_add", tiny_add_inputs(value=value)).as_numpy("OUTPUT0")
    assert np.allclose(out, 2 * value), out


def simple_inputs():
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        x = grpcclient.InferInput(name, [1, 16], "INT32")
        x.set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
        inputs.append(x)
    return inputs


def desired(router: RouterProc, state: str) -> int:
    """Models pinned or unloaded by operators as `router` sees them (tern_router_desired_models)."""
    m = re.search(rf'^tern_router_desired_models{{state="{state}"}} (\S+)$', router.metrics(), re.M)
    return int(float(m.group(1))) if m else 0


def leaders(cluster) -> int:
    """How many routers say they lead placement (tern_router_placement_leader)."""
    return sum(" 1" == line[len("tern_router_placement_leader"):]
               for r in (cluster.a, cluster.b) for line in r.metrics().splitlines()
               if line.startswith("tern_router_placement_leader "))


def leading(r: RouterProc) -> bool:
    return any(line == "tern_router_placement_leader 1" for line in r.metrics().splitlines())


def leader_and_follower(cluster) -> tuple[RouterProc, RouterProc]:
    wait_until(lambda: leaders(cluster) == 1, 6 * LEASE_TTL_S + 10, "one placement leader")
    return (cluster.a, cluster.b) if leading(cluster.a) else (cluster.b, cluster.a)


def on_replicas(nodes, model: str, want: int, timeout: float, what: str) -> dict[str, set[str]]:
    """Waits until `model` is READY on exactly `want` nodes; returns their versions."""
    seen = []

    def placed():
        seen[:] = [ready_versions(nodes, model)]
        return seen[0] if len(seen[0]) == want else None

    try:
        return wait_until(placed, timeout, what)
    except AssertionError as e:
        raise AssertionError(f"{e}; READY on {seen}") from None


def ready_versions(nodes, model: str) -> dict[str, set[str]]:
    """The versions of `model` each live node has READY (nodes holding none left out)."""
    out = {}
    for n in nodes:
        if n.alive():
            versions = {m[1] for m in node_status(n.addr)["models"] if m[0] == model and m[2] == "READY"}
            if versions:
                out[n.addr] = versions
    return out


def add_inputs(dtype):
    inputs = []
    for name, wire in (("INPUT0", None), ("INPUT1", None)):
        x = grpcclient.InferInput(name, [1, 16], {np.int8: "INT8", np.int16: "INT16", np.uint8: "UINT8",
                                                  np.uint16: "UINT16", np.uint32: "UINT32"}[dtype])
        x.set_data_from_numpy(np.ones((1, 16), dtype=dtype))
        inputs.append(x)
    return inputs


def etcd_kv(etcd: "EtcdProc", op: str, key: str, value: str = "") -> dict:
    """Writes (op "put") or deletes (op "deleterange") one key through etcd's JSON gateway."""
    body = {"key": base64.b64encode(key.encode()).decode()}
    if op == "put":
        body["value"] = base64.b64encode(value.encode()).decode()
    return _etcd_api(etcd, f"kv/{op}", body)


def etcd_keys(etcd: "EtcdProc", prefix: str) -> list[str]:
    raw = prefix.encode()
    end = raw[:-1] + bytes([raw[-1] + 1])
    reply = _etcd_api(etcd, "kv/range", {"key": base64.b64encode(raw).decode(),
                                          "range_end": base64.b64encode(end).decode(), "keys_only": True})
    return [base64.b64decode(kv["key"]).decode() for kv in reply.get("kvs", [])]


# versioned_scale serving version 2 only (its repository config serves all three).
VERSION_2 = {
    "name": "versioned_scale", "backend": "onnxruntime", "max_batch_size": 8,
    "version_policy": {"specific": {"versions": [2]}},
    "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
    "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
}


def held(nodes, model: str = "add_int32") -> bool:
    return any(model in n.ready_models() for n in nodes if n.alive())


def refused_without_loading(url: str, nodes, model: str = "add_int32") -> bool:
    """True when a request through the router fails and no node loaded the model for it (an
    unloaded model is not lazily loaded again)."""
    try:
        grpcclient.InferenceServerClient(url).infer(model, simple_inputs())
        return False
    except InferenceServerException:
        pass
    return not held(nodes, model)


@pytest.fixture(scope="module")
def cluster(model_repo, tmp_path_factory):
    c = EtcdCluster(model_repo, tmp_path_factory.mktemp("etcd-cluster"))
    try:
        c.start()
        all_nodes = {n.addr for n in c.nodes}
        for r in (c.a, c.b):
            wait_until(lambda r=r: healthy_nodes(r) >= all_nodes, 20, f"3 healthy nodes in {r.label}")
        yield c
    finally:
        c.close()


def test_a_node_registered_with_one_router_is_routed_by_all(cluster):
    # node2 registered with router A only: B polls it because A's record of it is in etcd.
    assert cluster.nodes[2].addr in healthy_nodes(cluster.b)
    wait_until(lambda: leaders(cluster) == 1, 10, "one placement leader")
    for r in (cluster.a, cluster.b):
        infer_tiny(r.url)


def test_unload_through_a_is_honoured_by_b(cluster):
    a = grpcclient.InferenceServerClient(cluster.a.url)
    b = grpcclient.InferenceServerClient(cluster.b.url)
    a.load_model("add_int32")
    wait_until(lambda: b.is_model_ready("add_int32"), 10, "add_int32 ready through router B")
    wait_until(lambda: desired(cluster.b, "pinned") >= 1, 10, "router B seeing A's pin")
    started = time.monotonic()
    a.unload_model("add_int32")
    wait_until(lambda: desired(cluster.b, "unloaded") == 1, 10, "router B seeing A's unload")
    print(f"router B saw router A's unload after {time.monotonic() - started:.3f} s")
    wait_until(lambda: not held(cluster.nodes), 10, "add_int32 unloaded on every node")
    # Router B does not load it again for a request (it would without A's unload).
    assert refused_without_loading(cluster.b.url, cluster.nodes)
    # Loaded again through B: A lazily loads it again, and the pin is everyone's.
    b.load_model("add_int32")
    wait_until(lambda: desired(cluster.a, "unloaded") == 0, 10, "router A seeing B's load")
    assert a.is_model_ready("add_int32")
    a.unload_model("add_int32")
    wait_until(lambda: desired(cluster.b, "unloaded") == 1, 10, "router B seeing the unload again")
    wait_until(lambda: not held(cluster.nodes), 10, "add_int32 unloaded on every node")


def test_restarting_every_router_keeps_pins_and_unloads(cluster):
    # tiny_add pinned through B (add_int32 is unloaded, from the test above).
    grpcclient.InferenceServerClient(cluster.b.url).load_model("tiny_add")
    cluster.a.restart()
    cluster.b.restart()
    all_nodes = {n.addr for n in cluster.nodes}
    for r in (cluster.a, cluster.b):
        wait_until(lambda r=r: healthy_nodes(r) >= all_nodes, 20, f"3 healthy nodes in {r.label} after restart")
        assert desired(r, "unloaded") == 1 and desired(r, "pinned") == 1, r.metrics()
    # The unload holds on both restarted routers: no lazy load of add_int32.
    for r in (cluster.a, cluster.b):
        assert refused_without_loading(r.url, cluster.nodes), f"{r.label} forgot the unload of add_int32"
    # The pin holds: unloaded behind the routers' backs (on the nodes themselves, no request
    # since the restart), tiny_add is placed again.
    for n in cluster.nodes:
        if "tiny_add" in n.ready_models():
            n.client().unload_model("tiny_add")
    wait_until(lambda: any("tiny_add" in n.ready_models() for n in cluster.nodes), 15,
               "the pinned tiny_add placed again")
    for r in (cluster.a, cluster.b):
        infer_tiny(r.url)


def test_an_operators_replicas_and_version_hold_on_every_router(cluster):
    # Loaded through the follower, which asks the leader to place it: the replica count is the
    # follower's (router A says 2, B says 3) and the version the override's, on every replica,
    # including one the leader places later to make up for a lost one.
    leader, follower = leader_and_follower(cluster)
    want = 2 if follower is cluster.a else 3
    grpcclient.InferenceServerClient(follower.url).load_model("versioned_scale", config=json.dumps(VERSION_2))
    serving = on_replicas(cluster.nodes, "versioned_scale", want, 15, f"versioned_scale on {want} nodes")
    assert all(v == {"2"} for v in serving.values()), serving
    lost = next(n for n in cluster.nodes if n.addr in serving)
    lost.client().unload_model("versioned_scale")
    wait_until(lambda: lost.addr not in ready_versions(cluster.nodes, "versioned_scale"), 10, "a replica lost")
    serving = on_replicas(cluster.nodes, "versioned_scale", want, 20,
                          f"the leader placing versioned_scale on {want} nodes again")
    assert all(v == {"2"} for v in serving.values()), f"a replica placed again serves other versions: {serving}"
    for r in (leader, follower):
        x = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
        out = grpcclient.InferenceServerClient(r.url).infer("versioned_scale", [x]).as_numpy("OUTPUT0")
        assert np.allclose(out, 2.0), out


def test_two_operators_loading_at_once_through_two_routers_place_once(cluster):
    assert not ready_versions(cluster.nodes, "add_int8")
    start = threading.Barrier(2)
    errors = []

    def load(url):
        try:
            start.wait(10)
            grpcclient.InferenceServerClient(url).load_model("add_int8")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=load, args=(r.url,)) for r in (cluster.a, cluster.b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    holders = ready_versions(cluster.nodes, "add_int8")
    assert len(holders) == 1, f"add_int8 placed on {sorted(holders)} (one replica wanted)"
    for r in (cluster.a, cluster.b):
        assert grpcclient.InferenceServerClient(r.url).is_model_ready("add_int8")


def test_a_load_in_progress_in_etcd_is_not_started_again(cluster):
    # Another router's load in progress, as it publishes it (a key written here by hand, the
    # only fault injected): no router starts a second load of the model while it is there.
    leader, follower = leader_and_follower(cluster)
    node = cluster.nodes[0]
    mark = f"{PREFIX}/loading/{node.addr}/add_int16"
    etcd_kv(cluster.etcd, "put", mark, '{"router": "another-router"}')
    result = []

    def infer():
        try:
            out = grpcclient.InferenceServerClient(follower.url).infer("add_int16", add_inputs(np.int16))
            result.append(out.as_numpy("OUTPUT0"))
        except Exception as e:  # noqa: BLE001 - reported below
            result.append(e)

    thread = threading.Thread(target=infer)
    thread.start()
    time.sleep(2)
    assert not result, result
    assert not ready_versions(cluster.nodes, "add_int16"), "a second load started beside one in progress"
    # The other load "ended" without the model (its router went away): the leader places it.
    etcd_kv(cluster.etcd, "deleterange", mark)
    thread.join(LAZY_TIMEOUT_S + 5)
    assert result and not isinstance(result[0], Exception), result
    assert np.array_equal(result[0], np.full((1, 16), 2, dtype=np.int16)), result
    assert len(ready_versions(cluster.nodes, "add_int16")) == 1
    # This router's own loads are published while they run and cleared after.
    assert etcd_keys(cluster.etcd, f"{PREFIX}/loading/") == []


def etcd_revision(etcd: "EtcdProc") -> int:
    return int(_etcd_api(etcd, "kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"])


def test_requests_write_nothing_to_etcd_and_nodes_report_recency(cluster):
    # Once the cluster is quiet (answers' leases expired), requests through both routers leave
    # etcd's revision (bumped by every write) where it was.
    def quiet():
        first = etcd_revision(cluster.etcd)
        time.sleep(LEASE_TTL_S + 1)
        return etcd_revision(cluster.etcd) == first

    wait_until(quiet, 30, "etcd quiet")
    revision = etcd_revision(cluster.etcd)
    before = time.time() * 1000
    for i in range(20):
        for r in (cluster.a, cluster.b):
            infer_tiny(r.url, value=float(i))
    assert etcd_revision(cluster.etcd) == revision, "a request wrote to etcd"
    # LRU recency comes from the nodes (their last inference per model), so every router
    # evicts by the same order whichever router requests went through.
    stamps = wait_until(lambda: [t for n in cluster.nodes if n.alive()
                                 for (name, _), t in node_status(n.addr)["last_inference_ms"].items()
                                 if name == "tiny_add" and t >= before - 1000], 5,
                        "a node reporting tiny_add's last inference")
    assert all(t <= time.time() * 1000 + 1000 for t in stamps), stamps


def test_a_lazy_load_through_both_routers_at_once_loads_one_replica(cluster):
    # Only the leader router places; the other asks it through etcd and waits for the model.
    assert not held(cluster.nodes, "add_fp32")
    start = threading.Barrier(8)
    errors = []

    def infer(url):
        try:
            start.wait(10)
            out = grpcclient.InferenceServerClient(url).infer("add_fp32", tiny_add_inputs()).as_numpy("OUTPUT0")
            assert np.allclose(out, 2.0), out
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=infer, args=(r.url,)) for r in (cluster.a, cluster.b) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    loaded = [n.addr for n in cluster.nodes
              if any(m[0] == "add_fp32" and m[2] in ("READY", "LOADING") for m in node_status(n.addr)["models"])]
    assert len(loaded) == 1, f"add_fp32 loaded on {loaded} (one replica wanted)"


def test_sigkilled_node_leaves_every_router_when_its_lease_ends(cluster):
    gone = cluster.nodes[2]
    gone.kill()
    started = time.monotonic()
    for r in (cluster.a, cluster.b):
        wait_until(lambda r=r: gone.addr not in known_nodes(r), 3 * LEASE_TTL_S + 10, f"node2 gone from {r.label}")
    print(f"a SIGKILLed node left both routers after {time.monotonic() - started:.3f} s (lease TTL {LEASE_TTL_S} s)")
    for r in (cluster.a, cluster.b):
        infer_tiny(r.url)


def test_killing_the_leader_under_16_way_load_fails_no_request(cluster):
    """16 clients send requests to the surviving router while the leader router is SIGKILLed.

    What a client sees: requests to the surviving router all succeed (it routes from its own
    view and never waits on etcd or the leader); requests in flight on, or sent to, the killed
    router fail with a connection error (UNAVAILABLE), which a Kubernetes Service or a
    client-side balancer retries on the survivor. Placement is taken over within the lease TTL:
    the survivor becomes the leader and lazily loads a model no node holds."""
    leader, other = leader_and_follower(cluster)
    stop = threading.Event()
    sent, failures = [0] * 16, []

    def client(i):
        c = grpcclient.InferenceServerClient(other.url)
        while not stop.is_set():
            try:
                out = c.infer("tiny_add", tiny_add_inputs(value=float(i))).as_numpy("OUTPUT0")
                assert np.allclose(out, 2.0 * i), out
                sent[i] += 1
            except Exception as e:  # noqa: BLE001 - reported below
                failures.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: all(n > 0 for n in sent), 20, "all 16 clients served")
        leader.kill()
        started = time.monotonic()
        wait_until(lambda: leading(other), 6 * LEASE_TTL_S + 10, f"{other.label} taking over placement")
        print(f"{other.label} took placement over {time.monotonic() - started:.3f} s after the leader was SIGKILLed "
              f"(lease TTL {LEASE_TTL_S} s)")
        # Placement works under the new leader: a lazy load of a model no node holds.
        out = grpcclient.InferenceServerClient(other.url).infer("add_uint32", add_inputs(np.uint32))
        assert np.array_equal(out.as_numpy("OUTPUT0"), np.full((1, 16), 2, dtype=np.uint32))
        during = sum(sent)
        wait_until(lambda: sum(sent) > during + 16, 10, "requests still flowing")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    print(f"{sum(sent)} requests through {other.label} while the leader died, {len(failures)} failed")
    assert not failures, failures[:5]
    leader.restart()
    wait_until(lambda: leaders(cluster) == 1, 10, "one placement leader with both routers up")
    live = {n.addr for n in cluster.nodes if n.alive()}
    wait_until(lambda: healthy_nodes(leader) >= live, 20, f"the nodes back in {leader.label}")


def test_etcd_down_routing_goes_on_and_operator_changes_wait(cluster):
    _, follower = leader_and_follower(cluster)
    cluster.etcd.kill()
    # Routing from each router's last view: requests keep flowing.
    for i in range(20):
        for r in (cluster.a, cluster.b):
            infer_tiny(r.url, value=float(i))
    # An operator's change is refused, naming etcd.
    with pytest.raises(InferenceServerException) as e:
        grpcclient.InferenceServerClient(cluster.a.url).unload_model("tiny_add")
    assert e.value.status() == "StatusCode.UNAVAILABLE", e.value
    assert "etcd" in e.value.message(), e.value.message()
    # Nothing was half applied: tiny_add is still served.
    infer_tiny(cluster.b.url)
    # A lazy load through a follower waits for etcd (and a leader), up to the lazy-load
    # timeout, then fails naming etcd.
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as e:
        grpcclient.InferenceServerClient(follower.url).infer("add_uint16", add_inputs(np.uint16))
    print(f"a lazy load with etcd down failed after {time.monotonic() - started:.3f} s: {e.value.message()}")
    assert e.value.status() == "StatusCode.UNAVAILABLE", e.value
    assert "etcd" in e.value.message() and "add_uint16" in e.value.message(), e.value.message()
    # One asked while etcd is down and answered once it is back: the request waits, not fails.
    result = []

    def infer():
        try:
            result.append(grpcclient.InferenceServerClient(follower.url).infer("add_uint8", add_inputs(np.uint8))
                          .as_numpy("OUTPUT0"))
        except Exception as e:  # noqa: BLE001 - reported below
            result.append(e)

    waiting = threading.Thread(target=infer)
    waiting.start()
    cluster.etcd.start()
    started = time.monotonic()
    waiting.join(LAZY_TIMEOUT_S + 5)
    print(f"the lazy load asked with etcd down was answered {time.monotonic() - started:.3f} s after etcd was back")
    assert result and not isinstance(result[0], Exception), result
    assert np.array_equal(result[0], np.full((1, 16), 2, dtype=np.uint8)), result
    wait_until(lambda: grpcclient.InferenceServerClient(cluster.a.url).load_model("add_int32") is None, 20,
               "an operator load through router A once etcd is back")
    wait_until(lambda: desired(cluster.b, "unloaded") == 0, 10, "router B seeing the load")
    # Placement resumes: one router leads again and re-places a model in use that a node lost.
    wait_until(lambda: leaders(cluster) == 1, 6 * LEASE_TTL_S + 10, "one placement leader again")
    for n in cluster.nodes:
        if n.alive() and "add_fp32" in n.ready_models():
            n.client().unload_model("add_fp32")
    wait_until(lambda: held(cluster.nodes, "add_fp32"), 20, "add_fp32 placed again by the leader")
    for r in (cluster.a, cluster.b):
        infer_tiny(r.url)



def _etcd_api(etcd: EtcdProc, path: str, body: dict, token: str | None = None) -> dict:
    """etcd's JSON gateway (v3 API over HTTP): the tests have no etcdctl."""
    import json

    request = urllib.request.Request(f"http://{etcd.endpoint}/v3/{path}", data=json.dumps(body).encode(),
                                     headers={"Authorization": token} if token else {})
    with urllib.request.urlopen(request, timeout=5) as r:
        return json.loads(r.read())


def test_etcd_with_authentication(tmp_path):
    etcd = EtcdProc(tmp_path)
    etcd.start()
    try:
        password = "pw-" + str(time.monotonic_ns())
        _etcd_api(etcd, "auth/user/add", {"name": "root", "password": password})
        _etcd_api(etcd, "auth/user/grant", {"user": "root", "role": "root"})
        _etcd_api(etcd, "auth/enable", {})
        password_file = tmp_path / "etcd-password"
        password_file.write_text(password + "\n")
        store = ["--cluster-store", f"etcd://{etcd.endpoint}", "--node-lease-ttl-secs", str(LEASE_TTL_S)]
        # Without credentials the router does not start, and says why.
        refused = RouterProc(store, log_dir=tmp_path, label="router-no-auth")
        with pytest.raises(pytest.fail.Exception) as e:
            refused.start(timeout=15)
        assert "etcd" in str(e.value) and "unavailable" in str(e.value), str(e.value)
        router = RouterProc([*store, "--etcd-username", "root", "--etcd-password-file", str(password_file)],
                            log_dir=tmp_path, label="router-auth")
        router.start()
        try:
            wait_until(lambda: "tern_router_placement_leader 1" in router.metrics(), 10, "the router leading")
        finally:
            router.stop()
    finally:
        etcd.close()


def test_etcd_over_mutual_tls(tmp_path):
    from test_tls import Pki  # the certificates the TLS tests generate (rustls on our side)

    pki = Pki(tmp_path)
    etcd = EtcdProc(tmp_path, tls=pki)
    etcd.start()
    try:
        store = ["--cluster-store", f"etcd://{etcd.endpoint}", "--node-lease-ttl-secs", str(LEASE_TTL_S)]
        # Without the client certificate etcd refuses the handshake: the router does not start.
        refused = RouterProc([*store, "--etcd-ca-file", str(pki.ca_path)], log_dir=tmp_path, label="router-no-cert")
        with pytest.raises(pytest.fail.Exception) as e:
            refused.start(timeout=15)
        assert "etcd" in str(e.value) and "unavailable" in str(e.value), str(e.value)
        router = RouterProc([*store, "--etcd-ca-file", str(pki.ca_path), "--etcd-cert-file", str(pki.client_cert),
                             "--etcd-key-file", str(pki.client_key)], log_dir=tmp_path, label="router-tls")
        router.start()
        try:
            wait_until(lambda: "tern_router_placement_leader 1" in router.metrics(), 10, "the router leading over TLS")
        finally:
            router.stop()
        # A missing file is named.
        bad = RouterProc([*store, "--etcd-ca-file", str(tmp_path / "missing.pem")], log_dir=tmp_path, label="router-bad")
        with pytest.raises(pytest.fail.Exception) as e:
            bad.start(timeout=15)
        assert "--etcd-ca-file" in str(e.value), str(e.value)
    finally:
        etcd.close()
