"""The PrometheusRule of deploy/k8s and of the chart carry exactly deploy/prometheus/tern-alerts.yml,
and promtool accepts the rules as the Prometheus Operator hands them to Prometheus."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from deploylib import CHART, K8S, ROOT, chart_objects, find, kustomize_objects
from gen_prometheusrule import prometheusrule_text

SOURCE = ROOT / "deploy/prometheus/tern-alerts.yml"
REGENERATE = "run `.venv/bin/python tests/deploy/gen_prometheusrule.py`"


def test_k8s_prometheusrule_is_generated_from_alert_rules():
    assert (K8S / "monitoring/prometheusrule.yaml").read_text() == prometheusrule_text(), (
        f"deploy/k8s/monitoring/prometheusrule.yaml is out of date with {SOURCE.name}: {REGENERATE}"
    )


def test_chart_alert_rules_are_a_copy():
    assert (CHART / "files/tern-alerts.yml").read_bytes() == SOURCE.read_bytes(), (
        f"helm/tern/files/tern-alerts.yml differs from deploy/prometheus/tern-alerts.yml: {REGENERATE}"
    )


@pytest.mark.parametrize("source", ["k8s", "helm-full"])
def test_prometheusrule_groups_equal_alert_rules(source):
    objs = kustomize_objects("k8s") if source == "k8s" else chart_objects("full")
    rule = find(objs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(SOURCE.read_text())


@pytest.mark.parametrize("source", ["k8s", "helm-full"])
def test_promtool_accepts_prometheusrule(source, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not installed: run scripts/setup.sh (make setup), or "
                    "apt-get install -y --no-install-recommends prometheus", pytrace=False)
    objs = kustomize_objects("k8s") if source == "k8s" else chart_objects("full")
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(find(objs, "PrometheusRule")["spec"], sort_keys=False))
    proc = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n = sum(len(g["rules"]) for g in yaml.safe_load(SOURCE.read_text())["groups"])
    assert f"{n} rules found" in proc.stdout, proc.stdout
