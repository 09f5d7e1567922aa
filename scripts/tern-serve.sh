#!/usr/bin/env bash
# Runs `tern serve` with tern-node's command line: lets the node test suite run against the
# router + node process (make test-serve).
exec "$(dirname "$0")/../target/release/tern" serve "$@"
