"""TLS with rustls: tern-node, tern-router (and router -> node, mutual), and `tern serve`, with
certificates generated here, and the real tritonclient connecting with ssl=True."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tritonclient.utils import InferenceServerException

from tern_clusterlib import NodeProc, RouterProc, free_port, tiny_add_inputs, wait_until
from tern_testlib import ROOT, TernServer


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject_cn, key, issuer_cn, issuer_key, ca=False, server=True):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject_cn)).issuer_name(_name(issuer_cn))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        usage = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


class Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

    def __init__(self, d: Path):
        self.dir = d
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = _cert("tern-test-ca", self.ca_key, "tern-test-ca", self.ca_key, ca=True)
        self.ca_path = self._write("ca.pem", self.ca)
        self.server_cert, self.server_key = self.issue("server", "tern-server-1")
        self.client_cert, self.client_key = self.issue("client", "tern-client", server=False)

    def _write(self, name, cert):
        p = self.dir / name
        p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return p

    def issue(self, stem, cn, server=True):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(cn, key, "tern-test-ca", self.ca_key, server=server)
        cert_path = self._write(f"{stem}.pem", cert)
        key_path = self.dir / f"{stem}.key"
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path

    def server_args(self, mutual=False):
        args = ["--grpc-use-ssl", "true", "--grpc-server-cert", str(self.server_cert),
                "--grpc-server-key", str(self.server_key)]
        if mutual:
            args += ["--grpc-use-ssl-mutual", "true", "--grpc-root-cert", str(self.ca_path)]
        return args

    def client(self, url, with_cert=False):
        kw = {"root_certificates": str(self.ca_path)}
        if with_cert:
            kw.update(private_key=str(self.client_key), certificate_chain=str(self.client_cert))
        return grpcclient.InferenceServerClient(url, ssl=True, **kw)


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path)


def infer_ok(client):
    out = client.infer("tiny_add", tiny_add_inputs(value=2.0)).as_numpy("OUTPUT0")
    assert np.allclose(out, 4.0), out


def test_node_tls_and_plaintext_refused(model_repo, pki, tmp_path):
    node = TernServer([model_repo], pki.server_args(), log_dir=tmp_path, label="tls-node").start()
    try:
        infer_ok(pki.client(node.url))
        with pytest.raises(InferenceServerException):
            grpcclient.InferenceServerClient(node.url).infer("tiny_add", tiny_add_inputs())
        infer_ok(pki.client(node.url))  # a failed handshake does not disturb the server
    finally:
        node.stop()


def test_stalled_certificate_read_does_not_stall_handshakes(model_repo, pki, tmp_path):
    """The certificate file changes into one whose read blocks (a FIFO, as on a hung mount):
    the reload waits on a blocking thread, and new TLS connections are still served with the
    previous certificate (once, handshakes read the files on the async workers)."""
    from tern_testlib import StalledFile, copy_models

    repo = copy_models(model_repo, tmp_path / "repo", ["tiny_add"])
    node = TernServer([repo], pki.server_args(), log_dir=tmp_path, label="tls-stalled").start()
    stalled = None
    try:
        infer_ok(pki.client(node.url))
        stalled = StalledFile(pki.server_cert)
        time.sleep(2.5)  # past the reload check: the reload is now waiting on the read
        for _ in range(3):
            client = pki.client(node.url)
            out = client.infer("tiny_add", tiny_add_inputs(value=2.0), client_timeout=10).as_numpy("OUTPUT0")
            assert np.allclose(out, 4.0)
            client.close()
    finally:
        if stalled is not None:
            stalled.release(done=lambda: any("TLS certificate" in line for line in node.lines))
        node.kill()


def test_node_mutual_tls_requires_client_certificate(model_repo, pki, tmp_path):
    node = TernServer([model_repo], pki.server_args(mutual=True), log_dir=tmp_path, label="mtls-node").start()
    try:
        with pytest.raises(InferenceServerException):
            pki.client(node.url).infer("tiny_add", tiny_add_inputs())
        infer_ok(pki.client(node.url, with_cert=True))
        # The `tern` client commands take tritonclient's TLS flags.
        tern = [str(ROOT / "target" / "release" / "tern"), "models", "--json", "--url", node.url,
                "--ssl", "--root-certificates", str(pki.ca_path)]
        with_cert = subprocess.run([*tern, "--certificate-chain", str(pki.client_cert), "--private-key",
                                    str(pki.client_key)], capture_output=True, text=True, timeout=60)
        assert with_cert.returncode == 0 and '"tiny_add"' in with_cert.stdout, with_cert.stderr
        without = subprocess.run(tern, capture_output=True, text=True, timeout=60)
        assert without.returncode in (1, 3) and without.stderr.startswith("error: "), without
    finally:
        node.stop()


def _served_cn(url):
    host, port = url.rsplit(":", 1)
    pem = ssl.get_server_certificate((host, int(port)))
    cert = x509.load_pem_x509_certificate(pem.encode())
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_certificate_reload_without_restart(model_repo, pki, tmp_path):
    node = TernServer([model_repo], pki.server_args(), log_dir=tmp_path, label="reload-node").start()
    try:
        assert _served_cn(node.url) == "tern-server-1"
        time.sleep(1.1)
        new_cert, new_key = pki.issue("renewed", "tern-server-2")
        pki.server_key.write_bytes(new_key.read_bytes())
        pki.server_cert.write_bytes(new_cert.read_bytes())
        wait_until(lambda: _served_cn(node.url) == "tern-server-2", 10, "the renewed certificate served")
        infer_ok(pki.client(node.url))
        assert any("TLS certificate reloaded" in line for line in node.lines)
    finally:
        node.stop()


def test_router_tls_front_and_mutual_tls_to_nodes(model_repo, pki, tmp_path):
    router_cert, router_key = pki.issue("router-client", "tern-router", server=False)
    node = NodeProc(model_repo, pki.server_args(mutual=True), log_dir=tmp_path, label="mtls-node")
    node.start()
    router = RouterProc([*pki.server_args(), "--node", node.addr, "--node-tls-ca", str(pki.ca_path),
                         "--node-tls-cert", str(router_cert), "--node-tls-key", str(router_key)], log_dir=tmp_path)
    router.start()
    try:
        client = pki.client(router.url)
        wait_until(client.is_server_ready, 15, "router ready over TLS to its node")
        for _ in range(5):
            infer_ok(client)
        assert node.alive()
    finally:
        router.stop()
        node.kill()


def test_tern_serve_tls(model_repo, pki, tmp_path):
    class Serve(TernServer):
        ready_mark = "tern ready"

        def binary(self):
            return ROOT / "target" / "release" / "tern"

        def command(self):
            return [str(self.binary()), "serve", "--model-repository", str(model_repo), "--grpc-port", "0",
                    "--metrics-port", "0", "--http-port", "0", *pki.server_args()]

    serve = Serve([model_repo], log_dir=tmp_path, label="tern-serve-tls").start()
    try:
        infer_ok(pki.client(serve.url))
    finally:
        serve.stop()


def test_bad_certificate_fails_start_naming_the_file(model_repo, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    proc = subprocess.run([str(ROOT / "target/release/tern-node"), "--model-repository", str(model_repo),
                           "--grpc-port", "0", "--metrics-port", "0", "--http-port", "0", "--grpc-use-ssl", "true",
                           "--grpc-server-cert", str(bad), "--grpc-server-key", str(bad)],
                          capture_output=True, text=True, timeout=60,
                          env={"ORT_DYLIB_PATH": str(ROOT / ".tern/onnxruntime/libonnxruntime.so.1.31.1"),
                               "NO_COLOR": "1"})
    assert proc.returncode != 0
    assert str(bad) in proc.stdout + proc.stderr


def _https_get(port, ca_path, path="/metrics"):
    ctx = ssl.create_default_context(cafile=str(ca_path))
    with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=ctx, timeout=5) as r:
        return r.status, r.read().decode()


def test_metrics_over_https(model_repo, pki, tmp_path):
    # The node and `tern serve` serve /metrics over TLS with the gRPC certificate; plain HTTP is refused.
    for label, binary, sub, ready in [("metrics-tls-node", ROOT / "target/release/tern-node", [], "tern-node ready"),
                                      ("metrics-tls-serve", ROOT / "target/release/tern", ["serve"], "tern ready")]:
        port = free_port()

        class Server(TernServer):
            ready_mark = ready

            def binary(self):
                return binary

            def command(self):
                return [str(binary), *sub, "--model-repository", str(model_repo), "--grpc-port", "0",
                        "--metrics-port", str(port), "--http-port", "0", *pki.server_args(),
                        "--metrics-use-ssl", "true"]

        srv = Server([model_repo], log_dir=tmp_path, label=label).start()
        try:
            infer_ok(pki.client(srv.url))
            status, body = _https_get(port, pki.ca_path)
            assert status == 200 and "nv_inference_request_success" in body
            assert _https_get(port, pki.ca_path, "/v2/health/ready")[0] == 200
            with pytest.raises(Exception):  # noqa: B017 - a plaintext client gets no HTTP answer
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
            assert srv.alive()
        finally:
            srv.stop()


def test_node_registers_with_a_tls_router(model_repo, pki, tmp_path):
    # The router's control plane requires mutual TLS with the cluster CA: the node proves it is a
    # node with its client certificate (--router-tls-cert), the router places and routes to it
    # (router -> node in plaintext here). A node without a certificate is never registered.
    node_cert, node_key = pki.issue("node-client", "tern-node-1", server=False)
    router = RouterProc([*pki.server_args(), "--load-model", "tiny_add",
                         "--cluster-tls-cert", str(pki.server_cert), "--cluster-tls-key", str(pki.server_key),
                         "--cluster-tls-ca", str(pki.ca_path)], log_dir=tmp_path)
    router.start()
    stranger = NodeProc(model_repo, ["--model-control-mode", "explicit",
                                     "--router-address", f"127.0.0.1:{router.cluster_port}",
                                     "--router-tls-ca", str(pki.ca_path)], log_dir=tmp_path, label="no-cert")
    node = NodeProc(model_repo, ["--model-control-mode", "explicit",
                                 "--router-address", f"127.0.0.1:{router.cluster_port}",
                                 "--router-tls-ca", str(pki.ca_path), "--router-tls-cert", str(node_cert),
                                 "--router-tls-key", str(node_key)], log_dir=tmp_path, label="tls-registering")
    stranger.start()
    try:
        wait_until(lambda: any("router unreachable or registration refused" in line for line in stranger.lines),
                   15, "the node without a client certificate to fail registering")
        assert not any("node registered" in line for line in router.lines), router.log_tail()
        node.start()
        client = pki.client(router.url)
        wait_until(lambda: client.is_model_ready("tiny_add"), 30, "tiny_add placed on the node that registered over TLS")
        infer_ok(client)
        assert any("registered with router" in line for line in node.lines)
        registered = [line for line in router.lines if "node registered" in line]
        assert len(registered) == 1 and node.addr in registered[0], registered
    finally:
        stranger.stop()
        node.stop()
        router.stop()
