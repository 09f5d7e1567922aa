#!/usr/bin/env bash
# Validates the Prometheus scrape config and alert rules, runs the alert unit tests, and checks
# that every query of the Grafana dashboard is valid PromQL (as recording rules, Grafana's
# variables replaced).
# Needs promtool (apt-get install -y --no-install-recommends prometheus) and python3.
set -euo pipefail
cd "$(dirname "$0")"
PROMTOOL=${PROMTOOL:-promtool}
if ! command -v "$PROMTOOL" >/dev/null; then
  echo "check.sh: promtool not found (apt-get install -y --no-install-recommends prometheus)" >&2
  exit 1
fi
"$PROMTOOL" check config prometheus.yml
"$PROMTOOL" check rules tern-alerts.yml
"$PROMTOOL" test rules tern-alerts.test.yml

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - ../grafana/tern-dashboard.json >"$tmp/dashboard-queries.yml" <<'PY'
import json, sys
dash = json.load(open(sys.argv[1]))
subst = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$instance": ".*", "$model": ".*", "$router": ".*"}
print("groups:\n  - name: dashboard-queries\n    rules:")
n = 0
for panel in dash["panels"]:
    for target in panel.get("targets", []):
        expr = target["expr"]
        for k, v in subst.items():
            expr = expr.replace(k, v)
        n += 1
        print(f"      - record: dashboard:query_{n}\n        expr: {json.dumps(expr)}")
if n == 0:
    sys.exit("no queries in the dashboard")
PY
echo "Checking the Grafana dashboard's queries"
"$PROMTOOL" check rules "$tmp/dashboard-queries.yml"
