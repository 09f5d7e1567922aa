"""Writes a Triton Python-backend model repository serving the same ONNX models as a Tern repo.

    python benches/peer/make_repo.py SRC_REPO DST_REPO MODEL [MODEL ...] [--threads N]

Each model keeps its config.pbtxt (max_batch_size, inputs/outputs, instance_group,
dynamic_batching) with the backend switched to "python"; model.onnx and benches/peer/model.py
go into version 1, with site_dir.txt naming the site-packages (--site) that model.py adds
(the stub's Python runs isolated). `intra_op_thread_count` (default: every core, as tern-node gives one CPU
instance) is passed to the onnxruntime session inside model.py.
"""
import argparse
import os
import re
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--site", required=True, help="site-packages with numpy and onnxruntime")
    a = ap.parse_args()
    src, dst = Path(a.src), Path(a.dst)
    for m in a.models:
        text = (src / m / "config.pbtxt").read_text()
        text = re.sub(r'^\s*(backend|platform)\s*:.*$', "", text, flags=re.M)
        text = re.sub(r'^name\s*:.*$', "", text, count=1, flags=re.M)  # top-level only
        text = re.sub(r'\s*label_filename\s*:\s*"[^"]*"', "", text)
        text = (f'name: "{m}"\nbackend: "python"\n' + text.strip() + "\n"
                f'parameters {{ key: "intra_op_thread_count" value: {{ string_value: "{a.threads}" }} }}\n')
        (dst / m / "1").mkdir(parents=True, exist_ok=True)
        (dst / m / "config.pbtxt").write_text(text)
        shutil.copy(src / m / "1" / "model.onnx", dst / m / "1" / "model.onnx")
        shutil.copy(HERE / "model.py", dst / m / "1" / "model.py")
        (dst / m / "1" / "site_dir.txt").write_text(a.site + "\n")


if __name__ == "__main__":
    main()
