"""Metrics end to end: a real tern-node's /metrics under Triton's names and labels, counters that
move with real inferences and agree with the statistics extension, and a real Prometheus
(Debian's `prometheus` package) scraping the node on loopback.

The node under test is this module's own (only tiny_add loaded), so no other test's traffic moves
its counters. It is started with `--metrics-port 0` (TernServer's default) and logs
`metrics=ADDR` in its ready line.

Needs: Debian's prometheus (`apt-get install -y --no-install-recommends prometheus`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tern_testlib import ROOT, TernServer, copy_models

# Remove this line once tern-node serves /metrics (tern-telemetry wired in) and logs metrics=ADDR.

MODEL = "tiny_add"
DIM = 16
METRICS_ADDR_RE = re.compile(r'metrics(?:=|"\s*:\s*")([0-9.]+:\d+)')
SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
REFERENCE_METRICS = Path(
    os.environ.get("TERN_REFERENCE_METRICS", ROOT / "crates" / "telemetry" / "tests" / "data" / "triton_metrics.txt")
)
TRITON_INFERENCE_FAMILIES = [
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_inference_pending_request_count",
]
PROMETHEUS_START_TIMEOUT_S = 30.0
PROMETHEUS_QUERY_TIMEOUT_S = 30.0


# === helpers ===================================================================================


def http_get(url: str, timeout: float = 10.0) -> tuple[int, dict, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode("utf-8", errors="replace")


def parse_exposition(text: str) -> dict:
    """{(name, frozenset(labels)): value} for every sample line."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"malformed sample line: {line!r}"
        name, labels, value = m.groups()
        out[(name, frozenset(LABEL_RE.findall(labels or "")))] = float(value)
    return out


def families(text: str) -> dict:
    """{name: (help, type)} from # HELP / # TYPE lines."""
    out: dict = {}
    for line in text.splitlines():
        for tag, idx in (("# HELP ", 0), ("# TYPE ", 1)):
            if line.startswith(tag):
                name, _, rest = line[len(tag):].partition(" ")
                entry = list(out.get(name, ("", "")))
                entry[idx] = rest
                out[name] = tuple(entry)
    return out


def value(samples: dict, name: str, **labels) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no sample {name}{labels}; have: {sorted(k for k in samples if k[0] == name)}"
    return samples[key]


