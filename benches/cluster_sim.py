#!/usr/bin/env python3
"""Cluster placement through the etcd store, at a scale that real nodes do not fit on 2 cores.

Starts a real etcd (Debian's etcd-server) and two real tern-routers sharing it
(`--cluster-store etcd://...`), and N SIMULATED NODES: `SimNode`, a stand-in for tern-node's
control plane only (Membership.Register/Heartbeat to the routers, NodeControl.Status, and
RepositoryModelLoad/Unload that "load" a model by adding it to a list, with a made-up memory
size). They run no model: 100 real ONNX Runtime nodes do not fit this machine, and placement
never looks inside a model. Everything else is real: the routers, etcd, gRPC.

Measures:
  1. placement: an operator's RepositoryModelLoad of M models (R replicas each), sent
     through the follower router (so every load goes through etcd to the leader), C at a time:
     time until every model is READY on R simulated nodes;
  2. convergence after a node loss: one simulated node stops (no more heartbeats, its server
     gone, as after SIGKILL): time until every model it held is back at R replicas, and when
     the leader noticed the loss (the node out of its view);
  3. etcd writes at steady state: etcd's revision (every write bumps it) and
     etcd_mvcc_put_total over a quiet window with heartbeats flowing and requests routed.

    .venv/bin/python benches/cluster_sim.py [--nodes 100 --models 1000 --replicas 2] [--write]

--write replaces the "Cluster placement through etcd" section of benches/RESULTS.md.
Not part of `make test` (about 2-3 minutes); `make bench-cluster` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent import futures
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tern_clusterlib import RouterProc, cluster_token_files, free_port, wait_until  # noqa: E402

MIB = 1 << 20


# --- messages from tern-proto's descriptor set (tonic-prost-build writes it at build time) ---

def _descriptor_set() -> Path:
    found = sorted((ROOT / "target" / "release" / "build").glob("tern-proto-*/out/inference_descriptor.bin"),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    for path in found:
        if b"last_inference_ms" in path.read_bytes():
            return path
    sys.exit("no tern-proto descriptor set under target/release/build: `cargo build --release -p tern-router`")


def _messages():
    fds = descriptor_pb2.FileDescriptorSet.FromString(_descriptor_set().read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    get = lambda name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name))  # noqa: E731
    return {n.split(".")[-1]: get(n) for n in (
        "tern.cluster.v1.NodeStatus", "tern.cluster.v1.ModelReplica", "tern.cluster.v1.NodeStatusRequest",
        "tern.cluster.v1.RegisterRequest", "tern.cluster.v1.RegisterResponse",
        "tern.cluster.v1.HeartbeatRequest", "tern.cluster.v1.HeartbeatResponse",
        "inference.RepositoryModelLoadRequest", "inference.RepositoryModelLoadResponse",
        "inference.RepositoryModelUnloadRequest", "inference.RepositoryModelUnloadResponse",
        "inference.ServerReadyRequest", "inference.ServerReadyResponse")}


PB = _messages()


def _unary(handler, request_cls):
    return grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=request_cls.FromString, response_serializer=lambda m: m.SerializeToString())


class SimNode:
    """SIMULATED NODE (the node control plane only; see the module docs)."""

    def __init__(self, i: int, budget_mib: int, token: str, routers: list[str]):
        self.i = i
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.budget = budget_mib * MIB
        self.models: dict[str, int] = {}  # name -> bytes
        self.session = f"sim-{i}-{random.getrandbits(64):x}"
        self.token = token
        self.routers = routers
        self.sequence = 0
        self.instance = f"sim-{os.getpid()}-{i}-{time.monotonic_ns()}"
        self.server = None
        self.alive = True

    def status(self, confirm: str = ""):
        self.sequence += 1
        return PB["NodeStatus"](
            node_id=f"sim-node-{self.i:03d}", grpc_address=self.addr,
            models=[PB["ModelReplica"](name=m, version="1", state="READY", memory_bytes=b)
                    for m, b in sorted(self.models.items())],
            memory_used_bytes=sum(self.models.values()), memory_budget_bytes=self.budget,
            explicit_model_control=True, server_version="sim", ready=True, instance=self.instance,
            sequence=self.sequence, session_confirmed=bool(confirm) and confirm == self.session)

    async def start(self):
        def node_status(request, _ctx):
            return self.status(request.confirm_session)

        def load(request, _ctx):
            name = request.model_name
            # A made-up, stable size per model: 1-100 MiB.
            self.models[name] = (hash(name) % 100 + 1) * MIB
            return PB["RepositoryModelLoadResponse"]()

        def unload(request, _ctx):
            self.models.pop(request.model_name, None)
            return PB["RepositoryModelUnloadResponse"]()

        def ready(_request, _ctx):
            return PB["ServerReadyResponse"](ready=True)

        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self.server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler("tern.cluster.v1.NodeControl", {
                "Status": _unary(node_status, PB["NodeStatusRequest"])}),
            grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
                "RepositoryModelLoad": _unary(load, PB["RepositoryModelLoadRequest"]),
                "RepositoryModelUnload": _unary(unload, PB["RepositoryModelUnloadRequest"]),
                "ServerReady": _unary(ready, PB["ServerReadyRequest"])}),
        ))
        self.server.add_insecure_port(self.addr)
        await self.server.start()

    async def heartbeats(self):
        """Registers with every router, then heartbeats once a second (as tern-node does)."""
        metadata = (("authorization", f"Bearer {self.token}"),)
        channels = [grpc.aio.insecure_channel(r) for r in self.routers]
        register = [c.unary_unary("/tern.cluster.v1.Membership/Register",
                                  request_serializer=lambda m: m.SerializeToString(),
                                  response_deserializer=PB["RegisterResponse"].FromString) for c in channels]
        beat = [c.unary_unary("/tern.cluster.v1.Membership/Heartbeat",
                              request_serializer=lambda m: m.SerializeToString(),
                              response_deserializer=PB["HeartbeatResponse"].FromString) for c in channels]
        known = [False] * len(channels)
        while self.alive:
            for k in range(len(channels)):
                try:
                    if not known[k]:
                        await register[k](PB["RegisterRequest"](status=self.status(), session=self.session),
                                          metadata=metadata, timeout=5)
                        known[k] = True
                    else:
                        reply = await beat[k](PB["HeartbeatRequest"](status=self.status(), session=self.session),
                                              metadata=metadata, timeout=5)
                        known[k] = reply.known
                except grpc.aio.AioRpcError:
                    known[k] = False
            await asyncio.sleep(1.0 + random.random() * 0.05)
        for c in channels:
            await c.close()

    async def kill(self):
        self.alive = False
        await self.server.stop(grace=None)


# --- etcd ---

class Etcd:
    def __init__(self, log_dir: Path):
        self.data = Path(tempfile.mkdtemp(prefix="tern-sim-etcd-"))
        self.port, self.peer = free_port(), free_port()
        client, peer = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.peer}"
        self.proc = subprocess.Popen(
            ["etcd", "--data-dir", str(self.data), "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", f"default={peer}"],
            stdout=open(log_dir / "etcd.log", "w"), stderr=subprocess.STDOUT)
        self.url = client
        wait_until(lambda: b'"health":"true"' in urllib.request.urlopen(f"{client}/health", timeout=1).read(), 20,
                   "etcd healthy")

    def revision(self) -> int:
        body = json.dumps({"key": base64.b64encode(b"/").decode()}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"{self.url}/v3/kv/range", data=body), timeout=5) as r:
            return int(json.loads(r.read())["header"]["revision"])

    def written_since(self, revision: int) -> dict[str, int]:
        """Keys (grouped by their kind: the path part after the prefix) written after `revision`."""
        body = json.dumps({"key": base64.b64encode(b"/").decode(), "range_end": base64.b64encode(b"0").decode(),
                           "min_mod_revision": revision + 1, "keys_only": True}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"{self.url}/v3/kv/range", data=body), timeout=5) as r:
            kvs = json.loads(r.read()).get("kvs", [])
        kinds: dict[str, int] = {}
        for kv in kvs:
            kind = base64.b64decode(kv["key"]).decode().split("/")[2]
            kinds[kind] = kinds.get(kind, 0) + 1
        return kinds

    def puts(self) -> float:
        text = urllib.request.urlopen(f"{self.url}/metrics", timeout=5).read().decode()
        m = re.search(r"^etcd_mvcc_put_total (\S+)$", text, re.M) or \
            re.search(r"^etcd_debugging_mvcc_put_total (\S+)$", text, re.M)
        return float(m.group(1)) if m else float("nan")

    def close(self):
        self.proc.kill()
        self.proc.wait(10)
        shutil.rmtree(self.data, ignore_errors=True)


def placed(nodes: list[SimNode], models: list[str], replicas: int) -> int:
    counts: dict[str, int] = {}
    for n in nodes:
        if n.alive:
            for m in n.models:
                counts[m] = counts.get(m, 0) + 1
    return sum(1 for m in models if counts.get(m, 0) >= replicas)


def leading(r: RouterProc) -> bool:
    return "tern_router_placement_leader 1" in r.metrics().splitlines()


async def run(args) -> list[str]:
    log_dir = Path(tempfile.mkdtemp(prefix="tern-cluster-sim-"))
    etcd = Etcd(log_dir)
    tokens, node_token = cluster_token_files(log_dir)
    token = node_token.read_text().strip()
    store = ["--cluster-store", f"etcd://127.0.0.1:{etcd.port}", "--node-lease-ttl-secs", str(args.lease_ttl),
             "--cluster-token-file", str(tokens), "--replicas", str(args.replicas),
             "--heartbeat-timeout-ms", str(args.heartbeat_timeout_ms), "--lazy-load-timeout-secs", "120"]
    routers = [RouterProc([*store, "--router-id", f"router-{x}"], log_dir=log_dir, label=f"router-{x}")
               for x in ("a", "b")]
    nodes: list[SimNode] = []
    tasks = []
    lines = []
    try:
        for r in routers:
            r.start()
        control = [f"127.0.0.1:{r.cluster_port}" for r in routers]
        for i in range(args.nodes):
            n = SimNode(i, args.budget_mib, token, control)
            await n.start()
            nodes.append(n)
            tasks.append(asyncio.create_task(n.heartbeats()))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: wait_until(
            lambda: all(len(re.findall(r'^tern_router_node_healthy\{node="[^"]+"\} 1$', r.metrics(), re.M))
                        >= args.nodes for r in routers), 60, "every simulated node healthy in both routers"))
        await loop.run_in_executor(None, lambda: wait_until(
            lambda: sum(leading(r) for r in routers) == 1, 30, "one placement leader"))
        leader = next(r for r in routers if leading(r))
        follower = next(r for r in routers if r is not leader)
        models = [f"sim-model-{m:04d}" for m in range(args.models)]

        # 1. Placement: operators' loads through the follower, so each goes through etcd.
        rev0, puts0 = etcd.revision(), etcd.puts()
        channel = grpc.insecure_channel(follower.url)
        load = channel.unary_unary("/inference.GRPCInferenceService/RepositoryModelLoad",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=PB["RepositoryModelLoadResponse"].FromString)
        failures = []

        def load_one(name):
            try:
                load(PB["RepositoryModelLoadRequest"](model_name=name), timeout=120)
            except grpc.RpcError as e:
                failures.append((name, e.code(), e.details()))

        started = time.monotonic()
        with futures.ThreadPoolExecutor(args.concurrency) as pool:
            await loop.run_in_executor(None, lambda: list(pool.map(load_one, models)))
        answered = time.monotonic() - started
        await loop.run_in_executor(None, lambda: wait_until(
            lambda: placed(nodes, models, args.replicas) == len(models), 60, "every model at its replica count"))
        placement_s = time.monotonic() - started
        rev1, puts1 = etcd.revision(), etcd.puts()
        per_node = sorted(len(n.models) for n in nodes)
        lines.append(f"placement: {len(models)} models x {args.replicas} replicas on {args.nodes} simulated nodes "
                     f"through the follower: all loads answered in {answered:.2f} s, all placed in {placement_s:.2f} s "
                     f"({len(models) / placement_s:.0f} models/s); {len(failures)} failed; models per node "
                     f"min {per_node[0]} max {per_node[-1]}; etcd writes {rev1 - rev0} "
                     f"({(rev1 - rev0) / len(models):.1f} per model)")
        if failures:
            lines.append(f"  first failures: {failures[:3]}")

        # 3 (first, while nothing moves). Steady state: heartbeats flowing, requests routed. The
        # leader's answers to the loads live one lease TTL: their expiry (deletes) comes first.
        await asyncio.sleep(args.lease_ttl + 3)
        rev0, puts0 = etcd.revision(), etcd.puts()
        ready = channel.unary_unary("/inference.GRPCInferenceService/ServerReady",
                                    request_serializer=lambda m: m.SerializeToString(),
                                    response_deserializer=PB["ServerReadyResponse"].FromString)
        index = grpc.insecure_channel(leader.url).unary_unary(
            "/inference.GRPCInferenceService/ServerReady", request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=PB["ServerReadyResponse"].FromString)
        t0 = time.monotonic()
        requests = 0
        while time.monotonic() - t0 < args.steady_secs:
            await loop.run_in_executor(None, lambda: (ready(PB["ServerReadyRequest"](), timeout=5),
                                                      index(PB["ServerReadyRequest"](), timeout=5)))
            requests += 2
            await asyncio.sleep(0.05)
        window = time.monotonic() - t0
        rev1, puts1 = etcd.revision(), etcd.puts()
        lines.append(f"steady state: {window:.0f} s with {args.nodes} nodes heartbeating to 2 routers and {requests} ServerReady "
                     f"requests through them (simulated nodes serve no inference): etcd revision +{rev1 - rev0} "
                     f"({(rev1 - rev0) * 60 / window:.1f} writes/min), etcd_mvcc_put_total +{puts1 - puts0:.0f}; "
                     f"keys written: {etcd.written_since(rev0) or 'none'}")

        # 2. Convergence after a node loss.
        victim = max((n for n in nodes if n.models), key=lambda n: len(n.models))
        lost = sorted(victim.models)
        leader_nodes = lambda: set(re.findall(r'^tern_router_node_healthy\{node="([^"]+)"\} 1$',  # noqa: E731
                                              leader.metrics(), re.M))
        await victim.kill()
        killed = time.monotonic()
        noticed = None
        while placed(nodes, lost, args.replicas) < len(lost):
            if noticed is None and victim.addr not in leader_nodes():
                noticed = time.monotonic() - killed
            if time.monotonic() - killed > 60:
                break
            await asyncio.sleep(0.02)
        converged = time.monotonic() - killed
        noticed = noticed if noticed is not None else converged
        lines.append(f"node loss: a simulated node holding {len(lost)} models stopped; the leader dropped it after "
                     f"{noticed:.2f} s (--heartbeat-timeout-ms {args.heartbeat_timeout_ms}), every model was back at "
                     f"{args.replicas} replicas {converged:.2f} s after the loss, {converged - noticed:.2f} s after "
                     f"the leader noticed")
    finally:
        for n in nodes:
            n.alive = False
        for t in tasks:
            t.cancel()
        for n in nodes:
            await n.server.stop(grace=None)
        for r in routers:
            r.stop()
        etcd.close()
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--models", type=int, default=1000)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--budget-mib", type=int, default=8192)
    p.add_argument("--lease-ttl", type=int, default=10)
    p.add_argument("--heartbeat-timeout-ms", type=int, default=2500)
    p.add_argument("--steady-secs", type=float, default=60)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    if shutil.which("etcd") is None:
        sys.exit("etcd not installed (scripts/setup.sh --test installs Debian's etcd-server)")
    lines = asyncio.run(run(args))
    for line in lines:
        print(line)
    if args.write:
        from benchlib import write_section

        command = " ".join(["benches/cluster_sim.py", *sys.argv[1:]])
        title = "## Cluster placement through etcd (`benches/cluster_sim.py`)"
        write_section(title, [
            title,
            "",
            "Two real tern-routers and a real etcd (Debian's etcd-server 3.4) on loopback; the nodes are",
            "SIMULATED (the node control plane only: registration, heartbeats, status, load/unload of",
            "made-up 1-100 MiB models), since 100 ONNX Runtime nodes do not fit this 2-core machine.",
            "",
            "```", f".venv/bin/python {command}", "```", "",
            *[f"- {line}" for line in lines], "",
        ])


if __name__ == "__main__":
    main()
