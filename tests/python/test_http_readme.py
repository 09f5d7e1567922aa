"""The README's curl examples for the HTTP/REST port, run as written (with the test server's
port) against a real tern-node: each command must succeed and print what the README promises."""

from __future__ import annotations

import json
import re
import subprocess

from tern_testlib import ROOT

MARK = "<!-- http-examples"


def readme_examples() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(MARK)
    block = re.search(r"```sh\n(.*?)```", text[start:], re.S)
    assert block, "no ```sh block after the http-examples marker"
    return block.group(1)


def test_readme_curl_examples_run(server):
    script = readme_examples().replace("127.0.0.1:8000", server.http_addr)
    assert script.count(server.http_addr) == 4, script
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.replace("}{", "}\n{").splitlines()
    assert lines[0] == "200", lines
    metadata = json.loads(lines[1])
    assert metadata["name"] == "tiny_add" and metadata["inputs"][0]["shape"] == [-1, 16]
    json_infer, binary_infer = json.loads(lines[2]), json.loads(lines[3])
    assert json_infer["outputs"][0]["data"] == [3.0] * 16, json_infer
    assert binary_infer["outputs"][0]["data"] == [2.0] * 16, binary_infer
