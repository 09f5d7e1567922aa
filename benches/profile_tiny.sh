#!/usr/bin/env bash
# tern-node's CPU per request on tiny_add under perf_analyzer, and optionally where it goes.
#   benches/profile_tiny.sh [CONCURRENCY]          (default 16)
#   NODE=path/to/tern-node REPO=dir PERF=1 TOP=40 benches/profile_tiny.sh 16
#   ROUTER=1 PERF=1 benches/profile_tiny.sh 1      (the same for a tern-router in front of the node)
# Prints throughput, p50, and the node's CPU time (utime + stime from /proc) divided by the
# requests it served (nv_inference_request_success): a steadier figure than throughput on a
# 2-core machine the client shares. PERF=1 also samples the node with `perf record` for 4 s
# and prints its cost by category (kernel scheduling, HTTP/2, malloc, ...).
# ROUTER=1 puts a tern-router (ROUTER_BIN, default target/release/tern-router) in front of the
# node and sends perf_analyzer to it: the figures, switches and samples are then the router's
# (requests it answered OK, tern_router_requests_total), with the node's CPU per request beside.
set -euo pipefail
cd "$(dirname "$0")/.."
C=${1:-16}
NODE=${NODE:-target/release/tern-node}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.tern/onnxruntime/libonnxruntime.so.1.31.1}
tmp=$(mktemp -d)
if [ -z "${REPO:-}" ]; then REPO=$tmp/repo; mkdir -p "$REPO"; cp -r examples/model_repository/tiny_add "$REPO/"; fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port); mport=$(free_port)
"$NODE" --model-repository "$REPO" --grpc-address 127.0.0.1 --grpc-port "$port" \
  --metrics-address 127.0.0.1 --metrics-port "$mport" --allow-http false >"$tmp/node.log" 2>&1 &
node=$!
router=
trap 'kill $node $router 2>/dev/null || true; wait $node $router 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 1 300); do grep -q "tern-node ready" "$tmp/node.log" && break; sleep 0.1; done
grep -q "tern-node ready" "$tmp/node.log" || { cat "$tmp/node.log"; exit 1; }
# The process measured and sampled ($pid, answering on $url, counting on $mport_of): the node,
# or with ROUTER=1 the router in front of it.
pid=$node; url=127.0.0.1:$port; what=node; mport_of=$mport
served_rx='^nv_inference_request_success\{'
if [ "${ROUTER:-0}" = 1 ]; then
  rport=$(free_port); rmport=$(free_port)
  "${ROUTER_BIN:-target/release/tern-router}" --grpc-address 127.0.0.1 --grpc-port "$rport" \
    --metrics-address 127.0.0.1 --metrics-port "$rmport" --allow-http false --node "127.0.0.1:$port" \
    >"$tmp/router.log" 2>&1 &
  router=$!
  for _ in $(seq 1 300); do grep -q "tern-router ready" "$tmp/router.log" && break; sleep 0.1; done
  grep -q "tern-router ready" "$tmp/router.log" || { cat "$tmp/router.log"; exit 1; }
  # Ready once the node is in its routing table.
  healthy() { curl -s "127.0.0.1:$rmport/metrics" | grep -q '^tern_router_node_healthy{.*} 1'; }
  for _ in $(seq 1 100); do healthy && break; sleep 0.1; done
  healthy || { echo "the router never saw the node healthy:"; cat "$tmp/router.log"; exit 1; }
  pid=$router; url=127.0.0.1:$rport; what=router; mport_of=$rmport
  served_rx='^tern_router_requests_total\{[^}]*code="OK"'
