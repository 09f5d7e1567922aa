"""Running tern-node and tern-router on loopback with exactly the arguments the manifests give
them, as a cluster would: the files their Secret volumes hold are made up here (one CA, one
certificate for routers and nodes with both server and client usage, a token file and tokens
from `tern token new`) and written where the mounts would put them, and the kubelet's probes
and Prometheus' scrape are made as those programs make them.

The certificate names only the cluster's DNS names (no 127.0.0.1, no localhost), so a router
reaching a node at 127.0.0.1 verifies it only through --node-tls-domain, as in a cluster where
it reaches nodes by pod IP."""

from __future__ import annotations

import datetime
import http.client
import os
import pathlib
import signal
import socket
import ssl
import subprocess
import time
from typing import Any

from deploylib import FILE_FLAGS, ROOT, binary, resolve_args, secret_file, split_flags

STARTUP_TIMEOUT_S = 60

# The names the test certificate carries: the router Service (what clients dial) and the names
# routers and Prometheus verify nodes by (the headless Service; values-full's tls.nodeDomain).
CERT_NAMES = (
    "tern-router.tern.svc.cluster.local",
    "tern-node-headless.tern.svc.cluster.local",
    "nodes.tern.example.com",
)
ROUTER_NAME = CERT_NAMES[0]

# Tokens by role and their groups (docs/security.md, "Between routers and nodes").
TOKEN_GROUPS = {
    "router-token": "cluster,health,metadata,inference,model-config,model-repository,statistics",
    "node-token": "cluster",
    "client": "inference,metadata",
    "metrics": "metrics",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model_repo(repo: pathlib.Path) -> pathlib.Path:
    """A Triton repository with one model `tiny`: Add of two FP32 [-1, 4] tensors, with a
    complete config.pbtxt (helm-full runs --strict-model-config=true)."""
    import onnx
    from onnx import TensorProto, helper

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
    tensor = '{{ name: "{}" data_type: TYPE_FP32 dims: [ 4 ] }}'
    (repo / "tiny" / "config.pbtxt").write_text(
        'name: "tiny"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        f"input [ {tensor.format('INPUT0')}, {tensor.format('INPUT1')} ]\n"
        f"output [ {tensor.format('OUTPUT0')} ]\n"
    )
    return repo


# === Secrets ===================================================================================


class Secrets:
    """What the Secrets hold. Content is chosen by what the flag that names a file expects
    (FILE_FLAGS), and one (Secret, key) must always be used for the same thing."""

    def __init__(self, workdir: pathlib.Path):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        def name(cn):
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

        now = datetime.datetime.now(datetime.timezone.utc)

        def cert(subject, key, issuer_key, ca):
            b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name("tern-deploy-test-ca"))
                 .public_key(key.public_key()).serial_number(x509.random_serial_number())
                 .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                 .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
            if not ca:
                b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in CERT_NAMES]), critical=False)
                b = b.add_extension(
                    x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
                )
            return b.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

        ca_key = ec.generate_private_key(ec.SECP256R1())
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = cert("tern-deploy-test-ca", ca_key, ca_key, ca=True)
        self.cert = cert("tern", leaf_key, ca_key, ca=False)
        self.key = leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

        tern = binary("tern")
        assert tern is not None and tern.exists(), "tern not built: cargo build --release -p tern-cli"
        self.tokens: dict[str, str] = {}
        lines = []
        for role, groups in TOKEN_GROUPS.items():
            out = workdir / f"{role}.token"
            proc = subprocess.run([str(tern), "token", "new", role, str(out), "--groups", groups],
                                  capture_output=True, text=True, timeout=30, check=True)
            self.tokens[role] = out.read_text().strip()
            lines.append(proc.stdout.strip())
        self.token_file = ("\n".join(lines) + "\n").encode()
        self._uses: dict[tuple[str, str], str] = {}

    def content(self, secret: str, key: str, role: str) -> bytes:
        used = self._uses.setdefault((secret, key), role)
        assert used == role, f"Secret {secret} key {key} is used both as {used} and as {role}"
        if role in ("router-token", "node-token", "metrics"):
            return (self.tokens[role] + "\n").encode()
        return {"cert": self.cert, "key": self.key, "ca": self.ca, "token-file": self.token_file}[role]


