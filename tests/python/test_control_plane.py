"""The cluster control plane as an attacker sees it (issue: cluster trust, item 1).

Membership (Register, Heartbeat, ClusterStatus) is served only on the router's control-plane
listener (--cluster-port), only to callers that prove they are nodes, and a registration or a
heartbeat can only ever describe the node that sent it. Every test here talks to real
tern-router / tern-node / `tern serve` processes on loopback; the forged messages are encoded
by hand (tritonclient has no stubs for Tern's cluster protocol).
"""

from __future__ import annotations

import subprocess
import time

import grpc
import pytest

import tritonclient.grpc as grpcclient

from tern_clusterlib import Cluster, NodeProc, RouterProc, cluster_token_files, tiny_add_inputs, wait_until
from tern_testlib import ROOT, TernServer

MEMBERSHIP = "/tern.cluster.v1.Membership/"
TERN = ROOT / "target" / "release" / "tern"


# --- a minimal protobuf encoder for tern.cluster.v1 messages --------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _uint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def node_status(addr: str, instance: str, models=(), sequence: int = 1, node_id: str = "") -> bytes:
    """NodeStatus: node_id=1, grpc_address=2, models=3 (name=1, version=2, state=3), ready=10,
    instance=11, sequence=12."""
    body = _field(1, (node_id or addr).encode()) + _field(2, addr.encode())
    for name, version, state in models:
        body += _field(3, _field(1, name.encode()) + _field(2, version.encode()) + _field(3, state.encode()))
    return body + _uint(10, 1) + _field(11, instance.encode()) + _uint(12, sequence)


def register_request(status: bytes, session: str) -> bytes:
    return _field(1, status) + _field(2, session.encode())


def heartbeat_request(status: bytes, session: str) -> bytes:
    return _field(1, status) + _field(2, session.encode())


def call(target: str, method: str, body: bytes, token: str | None = None, timeout: float = 10) -> bytes:
    """One unary Membership call with raw bytes; raises grpc.RpcError."""
    with grpc.insecure_channel(target) as channel:
        rpc = channel.unary_unary(MEMBERSHIP + method, request_serializer=None, response_deserializer=None)
        metadata = [("authorization", f"Bearer {token}")] if token else None
        return rpc(body, timeout=timeout, metadata=metadata)


def rpc_error(fn) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


def known(reply: bytes) -> bool:
    """HeartbeatResponse.known (field 1, bool)."""
    return reply == b"\x08\x01"


# --- tests ----------------------------------------------------------------------------------

def test_client_port_serves_no_control_plane(tmp_path):
    # A router with its control plane on: the client port still answers none of Membership.
    tokens, node_token = cluster_token_files(tmp_path)
    router = RouterProc(["--cluster-token-file", str(tokens)], log_dir=tmp_path)
    router.start()
    try:
        token = node_token.read_text().strip()
        status = node_status("127.0.0.1:9", "forged-1")
        for method, body in [("Register", register_request(status, "s" * 32)),
                             ("Heartbeat", heartbeat_request(status, "s" * 32)),
                             ("ClusterStatus", b"")]:
            err = rpc_error(lambda: call(router.url, method, body, token))
            assert err.code() == grpc.StatusCode.UNIMPLEMENTED, (method, err.code(), err.details())
        # The control plane is where the log says it is.
        assert any(f"cluster=127.0.0.1:{router.cluster_port}" in line for line in router.lines), router.log_tail()
    finally:
        router.stop()


