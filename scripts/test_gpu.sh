#!/usr/bin/env bash
# `make test-gpu`: checks Tern's GPU execution on a machine with an NVIDIA GPU.
#
#   0. the GPU tests of crates/backend-ort/tests/gpu_device.rs (ignored by plain `cargo test`);
#   1. correctness: resnet50_random (seeded random weights, so outputs are not uniform) on the
#      CUDA provider and on TensorRT (FP16) against a CPU session, same batch of 8 distinct
#      rows, within a tolerance (2e-3 CUDA, 2e-2 TensorRT FP16);
#   2. throughput in-process (benches `ceiling`): light_resnet50 on CPU, CUDA and TensorRT FP16
#      at batch 1, 8, 32;
#   3. throughput through tern-node (perf_analyzer over gRPC), when tern-node and perf_analyzer
#      are there: a KIND_GPU copy of light_resnet50 (max_batch_size 32), and whether the node
#      really put it on the GPU (nvidia-smi's process list).
# Sessions are placed through tern_backend_ort::instance_plan, as a node places them. A
# missing TensorRT is reported with its reason and then run as a node with
# --allow-cpu-fallback would (CUDA without TensorRT); it fails the run only with
# REQUIRE_TENSORRT=1. Without a GPU it says so and exits 0 (REQUIRE_GPU=1: exit 1).
#
# Needs: an NVIDIA driver, CUDA 13 + cuDNN 9 libraries (found by scripts/gpu/cuda_lib_path.sh,
# e.g. from a PyTorch cu130 install), ONNX Runtime's GPU build (`make setup GPU=1` puts it in
# .tern/onnxruntime-gpu/), Python with onnx + onnxruntime + numpy for the example models
# (unless MODEL_REPO already holds them), and target/release/ceiling and the GPU tests (built
# here if cargo is there, else CEILING_BIN / GPU_TEST_BIN: prebuilt binaries work, as on a
# machine without Rust). Other knobs: ORT_GPU_LIB, MODEL_REPO, BATCHES (1,8,32),
# SECONDS_PER_BATCH (5), NODE_BIN, PERF_ANALYZER, RESULTS_DIR (benches/out/gpu), PYTHON.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ORT_GPU_LIB=${ORT_GPU_LIB:-$ROOT/.tern/onnxruntime-gpu/libonnxruntime.so.1.31.1}
BATCHES=${BATCHES:-1,8,32}
SECONDS_PER_BATCH=${SECONDS_PER_BATCH:-5}
CEILING_BIN=${CEILING_BIN:-$ROOT/target/release/ceiling}
NODE_BIN=${NODE_BIN:-$ROOT/target/release/tern-node}
PERF_ANALYZER=${PERF_ANALYZER:-$ROOT/.tern/perf_analyzer/bin/perf_analyzer}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/benches/out/gpu}
MODEL_REPO=${MODEL_REPO:-$ROOT/examples/model_repository}

log() { printf '[test-gpu] %s\n' "$*"; }
die() { printf '[test-gpu] FAIL: %s\n' "$*" >&2; exit 1; }

# --- a GPU? -----------------------------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  log "no NVIDIA GPU on this machine (nvidia-smi $(command -v nvidia-smi >/dev/null && echo 'lists none' || echo 'is not installed')):"
  log "nothing to test here. GPU placement on CPU-only machines (KIND_AUTO -> CPU, KIND_GPU -> clean"
  log "error or --allow-cpu-fallback) is covered by 'cargo test -p tern-backend-ort' (tests/gpu_placement.rs)."
  [ "${REQUIRE_GPU:-0}" = 1 ] && die "REQUIRE_GPU=1 and no GPU"
  exit 0
fi
GPU_INFO=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)
log "GPU: $GPU_INFO"

[ -f "$ORT_GPU_LIB" ] || die "no GPU build of ONNX Runtime at $ORT_GPU_LIB: run 'make setup GPU=1' (or set ORT_GPU_LIB)"
for p in libonnxruntime_providers_shared.so libonnxruntime_providers_cuda.so; do
  [ -f "$(dirname "$ORT_GPU_LIB")/$p" ] || die "$p is missing beside $ORT_GPU_LIB: run 'make setup GPU=1'"
done
export ORT_DYLIB_PATH=$ORT_GPU_LIB
CUDA_DIRS=$(bash scripts/gpu/cuda_lib_path.sh 2> >(sed 's/^/[test-gpu] /' >&2))
export LD_LIBRARY_PATH="${CUDA_DIRS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
log "CUDA libraries from: ${CUDA_DIRS:-<none found>}"