fi
cpu() { awk '{print $14 + $15}' "/proc/${1:-$pid}/stat"; }
# Context switches by thread kind (tokio workers, instance threads, ...): "kind voluntary involuntary".
switches() {
  for t in /proc/$pid/task/*; do
    printf '%s %s\n' "$(sed 's/-[0-9]*$//' "$t/comm")" "$(awk '/^voluntary_ctxt/ {v=$2} /^nonvoluntary_ctxt/ {n=$2} END {print v, n}' "$t/status")"
  done | awk '{v[$1]+=$2; n[$1]+=$3} END {for (k in v) print k, v[k], n[k]}' | sort
}
t0=$(cpu); n0=$(cpu "$node")
switches >"$tmp/sw0"
LD_LIBRARY_PATH=.tern/perf_analyzer/lib timeout 300 .tern/perf_analyzer/bin/perf_analyzer -m tiny_add \
  -u "$url" -i grpc --concurrency-range "$C:$C" --measurement-interval 4000 \
  --stability-percentage 40 --max-trials 4 >"$tmp/pa.txt" 2>&1 &
pa=$!
if [ "${PERF:-0}" = 1 ]; then
  sleep 3
  perf record -F 1999 ${PERF_CALLGRAPH:--g} -p "$pid" -o "$tmp/perf.data" -- sleep 4 >/dev/null 2>&1 || true
fi
wait $pa || true
t1=$(cpu); n1=$(cpu "$node")
switches >"$tmp/sw1"
metrics=$(curl -s "127.0.0.1:$mport/metrics")
served=$(curl -s "127.0.0.1:$mport_of/metrics" | awk -v rx="$served_rx" '$0 ~ rx {s += $NF} END {print s + 0}')
execs=$(awk '/^nv_inference_exec_count\{/ {print $2}' <<<"$metrics")
python3 - "$tmp/pa.txt" "$t0" "$t1" "$served" "$C" "$execs" "$what" "$n0" "$n1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
tput = re.search(r"Throughput: ([\d.]+)", text)
p50 = re.search(r"p50 latency: (\d+)", text)
cpu_s = (float(sys.argv[3]) - float(sys.argv[2])) / 100
served = float(sys.argv[4] or 0)
what = sys.argv[7]
line = (f"tiny_add c={sys.argv[5]}: {float(tput.group(1)) if tput else 0:.0f} infer/s, p50 {p50.group(1) if p50 else '?'} us; "
        f"{what} CPU {cpu_s:.2f} s for {served:.0f} requests = {cpu_s / max(served, 1) * 1e6:.1f} us per request; ")
if what == "router":
    node_s = (float(sys.argv[9]) - float(sys.argv[8])) / 100
    line += f"node behind it {node_s / max(served, 1) * 1e6:.1f} us per request"
else:
    line += f"mean batch {served / max(float(sys.argv[6] or 0), 1):.1f}"
print(line)
PY
# Threads that ended during the run (none should) drop out of the join.
join "$tmp/sw0" "$tmp/sw1" | awk -v n="${served:-0}" 'n > 0 {printf "  context switches per request, %s threads: %.3f voluntary, %.3f involuntary\n", $1, ($4-$2)/n, ($5-$3)/n}'
# PERF_DATA=path keeps the samples for `perf report -i path`.
if [ -n "${PERF_DATA:-}" ] && [ -s "$tmp/perf.data" ]; then cp "$tmp/perf.data" "$PERF_DATA"; fi
if [ "${PERF:-0}" = 1 ] && [ -s "$tmp/perf.data" ] && [ -n "${TOP:-}" ]; then
  # TOP=N: the N most expensive symbols as well.
  perf report -i "$tmp/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null \
    | grep -E '^ +[0-9]' | sed -E 's/ +-? *-? *$//; s/ {2,}/  /g' | cut -c1-150 | head -n "$TOP"
fi
if [ "${PERF:-0}" = 1 ] && [ -s "$tmp/perf.data" ]; then
  perf report -i "$tmp/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null | python3 -c '
import re, sys
cats = [("kernel: scheduling, futex, wake-ups", r"\[k\] (finish_task_switch|_raw_spin|try_to_wake|__schedule|schedule|futex|do_syscall|exit_to_user|irqentry|enqueue|dequeue|update_|select_task|pick_next|psi_|ttwu|__x64|entry_SYSCALL)"),
        ("kernel: TCP and sockets", r"\[k\] (tcp|sock|__tcp|ip_|__ip|skb|__skb|__dev|net_|__netif|__sys_|sys_|vfs_|ep_|__fdget|do_writev|import_|copy_|_copy)"),
        ("HTTP/2 (h2, hyper, http)", r"(h2::|hyper|http::|httparse|hpack)"),
        ("malloc and free", r"(malloc|_int_free|cfree|free@|unlink_chunk|tcache|calloc|realloc|consolidate)"),
        ("tokio", r"tokio"), ("tonic, tower, prost, bytes", r"(tonic|tower|prost|bytes::)"),
        ("memmove, memcpy", r"(memmove|memcpy|memset)"), ("tracing", r"(tracing|sharded_slab)"),
        ("tern crates", r"tern_"), ("ONNX Runtime", r"(onnxruntime|Mlas|Ort)")]
total = {name: 0.0 for name, _ in cats}; other = 0.0
for line in sys.stdin:
    m = re.match(r"\s+([\d.]+)%\s+(.*)", line)
    if not m: continue
    for name, rx in cats:
        if re.search(rx, m.group(2)): total[name] += float(m.group(1)); break
    else: other += float(m.group(1))
for name, v in sorted(total.items(), key=lambda kv: -kv[1]): print(f"{v:6.1f}%  {name}")
print(f"{other:6.1f}%  other")'
fi
