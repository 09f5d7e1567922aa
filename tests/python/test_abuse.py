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

Two of these have their own tests with their own assertions, read off the raw socket:
- truncated and malformed frames: the server answers a connection error with GOAWAY and closes
  the connection (a stream error, a gRPC message cut short, only fails that stream), and
  other clients keep being served with the node's memory bounded;
- rapid reset (CVE-2023-44487): h2 sends GOAWAY(ENHANCE_YOUR_CALM) and closes once more than
  its limit of reset streams are waiting to be accepted (hyper's
  `max_pending_accept_reset_streams`, 20 by default), so a connection gets at most a few dozen
  streams to the service; another client's latency stays near its baseline.

HTTP/2 frames are written by hand (RFC 9113 framing, HPACK literals without indexing) so the
test can send what no well-behaved client library would.
"""
from __future__ import annotations

import socket
import statistics
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


# Frame types, flags and error codes of RFC 9113 (sections 6 and 7).
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x7
END_STREAM = 0x1
PROTOCOL_ERROR, FRAME_SIZE_ERROR, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x1, 0x6, 0x9, 0xB
CANCEL = 0x8
ANSWER_TIMEOUT_S = 5.0


class H2Answer:
    """What a server sent on one raw connection: its frames, and whether it closed the
    connection (EOF or reset) before the reader gave up."""

    def __init__(self, data: bytes, closed: bool):
        self.data, self.closed = data, closed
        self.frames: list[tuple[int, int, int, bytes]] = []  # (type, flags, stream, payload)
        i = 0
        while i + 9 <= len(data):
            n = int.from_bytes(data[i:i + 3], "big")
            self.frames.append((data[i + 3], data[i + 4], int.from_bytes(data[i + 5:i + 9], "big") & 0x7FFFFFFF,
                                data[i + 9:i + 9 + n]))
            i += 9 + n

    def goaway(self) -> tuple[int, int, bytes] | None:
        """(last stream id, error code, debug data) of the server's GOAWAY, if it sent one."""
        for kind, _, _, payload in self.frames:
            if kind == GOAWAY:
                return (int.from_bytes(payload[:4], "big") & 0x7FFFFFFF, int.from_bytes(payload[4:8], "big"),
                        payload[8:])
        return None

    def on_stream(self, stream: int) -> list[tuple[int, int]]:
        return [(kind, flags) for kind, flags, sid, _ in self.frames if sid == stream]

    def __repr__(self) -> str:
        return f"H2Answer(closed={self.closed}, frames={[(k, f, sid, len(p)) for k, f, sid, p in self.frames]})"


def read_answer(s: socket.socket, timeout: float = ANSWER_TIMEOUT_S, data: bytes = b"", until=None) -> H2Answer:
    """Reads until the server closes the connection, `until(answer so far)` holds, or `timeout`
    seconds pass."""
    buf = bytearray(data)
    deadline = time.monotonic() + timeout
    closed = False
    while (left := deadline - time.monotonic()) > 0:
        if until is not None and until(H2Answer(bytes(buf), False)):
            break
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        except OSError:  # reset by the server
            closed = True
            break
        if not chunk:
            closed = True
            break
        buf += chunk
    return H2Answer(bytes(buf), closed)


def send_and_read(addr: str, payload: bytes, half_close: bool = False) -> H2Answer:
    s = h2_connect(addr)
    try:
        s.sendall(payload)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        return read_answer(s)
    finally:
        s.close()


def truncated_frames(host: str) -> dict[str, tuple[bytes, bool, set[int] | None]]:
    """Frames cut short or malformed, each sent on its own connection after the preface:
    name -> (bytes, half-close after sending, the GOAWAY error codes that may answer it (None:
    the server closes without one))."""
    headers = frame(HEADERS, 0x4, 1, grpc_headers(host))
    cut = struct.pack(">I", 1000)[1:] + bytes([DATA, 0]) + struct.pack(">I", 1) + b"x" * 10
    return {
        # A frame header announcing 1000 bytes, 10 of them, then end of input: nothing more can
        # come, so the server must close. (Kept open, the same bytes are the slowloris case:
        # no server can tell them from a slow sender.)
        "DATA frame cut short, then EOF": (headers + cut, True, None),
        # RST_STREAM's payload is exactly 4 bytes and SETTINGS' a multiple of 6; RFC 9113 6.4
        # and 6.5 call a wrong length a connection error FRAME_SIZE_ERROR. h2 answers
        # PROTOCOL_ERROR; both close the connection.
        "RST_STREAM with a 2-byte payload": (headers + frame(RST_STREAM, 0, 1, b"\x00\x08"), False,
                                             {PROTOCOL_ERROR, FRAME_SIZE_ERROR}),
        "SETTINGS with a 3-byte payload": (frame(SETTINGS, 0, 0, b"\x00\x03\x00"), False,
                                           {PROTOCOL_ERROR, FRAME_SIZE_ERROR}),
        # A header block that ends inside a literal: HPACK decoding fails (RFC 9113 4.3:
        # COMPRESSION_ERROR; h2 says PROTOCOL_ERROR).
        "HEADERS block cut mid-literal": (frame(HEADERS, 0x4, 1, grpc_headers(host)[:-3]), False,
                                          {PROTOCOL_ERROR, COMPRESSION_ERROR}),
    }