if [ ! -x "$CEILING_BIN" ]; then
  command -v cargo >/dev/null || die "$CEILING_BIN is missing and there is no cargo to build it"
  log "building the ceiling bench"
  cargo build --release --locked -p tern-benches --bin ceiling || die "cannot build ceiling"
fi

# --- models -----------------------------------------------------------------------------------
if [ ! -f "$MODEL_REPO/resnet50_random/1/model.onnx" ] || [ ! -f "$MODEL_REPO/light_resnet50/1/model.onnx" ]; then
  PY=${PYTHON:-}
  [ -z "$PY" ] && { [ -x .venv/bin/python ] && PY=.venv/bin/python || PY=python3; }
  log "building the example models into $MODEL_REPO with $PY"
  "$PY" examples/build_model_repository.py "$MODEL_REPO" >/dev/null || die "cannot build the example models"
fi
RANDOM_MODEL=$MODEL_REPO/resnet50_random/1/model.onnx
LIGHT_MODEL=$MODEL_REPO/light_resnet50/1/model.onnx

mkdir -p "$RESULTS_DIR"
failures=0
TMP=$(mktemp -d)
node_pid=""
cleanup() {
  [ -n "$node_pid" ] && { kill "$node_pid" 2>/dev/null; wait "$node_pid" 2>/dev/null; }
  rm -rf "$TMP"
}
trap cleanup EXIT
ceiling() { RUST_BACKTRACE=0 timeout 900 "$CEILING_BIN" "$@"; }

# --- 0. GPU integration tests (crates/backend-ort/tests/gpu_device.rs) -----------------------
GPU_TEST_BIN=${GPU_TEST_BIN:-$ROOT/target/release/gpu_device}
test_args=(--ignored --test-threads 1 --nocapture)
log "0. backend-ort GPU tests (placement, CUDA options, datatypes on the GPU)"
if [ -x "$GPU_TEST_BIN" ]; then
  TERN_EXAMPLES_REPO=$MODEL_REPO "$GPU_TEST_BIN" "${test_args[@]}" 2>&1 | grep -v '^$' \
    || { log "FAIL: GPU tests"; failures=$((failures + 1)); }
elif command -v cargo >/dev/null; then
  TERN_EXAMPLES_REPO=$MODEL_REPO cargo test --release --locked -p tern-backend-ort --test gpu_device -- \
    "${test_args[@]}" || { log "FAIL: GPU tests"; failures=$((failures + 1)); }
else
  log "FAIL: no $GPU_TEST_BIN and no cargo to build the GPU tests"
  failures=$((failures + 1))
fi

# --- 1. correctness against CPU ---------------------------------------------------------------
log "1. outputs vs CPU (resnet50_random, batch 8)"
CHECKS=()
if out=$(ceiling --model "$RANDOM_MODEL" --device cuda --check 8 --seconds 0 2>&1); then
  CHECKS+=("$(grep '^check' <<<"$out")")
else
  echo "$out" | tail -5
  die "CUDA provider: $(grep -m1 '^Error' <<<"$out" || echo 'see above')"
fi
TRT_OK=1
TRT_REASON=""
if out=$(ceiling --model "$RANDOM_MODEL" --device tensorrt --precision FP16 --check 8 --batch 8 --seconds 0 \
           --trt-cache "$RESULTS_DIR/trt_cache" 2>&1); then
  CHECKS+=("$(grep '^check' <<<"$out")")
else
  TRT_OK=0
  TRT_REASON=$(grep -m1 '^Error' <<<"$out" || tail -3 <<<"$out")
  log "TensorRT unavailable: $TRT_REASON"
  [ "${REQUIRE_TENSORRT:-0}" = 1 ] && failures=$((failures + 1))
  # What a node with --allow-cpu-fallback does: CUDA without TensorRT, labelled as a fallback.
  if out=$(ceiling --model "$RANDOM_MODEL" --device tensorrt --allow-fallback --check 8 --seconds 0 2>&1); then
    CHECKS+=("$(grep '^check' <<<"$out") [$(grep -m1 -o 'placed on .*(FALLBACK)' <<<"$out")]")
  else
    echo "$out" | tail -5
    log "FAIL: the TensorRT -> CUDA fallback did not run"
    failures=$((failures + 1))
  fi
fi
printf '%s\n' "${CHECKS[@]}"
grep -q FAIL <<<"$(printf '%s\n' "${CHECKS[@]}")" && failures=$((failures + 1))

