#!/usr/bin/env bash
# The proxy mode with a large export: a 100 MB answer streamed through tokenbox, checked
# byte for byte with SHA-256, and tokenbox's resident memory before, during and after (a
# streamed body must not be held in memory). A benchmark, not a test: it prints figures.
# Loopback only; bounded (every wait has a deadline, the processes are stopped on exit).
#
#   bench/proxy.sh            # 100 MB
#   SIZE=500000000 bench/proxy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE="${SIZE:-100000000}"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet --bin tokenbox
BIN=target/release/tokenbox

# The provider's API: /api/export streams SIZE pseudo-random bytes (a fixed seed) to a caller
# with the right API key; the expected SHA-256 is written beside it.
cat >"$work/api.py" <<'EOF'
import hashlib, http.server, os, random, sys
size, key, port_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
chunk = random.Random(7).randbytes(1 << 20)
def body():
    left = size
    while left > 0:
        part = chunk[: min(left, len(chunk))]
        left -= len(part)
        yield part
digest = hashlib.sha256()
for part in body():
    digest.update(part)
open(port_file + ".sha256", "w").write(digest.hexdigest())
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        if self.headers.get("X-Api-Key") != key:
            self.send_response(401); self.send_header("Content-Length", "0"); self.end_headers(); return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        for part in body():
            self.wfile.write(part)
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
open(port_file, "w").write(str(server.server_address[1]))
server.serve_forever()
EOF
key="bench-key-$$"
python3 "$work/api.py" "$SIZE" "$key" "$work/port" &
pids+=($!)
for _ in $(seq 1 300); do [ -s "$work/port.sha256" ] && break; sleep 0.1; done
port="$(cat "$work/port")"
expected="$(cat "$work/port.sha256")"

cat >"$work/tokenbox.toml" <<EOF
listen = "127.0.0.1:0"
database_url = "sqlite://$work/tokenbox.db"
encryption_key_file = "$work/key"
allow_insecure_loopback = true
refresher_enabled = false
rate_limit_per_second = 0
log_format = "text"

[connector_types.export]
kind = "api_key"
api_key_header = "X-Api-Key"
api_base_url = "http://127.0.0.1:$port/api"
EOF
token="$("$BIN" --config "$work/tokenbox.toml" service-account create bench --role superadmin)"
NO_COLOR=1 "$BIN" --config "$work/tokenbox.toml" serve >"$work/serve.log" 2>&1 &
tb=$!
pids+=($tb)
for _ in $(seq 1 300); do grep -q "tokenbox listening" "$work/serve.log" && break; sleep 0.1; done
addr="http://$(sed 's/\x1b\[[0-9;]*m//g' "$work/serve.log" | sed -n 's/.*tokenbox listening address=\(127\.0\.0\.1:[0-9]*\).*/\1/p' | head -1)"
curl -fsS -X PUT -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d "{\"api_key\": \"$key\"}" "$addr/acme/export/connection" >/dev/null

rss() { awk '/VmRSS|VmHWM/ {printf "%s %d MiB  ", $1, $2/1024}' "/proc/$tb/status"; }
echo "== proxy: a ${SIZE}-byte export through tokenbox"
echo "tokenbox before: $(rss)"
start=$(date +%s.%N)
got="$(curl -fsS --max-time 600 -H "Authorization: Bearer $token" "$addr/acme/export/proxy/export" | sha256sum | cut -d' ' -f1)"
end=$(date +%s.%N)
echo "tokenbox after:  $(rss)"
if [ "$got" = "$expected" ]; then echo "sha256 matches ($got)"; else echo "sha256 MISMATCH: $got != $expected"; exit 1; fi
awk -v s="$start" -v e="$end" -v n="$SIZE" 'BEGIN { printf "%.1f s, %.0f MB/s\n", e - s, n / (e - s) / 1e6 }'