def test_router_without_a_node_proof_has_no_control_plane(tmp_path):
    router = RouterProc(log_dir=tmp_path)
    router.start()
    try:
        assert any("cluster=off" in line for line in router.lines), router.log_tail()
        err = rpc_error(lambda: call(f"127.0.0.1:{router.cluster_port}", "ClusterStatus", b"", timeout=3))
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    finally:
        router.stop()
    # Asking for a control-plane port without saying how nodes prove themselves is refused.
    bad = subprocess.run([str(router.binary()), "--grpc-port", "0", "--metrics-port", "0", "--http-port", "0",
                          "--cluster-port", "0"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0
    assert "--cluster-token-file" in bad.stderr + bad.stdout, bad.stderr


def test_tern_serve_exposes_no_control_plane(model_repo, tmp_path):
    class Serve(TernServer):
        ready_mark = "tern ready"

        def binary(self):
            return TERN

        def command(self):
            return [str(TERN), "serve", *[a for r in self.repos for a in ("--model-repository", str(r))],
                    "--grpc-address", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0", "--http-port", "0",
                    *self.extra_args]

    srv = Serve([model_repo], log_dir=tmp_path, label="serve")
    srv.start()
    try:
        for method in ("Register", "Heartbeat", "ClusterStatus"):
            err = rpc_error(lambda: call(srv.url, method, b""))
            assert err.code() == grpc.StatusCode.UNIMPLEMENTED, (method, err.details())
    finally:
        srv.stop()


def test_control_plane_wants_a_node_credential(model_repo, tmp_path):
    with Cluster(model_repo, 1, tmp_path) as c:
        control = f"127.0.0.1:{c.router.cluster_port}"
        status = node_status("127.0.0.1:9", "forged-1")
        for method, body in [("Register", register_request(status, "s" * 32)), ("ClusterStatus", b"")]:
            err = rpc_error(lambda: call(control, method, body))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (method, err.details())
            err = rpc_error(lambda: call(control, method, body, token="tern_not-a-node-token"))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (method, err.details())
        # With the node's own credential, ClusterStatus answers (what `tern cluster` shows).
        out = subprocess.run([str(TERN), "cluster", "--url", control, "--token-file", str(c.node_token)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert c.nodes[0].addr in out.stdout and "registered" in out.stdout, out.stdout


def test_registration_must_come_from_the_node_at_that_address(model_repo, tmp_path):
    """A caller with a valid node token can still not register an address in another's name:
    not an address where nothing listens, not a real node that did not send the registration."""
    with Cluster(model_repo, 1, tmp_path, router_args=["--load-model", "tiny_add"]) as c:
        control = f"127.0.0.1:{c.router.cluster_port}"
        token = c.node_token.read_text().strip()
        real = c.nodes[0]
        wait_until(lambda: c.client().is_model_ready("tiny_add"), 30, "tiny_add placed on the real node")

        # An address where no node listens (an attacker's sink, say) is never added.
        sink = f"127.0.0.1:{real.grpc_port + 1 if real.grpc_port < 65535 else 1}"
        err = rpc_error(lambda: call(control, "Register",
                                     register_request(node_status(sink, "forged-1", [("tiny_add", "1", "READY")]),
                                                      "x" * 43), token))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
        assert sink in err.details(), err.details()

        # The real node's address, with a session the real node never sent: refused, and the
        # node's true status (tiny_add READY) stays.
        for instance in ("forged-2", _instance_of(control, token, real.addr)):
            forged = node_status(real.addr, instance, [], sequence=2**64 - 1)
            err = rpc_error(lambda: call(control, "Register", register_request(forged, "y" * 43), token))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()
            assert "did not send this registration" in err.details(), err.details()

        # A session that is too short to be a secret is refused before any dialling.
        err = rpc_error(lambda: call(control, "Register", register_request(node_status(real.addr, "i"), "short"),
                                     token))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()

        out = _cluster_status(control, token)
        assert sink.encode() not in out, "the unverified address reached the routing table"
        assert c.client().is_model_ready("tiny_add")
        assert c.client().infer("tiny_add", tiny_add_inputs()).as_numpy("OUTPUT0").tolist() == [[2.0] * 16]


def test_forged_heartbeat_cannot_overwrite_a_node(model_repo, tmp_path):
    """A heartbeat naming a registered node's address and instance, with the highest sequence
    and no models, must not change what the router believes about that node."""
    with Cluster(model_repo, 1, tmp_path, router_args=["--load-model", "tiny_add"]) as c:
        control = f"127.0.0.1:{c.router.cluster_port}"
        token = c.node_token.read_text().strip()
        real = c.nodes[0]
        wait_until(lambda: c.client().is_model_ready("tiny_add"), 30, "tiny_add placed on the real node")
        instance = _instance_of(control, token, real.addr)
        forged = heartbeat_request(node_status(real.addr, instance, [], sequence=2**64 - 1), "z" * 43)
        deadline = time.monotonic() + 3  # several of the node's heartbeat intervals
        while time.monotonic() < deadline:
            assert not known(call(control, "Heartbeat", forged, token)), "a forged heartbeat was accepted"
            time.sleep(0.1)
        assert c.client().is_model_ready("tiny_add"), "the forged heartbeat emptied the node's model list"
        assert c.client().infer("tiny_add", tiny_add_inputs()).as_numpy("OUTPUT0").tolist() == [[2.0] * 16]
        # The real node is still registered and heartbeating (its session is intact).
        assert b"tiny_add" in _cluster_status(control, token)


def test_node_without_the_cluster_token_is_not_registered(model_repo, tmp_path):
    tokens, _ = cluster_token_files(tmp_path)
    _, other = cluster_token_files(tmp_path / "other", name="stranger")
    router = RouterProc(["--cluster-token-file", str(tokens)], log_dir=tmp_path)
    router.start()
    node = NodeProc(model_repo, ["--router-address", f"127.0.0.1:{router.cluster_port}",
                                 "--router-token-file", str(other)], log_dir=tmp_path, label="stranger")
    node.start()
    try:
        wait_until(lambda: any("the router refused this node" in line for line in node.lines), 15,
                   "the node to log that the router refused it")
        assert not any("node registered" in line for line in router.lines)
        assert not router_ready(router)
    finally:
        node.stop()
        router.stop()


# --- helpers ----------------------------------------------------------------------------------

def router_ready(router: RouterProc) -> bool:
    return grpcclient.InferenceServerClient(router.url).is_server_ready()


def _cluster_status(control: str, token: str) -> bytes:
    return call(control, "ClusterStatus", b"", token)


def _fields(buf: bytes):
    """(field number, value) pairs of one protobuf message: ints for varints, bytes otherwise."""
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 2:
            length, i = _read_varint(buf, i)
            value, i = buf[i:i + length], i + length
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        yield number, value


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _instance_of(control: str, token: str, addr: str) -> str:
    """The `instance` a router reports for the node at `addr` (anyone with a node token can
    read it: it is an identifier, not a secret)."""
    for number, view in _fields(_cluster_status(control, token)):
        if number != 2:  # ClusterStatusResponse.nodes
            continue
        status = dict(_fields(dict(_fields(view))[1]))  # NodeView.status
        if status.get(2) == addr.encode():
            return status[11].decode()
    raise AssertionError(f"the router does not report {addr}")