def check_truncated_frames(addr: str) -> dict[str, str]:
    """Sends each of `truncated_frames`; asserts the server closed every such connection (with
    the GOAWAY the frame calls for) within ANSWER_TIMEOUT_S, and that a gRPC message cut short
    inside well-formed frames fails only its stream. Returns what each got, for the log."""
    host = addr.rsplit(":", 1)[0]
    seen = {}
    for name, (payload, half_close, errors) in truncated_frames(host).items():
        answer = send_and_read(addr, payload, half_close)
        assert answer.closed, f"{name}: the server did not close the connection within {ANSWER_TIMEOUT_S} s: {answer}"
        goaway = answer.goaway()
        if errors is not None:
            assert goaway is not None and goaway[1] in errors, f"{name}: no GOAWAY with one of {errors}: {answer}"
        seen[name] = f"GOAWAY {goaway[1]:#x}" if goaway else "closed"
    # A gRPC message announcing 16 bytes with 2 sent, END_STREAM: a stream error. The stream
    # ends with a trailers-only response (HEADERS + END_STREAM, no DATA: not a success, which
    # carries a message), and the connection stays open.
    s = h2_connect(addr)
    try:
        s.sendall(frame(HEADERS, 0x4, 1, grpc_headers(host)) + frame(DATA, END_STREAM, 1, b"\x00\x00\x00\x00\x10" + b"ab"))
        answer = read_answer(s, until=lambda a: any(f & END_STREAM for _, f in a.on_stream(1)))
        answer = read_answer(s, timeout=0.3, data=bytes(answer.data))  # then no GOAWAY, no close
    finally:
        s.close()
    stream = answer.on_stream(1)
    assert stream and all(kind == HEADERS for kind, _ in stream) and stream[-1][1] & END_STREAM, answer
    assert not answer.closed and answer.goaway() is None, f"a stream error closed the connection: {answer}"
    seen["gRPC message cut short"] = "stream failed, connection kept"
    return seen


def rapid_reset_burst(host: str, streams: int = 1000, with_body: bool = False) -> bytes:
    """HEADERS then RST_STREAM(CANCEL), `streams` times (with a whole request between them
    when `with_body`, so a stream that reached the service would run an inference)."""
    body = b""
    if with_body:
        msg = infer_request("tiny_add", [("INPUT0", "FP32", [1, 16], None), ("INPUT1", "FP32", [1, 16], None)],
                            raw=[np.ones(16, np.float32).tobytes()] * 2).SerializeToString()
        body = b"\x00" + struct.pack(">I", len(msg)) + msg
    return b"".join(frame(HEADERS, 0x4, sid, grpc_headers(host))
                    + (frame(DATA, END_STREAM, sid, body) if with_body else b"")
                    + frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL))
                    for sid in range(1, 2 * streams, 2))


def rapid_reset(addr: str, burst: bytes) -> H2Answer:
    """Sends `burst` on a new connection in one write (a few hundred KB: loopback's socket
    buffers take it at once, so the server has it all before it answers; data arriving after
    it closed would make its kernel reset the connection and lose the GOAWAY) and reads the
    server's answer."""
    s = h2_connect(addr)
    try:
        try:
            s.sendall(burst)
        except OSError:
            pass  # closed before it took everything: what it sent first is still to be read
        return read_answer(s)
    finally:
        s.close()


