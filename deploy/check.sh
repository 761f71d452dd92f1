#!/usr/bin/env bash
# Checks deploy/: `systemd-analyze verify` on the unit (any warning fails, an unknown key
# included), its offline exposure score (`systemd-analyze security`, at most 2.0), and
# `tokenbox config check` on the example configuration. Needs the built binary
# (target/debug/tokenbox, or $TOKENBOX_BIN), which stands in for /usr/local/bin/tokenbox.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${TOKENBOX_BIN:-${CARGO_TARGET_DIR:-target}/debug/tokenbox}"
bin="$(realpath "$bin")"
[ -x "$bin" ] || { echo "deploy/check.sh: build tokenbox first ($bin missing)" >&2; exit 1; }

if ! command -v systemd-analyze >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "deploy/check.sh: installing Debian's systemd package for systemd-analyze"
    apt-get update -qq && apt-get install -y -qq --no-install-recommends systemd >/dev/null
  else
    echo "deploy/check.sh: SKIP systemd-analyze checks: systemd-analyze is missing and cannot be installed here (not root or no apt-get)"
    skip_systemd=1
  fi
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

if [ -z "${skip_systemd:-}" ]; then
  sed "s#/usr/local/bin/tokenbox#$bin#g" deploy/tokenbox.service >"$scratch/tokenbox.service"
  if ! timeout 60 systemd-analyze verify "$scratch/tokenbox.service" >"$scratch/verify.log" 2>&1 \
    || [ -s "$scratch/verify.log" ]; then
    echo "deploy/check.sh: systemd-analyze verify failed or warned:" >&2
    cat "$scratch/verify.log" >&2
    exit 1
  fi
  echo "systemd-analyze verify deploy/tokenbox.service: OK"
  exposure="$(timeout 60 systemd-analyze security --offline=yes "$scratch/tokenbox.service" 2>&1 \
    | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')"
  echo "systemd-analyze security (offline): exposure ${exposure:-?} (at most 2.0 accepted)"
  if [ -z "$exposure" ] || ! awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }'; then
    echo "deploy/check.sh: the unit's exposure is above 2.0 (or unreadable)" >&2
    exit 1
  fi
fi

HUBSPOT_CLIENT_SECRET=example timeout 60 "$bin" --config deploy/tokenbox.toml config check
