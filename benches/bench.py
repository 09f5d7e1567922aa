"""`make bench`: the ceiling, tern-node and real Triton under perf_analyzer, memory; writes RESULTS.md.

    .venv/bin/python benches/bench.py [--quick] [--no-triton] [--results benches/RESULTS.md]

Run through benches/run.sh (`make bench`, `make bench QUICK=1`), which builds the binaries and
installs the Triton peer first. Everything raw (perf_analyzer CSVs and logs, server logs, the
model repositories used) goes to benches/out/<UTC time>/; the report replaces this script's own
section of RESULTS.md (between its markers; other sections are left alone).

Servers measured, each on a fresh process with the same three models loaded:
  tern        tern-node, the example configs (dynamic batching on for tiny_add and light_resnet50)
  tern-nobatch  tern-node, the same configs with `dynamic_batching` removed
  triton      tritonserver 2.51 from PyPI nvidia-pytriton 0.7.0, Python backend running the same
              model.onnx through onnxruntime 1.31.1 (benches/peer/), same configs otherwise
"""
import argparse
import csv
import datetime as dt
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples/model_repository"
NODE = ROOT / "target/release/tern-node"
CEILING = ROOT / "target/release/ceiling"
PA = ROOT / ".tern/perf_analyzer/bin/perf_analyzer"
PA_LIB = ROOT / ".tern/perf_analyzer/lib"
ORT_LIB = Path(os.environ.get("ORT_DYLIB_PATH", ROOT / ".tern/onnxruntime/libonnxruntime.so.1.31.1"))
PEER_VENV = ROOT / "benches/.peer-venv"
PEER_DIST = ROOT / "benches/out/peer/tritonserver"
QUIET_WAIT = float(os.environ.get("BENCH_QUIET_WAIT", "120"))  # s to wait for other CPU work to stop
MODELS = ["tiny_add", "light_resnet50", "identity_string"]
BEGIN = "<!-- make bench {mode}: begin (written by benches/bench.py; replaced on each run) -->"
END = "<!-- make bench {mode}: end -->"
# Fine buckets for tern-node's own per-request latency histogram (server-side p50/p99).
LAT_BUCKETS = [10, 15, 20, 25, 30, 35, 40, 50, 60, 70, 80, 90, 100, 120, 140, 170, 200, 250, 300, 400, 500,
               600, 800, 1000, 1250, 1500, 2000, 2500, 3000, 4000, 5000, 7000, 10000, 15000, 20000, 30000,
               50000, 70000, 100000, 150000, 200000, 300000, 500000, 700000, 1000000, 1500000, 2000000, 5000000]


class Plan:
    def __init__(self, quick):
        self.quick = quick
        if quick:
            self.ceiling_batches, self.ceiling_seconds = [1, 8], 3.0
            self.window_ms, self.stability, self.trials = 2000, 25, 4
            self.points = {  # server -> model -> concurrencies
                "tern": {"tiny_add": [1, 4], "light_resnet50": [1, 4]},
                "triton": {"tiny_add": [1, 4]},
            }
            self.cycles = 0
            self.h2h_rounds = 1
        else:
            self.ceiling_batches, self.ceiling_seconds = [1, 2, 4, 8, 16], 10.0
            self.window_ms, self.stability, self.trials = 5000, 15, 6
            full = {"tiny_add": [1, 4, 16], "light_resnet50": [1, 4, 8, 16], "identity_string": [1, 4, 16]}
            self.points = {
                "tern": full,
                "tern-nobatch": {"tiny_add": [1, 4, 16], "light_resnet50": [1, 4, 8, 16]},
                "triton": full,
            }
            self.cycles = 50
            self.h2h_rounds = 3


def sh(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rel(p):
    try:
        return str(Path(p).relative_to(ROOT))
    except ValueError:
        return str(p)


# ---------------------------------------------------------------------------------------------
# Machine and versions


def machine():
    cpu = "?"
    flags = ""
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name") and cpu == "?":
            cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            f = line.split(":", 1)[1].split()
            flags = " ".join(x for x in ("avx2", "avx512f", "avx512_vnni", "amx_tile") if x in f)
    mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    os_name = "?"
    if Path("/etc/os-release").exists():
        m = re.search(r'PRETTY_NAME="([^"]+)"', Path("/etc/os-release").read_text())
        os_name = m.group(1) if m else os_name
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "flags": flags,
        "mem_gb": mem / 1024 / 1024,
        "os": os_name,
        "kernel": platform.release(),
        "load": os.getloadavg(),
    }


