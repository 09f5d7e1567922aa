# Tern — the commands a developer and CI use. `make serve` and `make test` set up everything
# they need themselves (scripts/setup.sh is idempotent): serving needs no root and no apt;
# `make test` adds the test tools (perf_analyzer, Prometheus) and says why.

SHELL := /bin/bash
ROOT := $(abspath .)
VENV_PY := $(ROOT)/.venv/bin/python
export ORT_DYLIB_PATH ?= $(ROOT)/.tern/onnxruntime/libonnxruntime.so.1.31.1
MODEL_REPO ?= $(ROOT)/examples/model_repository
GRPC_PORT ?= 8001
HTTP_PORT ?= 8000
METRICS_PORT ?= 8002
CARGO_FLAGS ?= --release --locked

.PHONY: setup setup-test build examples serve test test-rust test-deploy test-python test-serve lint fmt clean

## What building and serving need, as the current user (README.md, "Requirements").
setup:
	@bash scripts/setup.sh

## The above plus the tools only the tests use: pytest and its references, perf_analyzer,
## Prometheus (installed with apt-get when root; otherwise setup says what to run).
setup-test:
	@bash scripts/setup.sh --test

build: setup
	cargo build $(CARGO_FLAGS) -p tern-node -p tern-router -p tern-cli -p tern-imageops

examples: setup
	$(VENV_PY) examples/build_model_repository.py $(MODEL_REPO)

## Serve the example model repository on the default ports (HTTP 8000, gRPC 8001) with `tern serve`
## (router and node in one process; the single-machine default).
serve: build examples
	@echo "tern: HTTP on 127.0.0.1:$(HTTP_PORT) (try: curl -i 127.0.0.1:$(HTTP_PORT)/v2/health/ready), gRPC on 127.0.0.1:$(GRPC_PORT) — try: .venv/bin/python -c \"import tritonclient.grpc as g; print(g.InferenceServerClient('127.0.0.1:$(GRPC_PORT)').get_model_repository_index())\""
	$(ROOT)/target/release/tern serve --model-repository $(MODEL_REPO) --grpc-port $(GRPC_PORT) --http-port $(HTTP_PORT) --metrics-port $(METRICS_PORT)

## The whole test suite: Rust unit and integration tests, then end-to-end tests with the real
## tritonclient and perf_analyzer against the real tern-node binary.
test: setup-test build examples lint test-rust test-deploy test-deploy-k8s test-python

# Targets with `test = true` (libraries, binaries that have tests, test targets), not the
# examples (clippy --all-targets checks that they build); doc examples only where there is one:
# each test binary is a full link.
test-rust:
	TERN_EXAMPLES_REPO=$(MODEL_REPO) cargo test $(CARGO_FLAGS) --workspace --tests
	cargo test $(CARGO_FLAGS) -p tern-telemetry --doc

test-deploy:
	bash deploy/prometheus/check.sh

test-python:
	TERN_NODE_BIN=$(ROOT)/target/release/tern-node TERN_ROUTER_BIN=$(ROOT)/target/release/tern-router $(VENV_PY) -m pytest -q tests/python

## The node suite again, against `tern serve` (router + node in one process) instead of
## tern-node: a client must not tell them apart. Not part of `make test` (it doubles its time).
test-serve: setup-test build examples
	TERN_NODE_BIN=$(ROOT)/scripts/tern-serve.sh TERN_READY_MARK="tern ready" $(VENV_PY) -m pytest -q tests/python --ignore=tests/python/test_cluster.py

## The quick start on a fresh clone as a normal user (tests/fresh_clone/run.sh): git clone of
## this checkout's HEAD into a temporary folder, `make serve` there as a user that is not root
## (created for the test when run as root), an inference with tritonclient. Adds a full build of
## Tern's crates, so it is not part of `make test`; .ci/run runs it before `make test`.
.PHONY: test-fresh-clone
test-fresh-clone:
	bash tests/fresh_clone/run.sh

lint:
	cargo fmt --all -- --check
	cargo clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

clean:
	cargo clean
	rm -rf examples/model_repository

## NVIDIA GPUs: `make setup GPU=1` adds ONNX Runtime's GPU build (.tern/onnxruntime-gpu/, with
## the CUDA and TensorRT providers); any target run with GPU=1 loads that library instead of
## the CPU one; `make test-gpu` checks CUDA/TensorRT execution on this machine's GPU (and says
## so, exit 0, where there is none). See README.md, "GPU".
ifeq ($(GPU),1)
ifeq ($(origin ORT_DYLIB_PATH),file)
ORT_DYLIB_PATH := $(ROOT)/.tern/onnxruntime-gpu/libonnxruntime.so.1.31.1
endif
endif

.PHONY: test-gpu
test-gpu:
	@bash scripts/test_gpu.sh

## Offline validation of deploy/docker, deploy/k8s and helm/tern (tests/deploy): Helm lint and
## render, Kubernetes schema validation, kustomize builds, Dockerfile checks, and the manifests'
## flags against the real tern-node. Installs its pinned validators into .venv on first use.
## The Kubernetes deployment rehearsed on loopback: one router, three nodes (127.0.0.2-4),
## Debian's Prometheus scraping all four with deploy/prometheus/prometheus.yml. Prints the
## endpoints; Ctrl-C stops everything. `scripts/cluster.py --smoke` checks it end to end.
.PHONY: cluster
cluster: setup-test build examples
	$(VENV_PY) scripts/cluster.py --model-repository $(MODEL_REPO)

