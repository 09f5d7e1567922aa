#!/usr/bin/env bash
# The README's quick start on a fresh clone, as a normal user: clones this checkout (its
# committed HEAD) into a temporary folder, runs `make serve` there as a user that is not root,
# waits for "tern ready", runs an inference with the clone's own tritonclient, and stops.
#
# Run as root, it creates a user for the test (removed afterwards) and runs it in a private
# mount namespace whose /root shows only the Rust toolchain (`stable`, nothing else under
# ~/.rustup/toolchains: no hand-made aliases), cargo's registry and the Python installation:
# the real /root keeps its mode. Run as a normal user, it runs as that user. Either way nothing
# in the clone runs as root, so a step that needs root fails the test. Registry crates already
# built in target/release are copied into the clone (their fingerprints do not depend on the
# workspace path, only on the registry's), so Tern's own crates are what builds. Not part of
# `make test`: `make test-fresh-clone` (README.md, "Development").
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
say() { printf '[fresh-clone] %s\n' "$*"; }
fail() { printf '[fresh-clone] FAIL: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" = 0 ] && [ -z "${FRESH_CLONE_NS:-}" ]; then
  # As root: the test itself runs in a private mount namespace (its mounts vanish with it);
  # this outer process makes the folder and the user's name, and removes both afterwards,
  # outside the namespace, where no bind mount leads out of the folder.
  TMP=$(mktemp -d /tmp/tern-fresh-clone.XXXXXX)
  chmod 755 "$TMP"
  user="ternfresh$$"
  rc=0
  FRESH_CLONE_NS=1 FRESH_CLONE_TMP=$TMP FRESH_CLONE_USER=$user \
    unshare --mount --propagation private bash "$0" "$@" || rc=$?
  pkill -KILL -u "$user" 2>/dev/null || true
  sleep 1
  userdel "$user" 2>/dev/null || true
  if findmnt -rn -o TARGET | grep -q "^$TMP"; then
    say "left $TMP in place: something is still mounted under it"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
fi

TMP=${FRESH_CLONE_TMP:-$(mktemp -d /tmp/tern-fresh-clone.XXXXXX)}
chmod 755 "$TMP"
HOME_DIR="$TMP/home"
CLONE="$HOME_DIR/tern"
CREATED_USER=""
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
    sleep 2
    kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
  fi
  # FRESH_CLONE_LOG=FILE keeps make serve's output (the folder is removed).
  if [ -n "${FRESH_CLONE_LOG:-}" ] && [ -f "$TMP/serve.log" ]; then cp "$TMP/serve.log" "$FRESH_CLONE_LOG"; fi
  # As root the outer process removes the user and the folder (outside this namespace).
  [ -n "${FRESH_CLONE_NS:-}" ] || rm -rf "$TMP"
}
trap cleanup EXIT

CARGO_BIN=$(dirname "$(command -v cargo)")
PY_PREFIX=$(python3 -c 'import sys; print(sys.base_prefix)')
RUSTUP_HOME=${RUSTUP_HOME:-$(rustup show home 2>/dev/null || echo "$HOME/.rustup")}
CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
mkdir -p "$HOME_DIR"

if [ "$(id -u)" = 0 ]; then
  CREATED_USER=$FRESH_CLONE_USER
  useradd --no-create-home --home-dir "$HOME_DIR" --shell /bin/bash --user-group "$CREATED_USER"
  RUN_AS=$CREATED_USER
  # This namespace's /root: the toolchains only, readable by the user; a cargo home the user
  # owns (locks, caches) whose bin/ and registry/ are the host's, at the same paths as on the
  # host (so the copied build outputs stay fresh).
  view="$TMP/rootview"
  mkdir -p "$view"
  bind() { mkdir -p "$2"; mount --bind "$1" "$2"; mount -o remount,bind,ro "$2"; }
  if [ "${RUSTUP_HOME#/root/}" != "$RUSTUP_HOME" ]; then
    # A rustup home the user owns (rustup writes its metadata there), holding the host's
    # settings and its `stable` toolchain only.
    rh="$view/${RUSTUP_HOME#/root/}"
    mkdir -p "$rh/toolchains" "$rh/update-hashes" "$rh/downloads" "$rh/tmp"
    cp "$RUSTUP_HOME/settings.toml" "$rh/" 2>/dev/null || true
    cp "$RUSTUP_HOME"/update-hashes/stable-* "$rh/update-hashes/" 2>/dev/null || true
    chown -R "$CREATED_USER:$CREATED_USER" "$rh"
    for tc in "$RUSTUP_HOME"/toolchains/stable-*; do
      [ -d "$tc" ] && [ ! -L "$tc" ] && bind "$tc" "$view/${RUSTUP_HOME#/root/}/toolchains/$(basename "$tc")"
    done
  fi
  if [ "${CARGO_HOME#/root/}" != "$CARGO_HOME" ]; then
    bind "$CARGO_HOME/bin" "$view/${CARGO_HOME#/root/}/bin"
    bind "$CARGO_HOME/registry" "$view/${CARGO_HOME#/root/}/registry"
    chown "$CREATED_USER:$CREATED_USER" "$view/${CARGO_HOME#/root/}"
  fi
  if [ "${PY_PREFIX#/root/}" != "$PY_PREFIX" ]; then
    bind "$PY_PREFIX" "$view/${PY_PREFIX#/root/}"
  fi
  chmod -R go+rX "$view" 2>/dev/null || true
  mount --rbind "$view" /root
  say "running as user $RUN_AS, created for this test (this namespace's /root: $(cd /root && find . -mindepth 3 -maxdepth 3 -type d -path './.rustup/toolchains/*' -printf '%P ' ; echo))"
