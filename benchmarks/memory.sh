#!/usr/bin/env bash
# Memory table: resident memory of one dwaar process (one thread) when idle with 1, 100
# and 1000 sites, and what each idle client connection and each pooled upstream
# connection adds. Prints a Markdown table. Needs nginx (the upstream) and python3.
# Env: DWAAR_BIN (unset: build and use target/release/dwaar), MEM_CONNECTIONS (1000).
set -euo pipefail
cd "$(dirname "$0")/.."
# DWAAR_BIN measures another build (e.g. target/pgo/release/dwaar from scripts/pgo-build.sh).
if [ -n "${DWAAR_BIN:-}" ]; then DWAAR=$DWAAR_BIN; else cargo build --release -q -p dwaar-cli; DWAAR=$PWD/target/release/dwaar; fi
WORK=$(mktemp -d /tmp/dwaar-mem.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
N=${MEM_CONNECTIONS:-1000}

cat > "$WORK/backend.conf" <<NGX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 10000; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  server { listen 127.0.0.1:19299 backlog=4096; location / { return 200 "OK\n"; } } }
NGX
nginx -c "$WORK/backend.conf" -g 'daemon off;' & PIDS+=($!)

rss_kb() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
stop() { kill "$1" 2>/dev/null || true; while [ -d "/proc/$1" ]; do sleep 0.05; done; }
start() { # config -> pid (waits for the port)
  "$DWAAR" run --config "$1" --threads 1 >"$WORK/dwaar.log" 2>&1 & local p=$!; PIDS+=($p)
  for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/16299) 2>/dev/null && break; sleep 0.05; done
  sleep 0.5; echo "$p"
}
sites() { # n [analytics] -> Dwaarfile with n respond sites and one proxy site on :16299
  local extra="" f="$WORK/Dwaarfile.$1${2:-}"
  [ "${2:-}" = analytics ] && extra=$'\tanalytics\n'
  { printf '{\n\tadmin off\n\tstorage file_system %s/storage\n}\n' "$WORK"
    for i in $(seq 1 "$1"); do printf 'http://site%s.example:16299 {\n%s\trespond "%s"\n}\n' "$i" "$extra" "$i"; done
    printf ':16299 {\n\treverse_proxy 127.0.0.1:19299\n}\n'; } > "$f"
  echo "$f"
}
hold() { # path -> opens N keep-alive connections, one request each, holds them 3 s
  python3 - "$N" "$1" <<'PY'
import socket, sys, time
n, path = int(sys.argv[1]), sys.argv[2]
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", 16299))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: site1.example\r\n\r\n".encode() if path == "/local" else f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    conns.append(s)
for s in conns:
    s.recv(4096)
time.sleep(3)
PY
}

declare -A idle
for n in 1 100 1000; do
  p=$(start "$(sites $n)"); idle[$n]=$(rss_kb "$p"); stop "$p"
done
p=$(start "$(sites 100 analytics)"); idle_analytics=$(rss_kb "$p"); stop "$p"
# Idle client connections (answered by dwaar itself).
p=$(start "$(sites 1)"); base=$(rss_kb "$p")
hold /local & h=$!; sleep 2.5; with_clients=$(rss_kb "$p"); wait $h; stop "$p"
# Client connections that were proxied: each leaves a pooled upstream connection too.
p=$(start "$(sites 1)"); base2=$(rss_kb "$p")
hold / & h=$!; sleep 2.5; with_pool=$(rss_kb "$p")
pooled=$(ss -Htn state established '( dport = :19299 )' | wc -l)
wait $h; stop "$p"

per_client=$(( (with_clients - base) * 1024 / N ))
# The proxied run holds N client connections plus however many upstream connections the
# pool ended up with (requests that did not overlap share one).
pool_bytes=$(( (with_pool - base2) * 1024 - per_client * N ))
echo "| what | resident memory |"
echo "|---|---|"
echo "| idle, 1 site | $((idle[1] / 1024)).$(( (idle[1] % 1024) * 10 / 1024 )) MB |"
echo "| idle, 100 sites | $((idle[100] / 1024)).$(( (idle[100] % 1024) * 10 / 1024 )) MB |"
echo "| idle, 1000 sites | $((idle[1000] / 1024)).$(( (idle[1000] % 1024) * 10 / 1024 )) MB |"
echo "| idle, 100 sites with analytics | $((idle_analytics / 1024)).$(( (idle_analytics % 1024) * 10 / 1024 )) MB |"
echo "| per site (1 -> 1000) | $(( (idle[1000] - idle[1]) * 1024 / 999 )) bytes |"
echo "| per idle client connection | $per_client bytes |"
echo "| per pooled upstream connection ($pooled pooled) | $(( pooled > 0 ? pool_bytes / pooled : 0 )) bytes |"
