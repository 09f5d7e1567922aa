#!/usr/bin/env python3
"""Checks what a running tern-node serves against ONNX Runtime on the CPU, over gRPC.

    python3 scripts/gpu/check_served.py --url 127.0.0.1:8001 --onnx MODEL.onnx \
        --model resnet50_random_gpu [--model resnet50_random_cpu] [--batch 8] [--atol 2e-3] \
        [--concurrency 16]

Sends one request of `--batch` distinct rows (numpy default_rng(0), normal) to each served
model, and compares the first output with a CPU session of the same .onnx file: max |diff| and
top-1 agreement per row. With `--concurrency N`, then sends each of those rows as a one-row
request from N threads at once, four rounds, so the dynamic batcher forms batches of mixed
sizes (padded to buckets, run through reused IO-binding buffers on a GPU instance): every
answer must be its own row's, never a neighbour's or a stale one. Needs only grpcio, numpy and onnxruntime (no tritonclient, no
generated stubs): the few KServe v2 messages it uses are encoded by hand (proto/inference/
grpc_service.proto: ModelInferRequest / ModelInferResponse). Exit status 1 when a model is out
of tolerance or a request fails.
"""

from __future__ import annotations

import argparse
import struct
import sys

import grpc
import numpy as np
import onnxruntime as ort


def varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num: int, payload: bytes) -> bytes:  # length-delimited (wire type 2)
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def fields(buf: bytes):
    """(field number, wire type, value) for each field of one message."""
    i = 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, i = read_varint(buf, i)
        elif wt == 2:
            ln, i = read_varint(buf, i)
            val, i = buf[i : i + ln], i + ln
        elif wt == 1:
            val, i = buf[i : i + 8], i + 8
        elif wt == 5:
            val, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"wire type {wt}")
        yield num, wt, val


def infer_request(model: str, in_name: str, x: np.ndarray, out_name: str) -> bytes:
    shape = b"".join(varint(d) for d in x.shape)
    tensor = field(1, in_name.encode()) + field(2, b"FP32") + field(3, shape)
    return (
        field(1, model.encode())
        + field(5, tensor)
        + field(6, field(1, out_name.encode()))
        + field(7, np.ascontiguousarray(x, dtype="<f4").tobytes())
    )


def parse_response(buf: bytes) -> np.ndarray:
    shapes, raws = [], []
    for num, _, val in fields(buf):
        if num == 5:
            shape = []
            for n2, wt, v2 in fields(val):
                if n2 == 3:
                    if wt == 2:  # packed
                        j = 0
                        while j < len(v2):
                            d, j = read_varint(v2, j)
                            shape.append(d)
                    else:
                        shape.append(v2)
            shapes.append(shape)
        elif num == 6:
            raws.append(val)
    if not shapes or not raws:
        raise ValueError("response has no output tensor / raw_output_contents")
    return np.frombuffer(raws[0], dtype="<f4").reshape(shapes[0])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--atol", type=float, default=2e-3)
    ap.add_argument("--input", default="input")
    ap.add_argument("--output", default="output")
    ap.add_argument("--concurrency", type=int, default=0)
    args = ap.parse_args()

    x = np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224), dtype=np.float32)
    sess = ort.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
    ref = sess.run([args.output], {args.input: x})[0]

    channel = grpc.insecure_channel(
        args.url,
        options=[("grpc.max_receive_message_length", 1 << 28), ("grpc.max_send_message_length", 1 << 28)],
    )
    infer = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    bad = 0
    for model in args.model:
        try:
            got = parse_response(infer(infer_request(model, args.input, x, args.output), timeout=120))
        except Exception as e:  # noqa: BLE001
            print(f"served {model}: request failed: {e}")
            bad += 1
            continue
        if got.shape != ref.shape:
            print(f"served {model}: shape {got.shape}, CPU {ref.shape}: FAIL")
            bad += 1
            continue
        diff = float(np.max(np.abs(got.astype(np.float64) - ref)))
        top1 = int(np.sum(got.argmax(1) == ref.argmax(1)))
        ok = diff <= args.atol and top1 == args.batch
        bad += not ok
        print(
            f"served {model} vs onnxruntime {ort.__version__} CPU, batch {args.batch}: max |diff| {diff:.3g} "
            f"(atol {args.atol:g}, largest CPU value {float(np.max(np.abs(ref))):.3g}), "
            f"top-1 agrees on {top1}/{args.batch} rows: {'OK' if ok else 'FAIL'}"
        )
        if args.concurrency > 0:
            bad += not concurrent_rows(infer, model, args, x, ref)
    return 1 if bad else 0


def concurrent_rows(infer, model: str, args, x: np.ndarray, ref: np.ndarray) -> bool:
    """Each row of `x` as its own request, `args.concurrency` at a time, four rounds."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> float:
        row = i % args.batch
        got = parse_response(infer(infer_request(model, args.input, x[row : row + 1], args.output), timeout=120))
        return float(np.max(np.abs(got[0].astype(np.float64) - ref[row])))

    try:
        with ThreadPoolExecutor(args.concurrency) as pool:
            diffs = list(pool.map(one, range(4 * max(args.batch, args.concurrency))))
    except Exception as e:  # noqa: BLE001
        print(f"served {model}, one-row requests at concurrency {args.concurrency}: request failed: {e}")
        return False
    worst = max(diffs)
    ok = worst <= args.atol
    print(
        f"served {model}, {len(diffs)} one-row requests at concurrency {args.concurrency}: "
        f"max |diff| vs the row's CPU output {worst:.3g}: {'OK' if ok else 'FAIL'}"
    )
    return ok


if __name__ == "__main__":
    sys.exit(main())
