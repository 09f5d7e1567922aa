"""The real tern-router in front of the real tern-node, each started with exactly the arguments
its manifest gives it, on loopback: the router's probes succeed as the kubelet runs them (its
readiness means it reached the node, over TLS and with its token where the manifests say so),
and a tritonclient client infers through it as a user of the cluster would: with TLS, the CA
and for mutual TLS a certificate; with tokens, a token.

The router finds the node as shipped: by --node-dns, as rendered (the headless Service's name
and port). On loopback the node listens on that port at an address of its own (127.0.0.x, a
pod IP) and the router runs with its own /etc/hosts in which the Service's name resolves there
(livelib.resolving); the system resolver does the rest, as cluster DNS would. Swapped for
local ones: the other ports, the model repository and Secret files (livelib). The certificate
does not name 127.0.0.x, so the router verifies the node only through --node-tls-domain, as in
a cluster where it reaches nodes by pod IP.

The node runs with its shipped readiness (strict, but in values-full) and explicit model control:
a model unloaded through the router leaves node and router ready (issue 17: once, one unload took the node out
of the Service and every router with it).

With the trial etcd (the chart's etcd.trial, components/etcd), Debian's etcd runs with the
StatefulSet's command and two routers share it: what an operator asks through one holds on the
other."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

from deploylib import SECURE_COMPONENTS, binary, chart_objects, container, find, kustomize_objects, kustomize_overlay_objects, ort_library
import time

from livelib import (ROUTER_NAME, Proc, Secrets, container_env, free_loopback_address, free_port, kubelet_probe,
                     local_args, resolving, scrape)

SOURCES = {
    "k8s": lambda: kustomize_objects("k8s"),
    "helm-default": lambda: chart_objects("default"),
    "helm-full": lambda: chart_objects("full"),
    "helm-secure": lambda: chart_objects("secure"),
    "k8s-secure": lambda: kustomize_overlay_objects("k8s", SECURE_COMPONENTS),
}


@pytest.fixture(scope="module")
def secrets(tmp_path_factory) -> Secrets:
    return Secrets(tmp_path_factory.mktemp("secrets"))


def _flags(args: list[str]) -> dict[str, str | None]:
    return dict(a.split("=", 1) if "=" in a else (a, None) for a in args)


def _client(port: int, flags: dict, secrets: Secrets, tmp_path):
    import tritonclient.grpc as grpcclient

    if flags.get("--grpc-use-ssl") != "true":
        return grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    files = {}
    for name, data in (("ca.crt", secrets.ca), ("client.crt", secrets.cert), ("client.key", secrets.key)):
        files[name] = tmp_path / name
        files[name].write_bytes(data)
    mutual = flags.get("--grpc-use-ssl-mutual") == "true"
    return grpcclient.InferenceServerClient(
        f"127.0.0.1:{port}",
        ssl=True,
        root_certificates=str(files["ca.crt"]),
        private_key=str(files["client.key"]) if mutual else None,
        certificate_chain=str(files["client.crt"]) if mutual else None,
        channel_args=[("grpc.ssl_target_name_override", ROUTER_NAME)],
    )


def _infer(client, headers):
    import tritonclient.grpc as grpcclient

    a = np.arange(4, dtype=np.float32).reshape(1, 4)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        i = grpcclient.InferInput(name, [1, 4], "FP32")
        i.set_data_from_numpy(a)
        inputs.append(i)
    return client.infer("tiny", inputs, headers=headers, client_timeout=60).as_numpy("OUTPUT0")


@pytest.mark.parametrize("source", list(SOURCES))
def test_router_serves_through_node_with_manifest_args(source, model_repo, secrets, tmp_path):
    from tritonclient.utils import InferenceServerException

    node_exe, router_exe = binary("tern-node"), binary("tern-router")
    for name, exe in (("tern-node", node_exe), ("tern-router", router_exe)):
        assert exe is not None and exe.exists(), f"{name} not built: cargo build --release -p {name}"
    lib = ort_library()
    objs = SOURCES[source]()
    sts, dep = find(objs, "StatefulSet"), find(objs, "Deployment")
    nc, rc = container(sts, "tern-node"), container(dep, "tern-router")

    router_ports = {"grpc": free_port(), "http": free_port(), "metrics": free_port()}
    router_args = local_args(objs, dep, rc, secrets, tmp_path, {
        "--grpc-port": str(router_ports["grpc"]), "--metrics-port": str(router_ports["metrics"]),
        "--http-port": str(router_ports["http"]),
    })
    flags = _flags(router_args)
    service, dns_port = flags["--node-dns"].rsplit(":", 1)
    pod_ip = free_loopback_address(int(dns_port))
    node_ports = {"grpc": int(dns_port), "http": free_port(), "metrics": free_port()}
    node_args = local_args(objs, sts, nc, secrets, tmp_path, {
        "--model-repository": str(model_repo), "--grpc-port": dns_port,
        "--metrics-port": str(node_ports["metrics"]), "--http-port": str(node_ports["http"]),
    }) + [f"--grpc-address={pod_ip}"]
    node_flags = _flags(node_args)
    assert node_flags.get("--model-control-mode") == "explicit", "routers place models only on explicit nodes"
    cluster_dns = resolving({service: pod_ip}, tmp_path)

    node = Proc(node_exe, node_args, tmp_path / "node.log", dict(container_env(nc), ORT_DYLIB_PATH=str(lib)))
    router = None
    try:
        node.wait_until("node readiness", lambda: kubelet_probe(nc["readinessProbe"], nc, node_ports))
        router = Proc(router_exe, router_args, tmp_path / "router.log", container_env(rc), prefix=cluster_dns)
        for probe in ("livenessProbe", "readinessProbe"):
            router.wait_until(f"router {probe} success (node log:\n{node.output()})",
                              lambda: kubelet_probe(rc[probe], rc, router_ports))

        client = _client(router_ports["grpc"], flags, secrets, tmp_path)
        headers = None
        if "--auth-token-file" in flags:
            with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
                _infer(client, None)
            headers = {"authorization": f"Bearer {secrets.tokens['client']}"}
            # A client's token (inference only) may not place a model through the router's lazy
            # loading (docs/security.md; tests/python/test_cluster.py checks the refusal): an
            # operator's token loads it unless the chart already pins it.
            client.load_model("tiny", headers={"authorization": f"Bearer {secrets.tokens['router-token']}"})
        out = _infer(client, headers)
        assert out.tolist() == [[0.0, 2.0, 4.0, 6.0]], f"router log:\n{router.output()}\nnode log:\n{node.output()}"

        # Unloaded through the router (an operator's token where tokens are on): node and
        # router stay ready, and the model serves again once loaded.
        operator = {"authorization": f"Bearer {secrets.tokens['router-token']}"} if headers else None
        client.unload_model("tiny", headers=operator)
        time.sleep(2.5)  # past the router's status polls and the probes' view of them
        assert kubelet_probe(nc["readinessProbe"], nc, node_ports), f"node not ready after an unload:\n{node.output()}"
        assert kubelet_probe(rc["readinessProbe"], rc, router_ports), f"router not ready after an unload:\n{router.output()}"
        assert client.is_server_ready(headers=headers)
        client.load_model("tiny", headers=operator)
        assert _infer(client, headers).tolist() == [[0.0, 2.0, 4.0, 6.0]]
        client.close()

        monitors = [o for o in objs if o["kind"] == "ServiceMonitor"]
        if monitors:
            endpoint = monitors[0]["spec"]["endpoints"][0]
            assert scrape(endpoint, router_ports["metrics"], secrets) == 200, router.output()

        assert router.terminate(int(flags.get("--exit-timeout-secs") or 30) + 5) == 0, router.output()
    finally:
        if router is not None:
            router.kill()
        node.kill()


# The trial etcd's sources: the chart's etcd.trial and deploy/k8s with components/etcd.
ETCD_SOURCES = {
    "helm-etcd": lambda: chart_objects("etcd"),
    "k8s-etcd": lambda: kustomize_overlay_objects("k8s", ("etcd",)),
}


def _desired(metrics_port: int, state: str) -> float:
    """tern_router_desired_models{state=...} of a router: operators' intents as it sees them."""
    import re
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf'^tern_router_desired_models{{state="{state}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def _etcd_key(client_url: str, key: str) -> str | None:
    """A key's value through etcd's JSON gateway (the v3 API over HTTP; no etcdctl needed)."""
    import base64
    import json
    import urllib.request

    body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{client_url}/v3/kv/range", data=body), timeout=5) as r:
        kvs = json.loads(r.read()).get("kvs", [])
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


