"""Triton's own perf_analyzer (from the tritonclient 2.41.0 wheel, see scripts/setup.sh) must run
against tern-node unchanged: short, bounded runs that must succeed and report throughput."""

from __future__ import annotations

import csv
import os
import re
import subprocess

import pytest

from tern_testlib import ROOT

PA_DIR = ROOT / ".tern" / "perf_analyzer"
PA_BIN = PA_DIR / "bin" / "perf_analyzer"
THROUGHPUT_RE = re.compile(r"throughput:\s*([0-9.]+)\s*infer/sec")


def run_perf_analyzer(url: str, model: str, csv_path, extra=(), timeout: float = 90):
    if not PA_BIN.exists():
        pytest.fail(f"perf_analyzer not found at {PA_BIN}: run scripts/setup.sh")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = f"{PA_DIR / 'lib'}:{env.get('LD_LIBRARY_PATH', '')}"
    cmd = [
        str(PA_BIN), "-m", model, "-u", url, "-i", "grpc",
        # Bounded: 3 stable windows are enough; a loose stability bound keeps a noisy 2-core
        # machine from failing the run for variance alone.
        "--stability-percentage", "100", "--max-trials", "6",
        "-f", str(csv_path), *extra,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"perf_analyzer did not finish within {timeout} s:\n{e.stdout}\n{e.stderr}")
    return proc


def check_success(proc, csv_path) -> float:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"perf_analyzer exit {proc.returncode}:\n{out}"
    errors = [line for line in out.splitlines() if re.match(r"\s*(error|failed)", line, re.IGNORECASE)]
    assert not errors, out
    m = THROUGHPUT_RE.search(out)
    assert m and float(m.group(1)) > 0, out
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, f"empty report {csv_path}:\n{out}"
    throughput = float(rows[0]["Inferences/Second"])
    assert throughput > 0, rows
    return throughput


def test_perf_analyzer_light_resnet50(url, tmp_path):
    csv_path = tmp_path / "resnet.csv"
    proc = run_perf_analyzer(url, "light_resnet50", csv_path,
                             ["--concurrency-range", "1", "--measurement-interval", "2500"])
    check_success(proc, csv_path)


def test_perf_analyzer_tiny_add(url, tmp_path):
    csv_path = tmp_path / "tiny_add.csv"
    proc = run_perf_analyzer(url, "tiny_add", csv_path,
                             ["--concurrency-range", "4", "--measurement-interval", "1000"])
    check_success(proc, csv_path)


def test_perf_analyzer_streaming_bytes(url, tmp_path):
    """gRPC streaming mode with a BYTES model (perf_analyzer generates the strings)."""
    csv_path = tmp_path / "string.csv"
    proc = run_perf_analyzer(url, "identity_string", csv_path,
                             ["--concurrency-range", "2", "--measurement-interval", "1000", "--streaming",
                              "--string-length", "12"])
    check_success(proc, csv_path)
