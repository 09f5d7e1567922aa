#!/usr/bin/env bash
# perf_analyzer (Triton's load generator) against a tern-node serving one example model.
#   benches/perf_node.sh [MODEL] [CONCURRENCY_RANGE] [MEASUREMENT_MS]
# e.g. benches/perf_node.sh light_resnet50 1:4:3 10000   (concurrency 1 and 4)
# Starts the node on a free loopback port, runs perf_analyzer over gRPC, stops the node.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-light_resnet50}
RANGE=${2:-1:4:3}
WINDOW=${3:-10000}
REPO=${MODEL_REPO:-examples/model_repository}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.tern/onnxruntime/libonnxruntime.so.1.31.1}
tmp=$(mktemp -d)
trap 'kill $node 2>/dev/null || true; wait $node 2>/dev/null || true; rm -rf "$tmp"' EXIT
mkdir -p "$tmp/repo"
cp -r "$REPO/$MODEL" "$tmp/repo/"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/release/tern-node --model-repository "$tmp/repo" --grpc-address 127.0.0.1 --grpc-port "$port" \
  >"$tmp/node.log" 2>&1 &
node=$!
for _ in $(seq 1 600); do grep -q "tern-node ready" "$tmp/node.log" && break; sleep 0.1; done
grep -q "tern-node ready" "$tmp/node.log" || { cat "$tmp/node.log"; exit 1; }
LD_LIBRARY_PATH=.tern/perf_analyzer/lib timeout 900 .tern/perf_analyzer/bin/perf_analyzer \
  -m "$MODEL" -u "127.0.0.1:$port" -i grpc --concurrency-range "$RANGE" \
  --measurement-interval "$WINDOW" --stability-percentage 20 --max-trials 5
