"""Resilience under abuse, on loopback: while one well-behaved client keeps inferring and
checking every answer, other clients
- hold hundreds of idle TCP connections, and HTTP/2 connections that stall after the preface;
- open many ModelStreamInfer streams and leave them open;
- send slowloris requests: headers and a gRPC frame that announces 1 MB, then 100 bytes, then
  nothing;
- send garbage (not HTTP/2), garbage protobuf, truncated frames and oversize messages;
- reset streams as fast as they open them (HTTP/2 "rapid reset");
- cancel requests mid-flight (deadlines of a few milliseconds on light_resnet50).
The well-behaved client must get every answer right, the node's resident memory must stay
within a bound, and after the abuse the node still serves and reports the cancellations.

HTTP/2 frames are written by hand (RFC 9113 framing, HPACK literals without indexing) so the
test can send what no well-behaved client library would.
"""
from __future__ import annotations

import socket
import struct
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tern_clusterlib import tiny_add_inputs
from tern_testlib import TernServer, infer_request
from tritonclient.grpc import service_pb2_grpc

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MESSAGE_LIMIT = 8 << 20
RSS_BOUND_MIB = 300  # growth allowed over the warmed-up node


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_literal(name: str, value: str) -> bytes:
    # Literal header field without indexing, new name (RFC 7541 6.2.2); lengths < 127.
    n, v = name.encode(), value.encode()
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


