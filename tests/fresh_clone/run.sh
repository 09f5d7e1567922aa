#!/usr/bin/env bash
# The README's quick start on a fresh clone, as a normal user: clones this checkout (its
# committed HEAD) into a temporary folder, runs `make serve` there as a user that is not root,
# waits for "tern ready", runs an inference with tritonclient, and stops the server.
#
# As root it creates a user for the test (removed afterwards) and lets it read the Rust and
# Python toolchains under /root (o+x on /root only while the test runs; restored on exit).
# Otherwise it runs as the current user. Either way nothing in the clone runs as root, so a
# step that needed root fails the test. Registry crates already built in target/release are
# copied into the clone (their fingerprints do not depend on the workspace path); Tern's own
# crates build from scratch, as on a new machine. `make test-fresh-clone`; not part of
# `make test` (it adds a full build of the workspace: README.md, "Development").
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
say() { printf '[fresh-clone] %s\n' "$*"; }
fail() { printf '[fresh-clone] FAIL: %s\n' "$*" >&2; exit 1; }

TMP=$(mktemp -d /tmp/tern-fresh-clone.XXXXXX)
RUN_AS=$(id -un)
CREATED_USER=""
ROOT_MODE=""
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill -TERM -- "-$SERVER_PID" 2>/dev/null || kill -TERM "$SERVER_PID" 2>/dev/null || true
    sleep 1
    kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
  fi
  [ -n "$ROOT_MODE" ] && chmod "$ROOT_MODE" /root
  if [ -n "$CREATED_USER" ]; then
    pkill -KILL -u "$CREATED_USER" 2>/dev/null || true
    userdel "$CREATED_USER" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

# The tools the user needs on PATH: cargo (rustup's proxy), and the real Python interpreter
# (not a pyenv shim, which needs pyenv's environment).
CARGO_BIN=$(dirname "$(command -v cargo)")
PY_BIN=$(python3 -c 'import sys, os; print(os.path.join(sys.base_prefix, "bin"))')
USER_PATH="$PY_BIN:$CARGO_BIN:/usr/local/bin:/usr/bin:/bin"
RUSTUP_HOME=${RUSTUP_HOME:-$(rustup show home 2>/dev/null || echo "$HOME/.rustup")}
HOST_CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}

HOME_DIR="$TMP/home"
CLONE="$HOME_DIR/tern"
if [ "$(id -u)" = 0 ]; then
  CREATED_USER="ternfresh$$"
  useradd --no-create-home --home-dir "$HOME_DIR" --shell /bin/bash --user-group "$CREATED_USER"
  RUN_AS=$CREATED_USER
  ROOT_MODE=$(stat -c %a /root)
  chmod o+x /root   # traverse only: the toolchains below are world-readable already
  say "running as user $RUN_AS (created for this test; /root mode $ROOT_MODE -> o+x until the end)"
else
  say "running as $(id -un) (not root)"
fi
chmod 755 "$TMP"
mkdir -p "$HOME_DIR"

say "git clone $ROOT -> $CLONE"
git clone -q "$ROOT" "$CLONE"
# Registry crates only; Tern's own crates (names with "tern") rebuild in the clone.
if [ -d target/release/deps ]; then
  t0=$(date +%s)
  mkdir -p "$CLONE/target/release"
  tar -C target/release --exclude='*tern*' -cf - deps build .fingerprint | tar -C "$CLONE/target/release" -xf -
  say "copied registry crates' build outputs into the clone ($(du -sh "$CLONE/target" | cut -f1), $(( $(date +%s) - t0 )) s)"
fi
# Cargo's home for the user: its own (writable: locks, cache tracking) reading the host's
# downloaded registry, offline.
mkdir -p "$HOME_DIR/.cargo"
ln -s "$HOST_CARGO_HOME/registry" "$HOME_DIR/.cargo/registry"
[ -n "$CREATED_USER" ] && chown -R "$CREATED_USER:$CREATED_USER" "$HOME_DIR"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GRPC=$(free_port); HTTP=$(free_port); METRICS=$(free_port)
LOG="$TMP/serve.log"
as_user() {
  local cmd=$1
  if [ -n "$CREATED_USER" ]; then
    setsid runuser -u "$CREATED_USER" -- env -i HOME="$HOME_DIR" PATH="$USER_PATH" \
      RUSTUP_HOME="$RUSTUP_HOME" CARGO_HOME="$HOME_DIR/.cargo" CARGO_NET_OFFLINE=true \
      CARGO_PROFILE_RELEASE_LTO="${CARGO_PROFILE_RELEASE_LTO:-false}" \
      PIP_CACHE_DIR="$HOME_DIR/.cache/pip" bash -c "$cmd"
  else
    setsid env -u RUSTUP_TOOLCHAIN -u ORT_DYLIB_PATH -u VIRTUAL_ENV HOME="$HOME_DIR" PATH="$USER_PATH" \
      RUSTUP_HOME="$RUSTUP_HOME" CARGO_HOME="$HOME_DIR/.cargo" CARGO_NET_OFFLINE=true \
      CARGO_PROFILE_RELEASE_LTO="${CARGO_PROFILE_RELEASE_LTO:-false}" bash -c "$cmd"
  fi
}

say "make serve (log: $LOG)"
t0=$(date +%s)
as_user "cd '$CLONE' && id -u && exec make serve GRPC_PORT=$GRPC HTTP_PORT=$HTTP METRICS_PORT=$METRICS" >"$LOG" 2>&1 &
SERVER_PID=$!
deadline=$(( t0 + ${FRESH_CLONE_TIMEOUT_S:-2400} ))
until grep -q 'tern ready' "$LOG"; do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then tail -40 "$LOG" >&2; fail "make serve exited before 'tern ready'"; fi
  [ "$(date +%s)" -lt "$deadline" ] || { tail -40 "$LOG" >&2; fail "no 'tern ready' in time"; }
  sleep 5
done
ready_s=$(( $(date +%s) - t0 ))
say "tern ready after ${ready_s} s"
uid=$(head -1 "$LOG")
[ "$uid" != 0 ] || fail "make serve ran as root"
grep -qiE 'apt-get|sudo|permission denied' "$LOG" && { grep -iE 'apt-get|sudo|permission denied' "$LOG" >&2; fail "the log mentions apt-get, sudo or a permission error"; }
grep -q '"loading"\|loading' "$LOG" || fail "no model load progress in the log"

# The clone's own venv and tritonclient, as the user would call it.
as_user "'$CLONE/.venv/bin/python' - $GRPC" <<'PY' || fail "inference against the fresh clone failed"
import sys
import numpy as np
import tritonclient.grpc as grpcclient

client = grpcclient.InferenceServerClient(f"127.0.0.1:{sys.argv[1]}")
assert client.is_server_ready()
a = np.arange(16, dtype=np.float32).reshape(1, 16)
inputs = [grpcclient.InferInput("INPUT0", [1, 16], "FP32"), grpcclient.InferInput("INPUT1", [1, 16], "FP32")]
inputs[0].set_data_from_numpy(a)
inputs[1].set_data_from_numpy(a)
out = client.infer("tiny_add", inputs).as_numpy("OUTPUT0")
assert np.array_equal(out, a + a), out
print("[fresh-clone] tiny_add answered", out[0, :4].tolist(), "...")
PY
say "PASS: cloned, built and served as $RUN_AS (uid $uid) in ${ready_s} s; inference answered"
