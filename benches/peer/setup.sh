#!/usr/bin/env bash
# Installs the real-Triton peer for `make bench` (nothing of it is committed):
#   benches/.peer-venv/            PyPI nvidia-pytriton==0.7.0 (bundles tritonserver 2.51 with the
#                                  Python backend only) + onnxruntime 1.31.1 + numpy
#   benches/out/peer/tritonserver/ the bundled server, with the Python-backend stub for this Python
# Idempotent. Prints nothing but progress; `benches/peer/env.sh` then gives the environment.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=benches/.peer-venv
PYTRITON_VERSION=0.7.0
ORT_VERSION=1.31.1
if ! "$VENV/bin/python" -c "import pytriton, onnxruntime, numpy" 2>/dev/null; then
  echo "[peer] installing nvidia-pytriton==$PYTRITON_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    "nvidia-pytriton==$PYTRITON_VERSION" "onnxruntime==$ORT_VERSION" "numpy<2.4"
fi
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
PYVER=$("$VENV/bin/python" -c "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')")
DST=benches/out/peer/tritonserver
if [ ! -x "$DST/backends/python/triton_python_backend_stub" ]; then
  echo "[peer] preparing $DST (stub for Python $PYVER)"
  rm -rf "$DST"; mkdir -p "$(dirname "$DST")"
  cp -r "$SITE/pytriton/tritonserver" "$DST"
  rm -rf "$DST/python_backend_stubs"
  cp "$SITE/pytriton/tritonserver/python_backend_stubs/$PYVER/triton_python_backend_stub" \
     "$DST/backends/python/triton_python_backend_stub"
  chmod +x "$DST/bin/tritonserver" "$DST/backends/python/triton_python_backend_stub"
fi