.PHONY: test-deploy-k8s
test-deploy-k8s:
	TERN_NODE_BIN=$(ROOT)/target/release/tern-node $(VENV_PY) -m pytest -q tests/deploy

## Benchmarks (benches/README.md): the in-process ceiling, tern-node and real Triton (PyPI
## nvidia-pytriton's tritonserver, installed into benches/.peer-venv) under perf_analyzer, and
## memory; rewrites its section of benches/RESULTS.md. About 15-20 min on 2 cores;
## `make bench QUICK=1` under 5; NO_TRITON=1 skips the peer.
.PHONY: bench
bench:
	QUICK=$(QUICK) NO_TRITON=$(NO_TRITON) CARGO_FLAGS="$(CARGO_FLAGS)" bash benches/run.sh

## HTTP against gRPC (issue 19): tern-node and real Triton serving both protocols at once,
## perf_analyzer `-i http` and `-i grpc` on tiny_add and light_resnet50 at c=1 and 16, in
## alternating rounds; rewrites the "make bench http" section of benches/RESULTS.md. About 10 min.
.PHONY: bench-http
bench-http: build examples
	bash benches/peer/setup.sh
	.venv/bin/python benches/http_vs_grpc.py --write

## Batching that tunes itself (issue 25, benches/autobatch.py): tiny_add and light_resnet50 at
## c=1 and 16 with batching off, fixed delays 0/100 µs/1 ms/5 ms and `queue_delay: auto`, one node,
## alternating rounds; rewrites the "make bench autobatch" section of benches/RESULTS.md. About
## 8 min on 2 cores. `make bench` (full) runs it too.
.PHONY: bench-autobatch
bench-autobatch: build examples
	$(VENV_PY) benches/autobatch.py --write

## Generation (issue 20, benches/llm.py): generated tokens/s and time to first token p50/p99 at
## concurrency 1, 4, 16, 64 for tern-node with continuous batching, tern-node with batching off,
## the in-process ceiling and onnxruntime-genai, all on examples/build_tiny_llm.py's model; prints
## the table and rewrites the "Generation" section of benches/RESULTS.md. The served rows use
## tern-client's native `llm_load` client; (a), (b), the engine alone and the c=1 ceiling run
## side by side at each concurrency over LLM_ROUNDS rounds, each cell reporting its median round. About 5 min on 2 cores
## (SECONDS_PER_CELL=4 each, 3 rounds); the Rust examples build first.
SECONDS_PER_CELL ?= 4
LLM_ROUNDS ?= 3
.PHONY: bench-llm
bench-llm: build examples
	$(VENV_PY) benches/llm.py --seconds $(SECONDS_PER_CELL) --rounds $(LLM_ROUNDS) --write

## The same on examples/build_tiny_llm.py's benchmark shape (--shape small: 165 MB of weights, a
## decode step bound by memory as a real model's is; built into benches/out on first use);
## rewrites "Generation, the memory-bound model". About 8 minutes.
.PHONY: bench-llm-small
bench-llm-small: build examples
	$(VENV_PY) benches/llm.py --model small --seconds 8 --rounds $(LLM_ROUNDS) --write

## Embeddings (benches/embeddings.py): all-MiniLM-L6-v2 embeddings/s at concurrency 1 and 16,
## tern-node (tritonclient gRPC, one text per request) against an in-process onnxruntime loop on
## the same model.onnx; rewrites the "Embeddings" section of benches/RESULTS.md. About 1 min.
.PHONY: bench-embeddings
bench-embeddings: build examples
	$(VENV_PY) benches/embeddings.py --seconds $(SECONDS_PER_CELL) --write

## Cluster placement through etcd (issue 23, benches/cluster_sim.py): a real etcd, two real
## routers and 100 SIMULATED nodes (the node control plane only) with 1,000 models: placement
## time, convergence after a node loss, etcd writes per minute at steady state; rewrites its
## section of benches/RESULTS.md. About 3 min. Not part of `make test`.
.PHONY: bench-cluster
bench-cluster: build
	TERN_ROUTER_BIN=$(ROOT)/target/release/tern-router $(VENV_PY) benches/cluster_sim.py --write

## Criterion micro-benchmarks (benches/benches/*.rs, benches/README.md): request decode and
## validation, the BYTES codec, batch assembly and split, config.pbtxt parsing, placement.
## About 3 min on 2 cores; QUICK=1 (1 s warm-up, 2 s per benchmark) about 1.5. Medians and
## comparisons with the previous run go to target/criterion/.
.PHONY: bench-micro
bench-micro:
	cargo bench --locked -p tern-benches --bench '*' -- $(if $(filter 1,$(QUICK)),--warm-up-time 1 --measurement-time 2)

## Cold start (issue 25, benches/cold_start.py): tern-node's time to READY for light_resnet50
## and tiny_llm without --model-cache-dir, with an empty one and with a primed one, in rotating
## rounds, and real Triton's (benches/peer/) on light_resnet50; rewrites the "Cold start" section
## of benches/RESULTS.md. About 2 min on 2 cores; NO_TRITON=1 skips the peer.
.PHONY: bench-cold-start
bench-cold-start: build examples
	$(if $(filter 1,$(NO_TRITON)),,bash benches/peer/setup.sh)
	$(VENV_PY) benches/cold_start.py $(if $(filter 1,$(NO_TRITON)),--no-triton) --write