def local_args(objs, workload: dict, c: dict, secrets: Secrets, root: pathlib.Path,
               replace: dict[str, str | None]) -> list[str]:
    """The container's args after the kubelet's $(VAR) expansion, with each Secret file
    written under `root` and its flag pointed there, and `replace` applied (None drops a flag)."""
    out = []
    for flag, value in split_flags(resolve_args(objs, c)):
        if flag in replace:
            value = replace[flag]
            if value is None:
                continue
        elif flag in FILE_FLAGS:
            name, key, _ = secret_file(workload, c, value)
            local = root / c["name"] / value.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(secrets.content(name, key, FILE_FLAGS[flag]))
            value = str(local)
        out.append(flag if value is None else f"{flag}={value}")
    return out


# === Processes =================================================================================


class Proc:
    def __init__(self, exe: pathlib.Path, args: list[str], log: pathlib.Path, env: dict[str, str],
                 prefix: list[str] = ()):
        self.args, self.log = args, log
        with open(log, "wb") as out:
            self.p = subprocess.Popen([*prefix, str(exe), *args], stdout=out, stderr=subprocess.STDOUT, env=env,
                                      cwd=ROOT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until(self, what: str, check, timeout: float = STARTUP_TIMEOUT_S):
        deadline = time.monotonic() + timeout
        while not check():
            assert self.p.poll() is None, f"exited {self.p.returncode} with {self.args}:\n{self.output()}"
            assert time.monotonic() < deadline, f"{what} never happened:\n{self.output()}"
            time.sleep(0.2)

    def terminate(self, timeout: float) -> int:
        self.p.send_signal(signal.SIGTERM)
        return self.p.wait(timeout=timeout)

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


# === Cluster DNS on loopback ===================================================================


def free_loopback_address(port: int) -> str:
    """A loopback address 127.0.0.x (x >= 10) on which `port` is free: a pod IP of its own,
    so a node can listen on the port its manifest gives it."""
    import random

    candidates = list(range(10, 250))
    random.shuffle(candidates)
    for x in candidates:
        address = f"127.0.0.{x}"
        with socket.socket() as s:
            try:
                s.bind((address, port))
            except OSError:
                continue
            return address
    raise AssertionError(f"no loopback address 127.0.0.10-249 has port {port} free")


def resolving(names: dict[str, str], workdir: pathlib.Path) -> list[str]:
    """A command prefix that runs a program with its own /etc/hosts in which `names` resolve
    to the given loopback addresses, in a private mount namespace (unshare(1); nothing of the
    machine's changes): the program resolves a cluster DNS name, as rendered in a manifest,
    through the system resolver as it would in a cluster. Fails (never skips) where user and
    mount namespaces are not available."""
    hosts = workdir / "hosts"
    hosts.write_text("127.0.0.1 localhost\n" + "".join(f"{ip} {name}\n" for name, ip in names.items()))
    prefix = ["unshare", "--user", "--map-root-user", "--mount", "--",
              "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts)]
    probe = subprocess.run([*prefix, "getent", "hosts", *names], capture_output=True, text=True, timeout=30)
    resolved = {line.split()[1]: line.split()[0] for line in probe.stdout.splitlines() if line.strip()}
    assert probe.returncode == 0 and resolved == names, (
        f"cannot give a program its own /etc/hosts with unshare (user and mount namespaces): "
        f"exit {probe.returncode}, resolved {resolved}, stderr: {probe.stderr.strip()}"
    )
    return prefix


def container_env(c: dict) -> dict[str, str]:
    env = dict(os.environ)
    env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
    return env


# === What the kubelet and Prometheus do ========================================================


def grpc_health(port: int, service: str = "") -> int | None:
    """grpc.health.v1.Health/Check as the kubelet's gRPC probe sends it (plaintext): the
    status number (1 = SERVING), or None when there is no answer."""
    import grpc

    request = b"" if not service else b"\n" + bytes([len(service)]) + service.encode()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            reply = ch.unary_unary("/grpc.health.v1.Health/Check")(request, timeout=2)
        except grpc.RpcError:
            return None
    return reply[1] if len(reply) >= 2 and reply[0] == 0x08 else 0


def http_get(port: int, path: str, *, scheme: str = "http", ca: bytes | None = None, server_name: str | None = None,
             token: str | None = None, verify: bool = True) -> int | None:
    """GET over HTTP or HTTPS; with HTTPS and `verify`, the certificate is checked against `ca`
    for `server_name` (what a ServiceMonitor's tlsConfig asks). The status, or None."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        if scheme.lower() == "https":
            ctx = ssl.create_default_context(cadata=ca.decode()) if verify else ssl._create_unverified_context()
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=3)
            raw = socket.create_connection(("127.0.0.1", port), timeout=3)
            conn.sock = ctx.wrap_socket(raw, server_hostname=server_name if verify else None)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
        conn.request("GET", path, headers=headers)
        status = conn.getresponse().status
        conn.close()
        return status
    except (OSError, http.client.HTTPException):
        return None


def tcp_connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def local_port(c: dict, port: Any, ports: dict[str, int]) -> int:
    """A probe's port (a name or a containerPort) -> the local port of that container port."""
    if isinstance(port, str):
        return ports[port]
    names = [p["name"] for p in c["ports"] if p["containerPort"] == port]
    assert names, f"probe port {port} is no containerPort of {c['name']}"
    return ports[names[0]]


def kubelet_probe(probe: dict, c: dict, ports: dict[str, int]) -> bool:
    """One probe as the kubelet runs it: gRPC health in plaintext, HTTP(S) GET without
    certificate checks and without a token (2xx/3xx is success), or a TCP connect."""
    if "grpc" in probe:
        return grpc_health(local_port(c, probe["grpc"]["port"], ports), probe["grpc"].get("service", "")) == 1
    if "httpGet" in probe:
        get = probe["httpGet"]
        status = http_get(local_port(c, get["port"], ports), get["path"], scheme=get.get("scheme", "HTTP"), verify=False)
        return status is not None and 200 <= status < 400
    if "tcpSocket" in probe:
        return tcp_connects(local_port(c, probe["tcpSocket"]["port"], ports))
    raise AssertionError(f"unexpected probe {probe}")


def scrape(endpoint: dict, port: int, secrets: Secrets, with_token: bool = True) -> int | None:
    """GET /metrics as Prometheus does for a ServiceMonitor endpoint: its scheme, its
    tlsConfig's CA and server name, its authorization credentials."""
    tls = endpoint.get("tlsConfig", {})
    ca = None
    if "ca" in tls:
        ref = tls["ca"]["secret"]
        ca = secrets.content(ref["name"], ref["key"], "ca")
    token = None
    if with_token and "authorization" in endpoint:
        ref = endpoint["authorization"]["credentials"]
        token = secrets.content(ref["name"], ref["key"], "metrics").decode().strip()
    return http_get(port, endpoint["path"], scheme=endpoint.get("scheme", "http"), ca=ca,
                    server_name=tls.get("serverName"), token=token)


def grpc_unary(port: int, method: str, *, tls: dict | None = None, token: str | None = None, request: bytes = b""):
    """A raw unary gRPC call: (status code name, reply bytes or None). `tls`: {ca, name} and,
    for mutual TLS, {cert, key}."""
    import grpc

    if tls is None:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    else:
        creds = grpc.ssl_channel_credentials(root_certificates=tls["ca"], private_key=tls.get("key"),
                                             certificate_chain=tls.get("cert"))
        channel = grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", tls["name"])])
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with channel:
        try:
            reply = channel.unary_unary(method)(request, timeout=5, metadata=metadata)
            return "OK", reply
        except grpc.RpcError as e:
            return e.code().name, None