def check_rapid_reset(addr: str, burst: bytes, streams: int) -> tuple[int, bytes]:
    """Asserts the server cut a rapid-reset connection off: GOAWAY(ENHANCE_YOUR_CALM), then
    closed, after letting through far fewer streams than were opened. Returns (last stream id,
    debug data)."""
    answer = rapid_reset(addr, burst)
    goaway = answer.goaway()
    assert goaway is not None and goaway[1] == ENHANCE_YOUR_CALM, f"no GOAWAY(ENHANCE_YOUR_CALM): {answer}"
    assert answer.closed, f"GOAWAY sent but the connection was not closed within {ANSWER_TIMEOUT_S} s"
    last, _, debug = goaway
    # Stream ids are odd; `last` is the highest the server may have processed.
    assert last < 2 * streams // 10, f"the server processed streams up to {last} of {2 * streams - 1}"
    return last, debug


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
        channel.close()
        truncated = check_truncated_frames(url)
        phase("malformed", f"junk connections closed; garbage protobuf -> {sorted(c.name for c in codes)}; "
                           f"oversize -> RESOURCE_EXHAUSTED; truncated frames: {truncated}")

        # 5. Rapid reset: HEADERS then RST_STREAM(CANCEL), 1,000 times on one connection.
        last, debug = check_rapid_reset(url, rapid_reset_burst(host), 1000)
        phase("rapid reset", f"GOAWAY(ENHANCE_YOUR_CALM, {debug!r}) after stream {last} of 1999")

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


TRUNCATED_ROUNDS = 20
TRUNCATED_RSS_BOUND_MIB = 16


def test_truncated_frames_close_the_connection_and_others_are_served(node):
    """Every connection that sent a frame cut short or malformed is closed by the server (with
    the GOAWAY RFC 9113 calls for) within ANSWER_TIMEOUT_S, TRUNCATED_ROUNDS times over, while
    a well-behaved client on its own connection gets every answer right and the node's memory
    stays within TRUNCATED_RSS_BOUND_MIB."""
    url = node.url
    client = grpcclient.InferenceServerClient(url)
    for _ in range(5):
        client.infer("tiny_add", tiny_add_inputs())
    baseline = rss_mib(node.proc.pid)
    good = WellBehaved(url)
    good.start()
    try:
        for _ in range(TRUNCATED_ROUNDS):
            seen = check_truncated_frames(url)
    finally:
        good.stop.set()
        good.join(30)
    grown = rss_mib(node.proc.pid) - baseline
    print(f"\ntruncated frames x{TRUNCATED_ROUNDS}: {seen}; well-behaved ok={good.ok}; rss +{grown:.1f} MiB")
    assert not good.errors, good.errors[:5]
    assert good.ok >= 20, good.ok
    assert grown < TRUNCATED_RSS_BOUND_MIB, (baseline, grown)
    np.testing.assert_allclose(client.infer("tiny_add", tiny_add_inputs(value=4.0)).as_numpy("OUTPUT0"), 8.0)
    assert node.alive(), node.log_tail()


RAPID_RESET_SECONDS = 3.0
RAPID_RESET_MAX_CONNECTIONS = 200  # per attacker
RAPID_RESET_STREAMS = 1000  # HEADERS + RST_STREAM pairs per connection


