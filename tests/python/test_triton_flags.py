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
