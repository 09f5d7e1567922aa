"""tests/deploy: offline validation of deploy/docker, deploy/k8s and helm/tern.

Run with `.venv/bin/python -m pytest tests/deploy` (or scripts/validate_deploy.sh). The pinned
validators of requirements.txt are installed into the running interpreter's environment (the
project's .venv) on first use; later runs find them and install nothing.

Nothing here skips for a missing tool: onnx, ONNX Runtime (the .venv wheel and the
.tern/onnxruntime library), promtool and the built binaries are all put in place by
`make setup` / `make build`, which `make test` runs first, so a test that lacks one fails with
a message saying how to get it.
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
    try:
        import onnx  # noqa: F401
    except ImportError:
        pytest.fail(f"onnx is not installed in {sys.prefix}; it builds the test model: run scripts/setup.sh "
                    "(make setup), which installs it into .venv", pytrace=False)
    from livelib import tiny_model_repo

    return tiny_model_repo(tmp_path_factory.mktemp("models"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that skips (pytest.skip, importorskip, skipif, an empty parametrization) fails
    instead: in this suite a skip would only hide a missing part of `make setup`."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} skipped, which tests/deploy does not allow: {reason}"
