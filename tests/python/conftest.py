"""Fixtures: one example model repository and one tern-node for the whole session.

Run:  .venv/bin/python -m pytest tests/python        (from the repository root)
Env:  TERN_NODE_BIN  (default target/release/tern-node)
      ORT_DYLIB_PATH (default .tern/onnxruntime/libonnxruntime.so.1.31.1)

If the server dies during a test, that test fails with the server log and the next test gets
a fresh server, so one crash does not fail the rest of the suite.
"""

from __future__ import annotations

import pytest
import tritonclient.grpc as grpcclient

from tern_testlib import TernServer, build_repository, raw_stub


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory):
    """The example repository, built once per session by examples/build_model_repository.py."""
    return build_repository(tmp_path_factory.mktemp("model_repository"))


@pytest.fixture(scope="session")
def server(model_repo, tmp_path_factory):
    srv = TernServer([model_repo], log_dir=tmp_path_factory.mktemp("logs"), label="main")
    srv.start()
    yield srv
    if not srv.alive():
        return  # already reported by the test during which it died
    rc = srv.stop()
    assert rc == 0, f"tern-node did not exit 0 on SIGTERM (exit {rc}); log tail:\n{srv.log_tail()}"


@pytest.fixture(autouse=True)
def _server_watch(request):
    """Restart a dead main server before a test; fail the test during which it died."""
    if "server" not in request.fixturenames:
        yield
        return
    srv: TernServer = request.getfixturevalue("server")
    if not srv.alive():
        srv.restart()
    yield
    if not srv.alive():
        pytest.fail(
            f"tern-node exited with code {srv.proc.returncode} during this test; log tail:\n"
            f"{srv.log_tail()}"
        )


@pytest.fixture
def url(server) -> str:
    return server.url


@pytest.fixture
def client(url):
    c = grpcclient.InferenceServerClient(url)
    yield c
    c.close()


@pytest.fixture
def stub(url):
    channel, s = raw_stub(url)
    yield s
    channel.close()


@pytest.fixture(scope="session")
def reference():
    from tern_testlib import load_reference

    return load_reference()
