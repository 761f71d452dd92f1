#!/usr/bin/env bash
# tokenbox benchmarks. Prints the figures; bench/RESULTS.md keeps those of a run on the
# project's machine. Not part of the test suite. Loopback only; every run is bounded.
#
#   bench/run.sh            # everything
#   bench/run.sh hot        # hot path, floor and bare handler with ratios (also: interleaved, storm, rss, scale, rss-bound)
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
DURATION="${DURATION:-15s}"
export PGOPTIONS="-c client_min_messages=warning"
PG_ADMIN="${TOKENBOX_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

if ! command -v wrk >/dev/null 2>&1; then
  echo "installing wrk (Debian package)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk </dev/null >&2
fi
if command -v pg_lsclusters >/dev/null 2>&1; then
  pg_lsclusters --no-header | while read -r v c _p status _r; do
    [ "$status" = online ] || pg_ctlcluster --skip-systemctl-redirect "$v" "$c" start
  done
fi

cargo build --release --quiet --bin tokenbox --example bench
BENCH=target/release/examples/bench

fresh_pg() {
  local name="tokenbox_bench_$1_$$"
  psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $name WITH (FORCE)" >/dev/null
  psql "$PG_ADMIN" -qc "CREATE DATABASE $name" >/dev/null
  echo "${PG_ADMIN%/*}/$name"
}

# hot MODE LABEL [bench args]: a server (`bench serve`: tokenbox; `floor`: the same route without
# auth, audit, access log or middleware; `bare`: a bare axum handler with the same JSON), warmed
# once, then measured. Prints the figures and keeps requests/s in $RESULTS/MODE.
hot() {
  local mode="$1" label="$2" extra=("${@:3}")
  local out
  out=$(mktemp)
  "$BENCH" "$mode" --count 10000 --seconds 120 "${extra[@]}" >"$out" &
  local pid=$!
  for _ in $(seq 1 600); do [ -s "$out" ] && break; sleep 0.5; done
  read -r url token <"$out"
  # Warm the cache once (every connection read and decrypted), then measure.
  BENCH_TOKEN="$token" wrk -t2 -c64 -d5s -s bench/hot.lua "$url" >/dev/null
  echo "== $label, 10000 connections, wrk -t2 -c64 -d$DURATION (wrk shares the 2 cores)"
  BENCH_TOKEN="$token" wrk -t2 -c64 -d"$DURATION" --latency -s bench/hot.lua "$url" >"$out.wrk"
  grep -E "Requests/sec|Latency  |50%|99%|Non-2xx|Socket errors|requests in" "$out.wrk"
  awk '/Requests\/sec/ {print $2}' "$out.wrk" >"$RESULTS/$mode"
  if [ "$mode" = serve ]; then
    # Every read accounted for: the audit rows count the served reads, nothing dropped.
    curl -s "$url/metrics" | grep -E '^tokenbox_(audit_dropped|token_requests_total)'
  fi
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$out" "$out.wrk"
}

# interleaved ROUNDS SECONDS: the four servers side by side (bare, floor, tokenbox on SQLite
# and on PostgreSQL), each warmed, then measured in turn, ROUNDS times SECONDS each; prints
# every round and the medians with their ratios. The machine's speed drifts by a third
# within minutes (a shared VM): measured in turn, all four see the same drift, and the ratio
# of medians is what a single long run of each cannot give.
interleaved() {
  local rounds="$1" seconds="$2" dir
  dir=$(mktemp -d)
  local modes=(bare floor serve serve-pg)
  local pids=()
  for mode in "${modes[@]}"; do
    case "$mode" in
      serve-pg) "$BENCH" serve --count 10000 --seconds 600 --database-url "$(fresh_pg interleaved)" >"$dir/$mode.url" 2>/dev/null & ;;
      *) "$BENCH" "$mode" --count 10000 --seconds 600 >"$dir/$mode.url" 2>/dev/null & ;;
    esac
    pids+=($!)
  done
  for mode in "${modes[@]}"; do
    for _ in $(seq 1 600); do [ -s "$dir/$mode.url" ] && break; sleep 0.5; done
    read -r url token <"$dir/$mode.url"
    BENCH_TOKEN="$token" wrk -t2 -c64 -d5s -s bench/hot.lua "$url" >/dev/null
  done
  echo "== hot path, interleaved: $rounds rounds of wrk -t2 -c64 -d${seconds}s per server, 10000 connections"
  for round in $(seq 1 "$rounds"); do
    local line="round $round:"
    for mode in "${modes[@]}"; do
      read -r url token <"$dir/$mode.url"
      BENCH_TOKEN="$token" wrk -t2 -c64 -d"${seconds}s" --latency -s bench/hot.lua "$url" >"$dir/$mode.wrk"
      local rps p99
      rps=$(awk '/Requests\/sec/ {print $2}' "$dir/$mode.wrk")
      p99=$(awk '/ 99%/ {print $2}' "$dir/$mode.wrk")
      echo "$rps" >>"$dir/$mode.rps"
      echo "$p99" >>"$dir/$mode.p99"
      line="$line $mode=$rps (p99 $p99)"
    done
    echo "$line"
  done
  median() { sort -g "$1" | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
  local line="medians:"
  for mode in "${modes[@]}"; do
    line="$line $mode=$(median "$dir/$mode.rps") (p99 $(sort -t. -k1,1g "$dir/$mode.p99" | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'))"
  done
  echo "$line"
  awk -v b="$(median "$dir/bare.rps")" -v f="$(median "$dir/floor.rps")" \
      -v s="$(median "$dir/serve.rps")" -v p="$(median "$dir/serve-pg.rps")" \
      'BEGIN {printf "ratios of medians: sqlite/bare=%.2f postgres/bare=%.2f floor/bare=%.2f sqlite/floor=%.2f\n", s/b, p/b, f/b, s/f}'
  for mode in serve serve-pg; do
    read -r url _ <"$dir/$mode.url"
    echo "$mode: $(curl -s "$url/metrics" | grep -E '^tokenbox_audit_dropped')"
  done
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  rm -rf "$dir"
}

