#!/usr/bin/env python3
"""`make cluster`: the Kubernetes deployment rehearsed as processes on loopback.

What deploy/k8s and helm/tern describe, on this machine: one tern-router, three tern-nodes
(each on its own loopback address, 127.0.0.2-4, with the same ports, as pods have), all
serving the same model repository, nodes in explicit model control so the router places the
models (lazy loading, --replicas 2), and Debian's Prometheus scraping the four metrics
endpoints with the shipped deploy/prometheus/prometheus.yml (targets rewritten to these
addresses, alert rules included). The router finds the nodes from a static list: the
headless-Service DNS name of Kubernetes needs a resolver this machine does not have.

    make cluster                      # start, print the endpoints, run until Ctrl-C
    scripts/cluster.py --smoke        # start on free ports, check end to end, stop (tests)

--smoke checks: inference through the router, the model placed on 2 nodes, every Prometheus
target up, and router and node series queryable in Prometheus.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
REL = ROOT / "target" / "release"
NODE_IPS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
ENV = dict(os.environ, NO_COLOR="1",
           ORT_DYLIB_PATH=os.environ.get("ORT_DYLIB_PATH", str(ROOT / ".tern/onnxruntime/libonnxruntime.so.1.31.1")))


def port_free(ip: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((ip, port))
            return True
        except OSError:
            return False


def free_port_on_all(ips) -> int:
    for _ in range(200):
        with socket.socket() as s:
            s.bind((ips[0], 0))
            port = s.getsockname()[1]
        if all(port_free(ip, port) for ip in ips):
            return port
    sys.exit("no port free on every loopback address")


class Proc:
    def __init__(self, name, cmd, mark, logs: Path):
        self.name, self.cmd, self.mark = name, cmd, mark
        self.log = logs / f"{name}.log"
        self.p = subprocess.Popen(cmd, stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env=ENV, cwd=ROOT,
                                  start_new_session=True)

    def wait_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.mark in self.log.read_text(errors="replace"):
                return
            if self.p.poll() is not None:
                break
            time.sleep(0.1)
        sys.exit(f"{self.name} did not start ({' '.join(self.cmd)}):\n{self.log.read_text(errors='replace')[-3000:]}")

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()


def prometheus_config(out: Path, router: str, nodes: list[str], scrape_s: int):
    """The shipped scrape config with this rehearsal's targets and a shorter interval."""
    shipped = ROOT / "deploy" / "prometheus"
    config = yaml.safe_load((shipped / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = f"{scrape_s}s"
    config["global"]["evaluation_interval"] = f"{scrape_s}s"
    config["rule_files"] = [str(shipped / Path(f).name) for f in config.get("rule_files", [])]
    for job in config["scrape_configs"]:
        targets = nodes if job["job_name"] == "tern-node" else [router]
        for sc in job["static_configs"]:
            sc["targets"] = targets
    out.write_text(yaml.safe_dump(config, sort_keys=False))


def prom_get(base: str, path: str, **params):
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)["data"]


def wait_for(what, predicate, timeout):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - not up yet
            last = e
        time.sleep(0.5)
    sys.exit(f"cluster: timed out waiting for {what} (last: {last!r})")


def smoke(router_url: str, prom: str, nodes: list[str]):
    import numpy as np
    import tritonclient.grpc as g

    client = g.InferenceServerClient(router_url)
    wait_for("the router ready", client.is_server_ready, 30)
    a = np.ones((1, 16), dtype=np.float32)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        x = g.InferInput(name, [1, 16], "FP32")
        x.set_data_from_numpy(a)
        inputs.append(x)
    for _ in range(20):
        out = client.infer("tiny_add", inputs).as_numpy("OUTPUT0")
        assert float(out[0, 0]) == 2.0, out
    print("smoke: 20 inferences of tiny_add through the router: OK")

    def placed():
        for m in client.get_model_repository_index().models:
            if m.name == "tiny_add" and m.state == "READY" and m.reason.count(",") == 1:
                return m.reason
    print(f"smoke: tiny_add {wait_for('tiny_add on 2 nodes', placed, 30)}")

    def all_up():
        targets = prom_get(prom, "/api/v1/targets")["activeTargets"]
        up = sorted(t["labels"]["instance"] for t in targets if t["health"] == "up")
        return up if len(up) == 1 + len(nodes) else None
    print(f"smoke: Prometheus targets up: {', '.join(wait_for('4 targets up', all_up, 60))}")

    def series(query, minimum):
        def check():
            result = prom_get(prom, "/api/v1/query", query=query)["result"]
            value = sum(float(r["value"][1]) for r in result)
            return value if value >= minimum else None
        return check
    n = wait_for("router requests in Prometheus",
                 series('sum(tern_router_requests_total{model="tiny_add",code="OK"})', 20), 60)
    print(f"smoke: Prometheus sees tern_router_requests_total = {n:.0f}")
    n = wait_for("node successes in Prometheus", series('sum(nv_inference_request_success{model="tiny_add"})', 20), 60)
    print(f"smoke: Prometheus sees nv_inference_request_success summed over nodes = {n:.0f}")
    rules = prom_get(prom, "/api/v1/rules")["groups"]
    print(f"smoke: {sum(len(g['rules']) for g in rules)} alert rules loaded")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-repository", default=str(ROOT / "examples" / "model_repository"))
    ap.add_argument("--grpc-port", type=int, default=8001, help="router and nodes (each on its own address)")
    ap.add_argument("--metrics-port", type=int, default=8002)
    ap.add_argument("--http-port", type=int, default=8000, help="HTTP/REST of router and nodes")
    ap.add_argument("--prometheus-port", type=int, default=9090)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="free ports, check end to end, stop")
    args = ap.parse_args()
    if shutil.which("prometheus") is None:
        sys.exit("cluster: prometheus not found (scripts/setup.sh installs Debian's package)")
    for b in ("tern-node", "tern-router"):
        if not (REL / b).exists():
            sys.exit(f"cluster: {REL / b} not built (make build)")
    if args.smoke:
        args.grpc_port = free_port_on_all(["127.0.0.1", *NODE_IPS])
        args.metrics_port = free_port_on_all(["127.0.0.1", *NODE_IPS])
        args.http_port = free_port_on_all(["127.0.0.1", *NODE_IPS])
        args.prometheus_port = free_port_on_all(["127.0.0.1"])
    for ip in ["127.0.0.1", *NODE_IPS]:
        for port in (args.grpc_port, args.metrics_port, args.http_port):
            if not port_free(ip, port):
                sys.exit(f"cluster: {ip}:{port} is in use (stop what holds it, or pass other ports)")
    work = Path(tempfile.mkdtemp(prefix="tern-cluster-"))
    router = f"127.0.0.1:{args.grpc_port}"
    nodes = [f"{ip}:{args.grpc_port}" for ip in NODE_IPS]
    procs: list[Proc] = []
    try:
        procs.append(Proc("router", [str(REL / "tern-router"), "--grpc-address", "127.0.0.1",
                                     "--grpc-port", str(args.grpc_port), "--metrics-address", "127.0.0.1",
                                     "--metrics-port", str(args.metrics_port), "--replicas", str(args.replicas),
                                     "--http-address", "127.0.0.1", "--http-port", str(args.http_port),
                                     *sum((["--node", n] for n in nodes), [])], "tern-router ready", work))
        for i, ip in enumerate(NODE_IPS):
            procs.append(Proc(f"node-{i}", [str(REL / "tern-node"), "--model-repository", args.model_repository,
                                            "--model-control-mode", "explicit", "--node-id", f"tern-node-{i}",
                                            "--grpc-address", ip, "--grpc-port", str(args.grpc_port),
                                            "--metrics-address", ip, "--metrics-port", str(args.metrics_port),
                                            "--http-address", ip, "--http-port", str(args.http_port)],
                              "tern-node ready", work))
        for p in procs:
            p.wait_ready()
        prom_yml = work / "prometheus.yml"
        prometheus_config(prom_yml, f"127.0.0.1:{args.metrics_port}",
                          [f"{ip}:{args.metrics_port}" for ip in NODE_IPS], 2)
        prom = Proc("prometheus", ["prometheus", f"--config.file={prom_yml}", f"--storage.tsdb.path={work / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{args.prometheus_port}"],
                    "Server is ready to receive web requests", work)
        procs.append(prom)
        prom.wait_ready(60)
        prom_url = f"http://127.0.0.1:{args.prometheus_port}"
        print(f"""tern cluster on loopback (logs in {work}):
  router      grpc {router}   metrics http://127.0.0.1:{args.metrics_port}/metrics
  nodes       grpc {', '.join(nodes)}   metrics :{args.metrics_port} on each
  prometheus  {prom_url}  (scraping all four every 2 s, alert rules from deploy/prometheus)
  try:        .venv/bin/python -c "import tritonclient.grpc as g; print(g.InferenceServerClient('{router}').get_model_repository_index())"
              target/release/tern cluster --url {router}""", flush=True)
        if args.smoke:
            smoke(router, prom_url, nodes)
            print("cluster smoke: OK")
            return
        print("Ctrl-C stops everything.", flush=True)
        while all(p.p.poll() is None for p in procs):
            time.sleep(0.5)
        dead = [p.name for p in procs if p.p.poll() is not None]
        sys.exit(f"cluster: {', '.join(dead)} exited; see {work}")
    except KeyboardInterrupt:
        print("stopping")
    finally:
        for p in reversed(procs):
            p.stop()


if __name__ == "__main__":
    main()
