"""Shared helpers of tests/deploy: render the Helm chart with Helm's own engine, build the
kustomizations with kubectl's kustomize, index the objects, resolve container args, and read
the binaries' --help. Everything runs offline."""

from __future__ import annotations

import functools
import os
import pathlib
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tern"
K8S = ROOT / "deploy" / "k8s"
DOCKER = ROOT / "deploy" / "docker"
HERE = pathlib.Path(__file__).resolve().parent
VENV_BIN = pathlib.Path(sys.executable).parent

# The Kubernetes versions every object is validated against: a recent release, and the oldest
# the chart declares (Chart.yaml kubeVersion: gRPC probes are GA from 1.27).
KUBERNETES_VERSIONS = ("1.35.0", "1.27.0")
KUBERNETES_VERSION = KUBERNETES_VERSIONS[0]

# Release used for the comparisons with deploy/k8s: release "tern" in namespace "tern" gives
# the same object names as the plain manifests.
RELEASE = "tern"
NAMESPACE = "tern"

# Value files the chart is rendered with. "default" and "gpu" are the chart's own; "full" turns
# every option on; "minimal" turns routers, metrics and the PVC off; "secure" turns TLS (mutual,
# metrics over HTTPS) and bearer tokens on, as deploy/k8s with SECURE_COMPONENTS; "etcd" runs the
# trial etcd as deploy/k8s with components/etcd; "etcd-external" points routers at an existing
# etcd with a user and password.
VALUE_FILES: dict[str, pathlib.Path | None] = {
    "default": None,
    "gpu": CHART / "values-gpu.yaml",
    "full": HERE / "values-full.yaml",
    "minimal": HERE / "values-minimal.yaml",
    "secure": HERE / "values-secure.yaml",
    "etcd": HERE / "values-etcd.yaml",
    "etcd-external": HERE / "values-etcd-external.yaml",
}

# The kustomizations `kubectl apply -k` takes.
KUSTOMIZATIONS = {
    "k8s": K8S,
    "k8s-base": K8S / "base",
    "k8s-monitoring": K8S / "monitoring",
    "k8s-gpu": K8S / "gpu",
}

# Kustomize Components (kind: Component) under deploy/k8s/components; they are built on top of
# a kustomization by kustomize_overlay_objects, as a user's overlay would.
COMPONENTS = K8S / "components"
SECURE_COMPONENTS = ("tls", "tls-mutual", "auth")

CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("gateway.networking.k8s.io/v1", "GRPCRoute"),
}


def load_values(name: str) -> dict[str, Any]:
    path = VALUE_FILES[name]
    return {} if path is None else (yaml.safe_load(path.read_text()) or {})


@functools.lru_cache(maxsize=None)
def render_chart(values_name: str) -> dict[str, str]:
    """Template path -> rendered text, as `helm template tern helm/tern -n tern [-f FILE]`."""
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(load_values(values_name), name=RELEASE, namespace=NAMESPACE, is_install=True)


def yaml_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


@functools.lru_cache(maxsize=None)
def chart_objects(values_name: str) -> tuple[dict[str, Any], ...]:
    objs: list[dict[str, Any]] = []
    for path, text in sorted(render_chart(values_name).items()):
        if path.endswith("NOTES.txt"):
            continue
        objs.extend(yaml_docs(text))
    return tuple(objs)


def kubectl() -> str:
    exe = VENV_BIN / "kubectl"
    return str(exe) if exe.exists() else "kubectl"


def kustomize_build(path: pathlib.Path) -> str:
    proc = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed:\n{proc.stderr}")
    return proc.stdout


