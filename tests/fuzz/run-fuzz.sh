#!/usr/bin/env bash
# Fuzz a running tokenbox with schemathesis against its own /openapi.json:
# at least 2,000 generated requests; no 5xx, no hang, no response (nor server log line) that
# holds a stored secret. Exit code 0 = pass. Non-interactive and idempotent; see tests/fuzz/README.md.
#
#   tests/fuzz/run-fuzz.sh                  # uses $TOKENBOX_BIN or target/debug/tokenbox
#
# Knobs (environment): TOKENBOX_BIN, FUZZ_MAX_EXAMPLES (default 200 per operation),
# FUZZ_WORKERS (1), FUZZ_SEED, FUZZ_ST_TIMEOUT (600 s: a guard against a hang, not a speed check), FUZZ_STRICT=1 (known issues fail too),
# FUZZ_KEEP_TMP=1 (keep the server's temporary directory), FUZZ_OUT (default tests/fuzz/out).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

# 1. The Python environment: tests/fuzz/.venv, rebuilt when requirements.txt changes.
venv="$here/.venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "[fuzz] installing $here/requirements.txt into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --disable-pip-version-check --no-input --quiet -r "$here/requirements.txt"
  echo "$want" > "$stamp"
fi

# 2. The server binary.
bin="${TOKENBOX_BIN:-target/debug/tokenbox}"
case "$bin" in /*) ;; *) bin="$repo/$bin" ;; esac
if [ ! -x "$bin" ]; then
  if [ -n "${TOKENBOX_BIN:-}" ]; then
    echo "[fuzz] TOKENBOX_BIN=$TOKENBOX_BIN is not an executable file" >&2
    exit 2
  fi
  echo "[fuzz] $bin is missing: cargo build --bin tokenbox"
  cargo build --bin tokenbox
fi

# 3. The run itself (server, seeding, schemathesis, checks, summary).
out="${FUZZ_OUT:-$here/out}"
exec "$venv/bin/python" "$here/fuzz.py" --bin "$bin" --out "$out" </dev/null