# --- 2. throughput in-process -----------------------------------------------------------------
log "2. in-process throughput (light_resnet50, batch $BATCHES, ${SECONDS_PER_BATCH} s each)"
TABLE=$TMP/inprocess.md
{
  echo "| device | batch | runs | inferences/s | ms per run |"
  echo "|---|---:|---:|---:|---:|"
} >"$TABLE"
devices=(cpu cuda)
[ "$TRT_OK" = 1 ] && devices+=(tensorrt)
for dev in "${devices[@]}"; do
  if ! ceiling --model "$LIGHT_MODEL" --device "$dev" --precision FP16 --trt-cache "$RESULTS_DIR/trt_cache" \
        --batch "$BATCHES" --seconds "$SECONDS_PER_BATCH" --rows-only >>"$TABLE" 2>"$TMP/$dev.err"; then
    tail -3 "$TMP/$dev.err"
    log "FAIL: $dev throughput run"
    failures=$((failures + 1))
  fi
done
cat "$TABLE"

# --- 3. through tern-node ---------------------------------------------------------------------
NODE_TABLE=""
if [ -x "$NODE_BIN" ] && [ -x "$PERF_ANALYZER" ]; then
  log "3. through tern-node (perf_analyzer, gRPC, concurrency 4)"
  repo=$TMP/repo
  for kind in GPU CPU; do
    name=light_resnet50_$(tr 'A-Z' 'a-z' <<<"$kind")
    mkdir -p "$repo/$name/1"
    cp "$LIGHT_MODEL" "$repo/$name/1/model.onnx"
    cat >"$repo/$name/config.pbtxt" <<CFG
name: "$name"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [ { name: "input" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]
output [ { name: "output" data_type: TYPE_FP32 dims: [ 1000 ] } ]
instance_group [ { kind: KIND_$kind count: 1 } ]
dynamic_batching { }
CFG
  done
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$NODE_BIN" --model-repository "$repo" --grpc-address 127.0.0.1 --grpc-port "$port" >"$TMP/node.log" 2>&1 &
  node_pid=$!
  for _ in $(seq 1 900); do grep -q "tern-node ready" "$TMP/node.log" && break; kill -0 "$node_pid" 2>/dev/null || break; sleep 0.1; done
  if grep -q "tern-node ready" "$TMP/node.log"; then
    on_gpu=no
    nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null | grep -qw "$node_pid" && on_gpu=yes
    log "tern-node holds a CUDA context: $on_gpu"
    NODE_TABLE=$TMP/node.md
    {
      echo "| model (config kind) | node on GPU | batch | infer/s |"
      echo "|---|---|---:|---:|"
    } >"$NODE_TABLE"
    for name in light_resnet50_gpu light_resnet50_cpu; do
      for b in ${BATCHES//,/ }; do
        pa_out=$(LD_LIBRARY_PATH=$(dirname "$PERF_ANALYZER")/../lib timeout 300 "$PERF_ANALYZER" -m "$name" \
          -u "127.0.0.1:$port" -i grpc -b "$b" --concurrency-range 4 --measurement-interval 3000 \
          --stability-percentage 30 --max-trials 4 2>&1)
        tput=$(grep -m1 -o 'Throughput: [0-9.]* infer/sec' <<<"$pa_out" | grep -o '[0-9.]*' | head -1)
        [ -z "$tput" ] && { echo "$pa_out" | tail -3; tput="error"; }
        echo "| $name | $on_gpu | $b | $tput |" >>"$NODE_TABLE"
      done
    done
    cat "$NODE_TABLE"
    [ "$on_gpu" = no ] && log "note: tern-node did not put KIND_GPU on the GPU (instance_plan not wired into this node build?)"
  else
    tail -5 "$TMP/node.log"
    log "tern-node did not become ready; no node numbers"
  fi
  kill "$node_pid" 2>/dev/null; wait "$node_pid" 2>/dev/null; node_pid=""
else
  log "3. skipped: $NODE_BIN or $PERF_ANALYZER missing (make build; make setup)"
fi

# --- summary ----------------------------------------------------------------------------------
{
  echo "GPU: $GPU_INFO"
  echo "ONNX Runtime: $ORT_GPU_LIB"
  echo "CUDA libraries: ${CUDA_DIRS:-none found}"
  [ "$TRT_OK" = 1 ] || echo "TensorRT: unavailable: $TRT_REASON"
  echo
  printf '%s\n' "${CHECKS[@]}"
  echo
  cat "$TABLE"
  [ -n "$NODE_TABLE" ] && { echo; cat "$NODE_TABLE"; }
} >"$RESULTS_DIR/summary.md"
log "summary in $RESULTS_DIR/summary.md"
[ "$failures" = 0 ] || die "$failures check(s) failed"
log "OK"
