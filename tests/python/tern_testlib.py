"""Shared helpers for Tern's end-to-end tests: start/stop a real tern-node, talk to it.

Nothing here mocks anything: every test talks gRPC to a real `tern-node` process with the real
`tritonclient.grpc` client (or the raw generated stub for requests tritonclient cannot build).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

ROOT = Path(__file__).resolve().parents[2]
BUILDER = ROOT / "examples" / "build_model_repository.py"
REFERENCE = Path(os.environ.get("TERN_REFERENCE_JSON", Path(__file__).parent / "data" / "triton_responses.json"))
LIGHT_DIR = None  # filled lazily (needs onnx)

# `tern serve` runs the same suite with TERN_NODE_BIN=scripts/tern-serve.sh TERN_READY_MARK="tern ready".
READY_MARK = os.environ.get("TERN_READY_MARK", "tern-node ready")
# `grpc=ADDR` in text logs; in JSON logs either inside the message or as a field "grpc": "ADDR".
GRPC_ADDR_RE = re.compile(r'grpc(?:=|"\s*:\s*")([0-9.]+:\d+)')
# `http=ADDR` (or `http=off`) likewise: the HTTP/REST port.
HTTP_ADDR_RE = re.compile(r'http(?:=|"\s*:\s*")([0-9.]+:\d+)')
ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
MAX_MSG = 256 * 1024 * 1024

# Every model examples/build_model_repository.py builds (the spec: all must load).
IDENTITY_TYPES = ["bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
                  "fp16", "bf16", "fp32", "fp64", "string"]
ADD_TYPES = ["uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
             "fp16", "fp32", "fp64"]
ALL_MODELS = sorted(
    [f"identity_{t}" for t in IDENTITY_TYPES]
    + [f"add_{t}" for t in ADD_TYPES]
    + ["tiny_add", "string_identity", "light_resnet50", "light_densenet121", "light_squeezenet",
       "light_inception_v1", "resnet50_random", "versioned_scale", "tiny_llm", "all-MiniLM-L6-v2",
       "simple_sequence", "seq_accumulate", "seq_accumulate_idle", "seq_accumulate_oldest",
       "ens_preprocess", "ens_postprocess", "ensemble_pipeline", "simple", "simple_int8", "simple_string",
       "simple_identity", "simple_dyna_sequence", "simple_string_dyna_sequence",
       "densenet_onnx", "inception_onnx", "image_preprocess_onnx",
       "preprocess_inception_ensemble", "custom_identity_int32"]
)

# suffix -> (Triton datatype, config data_type, numpy dtype)
TRITON_TYPES = {
    "bool": ("BOOL", "TYPE_BOOL", np.bool_),
    "uint8": ("UINT8", "TYPE_UINT8", np.uint8),
    "uint16": ("UINT16", "TYPE_UINT16", np.uint16),
    "uint32": ("UINT32", "TYPE_UINT32", np.uint32),
    "uint64": ("UINT64", "TYPE_UINT64", np.uint64),
    "int8": ("INT8", "TYPE_INT8", np.int8),
    "int16": ("INT16", "TYPE_INT16", np.int16),
    "int32": ("INT32", "TYPE_INT32", np.int32),
    "int64": ("INT64", "TYPE_INT64", np.int64),
    "fp16": ("FP16", "TYPE_FP16", np.float16),
    "bf16": ("BF16", "TYPE_BF16", None),  # ml_dtypes.bfloat16, imported lazily
    "fp32": ("FP32", "TYPE_FP32", np.float32),
    "fp64": ("FP64", "TYPE_FP64", np.float64),
    "string": ("BYTES", "TYPE_STRING", np.object_),
}


def np_dtype(suffix: str):
    if suffix == "bf16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return TRITON_TYPES[suffix][2]


def load_reference() -> dict:
    with open(REFERENCE) as f:
        return json.load(f)


def light_dir() -> Path:
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def light_input(shape) -> np.ndarray:
    n = int(np.prod(shape))
    return (np.arange(n).reshape(shape) / n).astype(np.float32)


def light_expected(zoo_name: str) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    t = onnx.TensorProto()
    t.ParseFromString((light_dir() / f"light_{zoo_name}_output_0.pb").read_bytes())
    return numpy_helper.to_array(t)


# === model repository =========================================================================


def build_repository(out: Path) -> Path:
    """Run the example builder into `out` (a subprocess, as a user would)."""
    proc = subprocess.run(
        [sys.executable, str(BUILDER), str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    if proc.returncode != 0:
        pytest.fail(f"{BUILDER} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return out


def copy_models(src_repo: Path, dst_repo: Path, names) -> Path:
    dst_repo.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(src_repo / name, dst_repo / name)
    return dst_repo


# === the server process =======================================================================


def node_binary() -> Path:
    return Path(os.environ.get("TERN_NODE_BIN", ROOT / "target" / "release" / "tern-node"))


def node_env() -> dict:
    env = dict(os.environ)
    env.setdefault("ORT_DYLIB_PATH", str(ROOT / ".tern" / "onnxruntime" / "libonnxruntime.so.1.31.1"))
    env.setdefault("NO_COLOR", "1")
    env.setdefault("RUST_BACKTRACE", "1")
    return env


class TernServer:
    """One tern-node process on loopback with ephemeral ports.

    stdout and stderr are merged and drained by a thread (kept in memory and in a log file), so
    the server never blocks on a full pipe. `start()` waits for the ready line.
    """

    ready_mark = READY_MARK

    def binary(self) -> Path:
        return node_binary()

    def __init__(self, repos, extra_args=(), log_dir: Path | None = None, label: str = "tern-node"):
        self.repos = [Path(r) for r in repos]
        self.extra_args = list(extra_args)
        self.label = label
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="tern-log-"))
        self.proc: subprocess.Popen | None = None
        self.grpc_addr: str | None = None
        self.http_addr: str | None = None
        self.lines: list[str] = []
        self.restarts = 0
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        self._log_file = None

    # --- lifecycle ---

    def command(self) -> list[str]:
        cmd = [str(self.binary())]
        for r in self.repos:
            cmd += ["--model-repository", str(r)]
        cmd += ["--grpc-port", "0", "--metrics-port", "0", "--http-port", "0"]
        return cmd + self.extra_args

    def start(self, timeout: float = START_TIMEOUT_S) -> "TernServer":
        binary = self.binary()
        if not binary.exists():
            pytest.fail(
                f"{binary.name} binary not found at {binary}: build it with "
                f"`cargo build --release -p {binary.name}` (or set TERN_NODE_BIN / TERN_ROUTER_BIN)"
            )
        self.lines = []
        self.grpc_addr = None
        self.http_addr = None
        self._ready.clear()
        log_path = self.log_dir / f"{self.label}-{self.restarts}.log"
        self._log_file = open(log_path, "w", encoding="utf-8", errors="replace")
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=node_env(), cwd=ROOT,
        )
        self._reader = threading.Thread(target=self._drain, args=(self.proc,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ready.wait(0.1):
                return self
            if self.proc.poll() is not None:
                self._reader.join(5)
                pytest.fail(
                    f"{self.label} exited with code {self.proc.returncode} before it was ready.\n"
                    f"command: {' '.join(self.command())}\nlog:\n{self.log_tail()}"
                )
        self.kill()
        pytest.fail(
            f"{self.label} did not log '{self.ready_mark}' with grpc=ADDR within {timeout:.0f} s.\n"
            f"command: {' '.join(self.command())}\nlog:\n{self.log_tail()}"
        )

    def _drain(self, proc: subprocess.Popen) -> None:
        for raw in iter(proc.stdout.readline, b""):
            line = ANSI_RE.sub("", raw.decode("utf-8", errors="replace")).rstrip("\n")
            self.lines.append(line)
            if self._log_file:
                self._log_file.write(line + "\n")
                self._log_file.flush()
            if not self._ready.is_set():
                m = GRPC_ADDR_RE.search(line)
                if m and self.grpc_addr is None:
                    host, port = m.group(1).rsplit(":", 1)
                    # A wildcard bind is reached through loopback.
                    self.grpc_addr = f"{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
                h = HTTP_ADDR_RE.search(line)
                if h and self.http_addr is None:
                    host, port = h.group(1).rsplit(":", 1)
                    self.http_addr = f"{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
                if self.ready_mark in line and self.grpc_addr is not None:
                    self._ready.set()
        proc.stdout.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and wait. Returns the exit code (None if it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        if self._reader:
            self._reader.join(5)
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        self.kill()
        self.restarts += 1
        self.start()

    def log_tail(self, n: int = 80) -> str:
        return "\n".join(self.lines[-n:])

    @property
    def url(self) -> str:
        assert self.grpc_addr, "server not started"
        return self.grpc_addr


# === clients ==================================================================================


def raw_stub(url: str):
    """The generated stub, for requests tritonclient cannot build (typed contents, broken ones)."""
    channel = grpc.insecure_channel(
        url,
        options=[("grpc.max_send_message_length", MAX_MSG), ("grpc.max_receive_message_length", MAX_MSG)],
    )
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


def http2_settings(addr: str, timeout: float = 10.0) -> dict[int, int]:
    """The SETTINGS a cleartext gRPC server sends first on a new HTTP/2 connection (prior
    knowledge, RFC 9113 3.4), as {identifier: value}; e.g. 3 is SETTINGS_MAX_CONCURRENT_STREAMS,
    absent when the server sets no limit."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        # The preface, then our (empty) SETTINGS.
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))

        def read(n: int) -> bytes:
            data = b""
            while len(data) < n:
                chunk = sock.recv(n - len(data))
                if not chunk:
                    raise AssertionError(f"{addr} closed the connection before its SETTINGS")
                data += chunk
            return data

        for _ in range(16):  # the server's SETTINGS is its first frame; a few others at most
            header = read(9)
            length, kind, flags = int.from_bytes(header[:3], "big"), header[3], header[4]
            payload = read(length)
            if kind == 4 and not flags & 1:
                return {int.from_bytes(payload[i:i + 2], "big"): int.from_bytes(payload[i + 2:i + 6], "big")
                        for i in range(0, length, 6)}
    raise AssertionError(f"{addr} sent no SETTINGS frame")


