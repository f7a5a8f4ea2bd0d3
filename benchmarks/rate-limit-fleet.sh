#!/usr/bin/env bash
# The per-request cost of rate limits, local and shared through Redis: wrk against
# `respond ok` behind no limit, a local `rate_limit`, `distributed exact` and
# `distributed approximate 1s` (limits high enough that every request passes).
# Dwaar on core 1 (--threads 1); wrk and redis-server on core 0. For each mode: requests
# per second, and CPU time per request of Dwaar and of Redis (from /proc).
# Env: BENCH_DURATION (10s), BENCH_CONNS (50), DWAAR_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${BENCH_DURATION:-10s}
CONNS=${BENCH_CONNS:-50}
WORK=$(mktemp -d /tmp/dwaar-rl.XXXXXX)
CLK=$(getconf CLK_TCK)
if [ -n "${DWAAR_BIN:-}" ]; then DWAAR=$DWAAR_BIN; else cargo build --release -q -p dwaar-cli; DWAAR=$ROOT/target/release/dwaar; fi
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

taskset -c 0 redis-server --port 19500 --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 & RPID=$!; PIDS+=($RPID)
wait_port 19500

printf "| mode | requests/s | Dwaar CPU per request | Redis CPU per request |\n|---|---|---|---|\n"
for mode in none local exact approximate; do
  case $mode in
    none) limit="" ;;
    local) limit=$'\trate_limit {\n\t\tevents 1000000000\n\t\twindow 1m\n\t}' ;;
    exact) limit=$'\trate_limit {\n\t\tevents 1000000000\n\t\twindow 1m\n\t\tdistributed exact\n\t}' ;;
    approximate) limit=$'\trate_limit {\n\t\tevents 1000000000\n\t\twindow 1m\n\t\tdistributed approximate 1s\n\t}' ;;
  esac
  cat > "$WORK/Dwaarfile" <<DW
{
	admin 127.0.0.1:19502
	grace_period 1s
	storage redis {
		address 127.0.0.1:19500
		local_copy $WORK/local
	}
}
:19501 {
$limit
	respond ok
}
DW
  taskset -c 1 "$DWAAR" run --config "$WORK/Dwaarfile" --threads 1 >"$WORK/dwaar-$mode.log" 2>&1 & DPID=$!
  wait_port 19501
  taskset -c 0 wrk -t1 -c"$CONNS" -d2s http://127.0.0.1:19501/ >/dev/null
  d0=$(cpu_ticks $DPID); r0=$(cpu_ticks $RPID)
  out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"$DURATION" http://127.0.0.1:19501/)
  d1=$(cpu_ticks $DPID); r1=$(cpu_ticks $RPID)
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
  dus=$(awk -v t=$((d1 - d0)) -v n="$reqs" -v c="$CLK" 'BEGIN { printf "%.1f us", t / c / n * 1e6 }')
  rus=$(awk -v t=$((r1 - r0)) -v n="$reqs" -v c="$CLK" 'BEGIN { printf "%.1f us", t / c / n * 1e6 }')
  printf "| %s | %s | %s | %s |%s\n" "$mode" "$rps" "$dus" "$rus" "${non2xx:+ ($non2xx non-2xx)}"
  kill $DPID; wait $DPID 2>/dev/null || true
done
