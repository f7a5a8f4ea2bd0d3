#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: repeatable for the same
# binary and inputs whatever else the machine is doing (wall-clock CPU per request on
# these shared cores moves by 10% between runs; this does not).
#
# Usage: benchmarks/instructions.sh BIN [BIN...]
# Env: MODES ("plain tls1 h2"): plain HTTP/1.1 keep-alive, HTTP/1.1 over TLS, HTTP/2 over
#      TLS (h2load, 10 connections, 10 streams each for h2); also hs-full and hs-resumed:
#      one TLS handshake per request (`Connection: close`, benchmarks/loadgen), every one
#      full or resumed from a session ticket. N (20000) requests per count.
#      CALLGRIND_KEEP=DIR keeps each count's callgrind output there (for callgrind_annotate).
# Only the work done in tokio task polls is counted (connections, streams, requests),
# not start-up; each count is taken as (N+2000 requests) - (2000 requests), so fixed
# costs cancel.
set -euo pipefail
MODES=${MODES:-"plain tls1 h2"}
N=${N:-20000}
WORK=$(mktemp -d /tmp/dwaar-instr.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
LOADGEN=$(cd "$(dirname "$0")/.." && pwd)/target/release/dwaar-loadgen
[[ " $MODES " == *" hs-"* ]] && (cd "$(dirname "$0")/.." && cargo build --release -q -p dwaar-loadgen)
command -v valgrind >/dev/null && command -v h2load >/dev/null && command -v nginx >/dev/null || {
	echo "needs valgrind, h2load (nghttp2-client) and nginx" >&2; exit 1; }
wait_port() { for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }

cat > "$WORK/nginx.conf" <<NGX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/error.log;
events { worker_connections 10000; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:9291 backlog=4096; location / { return 200 "OK\n"; } } }
NGX
nginx -c "$WORK/nginx.conf" -g 'daemon off;' & PIDS+=($!)
wait_port 9291
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
	-subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
	-keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
cat > "$WORK/Dwaarfile" <<DW
{
	admin off
	grace_period 1s
	auto_https disable_redirects
	storage file_system $WORK/storage
}
:6388 {
	reverse_proxy 127.0.0.1:9291
}
https://:6643 {
	tls $WORK/cert.pem $WORK/key.pem
	reverse_proxy 127.0.0.1:9291
}
DW

# count BIN MODE REQUESTS -> instructions in task polls
count() {
	rm -f "$WORK"/cg.out.*
	valgrind --tool=callgrind --collect-atstart=no "--toggle-collect=tokio::runtime::task::raw::poll*" \
		--callgrind-out-file="$WORK/cg.out.%p" "$1" run --config "$WORK/Dwaarfile" --threads 1 >"$WORK/dwaar.log" 2>&1 &
	local p=$!
	wait_port 6643
	sleep 1
	case $2 in
		plain) h2load --h1 -n "$3" -c 10 http://127.0.0.1:6388/ >/dev/null 2>&1 ;;
		tls1) h2load --h1 -n "$3" -c 10 https://127.0.0.1:6643/ >/dev/null 2>&1 ;;
		h2) h2load -n "$3" -c 10 -m 10 https://127.0.0.1:6643/ >/dev/null 2>&1 ;;
		hs-full) "$LOADGEN" tls --connect 127.0.0.1:6643 -c 10 -n "$3" >/dev/null 2>&1 ;;
		hs-resumed) "$LOADGEN" tls --connect 127.0.0.1:6643 -c 10 -n "$3" --resume >/dev/null 2>&1 ;;
	esac
	kill -INT "$p"; sleep 3; kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true
	local out; out=$(ls "$WORK"/cg.out.* | head -1)
	[ -n "${CALLGRIND_KEEP:-}" ] && mkdir -p "$CALLGRIND_KEEP" && cp "$out" "$CALLGRIND_KEEP/$(basename "$1").$2.$3"
	grep -E "^(summary|totals):" "$out" | head -1 | awk '{print $2}'
}

printf "%-28s %-6s %14s\n" binary mode instr/request
for bin in "$@"; do
	for m in $MODES; do
		a=$(count "$bin" "$m" 2000)
		b=$(count "$bin" "$m" $((N + 2000)))
		printf "%-28s %-6s %14d\n" "$(basename "$bin")" "$m" $(((b - a) / N))
	done
done
