#!/usr/bin/env bash
# Memory table: resident memory of one dwaar process (one thread) when idle with 1, 100
# and 1000 sites, and what each idle client connection (plain HTTP/1.1, HTTP/1.1 over TLS,
# HTTP/2 over TLS, HTTP/3) and each pooled upstream connection adds. Prints a Markdown
# table. Needs nginx (the upstream), openssl and python3; builds benchmarks/loadgen.
# Env: DWAAR_BIN (unset: build and use target/release/dwaar), MEM_CONNECTIONS (1000),
#      MEM_QUIC_CONNECTIONS (300: each QUIC client connection has a UDP socket of its own).
set -euo pipefail
cd "$(dirname "$0")/.."
# DWAAR_BIN measures another build (e.g. target/pgo/release/dwaar from scripts/pgo-build.sh).
if [ -n "${DWAAR_BIN:-}" ]; then DWAAR=$DWAAR_BIN; else cargo build --release -q -p dwaar-cli; DWAAR=$PWD/target/release/dwaar; fi
cargo build --release -q -p dwaar-loadgen
LOADGEN=$PWD/target/release/dwaar-loadgen
WORK=$(mktemp -d /tmp/dwaar-mem.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
N=${MEM_CONNECTIONS:-1000}
NQ=${MEM_QUIC_CONNECTIONS:-300}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null

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
  # Measured after start-up code pages are released (server/footprint.rs, 2 s after start).
  sleep 2.5; echo "$p"
}
sites() { # n [analytics] -> Dwaarfile with n respond sites and one proxy site on :16299
  local extra="" f="$WORK/Dwaarfile.$1${2:-}"
  [ "${2:-}" = analytics ] && extra=$'\tanalytics\n'
  { printf '{\n\tadmin off\n\tstorage file_system %s/storage\n}\n' "$WORK"
    for i in $(seq 1 "$1"); do printf 'http://site%s.example:16299 {\n%s\trespond "%s"\n}\n' "$i" "$extra" "$i"; done
    printf ':16299 {\n\treverse_proxy 127.0.0.1:19299\n}\n'; } > "$f"
  echo "$f"
}
tls_site() { # -> Dwaarfile with one HTTPS site (HTTP/1.1, HTTP/2, HTTP/3) on :16443
  local f="$WORK/Dwaarfile.tls"
  printf '{\n\tadmin off\n\tauto_https disable_redirects\n\tstorage file_system %s/storage\n\tservers :16443 {\n\t\tprotocols h1 h2 h3\n\t}\n}\n:16299 {\n\trespond ok\n}\nhttps://localhost:16443 {\n\ttls %s %s\n\trespond ok\n}\n' \
    "$WORK" "$WORK/cert.pem" "$WORK/key.pem" > "$f"
  echo "$f"
}
per_conn() { # proto count -> bytes per held connection (one dwaar, loadgen holds them 4 s)
  local p b w h
  # Warm up first: the code the connections run is paged back in before the baseline.
  p=$(start "$(tls_site)")
  "$LOADGEN" hold --proto "$1" --connect 127.0.0.1:16443 -c 20 -d 0.2 >/dev/null 2>&1 || true
  sleep 0.5; b=$(rss_kb "$p")
  "$LOADGEN" hold --proto "$1" --connect 127.0.0.1:16443 -c "$2" -d 4 >/dev/null 2>"$WORK/hold.log" & h=$!
  for _ in $(seq 200); do grep -q held "$WORK/hold.log" 2>/dev/null && break; sleep 0.1; done
  sleep 0.5; w=$(rss_kb "$p"); wait $h || true; stop "$p"
  echo $(( (w - b) * 1024 / $2 ))
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
  p=$(start "$(sites $n)"); idle[$n]=$(rss_kb "$p")
  if [ "$n" = 1 ]; then
    # The same server idle again after serving: the pages requests use are back.
    python3 - <<'PY'
import socket
for path in ("/", "/local"):
    s = socket.create_connection(("127.0.0.1", 16299))
    for i in range(1000):
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {'site1.example' if path == '/local' else 'x'}\r\n\r\n".encode())
        s.recv(65536)
    s.close()
PY
    sleep 1; idle_served=$(rss_kb "$p")
    # Idle long enough for the idle trim (server/footprint.rs: one to two periods of
    # 10 s without a request): the code pages and the allocator's free pages go back.
    sleep 20; idle_trimmed=$(rss_kb "$p")
  fi
  stop "$p"
done
p=$(start "$(sites 100 analytics)"); idle_analytics=$(rss_kb "$p"); stop "$p"
# Idle client connections (answered by dwaar itself).
warm() { for _ in $(seq 20); do curl -s -o /dev/null -H "Host: $1" http://127.0.0.1:16299/"$2" || true; done; sleep 0.3; }
p=$(start "$(sites 1)"); warm site1.example local; base=$(rss_kb "$p")
hold /local & h=$!; sleep 2.5; with_clients=$(rss_kb "$p"); wait $h; stop "$p"
# Client connections that were proxied: each leaves a pooled upstream connection too.
p=$(start "$(sites 1)"); warm x ""; base2=$(rss_kb "$p")
hold / & h=$!; sleep 2.5; with_pool=$(rss_kb "$p")
pooled=$(ss -Htn state established '( dport = :19299 )' | wc -l)
wait $h; stop "$p"

# Against nginx (one worker, same certificate): peak RSS of all its processes while it
# holds the same N idle HTTP/1.1-over-TLS connections, and Dwaar's in the same setup.
cat > "$WORK/nginx-tls.conf" <<NGX
worker_processes 1;
pid $WORK/nginx-tls.pid;
error_log $WORK/nginx-tls-error.log;
events { worker_connections 10000; }
http { access_log off; keepalive_timeout 300s; ssl_session_cache shared:SSL:10m;
  server { listen 127.0.0.1:16444 ssl http2 backlog=4096; ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem; location / { return 200 "ok"; } } }
NGX
peak_tree_kb() { local s=0 q; for q in $1 $(pgrep -P "$1"); do s=$((s + $(awk '/VmHWM/{print $2}' "/proc/$q/status"))); done; echo $s; }
nginx -c "$WORK/nginx-tls.conf" -g 'daemon off;' & ng=$!; PIDS+=($ng)
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/16444) 2>/dev/null && break; sleep 0.05; done
"$LOADGEN" hold --proto tls --connect 127.0.0.1:16444 -c "$N" -d 2 >/dev/null 2>&1
nginx_tls_peak=$(peak_tree_kb "$ng"); stop "$ng"
p=$(start "$(tls_site)")
"$LOADGEN" hold --proto tls --connect 127.0.0.1:16443 -c "$N" -d 2 >/dev/null 2>&1
dwaar_tls_peak=$(peak_tree_kb "$p"); stop "$p"

per_client=$(( (with_clients - base) * 1024 / N ))
per_tls=$(per_conn tls "$N")
per_h2=$(per_conn h2 "$N")
per_h3=$(per_conn h3 "$NQ")
# The proxied run holds N client connections plus however many upstream connections the
# pool ended up with (requests that did not overlap share one).
pool_bytes=$(( (with_pool - base2) * 1024 - per_client * N ))
echo "| what | resident memory |"
echo "|---|---|"
echo "| idle, 1 site | $((idle[1] / 1024)).$(( (idle[1] % 1024) * 10 / 1024 )) MB |"
echo "| idle, 1 site, 1 s after serving 2000 requests | $((idle_served / 1024)).$(( (idle_served % 1024) * 10 / 1024 )) MB |"
echo "| idle, 1 site, 21 s after serving 2000 requests (idle trim done) | $((idle_trimmed / 1024)).$(( (idle_trimmed % 1024) * 10 / 1024 )) MB |"
echo "| idle, 100 sites | $((idle[100] / 1024)).$(( (idle[100] % 1024) * 10 / 1024 )) MB |"
echo "| idle, 1000 sites | $((idle[1000] / 1024)).$(( (idle[1000] % 1024) * 10 / 1024 )) MB |"
echo "| idle, 100 sites with analytics | $((idle_analytics / 1024)).$(( (idle_analytics % 1024) * 10 / 1024 )) MB |"
echo "| per site (1 -> 1000) | $(( (idle[1000] - idle[1]) * 1024 / 999 )) bytes |"
echo "| per idle client connection | $per_client bytes |"
echo "| per idle HTTP/1.1 over TLS connection | $per_tls bytes |"
echo "| per idle HTTP/2 over TLS connection | $per_h2 bytes |"
echo "| per idle HTTP/3 (QUIC) connection | $per_h3 bytes |"
echo "| peak, $N idle HTTP/1.1 over TLS connections: Dwaar / nginx (1 worker) | $((dwaar_tls_peak / 1024)).$(( (dwaar_tls_peak % 1024) * 10 / 1024 )) MB / $((nginx_tls_peak / 1024)).$(( (nginx_tls_peak % 1024) * 10 / 1024 )) MB |"
echo "| per pooled upstream connection ($pooled pooled) | $(( pooled > 0 ? pool_bytes / pooled : 0 )) bytes |"