@functools.lru_cache(maxsize=None)
def kustomize_objects(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(yaml_docs(kustomize_build(KUSTOMIZATIONS[name])))


@functools.lru_cache(maxsize=None)
def kustomize_overlay_objects(base: str, components: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    """KUSTOMIZATIONS[base] with deploy/k8s/components/<c> for each c, in that order, from an
    overlay in a temporary directory (kustomize wants relative paths)."""
    with tempfile.TemporaryDirectory() as d:
        rel = lambda p: os.path.relpath(p, d)  # noqa: E731
        overlay = {"resources": [rel(KUSTOMIZATIONS[base])], "components": [rel(COMPONENTS / c) for c in components]}
        (pathlib.Path(d) / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
        return tuple(yaml_docs(kustomize_build(pathlib.Path(d))))


def find(objs, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def find_all(objs, kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    cs = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    assert len(cs) == 1, f"{workload['metadata']['name']}: no container {name}"
    return cs[0]


def container_env(objs, c: dict[str, Any]) -> dict[str, str]:
    """The environment Kubernetes gives the container: envFrom ConfigMaps, then env values."""
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        ref = src.get("configMapRef")
        assert ref, f"{c['name']}: only configMapRef envFrom is expected, got {src}"
        env.update({k: str(v) for k, v in find(objs, "ConfigMap", ref["name"])["data"].items()})
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "secretKeyRef" in e.get("valueFrom", {}):
            # Known only in the cluster: a placeholder naming where it comes from.
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = f"secret:{ref['name']}/{ref['key']}"
    return env


# Flags whose value is a file the pod gets from a Secret, with what the file holds.
FILE_FLAGS = {
    "--grpc-server-cert": "cert",
    "--grpc-server-key": "key",
    "--grpc-root-cert": "ca",
    "--node-tls-ca": "ca",
    "--node-tls-cert": "cert",
    "--node-tls-key": "key",
    "--router-tls-ca": "ca",
    "--router-tls-cert": "cert",
    "--router-tls-key": "key",
    "--auth-token-file": "token-file",
    "--node-token-file": "router-token",  # what a router presents to nodes
    "--router-token-file": "node-token",  # what a node presents to routers
    "--etcd-password-file": "etcd-password",
    "--etcd-ca-file": "etcd-ca",
    "--etcd-cert-file": "etcd-cert",
    "--etcd-key-file": "etcd-key",
}


def secret_file(workload: dict[str, Any], c: dict[str, Any], path: str) -> tuple[str, str, dict[str, Any]]:
    """(Secret name, key, volume) of the file the kubelet puts at `path` in container `c`: the
    path must lie on a read-only Secret volume mount (no subPath: those never update), and
    with `items`, be one of them."""
    pod = workload["spec"]["template"]["spec"]
    for m in c.get("volumeMounts", []):
        root = m["mountPath"].rstrip("/") + "/"
        if not path.startswith(root):
            continue
        volume = [v for v in pod["volumes"] if v["name"] == m["name"]][0]
        assert "secret" in volume, f"{path} is on volume {m['name']}, not a Secret"
        assert m.get("readOnly") is True, f"{m['mountPath']} must be mounted read-only"
        assert "subPath" not in m, "a subPath mount is never updated: certificates and tokens would not reload"
        rel = path[len(root):]
        items = volume["secret"].get("items")
        if items:
            keys = [i["key"] for i in items if i["path"] == rel]
            assert len(keys) == 1, f"{path}: no item of Secret {volume['secret']['secretName']} is written there"
            return volume["secret"]["secretName"], keys[0], volume
        return volume["secret"]["secretName"], rel, volume
    raise AssertionError(f"{c['name']}: {path}: no volume is mounted there")


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def resolve_args(objs, c: dict[str, Any]) -> list[str]:
    """The container's args with $(VAR) expanded as the kubelet does; an unresolvable
    reference is an error (the kubelet would pass it through literally)."""
    env = container_env(objs, c)
    out = []
    for arg in c.get("args", []):
        def sub(m: re.Match[str]) -> str:
            assert m.group(1) in env, f"{c['name']}: arg {arg!r} refers to $({m.group(1)}), which no env var defines"
            return env[m.group(1)]

        out.append(_VAR.sub(sub, arg))
    return out


def split_flags(args: list[str]) -> list[tuple[str, str | None]]:
    """[--a=1, --b, x, --c] -> [(--a, 1), (--b, x), (--c, None)]."""
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(args):
        a = args[i]
        assert a.startswith("--"), f"positional argument {a!r} where a flag was expected in {args}"
        if "=" in a:
            k, v = a.split("=", 1)
            out.append((k, v))
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            out.append((a, args[i + 1]))
            i += 1
        else:
            out.append((a, None))
        i += 1
    return out


@dataclass
class Flag:
    name: str
    takes_value: bool
    possible_values: list[str] = field(default_factory=list)


def parse_help(text: str) -> dict[str, Flag]:
    """Flags of a clap --help text (short or long form): `--name <VALUE>` lines, with their
    `[possible values: a, b]` or `Possible values:` / `- a: ...` lists."""
    flag_line = re.compile(r"^\s+(?:-\w, )?(--[a-z0-9][a-z0-9-]*)(?:[ =](<[^>]+>|\[[^\]]+\]))?")
    flags: dict[str, Flag] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = flag_line.match(lines[i])
        if not m:
            i += 1
            continue
        block = [lines[i][m.end():]]
        i += 1
        while i < len(lines) and not flag_line.match(lines[i]):
            block.append(lines[i])
            i += 1
        desc = "\n".join(block)
        values: list[str] = []
        inline = re.search(r"\[possible values: ([^\]]+)\]", desc)
        if inline:
            values = [v.strip() for v in inline.group(1).split(",")]
        elif "Possible values:" in desc:
            values = re.findall(r"^\s+- ([A-Za-z0-9_.-]+)(?::|$)", desc.split("Possible values:", 1)[1], re.M)
        flags[m.group(1)] = Flag(m.group(1), bool(m.group(2)), values)
    return flags


def binary(name: str) -> pathlib.Path | None:
    env = os.environ.get(f"{name.upper().replace('-', '_')}_BIN")
    if env:
        return pathlib.Path(env)
    for profile in ("release", "debug"):
        p = ROOT / "target" / profile / name
        if p.exists():
            return p
    return None


@functools.lru_cache(maxsize=None)
def binary_help(name: str) -> tuple[pathlib.Path, str] | None:
    exe = binary(name)
    if exe is None or not exe.exists():
        return None
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"{exe} --help exited {proc.returncode}: {proc.stderr}"
    return exe, proc.stdout


def ort_library() -> pathlib.Path:
    """ORT_DYLIB_PATH, else the library `make setup` installs; a test that needs it fails (never
    skips) when it is not there."""
    import pytest

    env = os.environ.get("ORT_DYLIB_PATH")
    p = pathlib.Path(env) if env else ROOT / ".tern" / "onnxruntime" / "libonnxruntime.so.1.31.1"
    if not p.exists():
        pytest.fail(f"ONNX Runtime library missing at {p}: run scripts/setup.sh (make setup), which installs "
                    ".tern/onnxruntime, or set ORT_DYLIB_PATH", pytrace=False)
    return p
