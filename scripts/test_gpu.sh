#!/usr/bin/env bash
# `make test-gpu`: checks Tern's GPU execution on a machine with an NVIDIA GPU.
#
#   0. the GPU tests of crates/backend-ort/tests/gpu_device.rs, with TERN_REQUIRE_GPU=1 (plain
#      `cargo test` runs them too, and where no GPU is usable they check the CPU side instead);
#   1. correctness: resnet50_random (seeded random weights, so outputs are not uniform) on the
#      CUDA provider and on TensorRT (FP16) against a CPU session, same batch of 8 distinct
#      rows, within a tolerance (2e-3 CUDA, 2e-2 TensorRT FP16);
#   2. throughput in-process (benches `ceiling`): light_resnet50 on CPU, CUDA and TensorRT FP16
#      at batch 1, 8, 16, 32; CUDA also through an IO binding, and with a CUDA graph per batch
#      size (issue 25);
#   3. through tern-node, when tern-node and perf_analyzer are there: KIND_GPU and KIND_CPU
#      copies of light_resnet50 and resnet50_random (max_batch_size 32, dynamic batching,
#      preferred 8/16/32) in one node; the placement it logs (and nvidia-smi's view); the served
#      resnet50_random outputs against a CPU session (scripts/gpu/check_served.py, gRPC); and
#      perf_analyzer throughput at concurrency 1/4/16 (batch-1 requests) for the light copies:
#      KIND_GPU as configured by default (buckets + IO binding), with `io_binding` off, with
#      `optimization { cuda { graphs: true } }`, with buckets off, and KIND_CPU. The served
#      resnet50_random copies (binding, no binding, graphs) are checked against a CPU session,
#      and each light copy's rate at the highest concurrency is set against the best
#      in-process CUDA rate of stage 2 at a batch the dynamic batcher can form there (issue 25's
#      target: at least 90%).
#   4. generation (issue 20): tiny_llm as a KIND_GPU and a KIND_CPU model in one node; each
#      copy's greedy token ids for the 16 test prompts, alone and as one continuous batch, must
#      equal a plain onnxruntime CPU loop's (scripts/gpu/check_generation.py); then generated
#      tokens/s and time to first token at LLM_CONCURRENCY (1,16,64) through the node
#      (tern-client's llm_load) and in process (crates/generate's engine_load, --cuda 0 for the GPU
#      copy), and the served GPU rate at concurrency 1 as a share of the in-process one.
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
# machine without Rust). Other knobs: STAGES (0,1,2,3: which of the parts below run), ORT_GPU_LIB,
# MODEL_REPO, BATCHES (1,8,32), SECONDS_PER_BATCH (5), NODE_BIN, PERF_ANALYZER, NODE_CONCURRENCY
# (1,4,16), LLM_CONCURRENCY (1,16,64), LLM_SECONDS (4), PA_WINDOW_MS (3000), NODE_KINDS (GPU,GPU_NOBINDING,GPU_GRAPHS,GPU_NOBUCKETS,CPU: which
# light_resnet50 copies perf_analyzer measures; GPU_NOBINDING is the KIND_GPU copy with `io_binding`
# off, GPU_GRAPHS with CUDA graphs, GPU_NOBUCKETS with `batch_buckets` off, the others have Tern's
# defaults: buckets and IO binding on GPU, off on CPU), PA_BATCH (1: rows per perf_analyzer request),
# CUDNN_CONV_ALGO_SEARCH (unset: Tern's default, HEURISTIC; else 0/1/2 into the KIND_GPU configs'
# parameters, 0 = EXHAUSTIVE, ORT's own default), RESULTS_DIR (benches/out/gpu), PYTHON.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ORT_GPU_LIB=${ORT_GPU_LIB:-$ROOT/.tern/onnxruntime-gpu/libonnxruntime.so.1.31.1}
BATCHES=${BATCHES:-1,8,16,32}
SECONDS_PER_BATCH=${SECONDS_PER_BATCH:-5}
CEILING_BIN=${CEILING_BIN:-$ROOT/target/release/ceiling}
NODE_BIN=${NODE_BIN:-$ROOT/target/release/tern-node}
PERF_ANALYZER=${PERF_ANALYZER:-$ROOT/.tern/perf_analyzer/bin/perf_analyzer}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/benches/out/gpu}
MODEL_REPO=${MODEL_REPO:-$ROOT/examples/model_repository}
STAGES=${STAGES:-0,1,2,3,4}
NODE_CONCURRENCY=${NODE_CONCURRENCY:-1,4,16}
LLM_CONCURRENCY=${LLM_CONCURRENCY:-1,16,64}
LLM_SECONDS=${LLM_SECONDS:-4}
PA_WINDOW_MS=${PA_WINDOW_MS:-3000}
NODE_KINDS=${NODE_KINDS:-GPU,GPU_NOBINDING,GPU_GRAPHS,GPU_NOBUCKETS,CPU}
PA_BATCH=${PA_BATCH:-1}
CUDNN_CONV_ALGO_SEARCH=${CUDNN_CONV_ALGO_SEARCH:-}
want() { [[ ",$STAGES," == *",$1,"* ]]; }

