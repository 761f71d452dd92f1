#!/usr/bin/env bash
# Installs what the end-to-end tests (tests/e2e) need, and nothing when it is
# already there:
#   - Debian's chromium (/usr/bin/chromium), used headless by signup-browser.mjs;
#   - the npm packages of tests/e2e (npm ci), when node_modules is missing or
#     older than package-lock.json.
# Runs as root without standard input (CI). Quiet when there is nothing to do.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
e2e="$root/tests/e2e"

if [[ ! -x /usr/bin/chromium ]]; then
  echo "e2e-setup: installing chromium (Debian package)" >&2
  if [[ $(id -u) -ne 0 ]]; then
    echo "e2e-setup: /usr/bin/chromium is missing and installing it needs root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq </dev/null >&2
  apt-get install -y -qq --no-install-recommends chromium </dev/null >&2
  if [[ ! -x /usr/bin/chromium ]]; then
    echo "e2e-setup: chromium installed but /usr/bin/chromium is not there" >&2
    exit 1
  fi
fi

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "e2e-setup: $tool is not installed" >&2
    exit 1
  fi
done

# npm ci refreshes node_modules/.package-lock.json, so its time tells when it last ran.
stamp="$e2e/node_modules/.package-lock.json"
if [[ ! -f "$stamp" || "$e2e/package-lock.json" -nt "$stamp" ]]; then
  echo "e2e-setup: npm ci in tests/e2e" >&2
  # playwright-core never downloads a browser; the variable guards against a
  # dependency that would.
  (cd "$e2e" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error </dev/null >&2)
fi
