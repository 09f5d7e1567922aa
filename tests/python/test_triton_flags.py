"""Triton server flags a Triton command line carries (issue 22, item 5): accepted with a one-line
warning, acted on (--exit-on-error, --disable-auto-complete-config), or refused with the reason
where accepting would mislead (--log-file, --grpc-restricted-protocol)."""
import subprocess

import pytest
import tritonclient.grpc as grpcclient

from tern_clusterlib import tiny_add_inputs
from tern_testlib import TernServer, copy_models, node_binary, node_env

TIMEOUT = 60


def test_accepted_flags_warn_and_the_node_serves(model_repo, tmp_path):
    repo = copy_models(model_repo, tmp_path / "repo", ["tiny_add"])
    srv = TernServer([repo], [
        "--log-info=true", "--backend-config=onnxruntime,default-max-batch-size=4",
        "--backend-directory", "/opt/tritonserver/backends", "--pinned-memory-pool-byte-size=268435456",
        "--exit-on-error=false",
    ], log_dir=tmp_path, label="triton-flags").start()
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        assert client.infer("tiny_add", tiny_add_inputs()).as_numpy("OUTPUT0").tolist() == [[2.0] * 16]
        log = "\n".join(srv.lines)
        for warning in [
            "--log-info=true is accepted for Triton compatibility and has no effect",
            "--backend-config onnxruntime,default-max-batch-size=4 (onnxruntime) is ignored",
            "--backend-directory is ignored",
            "--pinned-memory-pool-byte-size / --cuda-memory-pool-byte-size are ignored",
        ]:
            assert warning in log, log
    finally:
        assert srv.stop() == 0, srv.log_tail()


@pytest.mark.parametrize("flag, reason", [
    (["--log-file", "/tmp/triton.log"], "Tern writes its log to stderr only"),
    (["--grpc-restricted-protocol=model-repository:admin-key=secret"], "--auth-token-file"),
    (["--cache-config", "redis,host=localhost"], "Tern has only the 'local' cache"),
])
def test_misleading_flags_are_refused_before_serving(model_repo, flag, reason):
    cmd = [str(node_binary()), "--model-repository", str(model_repo), "--grpc-port", "0",
           "--http-port", "0", "--metrics-port", "0", *flag]
    done = subprocess.run(cmd, env=node_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode != 0
    assert reason in done.stdout + done.stderr, done.stdout + done.stderr


def test_exit_on_error_ends_the_node_when_a_model_fails_to_load(model_repo, tmp_path):
    repo = copy_models(model_repo, tmp_path / "repo", ["tiny_add"])
    (repo / "broken" / "1").mkdir(parents=True)
    config = (repo / "tiny_add" / "config.pbtxt").read_text().replace('name: "tiny_add"', 'name: "broken"')
    (repo / "broken" / "config.pbtxt").write_text(config)
    cmd = [str(node_binary()), "--model-repository", str(repo), "--grpc-port", "0",
           "--http-port", "0", "--metrics-port", "0", "--exit-on-error=true"]
    done = subprocess.run(cmd, env=node_env(), capture_output=True, text=True, timeout=TIMEOUT)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "failed to load all models (--exit-on-error): broken (version 1)" in out, out


def test_trace_config_url_exports_otlp_http_as_triton(model_repo, tmp_path):
    """Triton's `--trace-config opentelemetry,url=HOST:PORT/v1/traces` is OTLP over HTTP with
    protobuf bodies (server docs/user_guide/trace.md, OpenTelemetry mode): the spans of a request
    reach an HTTP collector listening there, POSTed to that path."""
    import http.server
    import threading

    posts = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            posts.append((self.path, self.headers.get("Content-Type"), body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    port = collector.server_address[1]
    repo = copy_models(model_repo, tmp_path / "repo", ["tiny_add"])
    srv = TernServer([repo], [
        "--trace-config", "mode=opentelemetry",
        "--trace-config", f"opentelemetry,url=127.0.0.1:{port}/v1/traces",
        "--trace-config", "rate=1",
    ], log_dir=tmp_path, label="otlp-http").start()
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        assert client.infer("tiny_add", tiny_add_inputs()).as_numpy("OUTPUT0").tolist() == [[2.0] * 16]
    finally:
        # Stopping flushes the batch exporter.
        assert srv.stop() == 0, srv.log_tail()
        collector.shutdown()
    assert posts, "no OTLP/HTTP export arrived"
    paths = {p for p, _, _ in posts}
    assert paths == {"/v1/traces"}, paths
    assert {t for _, t, _ in posts} == {"application/x-protobuf"}
    body = b"".join(b for _, _, b in posts)
    # The protobuf carries the span names and the service name as plain strings.
    for name in [b"infer", b"compute_infer", b"tern-node"]:
        assert name in body, name