ratio() { awk -v a="$(cat "$RESULTS/$1")" -v b="$(cat "$RESULTS/$2")" 'BEGIN {printf "%.2f", a / b}'; }

case "$what" in all|hot)
  RESULTS=$(mktemp -d)
  hot bare "bare axum handler, same JSON from memory (the ceiling)"
  hot floor "tokenbox route without auth, audit, access log, middleware (the floor)"
  hot serve "tokenbox hot path (SQLite, audit on, rate limit off)"
  echo "ratios: hot/bare=$(ratio serve bare) floor/bare=$(ratio floor bare) hot/floor=$(ratio serve floor)"
  hot serve "tokenbox hot path (PostgreSQL, audit on, rate limit off)" --database-url "$(fresh_pg hot)"
  rm -rf "$RESULTS"
;; esac

case "$what" in all|interleaved)
  interleaved "${ROUNDS:-7}" "${ROUND_SECONDS:-4}"
;; esac

case "$what" in all|storm)
  echo "== refresh storm: 10000 expired connections, each asked for by 10 callers at once (100000 requests, 500 at a time)"
  "$BENCH" storm --replicas 1 --count 10000 --at-once 10 --callers 50
  "$BENCH" storm --replicas 1 --count 10000 --at-once 10 --callers 50 --database-url "$(fresh_pg storm1)"
  "$BENCH" storm --replicas 2 --count 10000 --at-once 10 --callers 50 --database-url "$(fresh_pg storm2)"
  echo "== refresh storm, earlier shape: 100 callers each asking for all 10000 connections (1000000 requests)"
  "$BENCH" storm --replicas 1 --count 10000 --callers 100
;; esac

case "$what" in all|rss)
  echo "== resident memory with 100000 connections stored (SQLite)"
  "$BENCH" rss --count 100000
;; esac

# Scale of the store: 1,000,000 connections in a scratch PostgreSQL database (loaded with
# generate_series, not through the API), and the plans of the refresher's claim and the listing.
case "$what" in all|scale)
  echo "== scale: 1000000 connections on PostgreSQL, EXPLAIN of the claim and the listing"
  scale_url="$(fresh_pg scale)"
  scale_dir="$(mktemp -d)"
  printf 'database_url = "%s"\nencryption_key_file = "%s/key"\n' "$scale_url" "$scale_dir" \
    >"$scale_dir/tokenbox.toml"
  timeout 120 target/release/tokenbox --config "$scale_dir/tokenbox.toml" migrate >/dev/null
  timeout 600 psql "$scale_url" -q -v now="$(date +%s)" -f bench/scale.sql
  psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS ${scale_url##*/} WITH (FORCE)" >/dev/null
  rm -rf "$scale_dir"
;; esac

# Resident memory with the cache at its bound (cache_max_entries, default unless set).
case "$what" in rss-bound)
  echo "== resident memory, 100000 connections (SQLite), cache_max_entries=${TOKENBOX_CACHE_MAX_ENTRIES:-default}"
  "$BENCH" rss --count 100000
;; esac