@pytest.mark.parametrize("source", list(ETCD_SOURCES))
def test_two_routers_share_the_trial_etcd(source, model_repo, secrets, tmp_path):
    """The trial etcd started with its manifest's command (Debian's etcd-server; ports, addresses
    and data dir local), two routers with the manifest's args finding it and the node by their
    Service names: an operator's unload through router A holds on router B (no lazy reload
    there, which a router with the memory store would do), a load through B pins it for A,
    and the intent is in etcd under the prefix."""
    import shutil

    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    etcd_exe = shutil.which("etcd")
    assert etcd_exe, "etcd not installed: scripts/setup.sh --test (make setup-test) installs Debian's etcd-server"
    node_exe, router_exe = binary("tern-node"), binary("tern-router")
    for name, exe in (("tern-node", node_exe), ("tern-router", router_exe)):
        assert exe is not None and exe.exists(), f"{name} not built: cargo build --release -p {name}"
    objs = ETCD_SOURCES[source]()
    sts, dep = find(objs, "StatefulSet", "tern-node"), find(objs, "Deployment")
    nc, rc = container(sts, "tern-node"), container(dep, "tern-router")
    ec = container(find(objs, "StatefulSet", "tern-etcd"), "etcd")

    # etcd as its manifest runs it, at a pod IP of its own on the Service's port.
    router_flags = _flags(local_args(objs, dep, rc, secrets, tmp_path, {}))
    store = router_flags["--cluster-store"].removeprefix("etcd://")
    etcd_host, etcd_port = store.rsplit(":", 1)
    etcd_ip = free_loopback_address(int(etcd_port))
    etcd_ports = {"client": int(etcd_port), "metrics": free_port()}
    peer = f"http://127.0.0.1:{free_port()}"
    local = {
        "--data-dir": str(tmp_path / "etcd-data"),
        "--listen-client-urls": f"http://{etcd_ip}:{etcd_port}",
        "--listen-peer-urls": peer, "--initial-advertise-peer-urls": peer,
        "--listen-metrics-urls": f"http://127.0.0.1:{etcd_ports['metrics']}",
    }
    etcd_args = []
    for arg in ec["command"][1:]:
        flag, value = arg.split("=", 1)
        if flag == "--initial-cluster":
            value = f"{value.split('=', 1)[0]}={peer}"
        etcd_args.append(f"{flag}={local.get(flag, value)}")

    dns_port = router_flags["--node-dns"].rsplit(":", 1)[1]
    service = router_flags["--node-dns"].rsplit(":", 1)[0]
    pod_ip = free_loopback_address(int(dns_port))
    node_ports = {"grpc": int(dns_port), "http": free_port(), "metrics": free_port()}
    node_args = local_args(objs, sts, nc, secrets, tmp_path, {
        "--model-repository": str(model_repo), "--grpc-port": dns_port,
        "--metrics-port": str(node_ports["metrics"]), "--http-port": str(node_ports["http"]),
    }) + [f"--grpc-address={pod_ip}"]
    cluster_dns = resolving({service: pod_ip, etcd_host: etcd_ip}, tmp_path)

    procs = []
    try:
        etcd = Proc(pathlib.Path(etcd_exe), etcd_args, tmp_path / "etcd.log", dict(os.environ))
        procs.append(etcd)
        etcd.wait_until("etcd readiness", lambda: kubelet_probe(ec["readinessProbe"], ec, etcd_ports))
        node = Proc(node_exe, node_args, tmp_path / "node.log", dict(container_env(nc), ORT_DYLIB_PATH=str(ort_library())))
        procs.append(node)
        node.wait_until("node readiness", lambda: kubelet_probe(nc["readinessProbe"], nc, node_ports))
        routers, routers_ports = [], []
        for name in ("a", "b"):
            ports = {"grpc": free_port(), "http": free_port(), "metrics": free_port()}
            args = local_args(objs, dep, rc, secrets, tmp_path, {
                "--grpc-port": str(ports["grpc"]), "--metrics-port": str(ports["metrics"]), "--http-port": str(ports["http"]),
            })
            # Each pod has its own HOSTNAME, the router's id in etcd.
            env = dict(container_env(rc), HOSTNAME=f"tern-router-{name}")
            router = Proc(router_exe, args, tmp_path / f"router-{name}.log", env, prefix=cluster_dns)
            procs.append(router)
            router.wait_until(f"router {name} readiness", lambda: kubelet_probe(rc["readinessProbe"], rc, ports))
            routers.append((router, _client(ports["grpc"], {}, secrets, tmp_path)))
            routers_ports.append(ports)
        (a, client_a), (b, client_b) = routers
        logs = lambda: f"router a:\n{a.output()}\nrouter b:\n{b.output()}\netcd:\n{etcd.output()}"  # noqa: E731

        assert _infer(client_a, None).tolist() == [[0.0, 2.0, 4.0, 6.0]], logs()
        client_a.unload_model("tiny")
        prefix = router_flags["--cluster-store-prefix"]
        assert "unloaded" in (_etcd_key(f"http://{etcd_ip}:{etcd_port}", f"{prefix}/desired/tiny") or ""), logs()
        # Router B applies the intent from its watch (its gauge says so), then refuses to load
        # tiny lazily: the node answers, and keeps it unloaded.
        b_metrics = routers_ports[1]["metrics"]
        b.wait_until("router b sees the unload", lambda: _desired(b_metrics, "unloaded") == 1, timeout=10)
        with pytest.raises(InferenceServerException):
            _infer(client_b, None)
        node_client = grpcclient.InferenceServerClient(f"{pod_ip}:{dns_port}")
        assert not node_client.is_model_ready("tiny"), f"router b loaded tiny after an operator unloaded it:\n{logs()}"
        node_client.close()
        client_b.load_model("tiny")
        assert "pinned" in (_etcd_key(f"http://{etcd_ip}:{etcd_port}", f"{prefix}/desired/tiny") or ""), logs()
        a.wait_until("router a sees the pin", lambda: _desired(routers_ports[0]["metrics"], "pinned") == 1, timeout=10)
        assert _infer(client_a, None).tolist() == [[0.0, 2.0, 4.0, 6.0]], logs()
        for client in (client_a, client_b):
            client.close()
        for router in (a, b):
            assert router.terminate(35) == 0, router.output()
    finally:
        for p in reversed(procs):
            p.kill()
