"""The real tern-node started with exactly the arguments the manifests give it (after the
kubelet's $(VAR) expansion), on loopback: the probes succeed as the kubelet runs them, the
ServiceMonitor's scrape succeeds as Prometheus makes it, TLS and tokens do what the manifests
ask (livelib makes up what their Secrets hold), and SIGTERM drains within the grace period.

Only the model repository path and the two ports are swapped for local ones (a free port each,
a temporary repository with a tiny model named `tiny`), and Secret files for local copies."""

from __future__ import annotations

import time

import pytest

from deploylib import SECURE_COMPONENTS, binary, chart_objects, container, find, kustomize_objects, kustomize_overlay_objects, ort_library
from livelib import Proc, Secrets, container_env, free_port, grpc_unary, http_get, kubelet_probe, local_args, scrape

SOURCES = {
    "k8s": lambda: kustomize_objects("k8s"),
    "helm-default": lambda: chart_objects("default"),
    "helm-full": lambda: chart_objects("full"),
    "helm-minimal": lambda: chart_objects("minimal"),
    "helm-secure": lambda: chart_objects("secure"),
    "k8s-secure": lambda: kustomize_overlay_objects("k8s", SECURE_COMPONENTS),
}
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
HEALTH = "/grpc.health.v1.Health/Check"
INDEX = "/inference.GRPCInferenceService/RepositoryIndex"


@pytest.fixture(scope="module")
def secrets(tmp_path_factory) -> Secrets:
    return Secrets(tmp_path_factory.mktemp("secrets"))


@pytest.mark.parametrize("source", list(SOURCES))
def test_node_starts_with_manifest_args(source, model_repo, secrets, tmp_path):
    exe = binary("tern-node")
    assert exe is not None and exe.exists(), "tern-node not built: cargo build --release -p tern-node"
    lib = ort_library()
    objs = SOURCES[source]()
    sts = find(objs, "StatefulSet")
    c = container(sts, "tern-node")
    ports = {"grpc": free_port(), "http": free_port(), "metrics": free_port()}
    local = {"--model-repository": str(model_repo), "--grpc-port": str(ports["grpc"]), "--http-port": str(ports["http"]),
             "--metrics-port": str(ports["metrics"])}
    args = local_args(objs, sts, c, secrets, tmp_path, local)
    flags = dict(a.split("=", 1) if "=" in a else (a, None) for a in args)
    metrics_on = flags.get("--allow-metrics", "true") == "true"
    tls = flags.get("--grpc-use-ssl") == "true"
    mutual = flags.get("--grpc-use-ssl-mutual") == "true"
    env = dict(container_env(c), ORT_DYLIB_PATH=str(lib))
    node = Proc(exe, args, tmp_path / "node.log", env)
    try:
        # The kubelet: startup first, then liveness and readiness.
        node.wait_until("startupProbe success", lambda: kubelet_probe(c["startupProbe"], c, ports))
        for probe in PROBES:
            node.wait_until(f"{probe} success", lambda: kubelet_probe(c[probe], c, ports))

        # gRPC as routers and clients reach it: TLS with the CA, for the name routers verify.
        verify = {"ca": secrets.ca, "name": flags.get("--node-tls-domain", "tern-node-headless.tern.svc.cluster.local")}
        if mutual:
            verify.update(cert=secrets.cert, key=secrets.key)
        if tls:
            assert grpc_unary(ports["grpc"], HEALTH, tls=verify)[0] == "OK"
            assert grpc_unary(ports["grpc"], HEALTH)[0] == "UNAVAILABLE", "plaintext must be refused"
            if mutual:
                without_cert = {"ca": secrets.ca, "name": verify["name"]}
                assert grpc_unary(ports["grpc"], HEALTH, tls=without_cert)[0] == "UNAVAILABLE", "no client certificate"
        else:
            assert grpc_unary(ports["grpc"], HEALTH)[0] == "OK"
        if "--auth-token-file" in flags:
            grpc_tls = verify if tls else None
            assert grpc_unary(ports["grpc"], INDEX, tls=grpc_tls)[0] == "UNAUTHENTICATED"
            assert grpc_unary(ports["grpc"], INDEX, tls=grpc_tls, token=secrets.tokens["client"])[0] == "PERMISSION_DENIED"
            assert grpc_unary(ports["grpc"], INDEX, tls=grpc_tls, token=secrets.tokens["router-token"])[0] == "OK", (
                "the token the routers present must be enough"
            )

        if metrics_on:
            scheme = "https" if flags.get("--metrics-use-ssl") == "true" else "http"
            monitors = [o for o in objs if o["kind"] == "ServiceMonitor"]
            if monitors:
                endpoint = monitors[0]["spec"]["endpoints"][0]
                assert endpoint["scheme"] == scheme, "the ServiceMonitor's scheme must follow --metrics-use-ssl"
                assert scrape(endpoint, ports["metrics"], secrets) == 200, f"scrape of {endpoint} failed:\n{node.output()}"
                if "authorization" in endpoint:
                    assert scrape(endpoint, ports["metrics"], secrets, with_token=False) == 401
            else:
                status = http_get(ports["metrics"], "/metrics", scheme=scheme, ca=secrets.ca, server_name=verify["name"])
                assert status == 200, node.output()
            for path in ("/v2/health/live", "/v2/health/ready"):
                assert http_get(ports["metrics"], path, scheme=scheme, verify=False) == 200, path
            if scheme == "https":
                assert http_get(ports["metrics"], "/metrics") is None, "plain HTTP on the HTTPS metrics port"
        else:
            assert http_get(ports["metrics"], "/metrics") is None, "--allow-metrics=false still serves metrics"

        # SIGTERM (what tini forwards after the preStop pause): exits well within the drain time.
        exit_timeout = int(flags["--exit-timeout-secs"])
        started = time.monotonic()
        code = node.terminate(exit_timeout + 5)
        assert code == 0, f"exit status {code} after SIGTERM:\n{node.output()}"
        assert time.monotonic() - started < sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    finally:
        node.kill()
