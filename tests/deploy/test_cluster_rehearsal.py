"""`make cluster`'s rehearsal, run end to end: router + three nodes on loopback with Debian's
Prometheus scraping them through the shipped scrape config (scripts/cluster.py --smoke)."""

from __future__ import annotations

import os
import subprocess
import sys

from deploylib import ROOT


def test_cluster_rehearsal_smoke():
    repo = os.environ.get("TERN_EXAMPLES_REPO", str(ROOT / "examples" / "model_repository"))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "cluster.py"), "--smoke", "--model-repository", repo],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "cluster smoke: OK" in out, out
    assert "Prometheus targets up: 127.0.0.1:" in out and "127.0.0.4:" in out, out