def grpc_headers(host: str, path: str = "/inference.GRPCInferenceService/ModelInfer") -> bytes:
    return b"".join(hpack_literal(k, v) for k, v in [
        (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", host),
        ("content-type", "application/grpc"), ("te", "trailers")])


def h2_connect(addr: str) -> socket.socket:
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    s.sendall(PREFACE + frame(0x4, 0, 0))  # empty SETTINGS
    return s


def own_channel(url: str):
    """A channel on its own TCP connection (grpc shares connections between equal channels)."""
    channel = grpc.insecure_channel(url, options=[("grpc.use_local_subchannel_pool", 1),
                                                  ("grpc.max_send_message_length", 64 << 20)])
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def node(model_repo, tmp_path_factory):
    srv = TernServer([model_repo], ["--model-control-mode", "explicit", "--load-model", "tiny_add",
                                    "--load-model", "light_resnet50", "--grpc-max-message-size", str(MESSAGE_LIMIT),
                                    "--grpc-max-concurrent-streams", "64"],
                     log_dir=tmp_path_factory.mktemp("abuse"), label="abuse").start()
    yield srv
    assert srv.stop() == 0, srv.log_tail()


class WellBehaved(threading.Thread):
    """Infers tiny_add with a new value each time and checks the answer, until stopped."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.client = grpcclient.InferenceServerClient(url)
        self.stop = threading.Event()
        self.ok = 0
        self.errors: list[str] = []

    def run(self):
        i = 0
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            i += 1
            v = float(i % 1000)
            try:
                out = self.client.infer("tiny_add", tiny_add_inputs(value=v), client_timeout=10).as_numpy("OUTPUT0")
                if np.allclose(out, 2 * v):
                    self.ok += 1
                else:
                    self.errors.append(f"wrong answer for {v}: {out[0][:4]}")
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                self.errors.append(repr(e))
            time.sleep(0.005)


class RssSampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self):
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, rss_mib(self.pid))


def test_node_serves_correctly_under_abuse(node):
    url = node.url
    host = url.rsplit(":", 1)[0]
    warm = grpcclient.InferenceServerClient(url)
    for _ in range(20):
        warm.infer("tiny_add", tiny_add_inputs())
        warm.infer("light_resnet50", [_resnet_input()])
    baseline = rss_mib(node.proc.pid)
    sampler = RssSampler(node.proc.pid)
    sampler.start()
    good = WellBehaved(url)
    good.start()
    held: list[socket.socket] = []
    streams = []
    findings = {}
    release = threading.Event()
    started = time.monotonic()

    def phase(name, what):
        findings[name] = f"{what} ({time.monotonic() - started:.1f} s)"

    try:
        # 1. Idle TCP connections that never speak, and HTTP/2 connections that stall after SETTINGS.
        for _ in range(300):
            held.append(socket.create_connection((host, int(url.rsplit(":", 1)[1])), timeout=5))
        for _ in range(100):
            held.append(h2_connect(url))
        phase("idle connections", "400 held")

        # 2. Slowloris: a request announcing a 1 MB message, 100 bytes of it, then silence.
        for _ in range(100):
            s = h2_connect(url)
            s.sendall(frame(0x1, 0x4, 1, grpc_headers(host)) + frame(0x0, 0, 1, b"\x00" + struct.pack(">I", 1 << 20) + b"x" * 100))
            held.append(s)
        phase("slowloris", "100 partial requests held")

        # 3. Many open streams: 8 connections x 16 ModelStreamInfer streams, each sending one
        #    request and then holding the stream open.
        req = infer_request("tiny_add", [("INPUT0", "FP32", [1, 16], None), ("INPUT1", "FP32", [1, 16], None)],
                            raw=[np.ones(16, np.float32).tobytes()] * 2)

        def requests():
            yield req
            release.wait(60)

        answered = []
        for _ in range(8):
            channel, stub = own_channel(url)
            for _ in range(16):
                call = stub.ModelStreamInfer(requests(), timeout=90)
                streams.append((channel, call))
        for _, call in streams:
            answered.append(next(call).error_message == "")
        phase("open streams", f"{len(streams)} open, {sum(answered)} answered their first request")
        assert all(answered)

        # 4. Malformed: not HTTP/2 at all; garbage protobuf; a truncated frame; an oversize message.
        for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00" + b"\xff" * 500, b"\x00" * 10_000):
            s = socket.create_connection((host, int(url.rsplit(":", 1)[1])), timeout=5)
            s.sendall(junk)
            s.close()
        channel, stub = own_channel(url)
        garbage = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                      request_serializer=lambda b: b, response_deserializer=lambda b: b)
        codes = set()
        for blob in (b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f", bytes(range(256)) * 4):
            try:
                garbage(blob, timeout=10)
            except grpc.RpcError as e:
                codes.add(e.code())
        assert codes and codes <= {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL}, codes
        big = np.ones(3 << 20, np.float32).tobytes()  # 12 MB per input, over the 8 MiB limit
        oversize = infer_request("tiny_add", [("INPUT0", "FP32", [1, 16], None), ("INPUT1", "FP32", [1, 16], None)],
                                 raw=[big, big])
        try:
            stub.ModelInfer(oversize, timeout=30)
            pytest.fail("an oversize message was accepted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
        s = h2_connect(url)
        s.sendall(frame(0x1, 0x4, 1, grpc_headers(host)) + frame(0x0, 0x1, 1, b"\x00\x00\x00\x10\x00" + b"ab"))
        s.settimeout(5)
        truncated = b""
        try:
            while len(truncated) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                truncated += chunk
                if b"grpc-status" in truncated or b"\x00\x00\x00\x03" in truncated:
                    break
        except TimeoutError:
            pass
        s.close()
        channel.close()
        phase("malformed", f"junk connections closed; garbage protobuf -> {sorted(c.name for c in codes)}; "
                           f"oversize -> RESOURCE_EXHAUSTED; truncated frame: {len(truncated)} bytes back, no crash")

        # 5. Rapid reset: HEADERS then RST_STREAM(CANCEL), 2,000 times on one connection.
        s = h2_connect(url)
        burst = b"".join(frame(0x1, 0x4, sid, grpc_headers(host)) + frame(0x3, 0, sid, struct.pack(">I", 0x8))
                         for sid in range(1, 4001, 2))
        try:
            s.sendall(burst)
        except OSError:
            pass  # the server may close the connection (GOAWAY) first: that is a fine answer
        s.close()
        phase("rapid reset", "2000 streams opened and reset")

        # 6. Cancel mid-request: deadlines far shorter than a light_resnet50 inference.
        client = grpcclient.InferenceServerClient(url)
        cancelled = 0
        for _ in range(40):
            try:
                client.infer("light_resnet50", [_resnet_input()], client_timeout=0.005)
            except Exception:  # noqa: BLE001 - DEADLINE_EXCEEDED expected
                cancelled += 1
        phase("cancelled", f"{cancelled} of 40 requests hit their deadline")
        assert cancelled >= 30

        time.sleep(1)
        assert node.alive(), node.log_tail()
    finally:
        good.stop.set()
        good.join(30)
        sampler.stop.set()
        sampler.join(5)
        release.set()
        for channel, call in streams:
            call.cancel()
        for channel in {id(c): c for c, _ in streams}.values():
            channel.close()
        for s in held:
            s.close()
        print("\nabuse findings:", findings, f"well-behaved ok={good.ok} errors={len(good.errors)}",
              f"rss baseline={baseline:.0f} MiB peak={sampler.peak:.0f} MiB")

    assert not good.errors, good.errors[:5]
    assert good.ok >= 50, good.ok
    assert sampler.peak - baseline < RSS_BOUND_MIB, (baseline, sampler.peak)
    # Afterwards: everything still works, and the cancellations are on record.
    after = grpcclient.InferenceServerClient(url)
    np.testing.assert_allclose(after.infer("tiny_add", tiny_add_inputs(value=3.0)).as_numpy("OUTPUT0"), 6.0)
    assert after.infer("light_resnet50", [_resnet_input()]).as_numpy(_resnet_output(after)).size > 0
    stats = after.get_inference_statistics("light_resnet50").model_stats[0].inference_stats
    assert stats.fail.count + stats.success.count >= 60


def _resnet_input():
    x = grpcclient.InferInput("input", [1, 3, 224, 224], "FP32")
    x.set_data_from_numpy(np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32))
    return x


def _resnet_output(client) -> str:
    return client.get_model_metadata("light_resnet50").outputs[0].name
