#!/usr/bin/env bash
# Tests of the Python client (clients/python/tests/) against the real tokenbox binary.
#
#   clients/python/run-tests.sh [pytest arguments...]
#
# Creates (or reuses) the virtualenv clients/python/.venv, installs the package in editable
# mode with its test extras (pytest, mypy, ruff, toucan-connectors[base,github]==9.2.*,
# PyJWT[crypto]==2.*, cryptography==50.*, Authlib==1.9.*, requests==2.*) when pyproject.toml changed
# since the last install,
# uses $TOKENBOX_BIN or target/debug/tokenbox (under $CARGO_TARGET_DIR when set; built with
# `cargo build --bin tokenbox` when missing), and runs pytest. Non-interactive and idempotent; the exit code is pytest's.
# A skipped test fails the run (tests/conftest.py; ALLOW_SKIPPED_TESTS=1 allows skips locally).
# $PYTHON picks the interpreter for a new virtualenv (default: python3; 3.11 or newer).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"

# 1. The virtualenv: recreated when missing or broken (e.g. its interpreter was removed).
if ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "run-tests.sh: $python is missing or older than Python 3.11 (set PYTHON=...)" >&2
    exit 2
  fi
  echo "== creating $venv with $("$python" --version 2>&1)"
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi

# 2. The package and the test dependencies, when pyproject.toml changed since the last install.
stamp="$venv/.installed-pyproject.sha256"
wanted="$(sha256sum "$here/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  echo "== installing tokenbox-client (editable) with its test extras"
  export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
  "$venv/bin/python" -m pip install --quiet --editable "${here}[test]"
  echo "$wanted" > "$stamp"
fi

# 3. The tokenbox binary.
if [ -n "${TOKENBOX_BIN:-}" ]; then
  case "$TOKENBOX_BIN" in /*) ;; *) TOKENBOX_BIN="$repo/$TOKENBOX_BIN" ;; esac
  if [ ! -x "$TOKENBOX_BIN" ]; then
    echo "run-tests.sh: TOKENBOX_BIN=$TOKENBOX_BIN is not an executable file" >&2
    exit 2
  fi
else
  target_dir="${CARGO_TARGET_DIR:-$repo/target}"
  case "$target_dir" in /*) ;; *) target_dir="$repo/$target_dir" ;; esac
  TOKENBOX_BIN="$target_dir/debug/tokenbox"
  if [ ! -x "$TOKENBOX_BIN" ]; then
    echo "== building $TOKENBOX_BIN"
    (cd "$repo" && cargo build --bin tokenbox)
  fi
fi
export TOKENBOX_BIN

# 4. The tests. exec: the exit code is pytest's.
cd "$here"
echo "== pytest (tokenbox: $TOKENBOX_BIN)"
exec "$venv/bin/python" -m pytest "$@"