log() { printf '[test-gpu] %s\n' "$*"; }
die() { printf '[test-gpu] FAIL: %s\n' "$*" >&2; exit 1; }

# --- a GPU? -----------------------------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  log "no NVIDIA GPU on this machine (nvidia-smi $(command -v nvidia-smi >/dev/null && echo 'lists none' || echo 'is not installed')):"
  log "nothing to test here. GPU placement on CPU-only machines (KIND_AUTO -> CPU, KIND_GPU -> clean"
  log "error or --allow-cpu-fallback) is covered by 'cargo test -p tern-backend-ort' (tests/cpu/gpu_placement.rs)."
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
test_args=(--include-ignored --test-threads 1 --nocapture)
# This machine has a GPU (checked above): the tests must use it, not fall back to their CPU side.
export TERN_REQUIRE_GPU=1
if ! want 0; then
  log "0. skipped (STAGES=$STAGES)"
elif log "0. backend-ort GPU tests (placement, CUDA options, datatypes on the GPU)"; [ -x "$GPU_TEST_BIN" ]; then
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
CHECKS=()
TRT_OK=1
TRT_REASON=""
if want 1; then
  log "1. outputs vs CPU (resnet50_random, batch 8)"
  if out=$(ceiling --model "$RANDOM_MODEL" --device cuda --check 8 --seconds 0 2>&1); then
    CHECKS+=("$(grep '^check' <<<"$out")")
  else
    echo "$out" | tail -5
    die "CUDA provider: $(grep -m1 '^Error' <<<"$out" || echo 'see above')"
  fi
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
else
  log "1. skipped (STAGES=$STAGES)"
fi

# --- 2. throughput in-process -----------------------------------------------------------------
TABLE=""
if want 2; then
  log "2. in-process throughput (light_resnet50, batch $BATCHES, ${SECONDS_PER_BATCH} s each)"
  TABLE=$TMP/inprocess.md
  {
    echo "| device | batch | runs | inferences/s | ms per run |"
    echo "|---|---:|---:|---:|---:|"
  } >"$TABLE"
  devices=(cpu cuda)
  [ "$TRT_OK" = 1 ] && devices+=(tensorrt)
  # cuda+binding / cuda+graphs: the same CUDA session through an IO binding per batch size,
  # without and with a CUDA graph each (issue 25).
  devices+=(cuda+binding cuda+graphs)
  for dev in "${devices[@]}"; do
    extra=()
    case $dev in
      cuda+binding) extra=(--io-binding) ;;
      cuda+graphs) extra=(--cuda-graphs) ;;
    esac
    if ! ceiling --model "$LIGHT_MODEL" --device "${dev%%+*}" --precision FP16 --trt-cache "$RESULTS_DIR/trt_cache" \
          --batch "$BATCHES" --seconds "$SECONDS_PER_BATCH" --rows-only "${extra[@]}" >>"$TABLE" 2>"$TMP/$dev.err"; then
      tail -3 "$TMP/$dev.err"
      log "FAIL: $dev throughput run"
      failures=$((failures + 1))
    fi
  done
  cat "$TABLE"
else
  log "2. skipped (STAGES=$STAGES)"
fi

# --- 3. through tern-node ---------------------------------------------------------------------
# KIND_GPU and KIND_CPU copies of light_resnet50 and resnet50_random (max_batch_size 32, dynamic
# batching, preferred 8/16/32), one node, no --allow-cpu-fallback: a KIND_GPU model the node
# cannot put on the GPU is unavailable and the node never gets ready. Evidence of placement:
# the node's "loaded ... placement=[...]" log lines, nvidia-smi's process list and GPU memory
# before and after the load, GPU utilisation sampled during the runs. Outputs of the served
# resnet50_random copies are checked against a CPU session (scripts/gpu/check_served.py), then
# perf_analyzer (gRPC, PA_BATCH-row requests) at concurrency NODE_CONCURRENCY through the light copies.
NODE_TABLE=""
NODE_EVIDENCE=""
if ! want 3; then
  log "3. skipped (STAGES=$STAGES)"