def versions(triton_version):
    git = sh(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT).stdout.strip()
    dirty = sh(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT).stdout.strip()
    rustc = sh(["rustc", "--version"]).stdout.strip()
    peer = {}
    if (PEER_VENV / "bin/python").exists():
        out = sh([str(PEER_VENV / "bin/python"), "-c",
                  "import importlib.metadata as m, sys; print(sys.version.split()[0]);"
                  "print(m.version('nvidia-pytriton')); print(m.version('onnxruntime'))"]).stdout.split()
        if len(out) == 3:
            peer = {"python": out[0], "pytriton": out[1], "ort": out[2]}
    return {
        "tern": f"{git}{' + uncommitted changes' if dirty else ''}",
        "rustc": rustc,
        "ort": ORT_LIB.name.replace("libonnxruntime.so.", ""),
        "perf_analyzer": "2.41.0 (binary from the PyPI tritonclient 2.41.0 wheel, scripts/setup.sh)",
        "triton": triton_version,
        "peer": peer,
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------------------------------------
# Model repositories


def strip_batching(text):
    """Removes the `dynamic_batching { ... }` block (balanced braces) from a config.pbtxt."""
    m = re.search(r"dynamic_batching\s*\{", text)
    if not m:
        return text
    depth, i = 0, m.end() - 1
    while i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
        if depth == 0:
            break
    return text[: m.start()] + text[i:]


def make_repos(out, plan):
    repos = {}
    for server in plan.points:
        repo = out / "repos" / server
        if server == "triton":
            continue
        for m in MODELS:
            shutil.copytree(EXAMPLES / m, repo / m)
            if server == "tern-nobatch":
                cfg = repo / m / "config.pbtxt"
                cfg.write_text(strip_batching(cfg.read_text()))
        repos[server] = repo
    if "triton" in plan.points:
        repo = out / "repos" / "triton"
        site = sh([str(PEER_VENV / "bin/python"), "-c",
                   "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
        cmd = [sys.executable, str(ROOT / "benches/peer/make_repo.py"), str(EXAMPLES), str(repo), *MODELS,
               "--site", site]
        subprocess.run(cmd, check=True)
        repos["triton"] = repo
    return repos


# ---------------------------------------------------------------------------------------------
# Processes and memory


def tree(pid):
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for t in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo.extend(int(c) for c in t.read_text().split())
            except OSError:
                pass
    return pids


def status_kb(pid, key):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid):
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


CLK = os.sysconf("SC_CLK_TCK")


def busy_seconds():
    """CPU seconds the whole machine has been busy (all cores, /proc/stat)."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return (sum(f[:8]) - idle) / CLK


def tree_cpu_seconds(pid):
    total = 0
    for p in tree(pid):
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK


def children_cpu_seconds():
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wait_quiet(max_wait, threshold=0.25):
    """Waits (up to max_wait s) until the machine is idle (< threshold cores busy over 2 s).
    Returns the seconds waited, or None if it never got quiet."""
    t0 = time.time()
    while True:
        b = busy_seconds()
        time.sleep(2)
        if (busy_seconds() - b) / 2 < threshold:
            return time.time() - t0
        if time.time() - t0 >= max_wait:
            return None


def memory(pid):
    pids = tree(pid)
    return {
        "procs": len(pids),
        "rss_main": status_kb(pid, "VmRSS") / 1024,
        "rss": sum(status_kb(p, "VmRSS") for p in pids) / 1024,
        "pss": sum(pss_kb(p) for p in pids) / 1024,
        "hwm": sum(status_kb(p, "VmHWM") for p in pids) / 1024,
    }


class Server:
    def __init__(self, kind, repo, out, commands, label=None):
        self.kind, self.repo, self.out = kind, repo, out
        self.logpath = out / f"{label or kind}.server.log"
        self.log = open(self.logpath, "w")
        self.metrics_url = None
        self.version = None
        self._stats_client = None
        if kind.startswith("tern"):
            cmd = [str(NODE), "--model-repository", str(repo), "--grpc-address", "127.0.0.1", "--grpc-port", "0",
                   "--metrics-address", "127.0.0.1", "--metrics-port", "0", "--allow-http", "false",
                   "--metrics-config", "latency_buckets_us=" + ",".join(str(b) for b in LAT_BUCKETS)]
            env = dict(os.environ, ORT_DYLIB_PATH=str(ORT_LIB))
            commands.append(f"ORT_DYLIB_PATH={rel(ORT_LIB)} " + " ".join(shlex.quote(rel(c)) for c in cmd))
        else:
            self.port = free_port()
            site = sh([str(PEER_VENV / "bin/python"), "-c",
                       "import sysconfig; print(sysconfig.get_paths()['purelib']);"
                       "print(sysconfig.get_config_var('LIBDIR'))"]).stdout.split()
            ld = f"{site[0]}/nvidia_pytriton.libs:{site[1]}"
            cmd = [str(PEER_DIST / "bin/tritonserver"), "--model-repository", str(repo),
                   "--backend-directory", str(PEER_DIST / "backends"), "--cache-directory", str(PEER_DIST / "caches"),
                   "--grpc-address", "127.0.0.1", "--grpc-port", str(self.port), "--allow-http", "false",
                   "--metrics-port", str(free_port()), "--log-verbose", "0"]
            env = dict(os.environ, LD_LIBRARY_PATH=ld)
            commands.append(f"LD_LIBRARY_PATH={rel(site[0])}/nvidia_pytriton.libs:{site[1]} "
                            + " ".join(shlex.quote(rel(c)) for c in cmd))
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.addr = self._wait_ready()
        self.ready_s = time.time() - self.started

    def _wait_ready(self):
        deadline = time.time() + 300
        logpath = self.logpath
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited: see {logpath}")
            text = logpath.read_text(errors="replace")
            if self.kind.startswith("tern"):
                m = re.search(r"tern-node ready grpc=([0-9.]+:\d+) (?:http=\S+ )?metrics=([0-9.]+:\d+)", text)
                if m:
                    self.metrics_url = f"http://{m.group(2)}/metrics"
                    return m.group(1)
            elif "Started GRPCInferenceService" in text:
                import tritonclient.grpc as grpcclient

                addr = f"127.0.0.1:{self.port}"
                c = grpcclient.InferenceServerClient(addr)
                for _ in range(100):
                    try:
                        if c.is_server_ready():
                            self.version = c.get_server_metadata().version
                            return addr
                    except Exception:
                        pass
                    time.sleep(0.2)
            time.sleep(0.2)
        raise RuntimeError(f"{self.kind} not ready after 300 s: see {logpath}")

    def served(self, model):
        """Successful inferences of `model` so far, from the statistics extension (ModelStatistics:
        the same call answers on tern-node and on Triton)."""
        import tritonclient.grpc as grpcclient

        try:
            # One client (one channel) per server, reused by every point.
            if self._stats_client is None:
                self._stats_client = grpcclient.InferenceServerClient(self.addr)
            stats = self._stats_client.get_inference_statistics(model, as_json=True)
        except Exception:
            return None
        return sum(int(m.get("inference_stats", {}).get("success", {}).get("count", 0))
                   for m in stats.get("model_stats", []))

    def latency_hist(self, model):
        """tern-node's cumulative latency buckets for `model` (le -> count)."""
        if not self.metrics_url:
            return None
        text = urllib.request.urlopen(self.metrics_url, timeout=10).read().decode()
        hist = {}
        for m in re.finditer(r'tern_inference_request_latency_us_bucket\{([^}]*)\} (\S+)', text):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            if labels.get("model") == model:
                le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
                hist[le] = hist.get(le, 0) + float(m.group(2))
        return hist

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def hist_quantile(before, after, q):
    if before is None or after is None:
        return None
    les = sorted(after)
    cum = [(le, after[le] - before.get(le, 0)) for le in les]
    total = cum[-1][1]
    if total <= 0:
        return None
    target, prev_le, prev_c = q * total, 0.0, 0.0
    for le, c in cum:
        if c >= target:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((target - prev_c) / max(c - prev_c, 1e-9))
        prev_le, prev_c = le, c
    return None


# ---------------------------------------------------------------------------------------------
# Measurements


def ceiling(plan, out, commands, tag="start"):
    cmd = [str(CEILING), "--model", str(EXAMPLES / "light_resnet50/1/model.onnx"),
           "--batch", ",".join(map(str, plan.ceiling_batches)), "--seconds", str(plan.ceiling_seconds),
           "--warmup", "3", "--rows-only"]
    if tag == "start":
        commands.append(f"ORT_DYLIB_PATH={rel(ORT_LIB)} " + " ".join(rel(c) for c in cmd)
                        + "   # twice: before and after the servers")
    wait_quiet(QUIET_WAIT)
    b0, c0, t0 = busy_seconds(), children_cpu_seconds(), time.time()
    r = sh(cmd, env=dict(os.environ, ORT_DYLIB_PATH=str(ORT_LIB)), cwd=ROOT)
    other = max(busy_seconds() - b0 - (children_cpu_seconds() - c0), 0) / (time.time() - t0)
    print(f"[bench]   other CPU work during the ceiling: {other:.2f} cores", flush=True)
    (out / f"ceiling.{tag}.txt").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"ceiling failed: {r.stderr[-2000:]}")
    rows = []
    for line in r.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[1].isdigit():
            rows.append({"batch": int(cells[1]), "runs": int(cells[2]), "ips": float(cells[3]), "ms": float(cells[4]),
                         "other": other})
    return rows


def merge_ceilings(a, b):
    """Per batch size, the better of the two runs (the other is kept for the report)."""
    other = {r["batch"]: r for r in b}
    merged = []
    for r in a:
        o = other.get(r["batch"])
        best, second = (r, o) if not o or r["ips"] >= o["ips"] else (o, r)
        merged.append(dict(best, start=r, end=o))
    return merged


def pa_point(plan, server, model, conc, out, commands, client_args=(), tag_suffix=""):
    """One perf_analyzer run at one concurrency; on a stability failure, one retry with a loose bound.
    `client_args` are extra perf_analyzer flags (the head-to-head's client modes)."""
    tag = f"{server.kind}.{model}.c{conc}{tag_suffix}"
    attempts = [(plan.stability, plan.trials), (50, 4)]
    for n, (stab, trials) in enumerate(attempts):
        csv_path = out / f"{tag}.csv"
        cmd = [str(PA), "-m", model, "-u", server.addr, "-i", "grpc", "-b", "1",
               "--concurrency-range", f"{conc}:{conc}", "--measurement-mode", "time_windows",
               "--measurement-interval", str(plan.window_ms), "--stability-percentage", str(stab),
               "--max-trials", str(trials), "-f", str(csv_path), *client_args]
        if model == "identity_string":
            cmd += ["--string-length", "32"]
        waited = wait_quiet(QUIET_WAIT)
        if waited is None or waited > 3:
            print(f"[bench]   (waited {QUIET_WAIT if waited is None else waited:.0f} s for other work to stop"
                  f"{'; still busy' if waited is None else ''})", flush=True)
        before, n0 = server.latency_hist(model), server.served(model)
        t0, b0, s0, c0 = time.time(), busy_seconds(), tree_cpu_seconds(server.proc.pid), children_cpu_seconds()
        r = sh(cmd, env=dict(os.environ, LD_LIBRARY_PATH=str(PA_LIB)), timeout=600)
        took = time.time() - t0
        srv_cpu = tree_cpu_seconds(server.proc.pid) - s0
        pa_cpu = children_cpu_seconds() - c0
        other_cpu = busy_seconds() - b0 - srv_cpu - pa_cpu
        after, n1 = server.latency_hist(model), server.served(model)
        (out / f"{tag}.try{n}.txt").write_text(" ".join(cmd) + "\n\n" + r.stdout + r.stderr)
        if r.returncode == 0 and csv_path.exists():
            break
    else:
        return {"server": server.kind, "model": model, "conc": conc, "error": (r.stdout + r.stderr)[-300:]}
    row = next(csv.DictReader(open(csv_path)))
    text = r.stdout
    res = {
        "server": server.kind, "model": model, "conc": conc, "ips": float(row["Inferences/Second"]),
        "p50": float(row["p50 latency"]) / 1000, "p99": float(row["p99 latency"]) / 1000,
        "avg": float(row.get("Avg latency") or 0) / 1000, "stable": n == 0, "stability": stab, "seconds": took,
        "srv_cores": srv_cpu / took, "pa_cores": pa_cpu / took, "other_cores": max(other_cpu, 0) / took,
        "srv_queue": float(row.get("Server Queue") or 0),
        "srv_compute": sum(float(row.get(k) or 0) for k in
                           ("Server Compute Input", "Server Compute Infer", "Server Compute Output")),
    }
    m = re.search(r"Avg request latency: (\d+) usec", text)
    res["srv_avg_us"] = float(m.group(1)) if m else None
    ic = re.search(r"Inference count: (\d+)", text)
    ec = re.search(r"Execution count: (\d+)", text)
    res["avg_batch"] = int(ic.group(1)) / int(ec.group(1)) if ic and ec and int(ec.group(1)) else None
    # CPU per request over the whole perf_analyzer run (warm-up and every window): steadier than
    # throughput on a machine whose cores the client shares, and the server's own cost.
    served = (n1 - n0) if n0 is not None and n1 is not None else 0
    res["served"] = served
    res["srv_us_per_req"] = srv_cpu / served * 1e6 if served > 0 else None
    res["pa_us_per_req"] = pa_cpu / served * 1e6 if served > 0 else None
    res["srv_p50_us"] = hist_quantile(before, after, 0.5)
    res["srv_p99_us"] = hist_quantile(before, after, 0.99)
    return res


# The head-to-head's client modes. perf_analyzer's default (sync) holds a concurrency of C with C
# threads, each blocked in one call; `--async --max-threads 1` holds it with one thread and
# gRPC's completion queue, which perf_analyzer's usage text recommends "to limit the number of
# threads, yet maintain the concurrency". On 2 cores shared with the server, the client's CPU
# per request bounds every served rate, so both are reported.
H2H_CLIENTS = {"sync": (), "async": ("--async", "--max-threads", "1")}
H2H_MODEL, H2H_CONC = "tiny_add", 16


def head_to_head(plan, repos, out, commands):
    """tiny_add at c=16, tern-node against Triton in alternating rounds, in both client modes.

    The sweep above measures each server once, minutes apart; on a shared machine whose spare
    CPU changes from minute to minute (other guests' steal time), that alone can move the ratio
    by half. Here both servers are up together and take turns, round after round, and the
    ratio is taken between medians."""
    if "triton" not in repos or "tern" not in repos:
        return []
    servers = {}
    try:
        for kind in ("tern", "triton"):
            servers[kind] = Server(kind, repos[kind], out, commands, label=f"{kind}.h2h")
        rows = []
        for rnd in range(plan.h2h_rounds):
            for client, args in H2H_CLIENTS.items():
                # Who goes first alternates, so neither always follows the other's load.
                order = ("tern", "triton") if rnd % 2 == 0 else ("triton", "tern")
                for kind in order:
                    r = pa_point(plan, servers[kind], H2H_MODEL, H2H_CONC, out, commands, client_args=args,
                                 tag_suffix=f".h2h.{client}.r{rnd}")
                    r.update(client=client, round=rnd)
                    rows.append(r)
                    if "error" in r:
                        print(f"[bench]   h2h round {rnd} {client} {kind}: FAILED {r['error'][-200:]}", flush=True)
                    else:
                        print(f"[bench]   h2h round {rnd} {client} {kind}: {r['ips']:.0f} infer/s, p99 "
                              f"{r['p99']:.2f} ms, server {fmt(r['srv_us_per_req'], 1)} µs/request, client "
                              f"{fmt(r['pa_us_per_req'], 1)} µs/request", flush=True)
        return rows
    finally:
        for srv in servers.values():
            srv.stop()


def median(xs):
    """The median of the values that were measured (None: not measured), or None."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def h2h_summary(rows):
    """client mode -> server -> medians over the rounds (and the rounds themselves)."""
    out = {}
    for client in H2H_CLIENTS:
        for kind in ("tern", "triton"):
            rs = [r for r in rows if r.get("client") == client and r["server"] == kind and "error" not in r]
            if not rs:
                continue
            out.setdefault(client, {})[kind] = {
                "rounds": [r["ips"] for r in rs], "ips": median([r["ips"] for r in rs]),
                "p50": median([r["p50"] for r in rs]), "p99": median([r["p99"] for r in rs]),
                "srv_us": median([r.get("srv_us_per_req") for r in rs]),
                "pa_us": median([r.get("pa_us_per_req") for r in rs]),
                "failed": sum(1 for r in rows if r.get("client") == client and r["server"] == kind and "error" in r),
            }
    return out


def pa_command_template(plan):
    return (f"LD_LIBRARY_PATH=.tern/perf_analyzer/lib .tern/perf_analyzer/bin/perf_analyzer -m MODEL -u ADDR "
            f"-i grpc -b 1 --concurrency-range C:C --measurement-mode time_windows "
            f"--measurement-interval {plan.window_ms} --stability-percentage {plan.stability} "
            f"--max-trials {plan.trials} -f OUT.csv   (identity_string: + --string-length 32; on a "
            f"stability failure the point is retried once with --stability-percentage 50 --max-trials 4 "
            f"and marked)")


def memory_cycles(plan, out, commands):
    if not plan.cycles:
        return None
    cmd = [sys.executable, str(ROOT / "benches/memory_cycles.py"), "--model", "light_resnet50",
           "--cycles", str(plan.cycles)]
    commands.append(" ".join(rel(c) for c in cmd))
    r = sh(cmd, env=dict(os.environ, ORT_DYLIB_PATH=str(ORT_LIB)), cwd=ROOT, timeout=900)
    (out / "memory_cycles.txt").write_text(r.stdout + r.stderr)
    return {"rc": r.returncode, "text": r.stdout.strip() or r.stderr[-1000:]}


# ---------------------------------------------------------------------------------------------
# Report


def fmt(v, nd=1):
    if v is None:
        return "-"
    if isinstance(v, float) and v >= 100 and nd <= 1:
        return f"{v:,.0f}"
    return f"{v:,.{nd}f}"


def report(plan, mach, vers, ceil, results, mems, cycles, commands, out, started, finished, h2h=()):
    mode = "QUICK=1" if plan.quick else "full"
    L = []
    L.append(BEGIN.format(mode=mode))
    L.append(f"## CPU: `make bench{' QUICK=1' if plan.quick else ''}` ({'quick run' if plan.quick else 'full run'})")
    L.append("")
    L.append(f"Run {started:%Y-%m-%d %H:%M}–{finished:%H:%M} UTC ({(finished - started).total_seconds() / 60:.1f} min). "
             f"Raw outputs: `{rel(out)}/` (not committed).")
    L.append("")
    L.append(f"Machine: {mach['cpu']}, {mach['cores']} cores ({mach['flags'] or 'no AVX2'}), "
             f"{mach['mem_gb']:.0f} GB RAM, {mach['os']}, kernel {mach['kernel']}; load average at start "
             f"{mach['load'][0]:.2f}. Server, perf_analyzer and (for Triton) its Python stubs share the "
             f"{mach['cores']} cores: nothing is pinned, so the client's own CPU is part of every served number.")
    L.append("")
    peer = vers["peer"]
    L.append(f"Versions: tern {vers['tern']}, {vers['rustc']}, release profile; ONNX Runtime {vers['ort']} "
             f"(PyPI wheel's libonnxruntime); perf_analyzer {vers['perf_analyzer']}; "
             + (f"Triton {vers['triton']} (`tritonserver` bundled in PyPI nvidia-pytriton {peer.get('pytriton')}, "
                f"Python backend, model.py running onnxruntime {peer.get('ort')} on Python {peer.get('python')})."
                if vers["triton"] else "Triton: not run."))
    L.append("")
    L.append("Settings: every model has one CPU instance with 2 intra-op threads in every server (tern-node's "
             "default for one instance; `intra_op_thread_count` passed to the session in model.py for Triton). "
             "Configs are the example repository's (`examples/build_model_repository.py`): tiny_add "
             "`max_batch_size: 64`, `dynamic_batching { preferred_batch_size: [64] max_queue_delay_microseconds: 100 }`; "
             "light_resnet50 `max_batch_size: 8`, `dynamic_batching { preferred_batch_size: [4, 8] "
             "max_queue_delay_microseconds: 5000 }`; identity_string (BYTES [16], `max_batch_size: 8`, no "
             "dynamic batching). `tern-nobatch` is tern-node with the `dynamic_batching` blocks removed. Triton "
             "gets the same configs with `backend: \"python\"` (benches/peer/make_repo.py): Triton's dynamic "
             "batcher forms the batches, model.py concatenates them into one onnxruntime run. perf_analyzer sends "
             "one row per request (`-b 1`), random data (resnet 602 KB per request), strings of 32 bytes.")
    L.append("")
    L.append("Commands (paths relative to the repository; ADDR is the server's gRPC address):")
    L.append("")
    L.append("```")
    L.extend(commands)
    L.append(pa_command_template(plan))
    L.append("```")
    L.append("")

    # Ceiling
    best = max(ceil, key=lambda r: r["ips"]) if ceil else None
    best8 = max((r for r in ceil if r["batch"] <= 8), key=lambda r: r["ips"], default=None)
    L.append(f"### Ceiling: light_resnet50 in-process (`ceiling`, same backend crate and ORT, 2 intra-op threads, "
             f"{plan.ceiling_seconds:.0f} s per batch size)")
    L.append("")
    L.append("| batch | inferences/s (best of 2) | ms per run | run before servers | run after servers |")
    L.append("|---:|---:|---:|---:|---:|")
    for r in ceil:
        s, e = r.get("start") or r, r.get("end")
        L.append(f"| {r['batch']} | {r['ips']:.1f} | {r['ms']:.1f} | {s['ips']:.1f} | "
                 f"{e['ips'] if e else float('nan'):.1f} |")
    if ceil:
        s, e = ceil[0].get("start") or ceil[0], ceil[0].get("end")
        L.append("")
        L.append(f"Other CPU work on the machine during the two runs: {s['other']:.2f} and "
                 f"{e['other'] if e else float('nan'):.2f} cores on average.")
    L.append("")

    # Served
    by = {(r["server"], r["model"], r["conc"]): r for r in results}
    L.append(f"### Served over gRPC (perf_analyzer, {plan.window_ms / 1000:.0f} s windows)")
    L.append("")
    L.append("infer/s = rows/s; p50/p99 = client latency; server avg = the server's own statistics "
             "(ModelStatistics, as perf_analyzer reports them); server p50/p99 = tern-node's "
             "`tern_inference_request_latency_us` histogram over the run (interpolated in fine buckets); "
             "avg batch = inference count / execution count; cores = CPU seconds per second of the point "
             "(the server's process tree, perf_analyzer, and everything else on the machine: `other` above "
             "~0.1 means the point was disturbed). ×Triton: tern-node (batching as configured) over "
             "Triton at the same point; ×ceiling: served over the best in-process rate at a batch the config "
             "allows (≤ 8); CPU µs/req = the server's CPU time (process tree) over the whole perf_analyzer run "
             "divided by the requests it served there (its ModelStatistics success count).")
    L.append("")
    L.append("| model | server | c | infer/s | p50 ms | p99 ms | server avg µs | server p50 µs | server p99 µs | "
             "avg batch | ×Triton | ×ceiling | stable | cores: server / client / other | server CPU µs/req |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|")
    for model in MODELS:
        for server in ("tern", "tern-nobatch", "triton"):
            for conc in (1, 4, 8, 16):
                r = by.get((server, model, conc))
                if not r:
                    continue
                if "error" in r:
                    L.append(f"| {model} | {server} | {conc} | failed: {r['error'][-120:].strip()!r} |"
                             " | | | | | | | | | | |")
                    continue
                tri = by.get(("triton", model, conc))
                x_tri = f"{r['ips'] / tri['ips']:.2f}" if server == "tern" and tri and "error" not in tri else ""
                x_ceil = f"{r['ips'] / best8['ips']:.0%}" if model == "light_resnet50" and best8 else ""
                L.append(f"| {model} | {server} | {conc} | {fmt(r['ips'])} | {r['p50']:.2f} | {r['p99']:.2f} | "
                         f"{fmt(r['srv_avg_us'], 0)} | {fmt(r['srv_p50_us'], 0)} | {fmt(r['srv_p99_us'], 0)} | "
                         f"{fmt(r['avg_batch'], 1)} | {x_tri} | {x_ceil} | "
                         f"{'yes' if r['stable'] else 'no (±' + str(r['stability']) + '%)'} | "
                         f"{r['srv_cores']:.2f} / {r['pa_cores']:.2f} / {r['other_cores']:.2f} | "
                         f"{fmt(r.get('srv_us_per_req'), 1)} |")
    L.append("")

    # Head-to-head
    summary = h2h_summary(h2h)
    if summary:
        L.append(f"### Head-to-head: {H2H_MODEL} at c={H2H_CONC}, tern-node and Triton in alternating rounds")
        L.append("")
        L.append("Both servers up at once (fresh processes, same repositories as above), perf_analyzer pointed at "
                 "each in turn, who goes first alternating by round; each row gives the rounds' rates and the "
                 "medians. `sync` is perf_analyzer's default (one client thread per concurrent request); `async` "
                 f"adds `{' '.join(H2H_CLIENTS['async'])}` (one client thread, gRPC's completion queue). CPU "
                 "µs/req: the server's process tree, and perf_analyzer, per request served (whole run).")
        L.append("")
        L.append("| client | server | infer/s per round | median infer/s | ×Triton (medians) | p50 ms | p99 ms | "
                 "server CPU µs/req | client CPU µs/req |")
        L.append("|---|---|---|---:|---:|---:|---:|---:|---:|")
        for client, by_kind in summary.items():
            tri = by_kind.get("triton")
            for kind, m in by_kind.items():
                x = f"{m['ips'] / tri['ips']:.2f}" if kind == "tern" and tri else ""
                rounds = ", ".join(f"{v:,.0f}" for v in m["rounds"]) + (f" ({m['failed']} failed)" if m["failed"] else "")
                L.append(f"| {client} | {kind} | {rounds} | {fmt(m['ips'])} | {x} | {m['p50']:.2f} | {m['p99']:.2f} | "
                         f"{fmt(m['srv_us'], 1)} | {fmt(m['pa_us'], 1)} |")
        L.append("")

    # Targets
    L.append("### Targets (reported, not asserted)")
    L.append("")
    L.extend(targets(by, best, best8, summary))
    L.append("")
    # Memory
    if mems:
        L.append("### Memory (same three models loaded)")
        L.append("")
        L.append("RSS summed over the server's process tree (Triton's Python backend runs one stub process "
                 "per model instance, each with its own Python and onnxruntime); PSS counts shared pages once. "
                 "`after load` = once ready, idle; `after run` = after every perf_analyzer point above; peak = "
                 "VmHWM summed.")
        L.append("")
        L.append("| server | processes | ready after s | RSS after load MB | PSS after load MB | "
                 "RSS after run MB | peak RSS MB |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        for kind, m in mems.items():
            L.append(f"| {kind} | {m['load']['procs']} | {m['ready_s']:.1f} | {m['load']['rss']:.0f} | "
                     f"{m['load']['pss']:.0f} | {m['run']['rss']:.0f} | {m['run']['hwm']:.0f} |")
        L.append("")
    if cycles:
        L.append("### Memory over load/unload cycles (`benches/memory_cycles.py`)")
        L.append("")
        L.append(cycles["text"])
        L.append("")

    L.append(END.format(mode=mode))
    return "\n".join(L) + "\n"


def targets(by, best, best8, h2h=None):
    out = []

    def ok(r):
        return r and "error" not in r

    r8 = by.get(("tern", "light_resnet50", 8))
    if ok(r8) and best:
        ratio = r8["ips"] / best8["ips"]
        out.append(f"- light_resnet50, dynamic batching, c=8: {r8['ips']:.1f} infer/s = **{ratio:.0%} of the "
                   f"ceiling** ({best8['ips']:.1f}/s at batch {best8['batch']}, the best batch the config's "
                   f"max_batch_size 8 allows; {r8['ips'] / best['ips']:.0%} of the best at any batch, "
                   f"{best['ips']:.1f}/s at {best['batch']}). Target ≥ 95 %: "
                   + ("met." if ratio >= 0.95 else f"missed by {0.95 - ratio:.0%} of the ceiling."))
        off = by.get(("tern-nobatch", "light_resnet50", 8))
        if ok(off):
            out.append(f"- light_resnet50 c=8, batching on vs off: {r8['ips']:.1f} vs {off['ips']:.1f} infer/s "
                       f"(×{r8['ips'] / off['ips']:.2f}).")
    t16, tr16 = by.get(("tern", "tiny_add", 16)), by.get(("triton", "tiny_add", 16))
    for client, m in (h2h or {}).items():
        t, tr = m.get("tern"), m.get("triton")
        if not (t and tr):
            continue
        x = t["ips"] / tr["ips"]
        cost = (f"; server CPU per request {t['srv_us']:.0f} vs {tr['srv_us']:.0f} µs "
                f"(×{tr['srv_us'] / t['srv_us']:.2f})" if t["srv_us"] and tr["srv_us"] else "")
        out.append(f"- tiny_add c=16, head-to-head, {client} client (medians of {len(t['rounds'])} alternating "
                   f"rounds): tern-node {t['ips']:,.0f}/s vs Triton {tr['ips']:,.0f}/s = **×{x:.2f}**. Target ≥ ×3: "
                   + ("met" if x >= 3 else f"missed (needs {3 * tr['ips']:,.0f}/s)")
                   + f". p99 {t['p99']:.2f} ms; {t['ips'] / 20000:.0%} of 20,000/s{cost}.")
    if ok(t16) and ok(tr16):
        x = t16["ips"] / tr16["ips"]
        out.append(f"- tiny_add c=16 in the sweep (one point each, minutes apart): tern-node {t16['ips']:,.0f}/s vs "
                   f"Triton {tr16['ips']:,.0f}/s = ×{x:.2f}; p99 {t16['p99']:.2f} ms; {t16['ips'] / 20000:.0%} of "
                   "20,000/s.")
    elif ok(t16):
        out.append(f"- tiny_add c=16: tern-node {t16['ips']:,.0f}/s (Triton not measured in this run).")
    t1 = by.get(("tern", "tiny_add", 1))
    if ok(t1):
        srv = t1.get("srv_p50_us")
        out.append(f"- tiny_add c=1: client p50 {t1['p50'] * 1000:.0f} µs; server p50 "
                   f"{fmt(srv, 0)} µs (tern histogram), server avg {fmt(t1['srv_avg_us'], 0)} µs. Target server "
                   f"p50 < 100 µs: " + ("met." if srv is not None and srv < 100 else
                                       "missed." if srv is not None else "not measurable."))
        tr1 = by.get(("triton", "tiny_add", 1))
        if ok(tr1):
            out.append(f"- tiny_add c=1 vs Triton: p50 {t1['p50'] * 1000:.0f} vs {tr1['p50'] * 1000:.0f} µs, "
                       f"{t1['ips']:,.0f} vs {tr1['ips']:,.0f} infer/s.")
    return out


def write_results(path, section, mode):
    begin, end = BEGIN.format(mode=mode), END.format(mode=mode)
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        a, b = text.index(begin), text.index(end) + len(end)
        text = text[:a] + section.rstrip("\n") + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text if text.endswith("\n") else text + "\n")


def main():
    # Stop servers on SIGTERM/SIGINT too (a background shell starts us with SIGINT ignored).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-triton", action="store_true")
    ap.add_argument("--results", default=str(ROOT / "benches/RESULTS.md"))
    ap.add_argument("--out")
    a = ap.parse_args()
    plan = Plan(a.quick)
    if a.no_triton:
        plan.points.pop("triton", None)
    started = dt.datetime.now(dt.timezone.utc)
    out = Path(a.out) if a.out else ROOT / "benches/out" / started.strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    mach = machine()
    commands = []
    # Run copies: a build elsewhere in the tree must not swap a binary between servers.
    global NODE, CEILING
    (out / "bin").mkdir(exist_ok=True)
    for name in ("NODE", "CEILING"):
        src = globals()[name]
        dst = out / "bin" / src.name
        shutil.copy2(src, dst)
        globals()[name] = dst
    commands.append(f"# binaries: copies of target/release/{{tern-node,ceiling}} in {rel(out)}/bin, "
                    f"built {dt.datetime.fromtimestamp(NODE.stat().st_mtime, dt.timezone.utc):%H:%M} UTC")
    print(f"[bench] {'quick' if plan.quick else 'full'} run, raw outputs in {rel(out)}", flush=True)
    repos = make_repos(out, plan)

    print("[bench] ceiling", flush=True)
    ceil = ceiling(plan, out, commands)
    for r in ceil:
        print(f"[bench]   batch {r['batch']}: {r['ips']:.1f} inferences/s", flush=True)

    results, mems, triton_version = [], {}, None
    for kind, models in plan.points.items():
        print(f"[bench] {kind}: starting", flush=True)
        srv = Server(kind, repos[kind], out, commands)
        triton_version = triton_version or srv.version
        time.sleep(1)
        mem_load = memory(srv.proc.pid)
        try:
            for model, concs in models.items():
                for c in concs:
                    r = pa_point(plan, srv, model, c, out, commands)
                    results.append(r)
                    if "error" in r:
                        print(f"[bench]   {model} c{c}: FAILED {r['error'][-200:]}", flush=True)
                    else:
                        print(f"[bench]   {model} c{c}: {r['ips']:.1f} infer/s p50 {r['p50']:.2f} ms "
                              f"p99 {r['p99']:.2f} ms ({r['seconds']:.0f} s{'' if r['stable'] else ', unstable'})",
                              flush=True)
            mems[kind] = {"load": mem_load, "run": memory(srv.proc.pid), "ready_s": srv.ready_s}
        finally:
            srv.stop()

    h2h = []
    if "triton" in plan.points:
        print(f"[bench] head-to-head: {H2H_MODEL} c={H2H_CONC}, tern vs triton, {plan.h2h_rounds} round(s) per "
              "client mode", flush=True)
        h2h = head_to_head(plan, repos, out, commands)

    print("[bench] ceiling again", flush=True)
    ceil2 = ceiling(plan, out, commands, tag="end")
    for r in ceil2:
        print(f"[bench]   batch {r['batch']}: {r['ips']:.1f} inferences/s", flush=True)
    ceil = merge_ceilings(ceil, ceil2)

    cycles = None
    if plan.cycles:
        print(f"[bench] memory: {plan.cycles} load/unload cycles", flush=True)
        cycles = memory_cycles(plan, out, commands)
    finished = dt.datetime.now(dt.timezone.utc)
    section = report(plan, mach, versions(triton_version), ceil, results, mems, cycles, commands, out,
                     started, finished, h2h)
    (out / "RESULTS.section.md").write_text(section)
    import json

    (out / "results.json").write_text(json.dumps({"ceiling": ceil, "served": results, "memory": mems,
                                                  "head_to_head": h2h, "machine": mach}, indent=1, default=str))
    write_results(Path(a.results), section, "QUICK=1" if plan.quick else "full")
    print(section)
    print(f"[bench] done in {(finished - started).total_seconds() / 60:.1f} min; wrote {rel(a.results)}")


if __name__ == "__main__":
    main()