def expect_rpc_error(fn, code: grpc.StatusCode):
    """Call fn(); it must fail with `code`. Returns the error details (message)."""
    try:
        fn()
    except grpc.RpcError as e:  # noqa: PERF203
        assert e.code() == code, f"expected {code}, got {e.code()}: {e.details()}"
        return e.details()
    pytest.fail(f"expected gRPC error {code}, but the call succeeded")


def expect_triton_error(fn, status: str):
    """Call fn(); it must raise InferenceServerException with status e.g. 'StatusCode.NOT_FOUND'."""
    try:
        fn()
    except InferenceServerException as e:
        assert e.status() == status, f"expected {status}, got {e.status()}: {e.message()}"
        return e.message()
    pytest.fail(f"expected {status}, but the call succeeded")


def infer_request(model: str, inputs, outputs=(), raw=None, request_id: str = "", version: str = ""):
    """Build a ModelInferRequest. inputs: list of (name, datatype, shape, contents-dict or None)."""
    req = service_pb2.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, datatype, shape, contents in inputs:
        t = req.inputs.add(name=name, datatype=datatype, shape=list(shape))
        if contents:
            for field, values in contents.items():
                getattr(t.contents, field).extend(values)
    for name in outputs:
        req.outputs.add(name=name)
    if raw is not None:
        req.raw_input_contents.extend(raw)
    return req


