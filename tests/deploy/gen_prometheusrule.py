"""Writes deploy/k8s/monitoring/prometheusrule.yaml and helm/tern/files/tern-alerts.yml from
deploy/prometheus/tern-alerts.yml, the one source of Tern's alert rules.

    .venv/bin/python tests/deploy/gen_prometheusrule.py

tests/deploy/test_monitoring.py fails when either copy has drifted from the source.
"""

from __future__ import annotations

import pathlib
import shutil

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCE = ROOT / "deploy/prometheus/tern-alerts.yml"
K8S_RULE = ROOT / "deploy/k8s/monitoring/prometheusrule.yaml"
HELM_COPY = ROOT / "helm/tern/files/tern-alerts.yml"

HEADER = """\
# GENERATED from deploy/prometheus/tern-alerts.yml by tests/deploy/gen_prometheusrule.py: edit
# the source and rerun the script (tests/deploy checks that the two agree).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: tern
  namespace: tern
  labels:
    app.kubernetes.io/name: tern
    app.kubernetes.io/part-of: tern
    # Prometheus Operator installs often select rules by a label (kube-prometheus-stack:
    # release: <its release name>): add yours here, and to servicemonitor.yaml.
spec:
"""


def prometheusrule_text() -> str:
    lines = SOURCE.read_text().splitlines()
    body = [line for line in lines if not line.startswith("#")]
    while body and not body[0].strip():
        body.pop(0)
    return HEADER + "\n".join(("  " + line) if line.strip() else "" for line in body) + "\n"


def main() -> None:
    K8S_RULE.parent.mkdir(parents=True, exist_ok=True)
    K8S_RULE.write_text(prometheusrule_text())
    HELM_COPY.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SOURCE, HELM_COPY)
    print(f"wrote {K8S_RULE.relative_to(ROOT)} and {HELM_COPY.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
