#!/usr/bin/env bash
# `make bench` / `make bench QUICK=1`: sets up, builds, runs the criterion micro-benchmarks
# (`make bench-micro`; printed, not written to RESULTS.md), installs the Triton peer, then runs
# benches/bench.py, which measures and rewrites its section of benches/RESULTS.md.
#   QUICK=1     micro-benchmarks at 1 s warm-up + 2 s each (~1.5 min), then tiny_add +
#               light_resnet50 at c=1,4 with 2 s windows (+ Triton tiny_add): < 5 min
#   NO_TRITON=1 skip the real-Triton peer (no download of nvidia-pytriton)
# The full run ends with benches/router_overhead.py (router and `tern serve` vs direct) and
# benches/autobatch.py (queue_delay auto vs fixed delays).
# Measure on a quiet machine: every number here shares the cores with whatever else runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build ${CARGO_FLAGS:---release --locked} -p tern-node -p tern-router -p tern-cli -p tern-benches
.venv/bin/python examples/build_model_repository.py examples/model_repository >/dev/null
# First, while no server runs. `cargo bench` takes no --release (its profile is release-based).
flags=${CARGO_FLAGS:---release --locked}
micro=()
[ "${QUICK:-0}" = 1 ] && micro=(--warm-up-time 1 --measurement-time 2)
cargo bench ${flags//--release/} -p tern-benches --bench '*' -- "${micro[@]}"
args=()
[ "${QUICK:-0}" = 1 ] && args+=(--quick)
if [ "${NO_TRITON:-0}" = 1 ]; then args+=(--no-triton); else bash benches/peer/setup.sh; fi
.venv/bin/python benches/bench.py "${args[@]}"
# The full run also measures tern-router and `tern serve` against the node directly (about 5
# minutes; its own section of RESULTS.md).
if [ "${QUICK:-0}" != 1 ]; then .venv/bin/python benches/router_overhead.py --window-ms 5000 --rounds 2 --write; fi
# And batching that tunes itself against fixed delays (benches/autobatch.py, about 8 minutes).
if [ "${QUICK:-0}" != 1 ]; then .venv/bin/python benches/autobatch.py --write; fi