elif [ -x "$NODE_BIN" ] && [ -x "$PERF_ANALYZER" ]; then
  log "3. through tern-node (perf_analyzer, gRPC, batch-$PA_BATCH requests, concurrency ${NODE_CONCURRENCY})"
  repo=$TMP/repo
  for src in light_resnet50 resnet50_random; do
    for kind in GPU CPU; do
      name=${src}_$(tr 'A-Z' 'a-z' <<<"$kind")
      mkdir -p "$repo/$name/1"
      cp "$MODEL_REPO/$src/1/model.onnx" "$repo/$name/1/model.onnx"
      cat >"$repo/$name/config.pbtxt" <<CFG
name: "$name"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [ { name: "input" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]
output [ { name: "output" data_type: TYPE_FP32 dims: [ 1000 ] } ]
instance_group [ { kind: KIND_$kind count: 1 } ]
dynamic_batching { preferred_batch_size: [ 8, 16, 32 ] }
CFG
      if [ "$kind" = GPU ] && [ -n "$CUDNN_CONV_ALGO_SEARCH" ]; then
        echo "parameters { key: \"cudnn_conv_algo_search\" value: { string_value: \"$CUDNN_CONV_ALGO_SEARCH\" } }" \
          >>"$repo/$name/config.pbtxt"
      fi
    done
  done
  # Variants of the KIND_GPU models (issue 25): batch buckets off (batches run at whatever size
  # the dynamic batcher forms, as before buckets existed), IO binding off (buckets, host buffers
  # copied by ORT in Run), CUDA graphs on (one per bucket, on the bound device buffers).
  variant() {  # source-model suffix config-line
    cp -r "$repo/$1" "$repo/$1_$2"
    sed -i "s/^name: .*/name: \"$1_$2\"/" "$repo/$1_$2/config.pbtxt"
    echo "$3" >>"$repo/$1_$2/config.pbtxt"
  }
  for src in light_resnet50_gpu resnet50_random_gpu; do
    variant "$src" nobuckets 'parameters { key: "batch_buckets" value: { string_value: "off" } }'
    variant "$src" nobinding 'parameters { key: "io_binding" value: { string_value: "off" } }'
    variant "$src" graphs 'optimization { cuda { graphs: true } }'
  done
  gpu_mem() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1; }
  mem_before=$(gpu_mem)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  NODE_LOG=$RESULTS_DIR/node.log
  "$NODE_BIN" --model-repository "$repo" --grpc-address 127.0.0.1 --grpc-port "$port" \
    --metrics-port "$mport" --allow-http false >"$NODE_LOG" 2>&1 &
  node_pid=$!
  for _ in $(seq 1 1800); do grep -q "tern-node ready" "$NODE_LOG" && break; kill -0 "$node_pid" 2>/dev/null || break; sleep 0.1; done
  if grep -q "tern-node ready" "$NODE_LOG"; then
    mem_after=$(gpu_mem)
    apps=$(nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader 2>/dev/null)
    on_gpu=no
    grep -qw "$node_pid" <<<"$apps" && on_gpu=yes
    NODE_EVIDENCE=$TMP/evidence.txt
    {
      echo "node log, placement:"
      grep -E 'loaded|fallback|buckets' "$NODE_LOG" | sed 's/\x1b\[[0-9;]*m//g' | sed 's/^/  /'
      echo "nvidia-smi compute apps (tern-node pid $node_pid): ${apps:-<none listed>}"
      echo "GPU memory used: ${mem_before} MiB before the node, ${mem_after} MiB once it was ready"
    } >"$NODE_EVIDENCE"
    cat "$NODE_EVIDENCE"
    grep -E 'loaded' "$NODE_LOG" | grep 'resnet50_[a-z]*_gpu' | grep -q 'GPU' \
      || { log "FAIL: a KIND_GPU model's placement label does not name a GPU"; failures=$((failures + 1)); }
    "${PYTHON:-python3}" scripts/gpu/check_served.py --url "127.0.0.1:$port" --onnx "$RANDOM_MODEL" \
      --model resnet50_random_gpu --model resnet50_random_cpu --model resnet50_random_gpu_nobinding \
      --model resnet50_random_gpu_graphs --model resnet50_random_gpu_nobuckets --batch 8 --atol 2e-3 \
      --concurrency 16 | tee -a "$NODE_EVIDENCE" \
      || { log "FAIL: served outputs vs CPU"; failures=$((failures + 1)); }
    NODE_TABLE=$TMP/node.md
    {
      echo "| model (config kind) | request batch | concurrency | infer/s | client avg ms | p99 ms | server request ms | server compute ms | avg batch | GPU util % (max) |"
      echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    } >"$NODE_TABLE"
    pa() {  # model concurrency window-ms trials
      LD_LIBRARY_PATH=$(dirname "$PERF_ANALYZER")/../lib timeout 300 "$PERF_ANALYZER" -m "$1" \
        -u "127.0.0.1:$port" -i grpc -b "$PA_BATCH" --concurrency-range "$2" --measurement-interval "$3" \
        --stability-percentage 50 --max-trials "$4" 2>&1
    }
    usec() { sed -n "s/.*$1: \([0-9]*\) usec.*/\1/p" | head -1; }
    for kind in ${NODE_KINDS//,/ }; do
      name=light_resnet50_$(tr 'A-Z' 'a-z' <<<"$kind")
      # Warm-up at the highest concurrency, so the batch shapes the measured runs see were seen
      # before (ORT's CUDA provider searches convolution algorithms per new input shape).
      cmax=$(tr ',' '\n' <<<"$NODE_CONCURRENCY" | sort -n | tail -1)
      wu=$(pa "$name" "$cmax" 2000 2)
      log "warmed up $name at concurrency $cmax ($(grep -c 'Request concurrency' <<<"$wu") perf_analyzer pass, not recorded)"
      for c in ${NODE_CONCURRENCY//,/ }; do
        nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500 >"$TMP/util" 2>/dev/null &
        smi_pid=$!
        pa_out=$(pa "$name" "$c" "$PA_WINDOW_MS" 6)
        kill "$smi_pid" 2>/dev/null; wait "$smi_pid" 2>/dev/null
        echo "$pa_out" >"$RESULTS_DIR/pa_${name}_b${PA_BATCH}_c$c.txt"
        tput=$(grep -m1 -o 'Throughput: [0-9.]* infer/sec' <<<"$pa_out" | grep -o '[0-9.]*' | head -1)
        avg=$(usec 'Avg latency' <<<"$pa_out")
        p99=$(usec 'p99 latency' <<<"$pa_out")
        srv=$(usec 'Avg request latency' <<<"$pa_out")
        cinf=$(sed -n 's/.*compute infer \([0-9]*\) usec.*/\1/p' <<<"$pa_out" | head -1)
        inf=$(grep -m1 -o 'Inference count: [0-9]*' <<<"$pa_out" | grep -o '[0-9]*$')
        exe=$(grep -m1 -o 'Execution count: [0-9]*' <<<"$pa_out" | grep -o '[0-9]*$')
        util=$(sort -n "$TMP/util" 2>/dev/null | tail -1)
        [ -z "$tput" ] && { echo "$pa_out" | tail -3; tput="error"; failures=$((failures + 1)); }
        ms() { [ -n "$1" ] && awk -v u="$1" 'BEGIN{printf "%.2f", u/1000}' || echo "-"; }
        batch="-"
        [ -n "$inf" ] && [ -n "$exe" ] && [ "$exe" -gt 0 ] && batch=$(awk -v i="$inf" -v e="$exe" 'BEGIN{printf "%.1f", i/e}')
        echo "| $name | $PA_BATCH | $c | $tput | $(ms "$avg") | $(ms "$p99") | $(ms "$srv") | $(ms "$cinf") | $batch | ${util:--} |" >>"$NODE_TABLE"
      done
    done
    cat "$NODE_TABLE"
    # Issue 25's target: served at the highest concurrency >= 90% of the best in-process CUDA
    # rate (stage 2, any mode) at a batch size the dynamic batcher can form there.
    if [ -n "$TABLE" ]; then
      formable=$((cmax * PA_BATCH))
      best=$(awk -F'|' -v m="$formable" '$2 ~ /GPU/ && $2 !~ /TensorRT/ && $3+0 <= m && $5+0 > b { b = $5+0; l = $2 " batch " $3+0 } END { if (b) printf "%.1f %s", b, l }' "$TABLE")
      if [ -n "$best" ]; then
        RATIO=$TMP/ratio.md
        echo "best in-process CUDA rate at batch <= $formable: ${best#* } = ${best%% *} inferences/s" >"$RATIO"
        awk -F'|' -v c="$cmax" -v b="${best%% *}" '$4+0 == c && $5+0 > 0 { r = ($5+0) / b; printf "served %s at concurrency %d: %.1f infer/s = %.0f%% of it%s\n", $2, c, $5, 100 * r, (r >= 0.9 ? " (>= 90%: OK)" : " (< 90%)") }' "$NODE_TABLE" >>"$RATIO"
        cat "$RATIO"
      fi
    fi
    [ "$on_gpu" = no ] && log "note: nvidia-smi does not list tern-node's pid (in a sandbox such as gVisor it may list no process at all): see the placement labels and GPU memory above"
  else
    tail -20 "$NODE_LOG"
    log "FAIL: tern-node did not become ready (a KIND_GPU model it could not place?); no node numbers"
    failures=$((failures + 1))
  fi
  kill "$node_pid" 2>/dev/null; wait "$node_pid" 2>/dev/null; node_pid=""
else
  log "3. skipped: $NODE_BIN or $PERF_ANALYZER missing (make build; make setup)"
fi

# --- 4. generation on the GPU (issue 20) -------------------------------------------------------
# tiny_llm twice in one node: KIND_GPU (the CUDA provider, KV cache kept on the device between
# steps) and KIND_CPU. Correctness first (greedy ids equal the CPU reference loop's, alone and
# batched), then tokens/s and TTFT through the node and in process.
LLM_TABLE=""
LLM_FOLDER=$MODEL_REPO/tiny_llm/1
if ! want 4; then
  log "4. skipped (STAGES=$STAGES)"
elif [ ! -f "$LLM_FOLDER/genai_config.json" ]; then
  log "FAIL: 4. no $LLM_FOLDER (make examples builds it)"
  failures=$((failures + 1))
else
  log "4. generation: tiny_llm on KIND_GPU and KIND_CPU"
  PY=${PYTHON:-}
  [ -z "$PY" ] && { [ -x .venv/bin/python ] && PY=.venv/bin/python || PY=python3; }
  LOAD_BIN=${LLM_LOAD_BIN:-$ROOT/target/release/examples/llm_load}
  ENGINE_BIN=${ENGINE_LOAD_BIN:-$ROOT/target/release/examples/engine_load}
  if { [ ! -x "$LOAD_BIN" ] || [ ! -x "$ENGINE_BIN" ]; } && command -v cargo >/dev/null; then
    cargo build --release --locked -p tern-client --example llm_load >/dev/null 2>&1
    cargo build --release --locked -p tern-generate --example engine_load >/dev/null 2>&1
  fi
  repo=$TMP/llm_repo
  for kind in GPU CPU; do
    name=tiny_llm_$(tr 'A-Z' 'a-z' <<<"$kind")
    mkdir -p "$repo/$name"
    ln -s "$LLM_FOLDER" "$repo/$name/1"
    cat >"$repo/$name/config.pbtxt" <<CFG
name: "$name"
backend: "onnxruntime_genai"
max_batch_size: 0
model_transaction_policy { decoupled: true }
instance_group [ { kind: KIND_$kind count: 1 } ]
parameters { key: "max_batch" value { string_value: "64" } }
CFG
  done
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  LLM_LOG=$RESULTS_DIR/llm_node.log
  "$NODE_BIN" --model-repository "$repo" --grpc-address 127.0.0.1 --grpc-port "$port" \
    --metrics-port 0 --allow-http false >"$LLM_LOG" 2>&1 &
  node_pid=$!
  for _ in $(seq 1 1800); do grep -q "tern-node ready" "$LLM_LOG" && break; kill -0 "$node_pid" 2>/dev/null || break; sleep 0.1; done
  if grep -q "tern-node ready" "$LLM_LOG"; then
    grep -E 'loaded generative' "$LLM_LOG" | sed 's/\x1b\[[0-9;]*m//g' | sed 's/^/  /'
    grep -E 'loaded generative' "$LLM_LOG" | grep 'tiny_llm_gpu' | grep -q 'gpu=Some' \
      || { log "FAIL: tiny_llm_gpu did not load on a GPU"; failures=$((failures + 1)); }
    "$PY" scripts/gpu/check_generation.py --url "127.0.0.1:$port" --folder "$LLM_FOLDER" \
      --model tiny_llm_gpu --model tiny_llm_cpu | tee "$RESULTS_DIR/llm_check.txt" \
      || { log "FAIL: generated ids vs the CPU reference"; failures=$((failures + 1)); }
    if [ -x "$LOAD_BIN" ] && [ -x "$ENGINE_BIN" ]; then
      "$PY" -c 'import json, sys; sys.path.insert(0, "tests/python"); from llm_reference import PROMPTS; print(json.dumps(PROMPTS))' \
        >"$TMP/prompts.json"
      LLM_TABLE=$TMP/llm.md
      {
        echo "| model | where | concurrency | tokens/s | TTFT p50 ms | TTFT p99 ms |"
        echo "|---|---|---:|---:|---:|---:|"
      } >"$LLM_TABLE"
      field() { "$PY" -c "import json, sys; d = json.loads(sys.stdin.read().strip().splitlines()[-1]); print(f'{d[sys.argv[1]]:.1f}')" "$1"; }
      for kind in gpu cpu; do
        for c in ${LLM_CONCURRENCY//,/ }; do
          out=$(timeout 300 "$LOAD_BIN" --url "127.0.0.1:$port" --model "tiny_llm_$kind" --prompts "$TMP/prompts.json" \
                  --concurrency "$c" --seconds "$LLM_SECONDS" --warmup 1 --max-tokens 64 2>&1)
          echo "| tiny_llm_$kind | served (llm_load) | $c | $(field tokens_per_s <<<"$out") | $(field ttft_p50_ms <<<"$out") | $(field ttft_p99_ms <<<"$out") |" >>"$LLM_TABLE"
        done
      done
      kill "$node_pid" 2>/dev/null; wait "$node_pid" 2>/dev/null; node_pid=""
      for kind in gpu cpu; do
        dev=()
        [ "$kind" = gpu ] && dev=(--cuda 0)
        for c in ${LLM_CONCURRENCY//,/ }; do
          out=$(timeout 600 "$ENGINE_BIN" --model "$LLM_FOLDER" --prompts "$TMP/prompts.json" --concurrency "$c" \
                  --max-batch 64 --max-tokens 64 --requests $(( c >= 32 ? 2 : 32 / c )) "${dev[@]}" 2>&1)
          echo "| tiny_llm_$kind | in process (engine_load${dev:+ --cuda 0}) | $c | $(field tokens_per_s <<<"$out") | $(field ttft_p50_ms <<<"$out") | $(field ttft_p99_ms <<<"$out") |" >>"$LLM_TABLE"
        done
      done
      cat "$LLM_TABLE"
      awk -F'|' '$2 ~ /tiny_llm_gpu/ && $4+0 == 1 { if ($3 ~ /served/) s = $5+0; else p = $5+0 }
                 END { if (s && p) printf "served GPU at concurrency 1: %.0f%% of the engine in process (target >= 90%%)\n", 100 * s / p }' \
        "$LLM_TABLE" | tee -a "$LLM_TABLE"
    else
      log "4. throughput skipped: $LOAD_BIN or $ENGINE_BIN missing (cargo build --release -p tern-client --example llm_load; -p tern-generate --example engine_load)"
    fi
  else
    tail -20 "$LLM_LOG"
    log "FAIL: tern-node with tiny_llm_gpu did not become ready"
    failures=$((failures + 1))
  fi
  [ -n "$node_pid" ] && { kill "$node_pid" 2>/dev/null; wait "$node_pid" 2>/dev/null; node_pid=""; }
fi

# --- summary ----------------------------------------------------------------------------------
{
  echo "GPU: $GPU_INFO"
  echo "ONNX Runtime: $ORT_GPU_LIB"
  echo "CUDA libraries: ${CUDA_DIRS:-none found}"
  [ "$TRT_OK" = 1 ] || echo "TensorRT: unavailable: $TRT_REASON"
  [ "${#CHECKS[@]}" -gt 0 ] && { echo; printf '%s\n' "${CHECKS[@]}"; }
  [ -n "$TABLE" ] && { echo; cat "$TABLE"; }
  [ -n "$NODE_EVIDENCE" ] && { echo; cat "$NODE_EVIDENCE"; }
  [ -n "$NODE_TABLE" ] && { echo; cat "$NODE_TABLE"; }
  [ -n "${RATIO:-}" ] && { echo; cat "$RATIO"; }
  [ -f "$RESULTS_DIR/llm_check.txt" ] && { echo; cat "$RESULTS_DIR/llm_check.txt"; }
  [ -n "$LLM_TABLE" ] && { echo; cat "$LLM_TABLE"; }
} >"$RESULTS_DIR/summary.md"
log "summary in $RESULTS_DIR/summary.md"
[ "$failures" = 0 ] || die "$failures check(s) failed"
log "OK"
