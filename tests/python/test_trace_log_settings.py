"""Triton's trace and logging extensions (TraceSetting, LogSettings) through tritonclient's
update/get_trace_settings and update/get_log_settings over gRPC and HTTP, on tern-node, `tern
serve` and tern-router: settings round-trip (global and per model), Triton's refusals, and a real
effect (log_verbose_level 1 brings out the debug line of a shared-memory registration). That
trace_level OFF stops spans reaching an OTLP collector is tested in tests/tests/tracing.rs."""

from __future__ import annotations

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from tern_clusterlib import NodeProc, RouterProc, wait_until
from tern_testlib import ROOT, TernServer, copy_models

ALLOW = ["--allow-client-shm=true"]
REGISTERED = "registered system shared memory region"


class Serve(TernServer):
    ready_mark = "tern ready"

    def binary(self):
        return ROOT / "target" / "release" / "tern"

    def command(self):
        return [str(self.binary()), "serve", *super().command()[1:]]


@pytest.fixture(scope="module", params=["tern-node", "tern serve", "tern-router"])
def front(request, model_repo, tmp_path_factory):
    """The server clients talk to (its log is the one LogSettings changes)."""
    repo = copy_models(model_repo, tmp_path_factory.mktemp("settings_repo"), ["simple"])
    logs = tmp_path_factory.mktemp("settings_logs")
    procs = []
    try:
        if request.param == "tern-node":
            procs.append(TernServer([repo], ALLOW, log_dir=logs, label="settings-node").start())
        elif request.param == "tern serve":
            procs.append(Serve([repo], ALLOW, log_dir=logs, label="settings-serve").start())
        else:
            node = NodeProc(repo, log_dir=logs, label="settings-node-behind").start()
            procs.append(node)
            procs.append(RouterProc(["--node", node.addr, *ALLOW], log_dir=logs, label="settings-router").start())
        srv = procs[-1]
        with grpcclient.InferenceServerClient(srv.url) as c:
            wait_until(lambda: c.is_model_ready("simple"), 15, "model simple ready")
        yield srv
    finally:
        for p in reversed(procs):
            p.stop()


@pytest.fixture(params=["grpc", "http"])
def client(request, front):
    if request.param == "grpc":
        c = grpcclient.InferenceServerClient(front.url)
    else:
        c = httpclient.InferenceServerClient(front.http_addr or f"127.0.0.1:{front.http_port}")
    yield request.param, c
    c.close()


def trace(protocol, answer) -> dict:
    """A trace settings answer as {key: [values]} for either protocol."""
    if protocol == "grpc":
        return {k: list(v.value) for k, v in answer.settings.items()}
    return {k: v if isinstance(v, list) else [v] for k, v in answer.items()}


def log(protocol, answer) -> dict:
    if protocol == "grpc":
        return {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in answer.settings.items()}
    return answer


def error_text(fn) -> str:
    with pytest.raises(InferenceServerException) as e:
        fn()
    return e.value.message()


def test_trace_settings_round_trip_globally_and_per_model(client):
    protocol, c = client
    get = lambda model="": trace(protocol, c.get_trace_settings(model_name=model))  # noqa: E731
    update = lambda settings, model="": trace(protocol, c.update_trace_settings(model_name=model, settings=settings))  # noqa: E731
    # No exporter configured: tracing is off, in OpenTelemetry mode.
    startup = {"trace_level": ["OFF"], "trace_rate": ["1"], "trace_count": ["-1"], "trace_mode": ["opentelemetry"]}
    assert get() == startup
    try:
        assert update({"trace_level": ["TIMESTAMPS"], "trace_rate": "10"}) == {
            **startup, "trace_level": ["TIMESTAMPS"], "trace_rate": ["10"]}
        # A model's own count; its rate and level come from the global settings.
        assert update({"trace_count": "5"}, "simple") == {
            **startup, "trace_level": ["TIMESTAMPS"], "trace_rate": ["10"], "trace_count": ["5"]}
        assert get("simple")["trace_count"] == ["5"] and get()["trace_count"] == ["-1"]
        assert update({"trace_count": None}, "simple")["trace_count"] == ["-1"], "cleared: the global value"

        assert error_text(lambda: update({"trace_file": "/tmp/x"})) == (
            "trace file location can not be updated through network protocol")
        assert error_text(lambda: update({"trace_rate": "often"})) == "Unable to parse 'trace_rate', got: often"
        assert error_text(lambda: update({"trace_level": ["OFF", "TIMESTAMPS"]})) == (
            "Expect only one trace level 'OFF' is specified")
        assert error_text(lambda: update({"trace_count": "-2"})) == (
            "Unable to parse 'trace_count'. Expecting value >= -1, got: -2")
        assert error_text(lambda: get("no_such_model")) == "Request for unknown model : no_such_model"
    finally:
        # Cleared global settings return to those the server started with.
        assert update({"trace_level": None, "trace_rate": None, "trace_count": None}) == startup


def test_log_settings_round_trip_and_verbose_level_changes_the_log(client, front, tmp_path):
    protocol, c = client
    startup = {"log_file": "", "log_info": True, "log_warning": True, "log_error": True,
               "log_verbose_level": 0, "log_format": "default"}
    assert log(protocol, c.get_log_settings()) == startup
    key = f"/tern_settings_{protocol}"
    handle = shm.create_shared_memory_region(key.strip("/"), key, 64)
    try:
        c.register_system_shared_memory(f"quiet_{protocol}", key, 64)
        assert log(protocol, c.update_log_settings({"log_verbose_level": 1, "log_warning": False})) == {
            **startup, "log_verbose_level": 1, "log_warning": False}
        c.register_system_shared_memory(f"verbose_{protocol}", key, 64)
        wait_until(lambda: any(REGISTERED in line and f"verbose_{protocol}" in line for line in front.lines), 5,
                   "the debug line of the registration at verbose level 1")
        assert not any(REGISTERED in line and f"quiet_{protocol}" in line for line in front.lines), (
            "debug lines are off at verbose level 0")

        assert error_text(lambda: c.update_log_settings({"log_file": "/tmp/tern.log"})) == (
            "log file location can not be updated through network protocol")
        assert error_text(lambda: c.update_log_settings({"log_format": "fancy"})) == (
            "invalid argument for log_format, got: fancy")
        if protocol == "http":  # tritonclient's gRPC client cannot send a wrong type
            assert error_text(lambda: c.update_log_settings({"log_info": "yes"})) == "expect boolean for 'log_info'"
    finally:
        assert log(protocol, c.update_log_settings({"log_verbose_level": 0, "log_warning": True})) == startup
        c.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(handle)