def test_rapid_reset_is_cut_off_and_others_keep_their_latency(node):
    """Rapid reset (CVE-2023-44487) from two attackers for RAPID_RESET_SECONDS, each opening
    connection after connection and sending RAPID_RESET_STREAMS HEADERS + RST_STREAM pairs on
    each (one attacker with a whole tiny_add request in every stream). Every such connection
    gets GOAWAY(ENHANCE_YOUR_CALM) and is closed after at most a tenth of its streams; the
    inferences the attack caused are at most the streams the server let through; and a
    well-behaved client on its own connection gets every answer, with a median latency within
    5x (+20 ms) of its baseline measured just before. The node's memory grows by less than
    TRUNCATED_RSS_BOUND_MIB."""
    url = node.url
    host = url.rsplit(":", 1)[0]
    client = grpcclient.InferenceServerClient(url)

    def timed_infer(i: int) -> float:
        v = float(i % 1000)
        t = time.perf_counter()
        out = client.infer("tiny_add", tiny_add_inputs(value=v), client_timeout=10).as_numpy("OUTPUT0")
        elapsed = time.perf_counter() - t
        np.testing.assert_allclose(out, 2 * v)
        return elapsed

    for i in range(20):
        timed_infer(i)
    baseline = [timed_infer(i) for i in range(100)]

    def executed() -> int:
        s = client.get_inference_statistics("tiny_add").model_stats[0].inference_stats
        return s.success.count + s.fail.count

    before = executed()
    rss_before = rss_mib(node.proc.pid)
    bursts = {False: rapid_reset_burst(host, RAPID_RESET_STREAMS),
              True: rapid_reset_burst(host, RAPID_RESET_STREAMS, with_body=True)}
    results: list[tuple[bool, int]] = []
    failures: list[str] = []
    stop = threading.Event()

    def attack(with_body: bool):
        for _ in range(RAPID_RESET_MAX_CONNECTIONS):
            if stop.is_set():
                return
            try:
                last, _ = check_rapid_reset(url, bursts[with_body], RAPID_RESET_STREAMS)
                results.append((with_body, last))
            except AssertionError as e:
                failures.append(str(e))
                return
            except OSError as e:  # the attacker's own connect failing is a finding too
                failures.append(repr(e))
                return

    attackers = [threading.Thread(target=attack, args=(b,), daemon=True) for b in (False, True)]
    during: list[float] = []
    for t in attackers:
        t.start()
    try:
        end = time.monotonic() + RAPID_RESET_SECONDS
        while time.monotonic() < end and any(t.is_alive() for t in attackers):
            during.append(timed_infer(len(during)))
    finally:
        stop.set()
        for t in attackers:
            t.join(30)
    by_attack = executed() - before - len(during)
    grown = rss_mib(node.proc.pid) - rss_before
    let_through = sum((last + 1) // 2 for with_body, last in results if with_body)
    base_median, during_median = statistics.median(baseline), statistics.median(during)
    print(f"\nrapid reset: {len(results)} connections cut off (last stream ids "
          f"{sorted({last for _, last in results})}); inferences by the attack {by_attack} "
          f"(streams let through with a body {let_through}); well-behaved median "
          f"{base_median * 1e3:.2f} ms before, {during_median * 1e3:.2f} ms during ({len(during)} requests); rss +{grown:.1f} MiB")
    assert not failures, failures[:3]
    assert all(not t.is_alive() for t in attackers)
    assert sum(1 for b, _ in results if b) >= 3 and sum(1 for b, _ in results if not b) >= 3, results
    assert by_attack <= let_through, (by_attack, let_through)
    assert len(during) >= 20, len(during)
    assert during_median <= 5 * base_median + 0.020, (base_median, during_median)
    assert grown < TRUNCATED_RSS_BOUND_MIB, (rss_before, grown)
    assert node.alive(), node.log_tail()


def _resnet_input():
    x = grpcclient.InferInput("input", [1, 3, 224, 224], "FP32")
    x.set_data_from_numpy(np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32))
    return x


def _resnet_output(client) -> str:
    return client.get_model_metadata("light_resnet50").outputs[0].name


def test_max_connection_age_sends_goaway_and_clients_reconnect(model_repo, tmp_path):
    """--grpc-max-connection-age-secs: a connection is told GOAWAY (NO_ERROR) once it is that
    old, so clients behind a Service reconnect and reach routers added since; a client keeps
    working across it. Without the flag (the module's node) an idle connection is not closed."""
    srv = TernServer([model_repo], ["--model-control-mode", "explicit", "--load-model", "tiny_add",
                                    "--grpc-max-connection-age-secs", "1"],
                     log_dir=tmp_path, label="conn-age").start()
    try:
        s = h2_connect(srv.url)
        try:
            answer = read_answer(s, timeout=10.0, until=lambda a: a.goaway() is not None)
        finally:
            s.close()
        goaway = answer.goaway()
        assert goaway is not None and goaway[1] == 0, f"no GOAWAY(NO_ERROR) within 10 s: {answer}"

        client = grpcclient.InferenceServerClient(srv.url)
        for v in (1.0, 2.0):
            out = client.infer("tiny_add", tiny_add_inputs(value=v), client_timeout=10).as_numpy("OUTPUT0")
            assert np.allclose(out, 2 * v)
            time.sleep(1.5)  # past the age: the next call goes over a new connection
    finally:
        assert srv.stop() == 0, srv.log_tail()


def test_connections_have_no_age_limit_by_default(node):
    s = h2_connect(node.url)
    try:
        answer = read_answer(s, timeout=2.0, until=lambda a: a.goaway() is not None)
    finally:
        s.close()
    assert answer.goaway() is None and not answer.closed, f"a default node closed an idle connection: {answer}"
