"""A real Tern cluster on loopback for tests: one tern-router process and tern-node processes
that register with it (explicit model control, so the router places models), each on fixed
ports so a killed node can come back at the same address, as a StatefulSet pod does.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tern_testlib import ROOT, START_TIMEOUT_S, TernServer


def router_binary() -> Path:
    return Path(os.environ.get("TERN_ROUTER_BIN", ROOT / "target" / "release" / "tern-router"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    """Polls `predicate` until it returns a truthy value (returned) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - a transient RPC error is just "not yet"
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def cluster_token_files(directory: Path, name: str = "nodes") -> tuple[Path, Path]:
    """A control-plane token: the router's token file (`--cluster-token-file`, granting the
    `cluster` group) and the file with the token a node presents (`--router-token-file`)."""
    token = "tern_" + secrets.token_urlsafe(32)
    directory.mkdir(parents=True, exist_ok=True)
    table = directory / f"{name}-cluster-tokens"
    table.write_text(f"{name} sha256:{hashlib.sha256(token.encode()).hexdigest()} groups=cluster\n")
    presented = directory / f"{name}.token"
    presented.write_text(token + "\n")
    return table, presented


class RouterProc(TernServer):
    ready_mark = "tern-router ready"

    def __init__(self, extra_args=(), log_dir=None, label="router"):
        super().__init__([], extra_args=extra_args, log_dir=log_dir, label=label)
        self.grpc_port = free_port()
        self.metrics_port = free_port()
        self.http_port = free_port()
        # The control plane's port; it listens only with --cluster-token-file / --cluster-tls-ca.
        self.cluster_port = free_port()

    def binary(self) -> Path:
        return router_binary()

    def command(self) -> list[str]:
        cmd = [str(self.binary()), "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc_port),
               "--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics_port),
               "--http-address", "127.0.0.1", "--http-port", str(self.http_port)]
        if any(a in ("--cluster-token-file", "--cluster-tls-ca") for a in self.extra_args):
            cmd += ["--cluster-address", "127.0.0.1", "--cluster-port", str(self.cluster_port)]
        return cmd + list(self.extra_args)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()


class NodeProc(TernServer):
    """A tern-node on a fixed port (kept across restarts). Always tern-node itself, also when
    the node suite runs against `tern serve` (TERN_NODE_BIN / TERN_READY_MARK)."""

    ready_mark = "tern-node ready"

    def binary(self) -> Path:
        return Path(os.environ.get("TERN_CLUSTER_NODE_BIN", ROOT / "target" / "release" / "tern-node"))

    def __init__(self, repo, extra_args=(), log_dir=None, label="node"):
        super().__init__([repo], extra_args=extra_args, log_dir=log_dir, label=label)
        self.grpc_port = free_port()
        self.http_port = free_port()

    def start(self, timeout: float = START_TIMEOUT_S) -> "NodeProc":
        """A port that was free when picked may be taken before the node binds it (another
        server in the suite binding port 0): on its first start only (restarts keep their
        address), the node then gets new ports, at most three times."""
        for attempt in range(3):
            try:
                return super().start(timeout)
            except pytest.fail.Exception as e:
                if self.restarts or attempt == 2 or "Address already in use" not in str(e):
                    raise
                self.grpc_port, self.http_port = free_port(), free_port()
        raise AssertionError("unreachable")

    def command(self) -> list[str]:
        cmd = [str(self.binary())]
        for r in self.repos:
            cmd += ["--model-repository", str(r)]
        return cmd + ["--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc_port),
                      "--metrics-port", "0", "--http-address", "127.0.0.1", "--http-port", str(self.http_port),
                      *self.extra_args]

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def client(self):
        return grpcclient.InferenceServerClient(self.addr)

    def ready_models(self) -> set[str]:
        idx = self.client().get_model_repository_index()
        return {m.name for m in idx.models if m.state == "READY"}

    def inference_count(self, model: str) -> int:
        try:
            stats = self.client().get_inference_statistics(model).model_stats
        except Exception:  # noqa: BLE001 - not loaded here: nothing served
            return 0
        return sum(s.inference_count for s in stats)


