#!/usr/bin/env bash
# Validates the Prometheus scrape config and alert rules, and runs the alert unit tests.
# Needs promtool: apt-get install -y --no-install-recommends prometheus
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