def infer(client, batch: int) -> None:
    a = np.arange(batch * DIM, dtype=np.float32).reshape(batch, DIM)
    b = np.ones((batch, DIM), dtype=np.float32)
    inputs = [grpcclient.InferInput("INPUT0", [batch, DIM], "FP32"), grpcclient.InferInput("INPUT1", [batch, DIM], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer(MODEL, inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT0")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# === fixtures ==================================================================================


class MetricsNode:
    def __init__(self, server: TernServer, metrics_addr: str):
        self.server = server
        self.metrics_addr = metrics_addr

    @property
    def url(self) -> str:
        return f"http://{self.metrics_addr}/metrics"

    def scrape(self) -> str:
        status, headers, body = http_get(self.url)
        assert status == 200, f"GET {self.url}: {status}\n{body[:2000]}"
        ctype = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
        assert ctype.startswith("text/plain; version=0.0.4"), ctype
        return body

    def samples(self) -> dict:
        return parse_exposition(self.scrape())


@pytest.fixture(scope="module")
def metrics_node(model_repo, tmp_path_factory):
    repo = copy_models(model_repo, tmp_path_factory.mktemp("metrics_repo"), [MODEL])
    srv = TernServer([repo], log_dir=tmp_path_factory.mktemp("metrics_logs"), label="metrics")
    srv.start()
    try:
        addr = next((m.group(1) for line in srv.lines if (m := METRICS_ADDR_RE.search(line))), None)
        if addr is None:
            pytest.fail(f"tern-node did not log metrics=ADDR; log:\n{srv.log_tail()}")
        host, port = addr.rsplit(":", 1)
        yield MetricsNode(srv, f"{'127.0.0.1' if host == '0.0.0.0' else host}:{port}")
    finally:
        rc = srv.stop()
        assert rc == 0, f"tern-node did not exit 0 on SIGTERM (exit {rc}); log tail:\n{srv.log_tail()}"


@pytest.fixture
def metrics_client(metrics_node):
    c = grpcclient.InferenceServerClient(metrics_node.server.url)
    yield c
    c.close()


# === tests =====================================================================================


def test_exposition_uses_triton_names_labels_and_help(metrics_node):
    text = metrics_node.scrape()
    samples = parse_exposition(text)
    for family in TRITON_INFERENCE_FAMILIES:
        if family == "nv_inference_request_failure":
            for reason in ("OTHER", "BACKEND", "CANCELED", "REJECTED"):
                assert value(samples, family, model=MODEL, version="1", reason=reason) >= 0
        else:
            assert value(samples, family, model=MODEL, version="1") >= 0
    # Same help and type as a real Triton 2.51 for every family it shows.
    ours = families(text)
    reference = families(REFERENCE_METRICS.read_text())
    assert len(reference) >= 15
    for name, help_type in reference.items():
        assert ours.get(name) == help_type, f"{name}: ours {ours.get(name)}, Triton {help_type}"
    # Resource metrics from /proc.
    assert value(samples, "nv_cpu_memory_total_bytes") > 0
    assert 0 < value(samples, "nv_cpu_memory_used_bytes") <= value(samples, "nv_cpu_memory_total_bytes")
    assert 0.0 <= value(samples, "nv_cpu_utilization") <= 1.0
    assert value(samples, "tern_process_resident_memory_bytes") > 1e6
    assert value(samples, "tern_model_state", model=MODEL, version="1", state="READY") == 1
    assert http_get(f"http://{metrics_node.metrics_addr}/nope")[0] == 404


def test_counters_follow_inferences_and_agree_with_statistics(metrics_node, metrics_client):
    before = metrics_node.samples()
    requests, batch = 8, 2
    for _ in range(requests):
        infer(metrics_client, batch)
    after = metrics_node.samples()

    def delta(name, **labels):
        labels = {"model": MODEL, "version": "1", **labels}
        # A series may first appear with the first request (the latency histogram's children).
        return value(after, name, **labels) - before.get((name, frozenset(labels.items())), 0.0)

    assert delta("nv_inference_request_success") == requests
    assert delta("nv_inference_count") == requests * batch
    assert 1 <= delta("nv_inference_exec_count") <= requests
    assert delta("nv_inference_request_duration_us") > 0
    assert delta("nv_inference_compute_infer_duration_us") > 0
    for name in ("nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
                 "nv_inference_compute_output_duration_us"):
        assert delta(name) >= 0
    for reason in ("OTHER", "BACKEND", "CANCELED", "REJECTED"):
        assert delta("nv_inference_request_failure", reason=reason) == 0
    assert value(after, "nv_inference_pending_request_count", model=MODEL, version="1") == 0
    assert delta("tern_inference_request_latency_us_count") == requests

    # /metrics and the statistics extension are the same numbers (no traffic in between).
    stats = metrics_client.get_inference_statistics(MODEL, as_json=True)["model_stats"]
    (st,) = [s for s in stats if s["version"] == "1"]
    inf = st["inference_stats"]
    assert value(after, "nv_inference_request_success", model=MODEL, version="1") == int(inf["success"].get("count", 0))
    assert value(after, "nv_inference_request_duration_us", model=MODEL, version="1") == int(inf["success"].get("ns", 0)) // 1000
    assert value(after, "nv_inference_queue_duration_us", model=MODEL, version="1") == int(inf["queue"].get("ns", 0)) // 1000
    assert value(after, "nv_inference_count", model=MODEL, version="1") == int(st.get("inference_count", 0))
    assert value(after, "nv_inference_exec_count", model=MODEL, version="1") == int(st.get("execution_count", 0))


def test_prometheus_scrapes_the_node(metrics_node, metrics_client, tmp_path):
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).exists():
        pytest.fail("prometheus not installed: apt-get install -y --no-install-recommends prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: tern-node\n    static_configs:\n"
        f"      - targets: ['{metrics_node.metrics_addr}']\n"
    )
    log = open(tmp_path / "prometheus.log", "w")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"

    def prometheus_log() -> str:
        log.flush()
        return (tmp_path / "prometheus.log").read_text()[-4000:]

    def query(expr: str) -> list:
        status, _, body = http_get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
        assert status == 200, f"query {expr}: {status} {body}"
        return json.loads(body)["data"]["result"]

    try:
        deadline = time.monotonic() + PROMETHEUS_START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"prometheus exited {proc.returncode}:\n{prometheus_log()}"
            try:
                if http_get(f"{base}/-/ready", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"prometheus not ready in time:\n{prometheus_log()}"
            time.sleep(0.2)

        before = value(metrics_node.samples(), "nv_inference_request_success", model=MODEL, version="1")
        sent = 20
        for _ in range(sent):
            infer(metrics_client, 1)
        expected = value(metrics_node.samples(), "nv_inference_request_success", model=MODEL, version="1")
        assert expected == before + sent

        series = f'nv_inference_request_success{{job="tern-node",model="{MODEL}",version="1"}}'
        deadline = time.monotonic() + PROMETHEUS_QUERY_TIMEOUT_S
        got = None
        while time.monotonic() < deadline:
            result = query(series)
            got = float(result[0]["value"][1]) if result else None
            if got == expected:
                break
            time.sleep(0.5)
        assert got == expected, f"Prometheus has {series} = {got}, expected {expected}:\n{prometheus_log()}"

        assert [float(r["value"][1]) for r in query('up{job="tern-node"}')] == [1.0]
        for name in ("nv_cpu_utilization", "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes",
                     "tern_process_resident_memory_bytes"):
            result = query(f'{name}{{job="tern-node"}}')
            assert result, f"Prometheus has no {name}"
        assert float(query('nv_cpu_memory_total_bytes{job="tern-node"}')[0]["value"][1]) > 0
        # The latency histogram is usable for quantiles.
        assert query(
            f'histogram_quantile(0.99, sum by (le) (tern_inference_request_latency_us_bucket{{model="{MODEL}"}}))'
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()