def serialize_bytes(items) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def deserialize_bytes(buf: bytes) -> list[bytes]:
    out, off = [], 0
    while off < len(buf):
        (n,) = struct.unpack_from("<I", buf, off)
        off += 4
        out.append(bytes(buf[off:off + n]))
        off += n
    return out


def output_array(resp, name: str) -> np.ndarray:
    """Decode one output of a raw ModelInferResponse (raw_output_contents) by name."""
    for i, out in enumerate(resp.outputs):
        if out.name == name:
            raw = resp.raw_output_contents[i]
            shape = list(out.shape)
            if out.datatype == "BYTES":
                return np.array(deserialize_bytes(raw), dtype=np.object_).reshape(shape)
            suffix = next(s for s, v in TRITON_TYPES.items() if v[0] == out.datatype)
            return np.frombuffer(raw, dtype=np_dtype(suffix)).reshape(shape)
    raise AssertionError(f"output {name} not in response: {[o.name for o in resp.outputs]}")


class StalledFile:
    """A file replaced by a FIFO (named pipe) holding the same name: opening it for reading
    blocks until a writer comes, as a read from a hung network mount would. A fault a real file
    cannot produce, injected with a real file-system object. `release()` answers blocked
    readers with the original content, then puts the regular file back."""

    def __init__(self, path):
        self.path = Path(path)
        self.content = self.path.read_bytes()
        self.path.unlink()
        os.mkfifo(self.path)

    def release(self, done=lambda: False, timeout: float = 20.0) -> None:
        """Feeds readers that are waiting (each open for writing unblocks them) until `done()`
        or `timeout`, then restores the regular file."""
        import errno

        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno != errno.ENXIO:  # ENXIO: no reader waiting now
                    raise
            else:
                try:
                    os.write(fd, self.content)
                except BlockingIOError:
                    pass
                finally:
                    os.close(fd)
            time.sleep(0.05)
        restored = self.path.with_name(self.path.name + ".restored")
        restored.write_bytes(self.content)
        os.replace(restored, self.path)