else
  RUN_AS=$(id -un)
  say "running as $RUN_AS (not root)"
fi

say "git clone $ROOT -> $CLONE"
git clone -q "$ROOT" "$CLONE"
if [ -d target/release/deps ]; then
  t0=$(date +%s)
  mkdir -p "$CLONE/target/release"
  # Registry crates only (Tern's own packages are tern-*/tern_*; other crates' names may
  # contain "tern", such as pin-project-internal).
  tar -C target/release --exclude='*/tern-*' --exclude='*/libtern_*' --exclude='*/tern_*' \
    -cf - deps build .fingerprint | tar -C "$CLONE/target/release" -xf -
  say "copied registry crates' build outputs into the clone ($(du -sh "$CLONE/target" | cut -f1), $(( $(date +%s) - t0 )) s)"
fi
[ -n "$CREATED_USER" ] && chown -R "$CREATED_USER:$CREATED_USER" "$HOME_DIR"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GRPC=$(free_port); HTTP=$(free_port); METRICS=$(free_port)
USER_PATH="$PY_PREFIX/bin:$CARGO_BIN:/usr/local/bin:/usr/bin:/bin"
as_user() {
  local run=()
  [ -n "$CREATED_USER" ] && run=(runuser -u "$CREATED_USER" --)
  "${run[@]}" env -i HOME="$HOME_DIR" PATH="$USER_PATH" LANG=C.UTF-8 \
    RUSTUP_HOME="$RUSTUP_HOME" CARGO_HOME="$CARGO_HOME" CARGO_NET_OFFLINE=true \
    CARGO_PROFILE_RELEASE_LTO="${CARGO_PROFILE_RELEASE_LTO:-false}" bash -c "$1"
}

LOG="$TMP/serve.log"
say "make serve (as $RUN_AS; log: $LOG)"
t0=$(date +%s)
# Its own process group, so that the cleanup stops make, tern and everything they started.
set -m
as_user "cd '$CLONE' && id -u && exec make serve GRPC_PORT=$GRPC HTTP_PORT=$HTTP METRICS_PORT=$METRICS" >"$LOG" 2>&1 &
set +m
SERVER_PID=$!
deadline=$(( t0 + ${FRESH_CLONE_TIMEOUT_S:-3000} ))
until grep -q 'tern ready' "$LOG"; do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then tail -40 "$LOG" >&2; fail "make serve exited before 'tern ready'"; fi
  [ "$(date +%s)" -lt "$deadline" ] || { tail -40 "$LOG" >&2; fail "no 'tern ready' in time"; }
  sleep 5
done
ready_s=$(( $(date +%s) - t0 ))
built=$(grep -o 'Finished `release` profile.*' "$LOG" | head -1 || true)
say "tern ready after ${ready_s} s (cargo: ${built:-no build line})"
uid=$(head -1 "$LOG")
[ "$uid" != 0 ] || fail "make serve ran as root"
if grep -iE 'apt-get|sudo|permission denied' "$LOG" >&2; then fail "the log mentions apt-get, sudo or a permission error"; fi
grep -q 'loading' "$LOG" || fail "no model load progress (\"loading\") in the log"

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
say "PASS: cloned, set up, built and served as $RUN_AS (uid $uid) in ${ready_s} s; inference answered"
