"""deploy/docker: parsed with BuildKit's own Dockerfile parser (PyPI `dockerfile`) and linted
with hadolint. No Docker engine here, so the images are not built: what can be checked offline
is that every path the build reads exists in the context and survives .dockerignore, that
stages and versions line up with the project (ORT version, Rust version, workspace members,
binaries), and that ports, user, health check and entrypoint match the manifests."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib

import dockerfile
import pytest

import yaml

from deploylib import CHART, DOCKER, ROOT, VENV_BIN, find, kustomize_objects

DOCKERFILES = {"cpu": DOCKER / "Dockerfile", "cuda": DOCKER / "Dockerfile.cuda"}
# ONNX Runtime's libraries the GPU build needs beside libonnxruntime.so (what scripts/setup.sh
# copies out of the same onnxruntime-gpu wheel).
GPU_LIBS = {"libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so", "libonnxruntime_providers_tensorrt.so"}


def parse(name):
    return dockerfile.parse_file(str(DOCKERFILES[name]))


def args_of(cmds):
    """Global and stage ARG defaults (later ones win; names are unique in these files)."""
    out = {}
    for c in cmds:
        if c.cmd == "ARG" and "=" in c.value[0]:
            k, v = c.value[0].split("=", 1)
            out[k] = v
    return out


def setup_sh_var(name):
    m = re.search(rf"^{name}=(\S+)", (ROOT / "scripts/setup.sh").read_text(), re.M)
    assert m, f"{name} not in scripts/setup.sh"
    return m.group(1)


# --- .dockerignore, as Docker applies it (moby patternmatcher semantics) ---------------------


def _ignore_patterns():
    pats = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line[1:] if neg else line
        pats.append((neg, pat.strip("/")))
    return pats


def _pattern_regex(pat):
    out = ""
    i = 0
    while i < len(pat):
        if pat.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pat.startswith("**", i):
            out += ".*"
            i += 2
        elif pat[i] == "*":
            out += "[^/]*"
            i += 1
        elif pat[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pat[i])
            i += 1
    return re.compile(f"^{out}$")


def dockerignored(rel: str) -> bool:
    """Whether context path `rel` is left out: it or one of its parent folders matches the last
    matching pattern, and that pattern is not an exception."""
    parts = rel.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for neg, pat in _ignore_patterns():
        rx = _pattern_regex(pat)
        if any(rx.match(c) for c in candidates):
            excluded = not neg
    return excluded


def test_dockerignore_semantics():
    assert dockerignored("target/release/tern-node") and dockerignored(".git/HEAD") and dockerignored(".venv")
    assert dockerignored("crates/node/target/x"), "**/target"
    assert not dockerignored("crates/node/src/main.rs") and not dockerignored("Cargo.lock")


# --- the Dockerfiles --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_stages_and_copy_sources(name):
    cmds = parse(name)
    stages = []
    problems = []
    for c in cmds:
        if c.cmd == "FROM":
            v = [x for x in c.value]
            if len(v) == 3 and v[1].upper() == "AS":
                stages.append(v[2])
        if c.cmd in ("COPY", "ADD"):
            from_flags = [f.split("=", 1)[1] for f in c.flags if f.startswith("--from=")]
            srcs = list(c.value[:-1])
            if from_flags:
                if from_flags[0] not in stages:
                    problems.append(f"line {c.start_line}: --from={from_flags[0]} is not an earlier stage {stages}")
                continue
            for src in srcs:
                path = ROOT / src
                if not path.exists():
                    problems.append(f"line {c.start_line}: {src} does not exist in the build context (repository root)")
                elif dockerignored(src):
                    problems.append(f"line {c.start_line}: {src} is excluded by .dockerignore")
    assert not problems, "\n".join(problems)
    assert stages[-1] == "runtime" and {"ort", "build"} <= set(stages)


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_build_context_holds_the_workspace(name):
    """cargo loads every workspace member: each must be copied into the build stage, whole."""
    cmds = parse(name)
    copied = {src.rstrip("/") for c in cmds if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags) for src in c.value[:-1]}
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]
    members = []
    for m in workspace["members"]:
        members += [p.relative_to(ROOT).as_posix() for p in ROOT.glob(m)] if "*" in m else [m]
    problems = []
    for member in members:
        if not any(member == c or member.startswith(c + "/") for c in copied):
            problems.append(f"workspace member {member} is not copied")
        for f in (ROOT / member).rglob("*"):
            if f.is_file() and f.suffix in (".rs", ".toml", ".proto") and "target" not in f.parts:
                rel = f.relative_to(ROOT).as_posix()
                if dockerignored(rel):
                    problems.append(f"{rel} is excluded by .dockerignore")
    for needed in ("Cargo.toml", "Cargo.lock", "proto"):
        assert needed in copied, f"{needed} is not copied"
    assert not problems, "\n".join(problems)
    # The build excludes the test and bench crates by package name.
    run = " ".join(" ".join(c.value) for c in cmds if c.cmd == "RUN" and "cargo build" in " ".join(c.value))
    for member in ("tests", "benches"):
        pkg = tomllib.loads((ROOT / member / "Cargo.toml").read_text())["package"]["name"]
        assert f"--exclude {pkg}" in run, f"cargo build should --exclude {pkg}"
    # ...and copies the three binaries out (cp fails the build when one is missing), each of
    # which a crate of the workspace declares.
    declared = set()
    for crate in ("node", "router", "cli"):
        declared |= {b["name"] for b in tomllib.loads((ROOT / "crates" / crate / "Cargo.toml").read_text()).get("bin", [])}
    for binary in ("tern-node", "tern-router", "tern"):
        assert binary in declared, f"no crate declares the binary {binary}"
        assert re.search(rf"for bin in [^;]*\b{binary}\b", run), f"{binary} is not copied out of the build"
    assert 'cp "target/release/${bin}" /out/bin/' in run


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_versions_match_the_project(name):
    args = args_of(parse(name))
    assert args["ORT_VERSION"] == setup_sh_var("ORT_VERSION"), "ONNX Runtime version differs from scripts/setup.sh"
    rust = re.match(r"rust:(\d+)\.(\d+)", args["RUST_IMAGE"])
    need = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["rust-version"]
    assert rust and tuple(map(int, rust.groups())) >= tuple(map(int, need.split(".")[:2])), (
        f"{args['RUST_IMAGE']} is older than the workspace's rust-version {need}"
    )
    text = DOCKERFILES[name].read_text()
    wheel = "onnxruntime-gpu" if name == "cuda" else "onnxruntime"
    assert f'"{wheel}==${{ORT_VERSION}}"' in text
    if name == "cuda":
        base = args["CUDA_IMAGE"]
        assert re.match(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu\d", base), base
        gpu_setup = (ROOT / "scripts/setup.sh").read_text()
        for lib in GPU_LIBS:
            assert lib in text and lib in gpu_setup, lib
        assert re.match(r"10\.", args["TENSORRT_VERSION"]), "onnxruntime-gpu 1.31 links TensorRT 10"


def test_wheel_paths_exist_in_the_pinned_wheels():
    """The in-wheel paths the ort stages copy, checked against the same wheels installed here."""
    version = setup_sh_var("ORT_VERSION")
    text = DOCKERFILES["cpu"].read_text()
    assert "/tmp/ort/onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}" in text
    venv_ort = list((ROOT / ".venv/lib").glob("python3*/site-packages/onnxruntime/capi"))
    if not venv_ort:
        pytest.fail("onnxruntime is not installed in .venv: run scripts/setup.sh (make setup)", pytrace=False)
    assert (venv_ort[0] / f"libonnxruntime.so.{version}").exists()
    # Copied from onnxruntime-gpu's capi/ by `make setup GPU=1` only, which CI never runs (no GPU):
    # checked where present.
    gpu_dir = ROOT / ".tern/onnxruntime-gpu"
    if gpu_dir.exists():
        for lib in GPU_LIBS | {f"libonnxruntime.so.{version}"}:
            assert (gpu_dir / lib).exists(), lib


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_runtime_matches_manifests(name):
    cmds = parse(name)
    last_from = max(i for i, c in enumerate(cmds) if c.cmd == "FROM")
    runtime = cmds[last_from:]
    get = lambda cmd: [c for c in runtime if c.cmd == cmd]  # noqa: E731
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    ports = values["ports"]
    exposed = {int(p) for c in get("EXPOSE") for p in c.value}
    assert exposed == {ports["grpc"], ports["http"], ports["metrics"]}
    (user,) = get("USER")
    uid = int(user.value[0].split(":")[0])
    assert uid != 0 and uid == values["podSecurityContext"]["runAsUser"]
    (entry,) = get("ENTRYPOINT")
    assert list(entry.value) == ["/usr/bin/tini", "--"]
    sts = find(kustomize_objects("k8s"), "StatefulSet")
    assert sts["spec"]["template"]["spec"]["containers"][0]["command"][:2] == list(entry.value)
    installs = " ".join(" ".join(c.value) for c in get("RUN"))
    assert re.search(r"apt-get install[^;]*\btini\b", installs) and re.search(r"apt-get install[^;]*\bcurl\b", installs)
    (health,) = get("HEALTHCHECK")
    url = [v for v in health.value if v.startswith("http")]
    assert url == [f"http://127.0.0.1:{ports['metrics']}/v2/health/ready"], health.value
    (cmd,) = get("CMD")
    assert list(cmd.value) == ["tern", "serve", "--model-repository", values["models"]["mountPath"]]
    env = {k: v for c in get("ENV") for k, v in zip(c.value[::2], c.value[1::2])}
    assert env["ORT_DYLIB_PATH"] == "/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION}"


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_hadolint(name):
    exe = VENV_BIN / "hadolint"
    exe = str(exe) if exe.exists() else shutil.which("hadolint")
    assert exe, "hadolint not installed (tests/deploy/requirements.txt)"
    proc = subprocess.run([exe, "--no-color", str(DOCKERFILES[name])], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_docker_readme_documents_the_builds():
    readme = (DOCKER / "README.md").read_text()
    for f in DOCKERFILES.values():
        assert f"docker build -f deploy/docker/{f.name}" in readme