class Cluster:
    """A router and `n` registering nodes; `with Cluster(...) as c:` stops everything."""

    def __init__(self, repo, n_nodes: int, log_dir, router_args=(), node_args=(), explicit=True):
        self.log_dir = Path(log_dir)
        # Nodes register on the router's control plane with a token of the `cluster` group.
        self.cluster_tokens, self.node_token = cluster_token_files(self.log_dir)
        self.router = RouterProc(["--cluster-token-file", str(self.cluster_tokens), *router_args],
                                 log_dir=self.log_dir)
        mode = ["--model-control-mode", "explicit"] if explicit else []
        self.node_args = [*mode, "--router-address", f"127.0.0.1:{self.router.cluster_port}",
                          "--router-token-file", str(self.node_token), *node_args]
        self.repo = repo
        self.nodes = [self.new_node(i) for i in range(n_nodes)]

    def new_node(self, i: int, extra=()) -> NodeProc:
        return NodeProc(self.repo, [*self.node_args, *extra], log_dir=self.log_dir, label=f"node{i}")

    def __enter__(self) -> "Cluster":
        self.router.start()
        for n in self.nodes:
            n.start()
        self.wait_healthy(len(self.nodes))
        return self

    def __exit__(self, *exc):
        for n in self.nodes:
            n.kill()
        self.router.stop()

    @property
    def url(self) -> str:
        return self.router.url

    def client(self):
        return grpcclient.InferenceServerClient(self.url)

    def wait_healthy(self, count: int, timeout: float = 15):
        def healthy():
            text = self.router.metrics()
            up = [line for line in text.splitlines()
                  if line.startswith("tern_router_node_healthy{") and line.endswith(" 1")]
            return len(up) >= count
        wait_until(healthy, timeout, f"{count} healthy nodes in the router")

    def holders(self, model: str) -> list[str]:
        return holders(self.client(), model)


def holders(client, model: str) -> list[str]:
    """Nodes holding `model` READY, from a router's merged index (`ready on: a, b`)."""
    for m in client.get_model_repository_index().models:
        if m.name == model and m.state == "READY":
            return sorted(x.strip() for x in m.reason.removeprefix("ready on:").split(","))
    return []


def tiny_add_inputs(rows: int = 1, value: float = 1.0):
    a = np.full((rows, 16), value, dtype=np.float32)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        x = grpcclient.InferInput(name, [rows, 16], "FP32")
        x.set_data_from_numpy(a)
        inputs.append(x)
    return inputs


def _node_status_class():
    """tern.cluster.v1.NodeStatus (the fields tests read), built at run time: the tests have no
    protoc; unknown fields of the real message are skipped by the parser."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(name="tern_test_cluster.proto", package="tern.cluster.v1",
                                           syntax="proto3")
    T = descriptor_pb2.FieldDescriptorProto
    replica = f.message_type.add(name="ModelReplica")
    for number, name in ((1, "name"), (2, "version"), (3, "state"), (4, "reason")):
        replica.field.add(name=name, number=number, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    replica.field.add(name="last_inference_ms", number=7, type=T.TYPE_UINT64, label=T.LABEL_OPTIONAL)
    status = f.message_type.add(name="NodeStatus")
    status.field.add(name="node_id", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    status.field.add(name="models", number=3, type=T.TYPE_MESSAGE, label=T.LABEL_REPEATED,
                     type_name=".tern.cluster.v1.ModelReplica")
    status.field.add(name="in_flight", number=5, type=T.TYPE_UINT64, label=T.LABEL_OPTIONAL)
    status.field.add(name="ready", number=10, type=T.TYPE_BOOL, label=T.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tern.cluster.v1.NodeStatus"))


def node_status(addr: str, timeout: float = 2.0) -> dict:
    """NodeControl.Status of the tern-node at `addr` (what routers poll): ready, in_flight and
    models as [(name, version, state, reason)], and last_inference_ms by (name, version)."""
    import grpc

    cls = _node_status_class()
    with grpc.insecure_channel(addr) as channel:
        raw = channel.unary_unary("/tern.cluster.v1.NodeControl/Status")(b"", timeout=timeout)
    msg = cls.FromString(raw)
    return {"ready": msg.ready, "in_flight": msg.in_flight,
            "models": [(m.name, m.version, m.state, m.reason) for m in msg.models],
            "last_inference_ms": {(m.name, m.version): m.last_inference_ms for m in msg.models}}
