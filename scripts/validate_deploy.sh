#!/usr/bin/env bash
# Offline validation of deploy/docker, deploy/k8s and helm/tern (tests/deploy):
#   Helm's engine (helm-python-sdk) lints and renders the chart, kubernetes-validate checks
#   every object against the Kubernetes API schemas, `kubectl kustomize` builds every
#   kustomization, BuildKit's parser and hadolint read the Dockerfiles, and the real tern-node
#   runs with the manifests' arguments.
# Installs the pinned validators of tests/deploy/requirements.txt into .venv when missing
# (idempotent). Extra arguments go to pytest, e.g. scripts/validate_deploy.sh -k helm
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  echo "validate_deploy: no .venv; run scripts/setup.sh (make setup) first" >&2
  exit 1
fi
if [ ! -x target/release/tern-node ] && [ -z "${TERN_NODE_BIN:-}" ]; then
  echo "validate_deploy: building tern-node (its --help is the reference for the manifests' flags)"
  cargo build --release --locked -p tern-node
fi
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.tern/onnxruntime/libonnxruntime.so.1.31.1}
exec .venv/bin/python -m pytest -q tests/deploy "$@"
