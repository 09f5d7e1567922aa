"""Bearer tokens and per-token authorization (--auth-token-file) on tern-node, tern-router and
`tern serve`, with tokens made by `tern token new` and the real tritonclient sending
`authorization: Bearer <token>` as gRPC metadata.

What is checked: no token or an unknown one -> UNAUTHENTICATED; a group the token lacks
(e.g. unloading with an inference token) or a model outside its list -> PERMISSION_DENIED;
public groups (health, metrics by default) need no token; lists only show allowed models; the
token file is re-read without a restart; tokens never reach the logs; the router presents its
own token to nodes and nodes theirs to routers.
"""
from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tern_clusterlib import NodeProc, RouterProc, free_port, tiny_add_inputs, wait_until
from tern_testlib import ROOT, TernServer, expect_triton_error, infer_request, node_env, raw_stub

TERN = ROOT / "target" / "release" / "tern"


def new_token(name: str, groups: str, models: str = "*") -> tuple[str, str]:
    """A token from `tern token new` and its token-file line."""
    out = subprocess.run([str(TERN), "token", "new", name, "-", "--groups", groups, "--models", models],
                         capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()
    assert len(out) == 2 and out[0].startswith("tern_") and out[1].startswith(f"{name} sha256:"), out
    return out[0], out[1]


class Tokens:
    """A token file and the tokens in it, by name."""

    def __init__(self, path: Path, **specs):
        self.path = path
        self.tokens: dict[str, str] = {}
        self.lines: dict[str, str] = {}
        for name, (groups, models) in specs.items():
            self.add(name, groups, models)
        self.write()

    def add(self, name, groups, models="*"):
        self.tokens[name], self.lines[name] = new_token(name, groups, models)

    def write(self):
        self.path.write_text("# test tokens\n" + "\n".join(self.lines.values()) + "\n")

    def headers(self, name):
        return {"authorization": f"Bearer {self.tokens[name]}"}

    def client(self, url, name=None):
        return AuthClient(url, self.headers(name) if name else {})


class AuthClient:
    """tritonclient with a token on every call (tritonclient takes headers per call)."""

    def __init__(self, url, headers):
        self.c = grpcclient.InferenceServerClient(url)
        self.h = headers

    def __getattr__(self, name):
        fn = getattr(self.c, name)
        return lambda *a, **kw: fn(*a, headers=self.h, **kw)


class Node(TernServer):
    """tern-node with a known metrics port."""

    def __init__(self, repo, args, log_dir, label="auth-node"):
        super().__init__([repo], args, log_dir=log_dir, label=label)
        self.metrics_port = free_port()

    def command(self):
        return [str(self.binary()), "--model-repository", str(self.repos[0]), "--grpc-address", "127.0.0.1",
                "--grpc-port", "0", "--metrics-port", str(self.metrics_port), "--http-port", "0",
                *self.extra_args]


class RealNode(Node):
    """Always tern-node itself (a cluster member), also when the suite runs against `tern serve`."""

    ready_mark = NodeProc.ready_mark
    binary = NodeProc.binary


def http_status(port, path, token=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def infer_ok(client, model="tiny_add"):
    out = client.infer(model, tiny_add_inputs(value=2.0)).as_numpy("OUTPUT0")
    assert np.allclose(out, 4.0), out


EXPLICIT = ["--model-control-mode", "explicit", "--load-model", "tiny_add", "--load-model", "add_fp32"]


def test_node_tokens_groups_and_models(model_repo, tmp_path):
    tokens = Tokens(tmp_path / "tokens", predictor=("inference,metadata,model-config", "tiny_*"),
                    operator=("*", "*"), auditor=("statistics,model-repository", "add_*"))
    node = Node(model_repo, [*EXPLICIT, "--auth-token-file", str(tokens.path)], tmp_path).start()
    try:
        # Health is public by default; inference is not.
        assert tokens.client(node.url).is_server_ready()
        msg = expect_triton_error(lambda: infer_ok(tokens.client(node.url)), "StatusCode.UNAUTHENTICATED")
        assert "bearer token" in msg, msg
        bogus = AuthClient(node.url, {"authorization": "Bearer tern_not-a-real-token"})
        expect_triton_error(lambda: infer_ok(bogus), "StatusCode.UNAUTHENTICATED")

        predictor = tokens.client(node.url, "predictor")
        infer_ok(predictor)
        assert predictor.get_model_metadata("tiny_add").name == "tiny_add"
        assert predictor.get_model_config("tiny_add").config.name == "tiny_add"
        msg = expect_triton_error(lambda: predictor.infer("add_fp32", tiny_add_inputs()), "StatusCode.PERMISSION_DENIED")
        assert "token 'predictor' may not use model 'add_fp32'" in msg, msg
        # An inference token cannot unload, load or read statistics.
        for call in (lambda: predictor.unload_model("tiny_add"), lambda: predictor.load_model("tiny_add"),
                     lambda: predictor.get_inference_statistics("tiny_add")):
            msg = expect_triton_error(call, "StatusCode.PERMISSION_DENIED")
            assert "token 'predictor' may not use" in msg, msg

        # Lists show only the caller's models.
        auditor = tokens.client(node.url, "auditor")
        index = {m.name for m in auditor.get_model_repository_index().models}
        assert "add_fp32" in index and "tiny_add" not in index, index
        stats = {s.name for s in auditor.get_inference_statistics().model_stats}
        assert stats == {"add_fp32"}, stats
        expect_triton_error(lambda: auditor.get_inference_statistics("tiny_add"), "StatusCode.PERMISSION_DENIED")
        expect_triton_error(lambda: auditor.unload_model("tiny_add"), "StatusCode.PERMISSION_DENIED")

        # The operator may do everything; the model is really unloaded and loaded again.
        operator = tokens.client(node.url, "operator")
        operator.unload_model("tiny_add")
        wait_until(lambda: not operator.is_model_ready("tiny_add"), 15, "tiny_add unloaded")
        operator.load_model("tiny_add")
        infer_ok(predictor)

        # Streams: each request is checked; a denied one is reported and the stream goes on.
        channel, stub = raw_stub(node.url)
        try:
            ok = infer_request("tiny_add", [("INPUT0", "FP32", [1, 16], None), ("INPUT1", "FP32", [1, 16], None)],
                               raw=[np.ones(16, np.float32).tobytes()] * 2)
            denied = infer_request("add_fp32", [("INPUT0", "FP32", [1, 16], None), ("INPUT1", "FP32", [1, 16], None)],
                                   raw=[np.ones(16, np.float32).tobytes()] * 2)
            md = [("authorization", f"Bearer {tokens.tokens['predictor']}")]
            replies = list(stub.ModelStreamInfer(iter([ok, denied, ok]), metadata=md, timeout=30))
            assert [bool(r.error_message) for r in replies] == [False, True, False], replies
            assert "may not use model 'add_fp32'" in replies[1].error_message
            with pytest.raises(grpc.RpcError) as e:
                list(stub.ModelStreamInfer(iter([ok]), timeout=30))
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            channel.close()

        # Metrics are public by default.
        assert http_status(node.metrics_port, "/metrics") == 200
    finally:
        node.stop()
    log = "\n".join(node.lines)
    assert "bearer-token authentication on" in log
    for token in tokens.tokens.values():
        assert token not in log


def test_protected_health_and_metrics_and_rotation_without_restart(model_repo, tmp_path):
    tokens = Tokens(tmp_path / "tokens", predictor=("inference,health", "*"), scraper=("metrics", "*"))
    node = Node(model_repo, [*EXPLICIT, "--auth-token-file", str(tokens.path), "--auth-public", "none"],
                tmp_path).start()
    try:
        expect_triton_error(lambda: tokens.client(node.url).is_server_live(), "StatusCode.UNAUTHENTICATED")
        assert tokens.client(node.url, "predictor").is_server_live()
        assert http_status(node.metrics_port, "/metrics") == 401
        assert http_status(node.metrics_port, "/metrics", tokens.tokens["predictor"]) == 403
        assert http_status(node.metrics_port, "/metrics", tokens.tokens["scraper"]) == 200
        assert http_status(node.metrics_port, "/v2/health/ready", tokens.tokens["predictor"]) == 200

        # Rotate the predictor's token and revoke the scraper, in place; the same process serves on.
        old = tokens.tokens["predictor"]
        pid = node.proc.pid
        time.sleep(1.1)  # a new modification time
        tokens.add("predictor", "inference,health")
        del tokens.lines["scraper"]
        tokens.write()
        new_client = tokens.client(node.url, "predictor")
        wait_until(lambda: new_client.is_server_live(), 10, "the new token accepted")
        old_client = AuthClient(node.url, {"authorization": f"Bearer {old}"})
        expect_triton_error(lambda: infer_ok(old_client), "StatusCode.UNAUTHENTICATED")
        infer_ok(new_client)
        assert http_status(node.metrics_port, "/metrics", tokens.tokens["scraper"]) == 401
        assert node.proc.pid == pid and node.proc.poll() is None

        # A broken edit keeps the last good tokens, and says so.
        time.sleep(1.1)
        tokens.path.write_text("predictor sha256:oops groups=inference\n")
        wait_until(lambda: any("token file changed but cannot be used" in line for line in node.lines), 10,
                   "the broken token file reported")
        infer_ok(new_client)

        # Deleting the token file revokes every token it held, and says so; written back, the
        # tokens in it count again.
        tokens.path.unlink()
        wait_until(lambda: any("token file deleted" in line for line in node.lines), 10, "the deletion reported")
        expect_triton_error(lambda: infer_ok(new_client), "StatusCode.UNAUTHENTICATED")
        assert http_status(node.metrics_port, "/v2/health/ready", tokens.tokens["predictor"]) == 401
        tokens.write()
        wait_until(lambda: new_client.is_server_live(), 10, "the token accepted again")
        infer_ok(new_client)
    finally:
        node.stop()


def test_router_and_nodes_each_check_tokens(model_repo, tmp_path):
    # Clients' tokens are the router's; nodes accept only the router's own token, and the router
    # accepts the node's token for the control plane (registration and heartbeats).
    router_tokens = Tokens(tmp_path / "router-tokens", predictor=("inference,metadata,health", "tiny_add"),
                           operator=("*", "*"), node=("cluster", "*"))
    node_tokens = Tokens(tmp_path / "node-tokens",
                         router=("cluster,health,metadata,inference,model-config,model-repository,statistics", "*"))
    (tmp_path / "router.token").write_text(node_tokens.tokens["router"] + "\n")
    (tmp_path / "node.token").write_text(router_tokens.tokens["node"] + "\n")
    # The node's token (group `cluster`) is checked on the router's control plane, which reads
    # the same file here.
    router = RouterProc(["--auth-token-file", str(router_tokens.path), "--node-token-file",
                         str(tmp_path / "router.token"), "--load-model", "tiny_add", "--load-model", "add_fp32",
                         "--cluster-token-file", str(router_tokens.path)],
                        log_dir=tmp_path)
    router.start()
    node = RealNode(model_repo, ["--model-control-mode", "explicit", "--auth-token-file", str(node_tokens.path),
                             "--router-address", f"127.0.0.1:{router.cluster_port}",
                             "--router-token-file", str(tmp_path / "node.token")], tmp_path, label="node")
    node.start()
    try:
        operator = router_tokens.client(router.url, "operator")
        wait_until(lambda: operator.is_model_ready("tiny_add") and operator.is_model_ready("add_fp32"), 30,
                   "the router placed both models on the registered node")
        predictor = router_tokens.client(router.url, "predictor")
        infer_ok(predictor)
        expect_triton_error(lambda: infer_ok(router_tokens.client(router.url)), "StatusCode.UNAUTHENTICATED")
        msg = expect_triton_error(lambda: predictor.infer("add_fp32", tiny_add_inputs()),
                                  "StatusCode.PERMISSION_DENIED")
        assert "may not use model 'add_fp32'" in msg, msg
        expect_triton_error(lambda: predictor.unload_model("tiny_add"), "StatusCode.PERMISSION_DENIED")
        # A client's token means nothing to the node itself.
        direct = router_tokens.client(node.url, "operator")
        expect_triton_error(lambda: infer_ok(direct), "StatusCode.UNAUTHENTICATED")
        # The operator works through the router (repository calls reach the node with the router's token).
        ready = {m.name for m in operator.get_model_repository_index().models if m.state == "READY"}
        assert {"tiny_add", "add_fp32"} <= ready, ready
        assert operator.get_inference_statistics("tiny_add").model_stats[0].inference_stats.success.count >= 1
    finally:
        node.stop()
        router.stop()
    for token in [*router_tokens.tokens.values(), *node_tokens.tokens.values()]:
        assert token not in "\n".join(router.lines + node.lines)


def test_tern_serve_tokens(model_repo, tmp_path):
    tokens = Tokens(tmp_path / "tokens", predictor=("inference", "tiny_add"), operator=("*", "*"))

    class Serve(TernServer):
        ready_mark = "tern ready"

        def binary(self):
            return TERN

        def command(self):
            return [str(TERN), "serve", "--model-repository", str(model_repo), "--grpc-port", "0",
                    "--metrics-port", "0", "--http-port", "0", *EXPLICIT, "--auth-token-file", str(tokens.path)]

    serve = Serve([model_repo], log_dir=tmp_path, label="tern-serve-auth").start()
    try:
        infer_ok(tokens.client(serve.url, "predictor"))
        expect_triton_error(lambda: infer_ok(tokens.client(serve.url)), "StatusCode.UNAUTHENTICATED")
        expect_triton_error(lambda: tokens.client(serve.url, "predictor").unload_model("tiny_add"),
                            "StatusCode.PERMISSION_DENIED")
        operator = tokens.client(serve.url, "operator")
        assert {s.name for s in operator.get_inference_statistics().model_stats} >= {"tiny_add", "add_fp32"}
    finally:
        serve.stop()


def test_token_commands_and_bad_token_files(model_repo, tmp_path):
    token, line = new_token("ci", "inference")
    hashed = subprocess.run([str(TERN), "token", "hash"], input=token + "\n", capture_output=True, text=True,
                            timeout=30, check=True).stdout.strip()
    assert line.split()[1] == hashed
    out = tmp_path / "ci.token"
    made = subprocess.run([str(TERN), "token", "new", "ci", str(out), "--groups", "inference"],
                          capture_output=True, text=True, timeout=30, check=True)
    assert out.stat().st_mode & 0o777 == 0o600 and out.read_text().strip() not in made.stdout
    again = subprocess.run([str(TERN), "token", "new", "ci", str(out)], capture_output=True, text=True, timeout=30)
    assert again.returncode != 0 and "cannot create" in again.stderr
    bad_group = subprocess.run([str(TERN), "token", "new", "x", "-", "--groups", "unloading"], capture_output=True,
                               text=True, timeout=30)
    assert bad_group.returncode != 0 and "unknown group 'unloading'" in bad_group.stderr

    # A plain token in the file (not its hash) stops the node before it binds, naming the line.
    bad = tmp_path / "bad-tokens"
    bad.write_text(f"# ok\nci {token} groups=inference\n")
    node = Node(model_repo, ["--auth-token-file", str(bad)], tmp_path, label="bad-tokens")
    proc = subprocess.run(node.command(), capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env=node_env())
    assert proc.returncode != 0
    assert f"{bad} line 2" in proc.stdout + proc.stderr and token not in proc.stdout + proc.stderr


def metrics_status(port, token=None):
    return http_status(port, "/metrics", token)


def check_visibility(url, metrics_port, tokens):
    """`seer` may see tiny_* only; `ops` every model. A model outside a token's list answers as
    a model that does not exist: ModelReady false, absent from the index; /metrics, which names
    every model, is refused to a token limited to some models."""
    seer, ops = tokens.client(url, "seer"), tokens.client(url, "ops")
    assert ops.is_model_ready("add_fp32") and ops.is_model_ready("tiny_add")
    assert seer.is_model_ready("tiny_add")
    # Loaded, but not this token's: the same answer as for a model nobody has.
    assert seer.is_model_ready("add_fp32") is False
    assert seer.is_model_ready("no_such_model") is False
    assert seer.is_model_ready("add_fp32", "1") is False
    index = {m.name for m in seer.get_model_repository_index().models}
    assert "tiny_add" in index and not any(n.startswith("add_") for n in index), index
    assert "add_fp32" in {m.name for m in ops.get_model_repository_index().models}
    assert metrics_status(metrics_port, tokens.tokens["seer"]) == 403
    assert metrics_status(metrics_port, tokens.tokens["ops"]) == 200
    assert metrics_status(metrics_port) == 401


VISIBILITY = dict(seer=("health,model-repository,metrics", "tiny_*"), ops=("*", "*"))


def test_node_hides_models_a_token_may_not_see(model_repo, tmp_path):
    tokens = Tokens(tmp_path / "tokens", **VISIBILITY)
    node = Node(model_repo, [*EXPLICIT, "--auth-token-file", str(tokens.path), "--auth-public", "none"],
                tmp_path).start()
    try:
        check_visibility(node.url, node.metrics_port, tokens)
    finally:
        node.stop()


def test_router_hides_models_a_token_may_not_see(model_repo, tmp_path):
    tokens = Tokens(tmp_path / "tokens", **VISIBILITY)
    node = RealNode(model_repo, EXPLICIT, tmp_path, label="node").start()
    router = RouterProc(["--node", node.url, "--auth-token-file", str(tokens.path), "--auth-public", "none"],
                        log_dir=tmp_path)
    router.start()
    try:
        ops = tokens.client(router.url, "ops")
        wait_until(lambda: ops.is_model_ready("tiny_add") and ops.is_model_ready("add_fp32"), 30,
                   "the router sees both models")
        check_visibility(router.url, router.metrics_port, tokens)
    finally:
        router.stop()
        node.stop()
