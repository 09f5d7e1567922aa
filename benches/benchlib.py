"""What the load scripts in benches/ share: the paths and environment of the release binaries,
a free loopback port, starting a server and waiting for its ready line, and rewriting one
section of benches/RESULTS.md."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REL = ROOT / "target" / "release"
RESULTS = ROOT / "benches" / "RESULTS.md"
ENV = dict(os.environ, ORT_DYLIB_PATH=os.environ.get(
    "ORT_DYLIB_PATH", str(ROOT / ".tern/onnxruntime/libonnxruntime.so.1.31.1")), NO_COLOR="1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cmd: list[str], ready_mark: str, log: Path, timeout_s: float = 180) -> subprocess.Popen:
    """Starts `cmd` with its output in `log` and returns once `ready_mark` is in the log; exits
    the script with the log when the server exits or is not ready in `timeout_s`."""
    log = Path(log)
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready_mark in log.read_text(errors="replace"):
            return proc
        if proc.poll() is not None:
            sys.exit(f"{cmd[0]} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    proc.kill()
    sys.exit(f"{cmd[0]} not ready in {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def write_section(title: str, lines: list[str]) -> None:
    """Replaces the RESULTS.md section that starts with the heading `title` (up to the next
    `## `) with `lines`, or appends them when there is none."""
    text = RESULTS.read_text()
    start = text.find(title)
    if start >= 0:
        nxt = re.search(r"^## ", text[start + 3:], re.M)
        end = start + 3 + nxt.start() if nxt else len(text)
        text = text[:start] + "\n".join(lines) + "\n\n" + text[end:]
    else:
        text = text.rstrip() + "\n\n" + "\n".join(lines) + "\n"
    RESULTS.write_text(text)
