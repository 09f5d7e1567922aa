"""The real tern-node started with exactly the arguments the manifests give it (after the
kubelet's $(VAR) expansion), on loopback: the endpoints the probes, the ServiceMonitor and the
Docker HEALTHCHECK use answer, and SIGTERM drains within the pod's grace period.

Only the model repository path and the two ports are swapped for local ones (a free port each,
a temporary repository with a tiny model named `tiny`)."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from deploylib import ROOT, binary, chart_objects, container, find, kustomize_objects, ort_library, resolve_args, split_flags

SOURCES = {
    "k8s": lambda: kustomize_objects("k8s"),
    "helm-default": lambda: chart_objects("default"),
    "helm-full": lambda: chart_objects("full"),
    "helm-minimal": lambda: chart_objects("minimal"),
}
STARTUP_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_repo(tmp_path_factory) -> pathlib.Path:
    """A Triton repository with one tiny ONNX model (Add of two FP32 [-1, 4] tensors)."""
    onnx = pytest.importorskip("onnx", reason="onnx (installed by scripts/setup.sh) builds the test model")
    from onnx import TensorProto, helper

    repo = tmp_path_factory.mktemp("models")
    (repo / "tiny" / "1").mkdir(parents=True)
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"])],
        "tiny",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(repo / "tiny" / "1" / "model.onnx"))
    return repo


def grpc_health(port: int, service: str = "") -> int | None:
    """grpc.health.v1.Health/Check as the kubelet's gRPC probe sends it: the status number
    (1 = SERVING), or None when there is no answer."""
    import grpc

    request = b"" if not service else b"\n" + bytes([len(service)]) + service.encode()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            reply = ch.unary_unary("/grpc.health.v1.Health/Check")(request, timeout=2)
        except grpc.RpcError:
            return None
    return reply[1] if len(reply) >= 2 and reply[0] == 0x08 else 0


def http_status(port: int, path: str) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


@pytest.mark.parametrize("source", list(SOURCES))
def test_node_starts_with_manifest_args(source, model_repo, tmp_path):
    exe = binary("tern-node")
    assert exe is not None and exe.exists(), "tern-node not built: cargo build --release -p tern-node"
    lib = ort_library()
    if lib is None:
        pytest.skip("ONNX Runtime library missing (make setup installs .tern/onnxruntime)")
    objs = SOURCES[source]()
    sts = find(objs, "StatefulSet")
    c = container(sts, "tern-node")
    flags = split_flags(resolve_args(objs, c))
    grpc_port, metrics_port = free_port(), free_port()
    local = {"--model-repository": str(model_repo), "--grpc-port": str(grpc_port), "--metrics-port": str(metrics_port)}
    args = [f"{k}={local.get(k, v)}" if v is not None else k for k, v in flags]
    metrics_on = dict(flags).get("--allow-metrics", "true") == "true"
    env = dict(os.environ, ORT_DYLIB_PATH=str(lib))
    env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
    log = tmp_path / "node.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), *args], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while grpc_health(grpc_port) != 1:
            assert proc.poll() is None, f"tern-node exited {proc.returncode} with {args}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"gRPC health never SERVING:\n{log.read_text()}"
            time.sleep(0.2)
        # startupProbe / livenessProbe: grpc.health.v1 on the gRPC port (service "")
        for probe in ("startupProbe", "livenessProbe"):
            assert c[probe]["grpc"].get("service", "") == "", "probes check the server, not one service"
        # readinessProbe: what the manifest says, on the node that the manifest configures
        ready = c["readinessProbe"]
        if "httpGet" in ready:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while http_status(metrics_port, ready["httpGet"]["path"]) != 200:
                assert time.monotonic() < deadline, f"{ready['httpGet']['path']} never 200:\n{log.read_text()}"
                time.sleep(0.2)
        else:
            assert grpc_health(grpc_port) == 1
        if metrics_on:
            # The ServiceMonitor's endpoint and the Docker HEALTHCHECK's.
            assert http_status(metrics_port, "/metrics") == 200
            assert http_status(metrics_port, "/v2/health/live") == 200
            assert http_status(metrics_port, "/v2/health/ready") == 200
        else:
            assert http_status(metrics_port, "/metrics") is None, "--allow-metrics=false still serves metrics"
        # SIGTERM (what tini forwards after the preStop pause): exits well within the drain time.
        exit_timeout = int(dict(flags)["--exit-timeout-secs"])
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=exit_timeout + 5)
        assert code == 0, f"exit status {code} after SIGTERM:\n{log.read_text()}"
        assert time.monotonic() - started < sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
