#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and the black-box API tests.
# It starts what the tests need, so it runs the same on a fresh machine and in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

# PostgreSQL (used by the PostgreSQL tests): start the local cluster when it is down.
if command -v pg_lsclusters >/dev/null 2>&1; then
  pg_lsclusters --no-header 2>/dev/null | while read -r version cluster _port status _rest; do
    if [ "$status" != "online" ]; then
      echo "starting PostgreSQL $version/$cluster"
      pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start || true
    fi
  done
fi

# The end-to-end signup test: Debian's chromium and the npm packages of tests/e2e.
bash scripts/e2e-setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

echo "== tests"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  cargo test --locked --no-fail-fast
fi

echo "== deploy/: systemd-analyze verify and security on the unit, config check on the example"
bash deploy/check.sh

echo "== Python client, toucan-connectors keeper and extraction example (pytest)"
bash clients/python/run-tests.sh

echo "== Fuzzing: schemathesis against /openapi.json (at least 2,000 requests)"
FUZZ_STRICT=1 bash tests/fuzz/run-fuzz.sh
