#!/usr/bin/env bash
# End-to-end proxy benchmark: Dwaar against nginx, HAProxy and Caddy on the same cores.
#
# Every proxy forwards to the same nginx backend (a static 200 on 127.0.0.1:9090) with
# upstream keep-alive and access logs off. Layout on a 2-core machine (LAYOUT=split, the
# default): the proxy under test on core 1, backend and wrk on core 0. LAYOUT=shared puts
# everything on both cores. Targets are interleaved (A B C ... A B C) for BENCH_ROUNDS
# rounds and the median of each metric is reported. CPU time per request = user+sys ticks
# of all the proxy's processes during the run, divided by requests served.
#
# Env: BENCH_DURATION (30s) BENCH_THREADS (2) BENCH_CONNECTIONS ("100 500 1000")
#      BENCH_ROUNDS (3) BENCH_TARGETS ("direct dwaar nginx haproxy caddy") LAYOUT (split)
#      DWAAR_BIN (unset: build and use target/release/dwaar)
#      BENCH_ACCESS_LOG (0; 1 = dwaar, nginx and caddy write a JSON/combined access log
#      to a file, buffered alike: dwaar batches, nginx buffer=64k flush=100ms; haproxy
#      only logs to syslog, so it runs without)
#      BENCH_ANALYTICS (0; 1 = dwaar's sites have `analytics` on, storage under the work
#      directory; with the default plain-text backend this measures the per-request cost
#      of counting, and the hand-over of browser-like GETs to the Pingora path)
#      BENCH_UA (unset; a User-Agent for wrk to send, e.g. a browser's: with analytics on,
#      browser GETs are page-view candidates and take the Pingora path)
#      BENCH_H2 (1; 0 skips the HTTP/2-over-TLS run: every proxy also listens with TLS on
#      the same self-signed certificate and h2load drives it with BENCH_H2_CONNS (100)
#      connections x BENCH_H2_STREAMS (10) concurrent streams for BENCH_DURATION)
#      BENCH_TLS_H1 (1; 0 skips the HTTP/1.1-over-TLS run: wrk keep-alive connections,
#      BENCH_TLS_H1_CONNS ("100 1000"), to the same TLS listeners)
#      BENCH_HTTP1 (1; 0 skips the plain HTTP/1.1 run)
#      BENCH_FILES (1; 0 skips benchmarks/files-benchmark.sh: file_server against nginx
#      sendfile and Caddy for 1 KB, 1 MB and 10 MB files) BENCH_MEMORY (1; 0 skips
#      benchmarks/memory.sh: the memory table); both run after the proxies are stopped
#      BENCH_HANDSHAKE (1; 0 skips the handshake run: one TLS handshake per request,
#      `Connection: close`, BENCH_HANDSHAKE_CONNS (50) at a time, by dwaar-loadgen; once
#      with every handshake full and once resuming sessions from tickets)
#      BENCH_H3 (1; 0 skips HTTP/3: dwaar-loadgen h3 with BENCH_H3_CONNS (20) connections x
#      BENCH_H3_STREAMS (10) streams against Dwaar and Caddy, the only targets with QUIC
#      here; Dwaar is also run with DWAAR_QUIC_GSO=0 to show what segmentation offload gives)
#      BENCH_BODIES (1; 0 skips big bodies: a 10 MB download and a 10 MB upload proxied
#      over HTTP/1.1, HTTP/1.1 over TLS and HTTP/2, BENCH_BODY_CONNS (10) connections;
#      CPU per MB and MB/s; BENCH_BODY_MODES picks some of down-h1 down-tls-h1 down-h2
#      up-h1 up-tls-h1 up-h2)
# Output: the tables on stdout and in benchmarks/results/latest.txt, raw rows in
# benchmarks/results/raw-*.tsv, and the run's record in benchmarks/results/<date>-<host>.md
# (machine, command, tables) and .json (medians).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${BENCH_DURATION:-30s}
THREADS=${BENCH_THREADS:-2}
CONNS=${BENCH_CONNECTIONS:-"100 500 1000"}
ROUNDS=${BENCH_ROUNDS:-3}
ACCESS_LOG=${BENCH_ACCESS_LOG:-0}
ANALYTICS=${BENCH_ANALYTICS:-0}
TARGETS=${BENCH_TARGETS:-"direct dwaar nginx haproxy caddy"}
LAYOUT=${LAYOUT:-split}
WORK=$(mktemp -d /tmp/dwaar-bench.XXXXXX)
RESULTS=$ROOT/benchmarks/results
mkdir -p "$RESULTS"
CLK=$(getconf CLK_TCK)

if [ "$LAYOUT" = split ]; then PROXY_CPUS=1; LOAD_CPUS=0; else PROXY_CPUS=0,1; LOAD_CPUS=0,1; fi

BOOTSTRAP_BENCH=1 scripts/bootstrap
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# DWAAR_BIN benchmarks another build (e.g. target/pgo/release/dwaar from scripts/pgo-build.sh).
if [ -n "${DWAAR_BIN:-}" ]; then DWAAR=$DWAAR_BIN; else cargo build --release -q -p dwaar-cli; DWAAR=$ROOT/target/release/dwaar; fi

# The HTTP/3 and handshake load comes from our own generator (benchmarks/loadgen).
cargo build --release -q -p dwaar-loadgen
LOADGEN=$ROOT/target/release/dwaar-loadgen

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

# --- backend: nginx, one worker, static 200 ---------------------------------------
mkdir -p "$WORK/backend"
cat > "$WORK/backend/nginx.conf" <<NGX
worker_processes 1;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log;
events { worker_connections 10000; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:9090 backlog=4096; location / { return 200 "OK\n"; }
    location /big/ { root $WORK/backend/www; }
  }
}
NGX
# Uploads go to an origin that reads each body to its end before answering (nginx's
# `return 200` may answer first, letting a proxy skip the rest of the upload).
taskset -c $LOAD_CPUS "$LOADGEN" sink --listen 127.0.0.1:9092 & PIDS+=($!)
wait_port 9092
mkdir -p "$WORK/backend/www/big"
head -c $((10 * 1024 * 1024)) /dev/urandom > "$WORK/backend/www/big/10m"
head -c $((10 * 1024 * 1024)) /dev/urandom > "$WORK/upload.bin"
chmod -R a+rX "$WORK"
taskset -c $LOAD_CPUS nginx -c "$WORK/backend/nginx.conf" -g 'daemon off;' & PIDS+=($!)
wait_port 9090

# --- TLS material for the HTTP/2 run ------------------------------------------------------
H2=${BENCH_H2:-1}
H2_CONNS=${BENCH_H2_CONNS:-100}
H2_STREAMS=${BENCH_H2_STREAMS:-10}
mkdir -p "$WORK/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" 2>/dev/null
cat "$WORK/tls/cert.pem" "$WORK/tls/key.pem" > "$WORK/tls/combined.pem"
CERT=$WORK/tls/cert.pem KEY=$WORK/tls/key.pem

# --- proxies -------------------------------------------------------------------------
start_dwaar() {
  local log=""
  [ "$ACCESS_LOG" = 1 ] && log="log {
		output file $WORK/dwaar-access.log {
			roll_disabled
		}
	}"
  local analytics=""
  [ "$ANALYTICS" = 1 ] && analytics="analytics"
  cat > "$WORK/Dwaarfile" <<DW
{
	admin off
	grace_period 1s
	auto_https disable_redirects
	storage file_system $WORK/storage
	servers :6443 {
		protocols h1 h2 h3
	}
}
:6188 {
	$log
	$analytics
	reverse_proxy /upload 127.0.0.1:9092
	reverse_proxy 127.0.0.1:9090
}
https://:6443 {
	tls $CERT $KEY
	$log
	$analytics
	reverse_proxy /upload 127.0.0.1:9092
	reverse_proxy 127.0.0.1:9090
}
DW
  DWAAR_QUIC_GSO=${DWAAR_QUIC_GSO:-1} taskset -c $PROXY_CPUS "$DWAAR" run --config "$WORK/Dwaarfile" --threads "$(echo $PROXY_CPUS | tr ',' '\n' | wc -l)" >"$WORK/dwaar.log" 2>&1 & PIDS+=($!); echo $! > "$WORK/dwaar.pid"
  wait_port 6188
}
start_nginx() {
  mkdir -p "$WORK/nginx"
  cat > "$WORK/nginx/nginx.conf" <<NGX
worker_processes $(echo $PROXY_CPUS | tr ',' '\n' | wc -l);
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 10000; }
http {
  client_max_body_size 0;
  ssl_session_cache shared:SSL:10m;
  $( [ "$ACCESS_LOG" = 1 ] && echo "access_log $WORK/nginx/access.log combined buffer=64k flush=100ms;" || echo "access_log off;" )
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:9090; keepalive 1024; }
  upstream sink { server 127.0.0.1:9092; keepalive 1024; }
  server { listen 127.0.0.1:8080 backlog=4096;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location = /upload { proxy_pass http://sink; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:8443 ssl http2 backlog=4096;
    ssl_certificate $CERT; ssl_certificate_key $KEY;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location = /upload { proxy_pass http://sink; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
NGX
  taskset -c $PROXY_CPUS nginx -c "$WORK/nginx/nginx.conf" -g 'daemon off;' & PIDS+=($!); echo $! > "$WORK/nginx.pid"
  wait_port 8080
}
start_haproxy() {
  cat > "$WORK/haproxy.cfg" <<HAP
global
  maxconn 9000
  nbthread $(echo $PROXY_CPUS | tr ',' '\n' | wc -l)
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:8081
  use_backend sink if { path /upload }
  default_backend be
frontend fe_tls
  bind 127.0.0.1:8444 ssl crt $WORK/tls/combined.pem alpn h2,http/1.1
  use_backend sink if { path /upload }
  default_backend be
backend be
  server s1 127.0.0.1:9090 pool-max-conn 1024
backend sink
  server s2 127.0.0.1:9092 pool-max-conn 1024
HAP
  taskset -c $PROXY_CPUS haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 & PIDS+=($!); echo $! > "$WORK/haproxy.pid"
  wait_port 8081
}
start_caddy() {
  cat > "$WORK/Caddyfile" <<CAD
{
	admin off
	auto_https off
	grace_period 1s
}
:8082 {
	$( [ "$ACCESS_LOG" = 1 ] && printf 'log {\n\t\toutput file %s/caddy-access.log\n\t}' "$WORK" )
	reverse_proxy /upload 127.0.0.1:9092 {
		transport http {
			keepalive_idle_conns 1024
		}
	}
	reverse_proxy 127.0.0.1:9090 {
		transport http {
			keepalive_idle_conns 1024
		}
	}
}
https://:8445 {
	tls $CERT $KEY
	reverse_proxy /upload 127.0.0.1:9092 {
		transport http {
			keepalive_idle_conns 1024
		}
	}
	reverse_proxy 127.0.0.1:9090 {
		transport http {
			keepalive_idle_conns 1024
		}
	}
}
CAD
  GOMAXPROCS=$(echo $PROXY_CPUS | tr ',' '\n' | wc -l) taskset -c $PROXY_CPUS caddy run --config "$WORK/Caddyfile" --adapter caddyfile >"$WORK/caddy.log" 2>&1 & PIDS+=($!); echo $! > "$WORK/caddy.pid"
  wait_port 8082
}

declare -A PORT=([direct]=9090 [dwaar]=6188 [nginx]=8080 [haproxy]=8081 [caddy]=8082)
for t in $TARGETS; do [ "$t" = direct ] || "start_$t"; done

# All processes of a target: the main PID and its children.
procs() { local p; p=$(cat "$WORK/$1.pid" 2>/dev/null || echo ""); [ -n "$p" ] && { echo "$p"; pgrep -P "$p" || true; }; }
cpu_ticks() { local s=0; for p in $(procs "$1"); do [ -r /proc/$p/stat ] && s=$((s + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $s; }
peak_rss_mb() { local s=0; for p in $(procs "$1"); do [ -r /proc/$p/status ] && s=$((s + $(awk '/VmHWM/{print $2}' /proc/$p/status))); done; echo "scale=1; $s/1024" | bc; }

to_ms() { # wrk latency like 1.23ms / 850.00us / 1.02s -> ms
  awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us$/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v); print v+0} else if (v ~ /s$/) {sub(/s$/,"",v); print v*1000} else print v }'
}

HTTP1=${BENCH_HTTP1:-1}
RAW=$RESULTS/raw-$(date +%Y%m%d-%H%M%S).tsv
echo -e "round\ttarget\tconns\trps\tp50_ms\tp99_ms\tavg_ms\ttransfer\tcpu_us_per_req\terrors" > "$RAW"
for round in $(seq 1 "$ROUNDS"); do
  [ "$HTTP1" = 1 ] || break
  for c in $CONNS; do
    for t in $TARGETS; do
      before=$( [ "$t" = direct ] && echo 0 || cpu_ticks "$t")
      out=$(taskset -c $LOAD_CPUS wrk -t"$THREADS" -c"$c" -d"$DURATION" --latency ${BENCH_UA:+-H "User-Agent: $BENCH_UA"} "http://127.0.0.1:${PORT[$t]}/" 2>&1)
      after=$( [ "$t" = direct ] && echo 0 || cpu_ticks "$t")
      rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
      reqs=$(echo "$out" | awk '/requests in/{print $1}')
      p50=$(to_ms "$(echo "$out" | awk '$1=="50%"{print $2}')")
      p99=$(to_ms "$(echo "$out" | awk '$1=="99%"{print $2}')")
      avg=$(to_ms "$(echo "$out" | awk '/Latency/{print $2; exit}')")
      xfer=$(echo "$out" | awk '/Transfer\/sec/{print $2}')
      errs=$(echo "$out" | awk '/Non-2xx|Socket errors/{s=s $0 "; "} END{print s==""?"0":s}')
      cpu=$( [ "$t" = direct ] && echo "-" || echo "scale=2; ($after-$before)*1000000/$CLK/$reqs" | bc)
      echo -e "$round\t$t\t$c\t$rps\t$p50\t$p99\t$avg\t$xfer\t$cpu\t$errs" | tee -a "$RAW"
    done
  done
done

# --- medians table -------------------------------------------------------------------
python3 - "$RAW" "$WORK" $TARGETS <<'PY' | tee "$RESULTS/latest.txt"
import csv, statistics, sys, subprocess, os
raw, work, targets = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = list(csv.DictReader(open(raw), delimiter='\t'))
def med(vals):
    v = [float(x) for x in vals if x not in ('-', '')]
    return statistics.median(v) if v else float('nan')
def rss(t):
    try:
        pid = open(f"{work}/{t}.pid").read().strip()
    except OSError:
        return None
    pids = [pid] + subprocess.run(["pgrep", "-P", pid], capture_output=True, text=True).stdout.split()
    kb = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmHWM"):
                    kb += int(line.split()[1])
        except OSError:
            pass
    return kb / 1024
conns = sorted({int(r['conns']) for r in rows})
print(f"{'Proxy':<10} {'Conns':>6} {'RPS':>10} {'p50 lat':>9} {'p99 lat':>9} {'Avg lat':>9} {'Transfer':>10} {'Mem(MB)':>8} {'CPU/req':>9} {'vs nginx':>9}")
print("-" * 98)
for c in conns:
    base = med([r['cpu_us_per_req'] for r in rows if r['target'] == 'nginx' and int(r['conns']) == c])
    for t in targets:
        rs = [r for r in rows if r['target'] == t and int(r['conns']) == c]
        if not rs:
            continue
        cpu = med([r['cpu_us_per_req'] for r in rs])
        m = rss(t)
        ratio = f"{cpu/base:.2f}x" if base == base and cpu == cpu and t != 'direct' else "-"
        print(f"{t.upper() if t=='dwaar' else t:<10} {c:>6} {med([r['rps'] for r in rs]):>10.0f} {med([r['p50_ms'] for r in rs]):>7.2f}ms {med([r['p99_ms'] for r in rs]):>7.2f}ms {med([r['avg_ms'] for r in rs]):>7.2f}ms {rs[0]['transfer']:>10} {('%.1f' % m) if m else 'n/a':>8} {('%.1fus' % cpu) if cpu == cpu else '-':>9} {ratio:>9}")
errs = [r for r in rows if r['errors'] != '0']
if errs:
    print("\nerrors:", *[f"{r['target']} c={r['conns']}: {r['errors']}" for r in errs], sep="\n  ")
PY
echo "raw results: $RAW"

# --- HTTP/2 over TLS (h2load) --------------------------------------------------------
if [ "$H2" = 1 ]; then
  declare -A TLS_PORT=([dwaar]=6443 [nginx]=8443 [haproxy]=8444 [caddy]=8445)
  H2RAW=$RESULTS/raw-h2-$(date +%Y%m%d-%H%M%S).tsv
  echo -e "round\ttarget\trps\tcpu_us_per_req\tfailed" > "$H2RAW"
  secs=$(echo "$DURATION" | tr -dc '0-9')
  for round in $(seq 1 "$ROUNDS"); do
    for t in $TARGETS; do
      [ "$t" = direct ] && continue
      before=$(cpu_ticks "$t")
      out=$(taskset -c $LOAD_CPUS h2load -D "$secs" -c "$H2_CONNS" -m "$H2_STREAMS" -t 1 "https://127.0.0.1:${TLS_PORT[$t]}/" 2>&1)
      after=$(cpu_ticks "$t")
      rps=$(echo "$out" | awk '/^finished in/{print $4}')
      done_n=$(echo "$out" | awk '/^requests:/{print $8}')
      failed=$(echo "$out" | awk '/^requests:/{print $10+$12}')
      cpu=$(echo "scale=2; ($after-$before)*1000000/$CLK/${done_n:-1}" | bc)
      echo -e "$round\t$t\t$rps\t$cpu\t$failed" | tee -a "$H2RAW"
    done
  done
  python3 - "$H2RAW" $TARGETS <<'PY' | tee -a "$RESULTS/latest.txt"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter='\t'))
targets = [t for t in sys.argv[2:] if t != 'direct']
med = lambda v: statistics.median([float(x) for x in v if x]) if v else float('nan')
base = med([r['cpu_us_per_req'] for r in rows if r['target'] == 'nginx'])
print("\nHTTP/2 over TLS (h2load)")
print(f"{'Proxy':<10} {'RPS':>10} {'CPU/req':>9} {'vs nginx':>9} {'failed':>7}")
for t in targets:
    rs = [r for r in rows if r['target'] == t]
    cpu = med([r['cpu_us_per_req'] for r in rs])
    ratio = f"{cpu/base:.2f}x" if base == base else "-"
    print(f"{t:<10} {med([r['rps'] for r in rs]):>10.0f} {cpu:>8.1f}us {ratio:>9} {sum(int(float(r['failed'] or 0)) for r in rs):>7}")
PY
fi

# --- HTTP/1.1 over TLS, keep-alive (wrk) ------------------------------------------------
TLS_H1=${BENCH_TLS_H1:-1}
TLS_H1_CONNS=${BENCH_TLS_H1_CONNS:-"100 1000"}
if [ "$TLS_H1" = 1 ]; then
  declare -A TLS_PORT=([dwaar]=6443 [nginx]=8443 [haproxy]=8444 [caddy]=8445)
  T1RAW=$RESULTS/raw-tls-h1-$(date +%Y%m%d-%H%M%S).tsv
  echo -e "round\ttarget\tconns\trps\tcpu_us_per_req\terrors" > "$T1RAW"
  for round in $(seq 1 "$ROUNDS"); do
    for c in $TLS_H1_CONNS; do
      for t in $TARGETS; do
        [ "$t" = direct ] && continue
        before=$(cpu_ticks "$t")
        out=$(taskset -c $LOAD_CPUS wrk -t"$THREADS" -c"$c" -d"$DURATION" "https://127.0.0.1:${TLS_PORT[$t]}/" 2>&1)
        after=$(cpu_ticks "$t")
        rps=$(echo "$out" | awk '/^Requests\/sec/{print $2}')
        n=$(echo "$out" | awk '/requests in/{print $1}')
        errs=$(echo "$out" | awk '/Socket errors|Non-2xx/{s=s $0 ";"} END{print s==""?"0":s}')
        cpu=$(echo "scale=2; ($after-$before)*1000000/$CLK/${n:-1}" | bc)
        echo -e "$round\t$t\t$c\t$rps\t$cpu\t$errs" | tee -a "$T1RAW"
      done
    done
  done
  python3 - "$T1RAW" $TARGETS <<'PY' | tee -a "$RESULTS/latest.txt"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter='\t'))
targets = [t for t in sys.argv[2:] if t != 'direct']
med = lambda v: statistics.median([float(x) for x in v if x]) if v else float('nan')
print("\nHTTP/1.1 over TLS, keep-alive (wrk)")
print(f"{'Proxy':<10} {'Conns':>6} {'RPS':>10} {'CPU/req':>9} {'vs nginx':>9}")
for c in sorted({int(r['conns']) for r in rows}):
    base = med([r['cpu_us_per_req'] for r in rows if r['target'] == 'nginx' and int(r['conns']) == c])
    for t in targets:
        rs = [r for r in rows if r['target'] == t and int(r['conns']) == c]
        cpu = med([r['cpu_us_per_req'] for r in rs])
        ratio = f"{cpu/base:.2f}x" if base == base else "-"
        print(f"{t:<10} {c:>6} {med([r['rps'] for r in rs]):>10.0f} {cpu:>8.1f}us {ratio:>9}")
PY
fi

# --- rows measured by a (target, mode) -> (rate, CPU per unit) table ------------------
# Raw rows: round target mode rate cpu_us extra. The summary prints medians per
# (mode, target) and CPU relative to $3 (the base target) in the same mode.
summarize() {
  python3 - "$1" "$2" "$3" "$4" "$5" <<'PY' | tee -a "$RESULTS/latest.txt"
import csv, statistics, sys
raw, title, base_t, rate_name, unit = sys.argv[1:6]
rows = list(csv.DictReader(open(raw), delimiter='\t'))
med = lambda v: statistics.median([float(x) for x in v if x not in ('', '-')]) if v else float('nan')
print(f"\n{title}")
print(f"{'Mode':<22} {'Target':<10} {rate_name:>12} {'CPU/' + unit:>12} {'vs ' + base_t:>9}  notes")
modes = list(dict.fromkeys(r['mode'] for r in rows))
for m in modes:
    base = med([r['cpu_us'] for r in rows if r['mode'] == m and r['target'] == base_t])
    for t in dict.fromkeys(r['target'] for r in rows if r['mode'] == m):
        rs = [r for r in rows if r['mode'] == m and r['target'] == t]
        cpu = med([r['cpu_us'] for r in rs])
        ratio = f"{cpu/base:.2f}x" if base == base and base > 0 else "-"
        notes = "; ".join(sorted({r['extra'] for r in rs if r['extra'] not in ('', '0')}))
        print(f"{m:<22} {t:<10} {med([r['rate'] for r in rs]):>12.1f} {cpu:>10.1f}us {ratio:>9}  {notes}")
PY
}
secs=$(echo "$DURATION" | tr -dc '0-9')
declare -A TLS_PORT=([dwaar]=6443 [nginx]=8443 [haproxy]=8444 [caddy]=8445)
kv() { echo "$1" | awk -v k="$2" '$1==k{print $2}'; }

# --- TLS handshakes: full and resumed (dwaar-loadgen tls) -------------------------------
if [ "${BENCH_HANDSHAKE:-1}" = 1 ]; then
  HSRAW=$RESULTS/raw-handshake-$(date +%Y%m%d-%H%M%S).tsv
  echo -e "round\ttarget\tmode\trate\tcpu_us\textra" > "$HSRAW"
  for round in $(seq 1 "$ROUNDS"); do
    for kind in full resumed; do
      for t in $TARGETS; do
        [ "$t" = direct ] && continue
        before=$(cpu_ticks "$t")
        out=$(taskset -c $LOAD_CPUS "$LOADGEN" tls --connect "127.0.0.1:${TLS_PORT[$t]}" --host localhost \
          -c "${BENCH_HANDSHAKE_CONNS:-50}" -d "$secs" $( [ $kind = resumed ] && echo --resume ) 2>&1)
        after=$(cpu_ticks "$t")
        n=$(kv "$out" requests); resumed=$(kv "$out" resumed); failed=$(kv "$out" failed)
        cpu=$(echo "scale=2; ($after-$before)*1000000/$CLK/${n:-1}" | bc)
        echo -e "$round\t$t\thandshake-$kind\t$(kv "$out" rps)\t$cpu\tresumed $((100 * ${resumed:-0} / (${n:-0} > 0 ? n : 1)))%, failed ${failed:-?}" | tee -a "$HSRAW"
      done
    done
  done
  summarize "$HSRAW" "TLS handshake per request (dwaar-loadgen tls -c ${BENCH_HANDSHAKE_CONNS:-50})" nginx "handshakes/s" handshake
fi

# --- HTTP/3 (dwaar-loadgen h3): Dwaar (with and without GSO) and Caddy ------------------
if [ "${BENCH_H3:-1}" = 1 ]; then
  H3RAW=$RESULTS/raw-h3-$(date +%Y%m%d-%H%M%S).tsv
  echo -e "round\ttarget\tmode\trate\tcpu_us\textra" > "$H3RAW"
  h3_run() { # target port label
    before=$(cpu_ticks "$1")
    out=$(taskset -c $LOAD_CPUS "$LOADGEN" h3 --connect "127.0.0.1:$2" --host localhost \
      -c "${BENCH_H3_CONNS:-20}" -m "${BENCH_H3_STREAMS:-10}" -d "$secs" 2>&1)
    after=$(cpu_ticks "$1")
    n=$(kv "$out" requests)
    cpu=$(echo "scale=2; ($after-$before)*1000000/$CLK/${n:-1}" | bc)
    echo -e "$round\t$3\thttp3\t$(kv "$out" rps)\t$cpu\tfailed $(kv "$out" failed)" | tee -a "$H3RAW"
  }
  for round in $(seq 1 "$ROUNDS"); do
    for t in $TARGETS; do
      case $t in dwaar|caddy) h3_run "$t" "${TLS_PORT[$t]}" "$t" ;; esac
    done
    if [[ " $TARGETS " == *" dwaar "* ]]; then
      # The same Dwaar restarted without UDP segmentation offload.
      kill "$(cat "$WORK/dwaar.pid")"; while [ -d "/proc/$(cat "$WORK/dwaar.pid")" ]; do sleep 0.05; done
      DWAAR_QUIC_GSO=0 start_dwaar; sleep 0.5
      h3_run dwaar 6443 dwaar-no-gso
      kill "$(cat "$WORK/dwaar.pid")"; while [ -d "/proc/$(cat "$WORK/dwaar.pid")" ]; do sleep 0.05; done
      start_dwaar; sleep 0.5
    fi
  done
  summarize "$H3RAW" "HTTP/3 (dwaar-loadgen h3 -c ${BENCH_H3_CONNS:-20} -m ${BENCH_H3_STREAMS:-10})" dwaar "RPS" req
fi

# --- big bodies: 10 MB down and up over HTTP/1.1, TLS and HTTP/2 ------------------------
if [ "${BENCH_BODIES:-1}" = 1 ]; then
  BRAW=$RESULTS/raw-bodies-$(date +%Y%m%d-%H%M%S).tsv
  echo -e "round\ttarget\tmode\trate\tcpu_us\textra" > "$BRAW"
  BC=${BENCH_BODY_CONNS:-10}
  cat > "$WORK/upload.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/octet-stream"
local f = io.open("$WORK/upload.bin", "rb"); wrk.body = f:read("*a"); f:close()
LUA
  body_run() { # target mode url
    local t=$1 mode=$2 url=$3 n out
    before=$(cpu_ticks "$t")
    case $mode in
      *h2*) out=$(taskset -c $LOAD_CPUS h2load -D "$secs" -c "$BC" -m 1 -t 1 \
              $( [[ $mode == up* ]] && echo "-d $WORK/upload.bin" ) "$url" 2>&1)
            n=$(echo "$out" | awk '/^requests:/{print $8}') ;;
      *)    out=$(taskset -c $LOAD_CPUS wrk -t1 -c"$BC" -d"$DURATION" \
              $( [[ $mode == up* ]] && echo "-s $WORK/upload.lua" ) "$url" 2>&1)
            n=$(echo "$out" | awk '/requests in/{print $1}') ;;
    esac
    after=$(cpu_ticks "$t")
    local mb=$(( ${n:-0} * 10 ))
    local cpu=$(echo "scale=2; ($after-$before)*1000000/$CLK/(${mb}+0.0001)" | bc)
    local rate=$(echo "scale=1; $mb/$secs" | bc)
    local errs=$(echo "$out" | awk '/Socket errors|Non-2xx|^requests:/{s=s $0 ";"} END{print s}' | grep -oE 'Non-2xx[^;]*|Socket errors[^;]*|[0-9]+ failed|[0-9]+ errored' | tr '\n' ' ')
    echo -e "$round\t$t\t$mode\t$rate\t$cpu\t$errs" | tee -a "$BRAW"
  }
  for round in $(seq 1 "$ROUNDS"); do
    for mode in ${BENCH_BODY_MODES:-down-h1 down-tls-h1 down-h2 up-h1 up-tls-h1 up-h2}; do
      for t in $TARGETS; do
        [ "$t" = direct ] && continue
        path=$( [[ $mode == up* ]] && echo /upload || echo /big/10m )
        case $mode in
          *-h1) [[ $mode == *tls* ]] && url="https://127.0.0.1:${TLS_PORT[$t]}$path" || url="http://127.0.0.1:${PORT[$t]}$path" ;;
          *) url="https://127.0.0.1:${TLS_PORT[$t]}$path" ;;
        esac
        body_run "$t" "$mode" "$url"
      done
    done
  done
  summarize "$BRAW" "10 MB bodies (c=$BC): rate in MB/s, CPU per MB" nginx "MB/s" MB
fi

# --- static files and the memory table (their own scripts, after the proxies stop) -------
if [ "${BENCH_FILES:-1}" = 1 ] || [ "${BENCH_MEMORY:-1}" = 1 ]; then
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  export DWAAR_BIN="$DWAAR"
  if [ "${BENCH_FILES:-1}" = 1 ]; then
    echo -e "\nStatic files (benchmarks/files-benchmark.sh)" | tee -a "$RESULTS/latest.txt"
    BENCH_DURATION=$DURATION BENCH_ROUNDS=$ROUNDS benchmarks/files-benchmark.sh 2>/dev/null | tee -a "$RESULTS/latest.txt"
  fi
  if [ "${BENCH_MEMORY:-1}" = 1 ]; then
    echo -e "\nMemory (benchmarks/memory.sh)" | tee -a "$RESULTS/latest.txt"
    benchmarks/memory.sh 2>/dev/null | tee -a "$RESULTS/latest.txt"
  fi
fi

# --- the run's record: <date>-<host>.md (machine, command, tables) and .json (medians) --
STAMP=$RESULTS/$(date +%F)-$(hostname -s)
{
  echo "# Benchmark run $(date -u '+%F %H:%M UTC') on $(hostname -s)"
  echo
  echo "- machine: $(nproc) CPUs ($(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/{printf "%.0f GB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
  echo "- dwaar: $DWAAR"
  echo "- command: BENCH_DURATION=$DURATION BENCH_THREADS=$THREADS BENCH_CONNECTIONS=\"$CONNS\" BENCH_ROUNDS=$ROUNDS BENCH_TARGETS=\"$TARGETS\" LAYOUT=$LAYOUT BENCH_ACCESS_LOG=$ACCESS_LOG BENCH_ANALYTICS=$ANALYTICS BENCH_H2=$H2 benchmarks/run-benchmark.sh"
  echo "- layout: proxy on CPU(s) $PROXY_CPUS, backend and load generator on CPU(s) $LOAD_CPUS"
  echo
  echo '```'
  cat "$RESULTS/latest.txt"
  echo '```'
} > "$STAMP.md"
python3 - "$RAW" "${H2RAW:-}" > "$STAMP.json" <<'PY'
import csv, json, statistics, sys
def med(v):
    v = [float(x) for x in v if x not in ('-', '')]
    return statistics.median(v) if v else None
def table(path, keys):
    rows = list(csv.DictReader(open(path), delimiter='\t'))
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        entry = dict(zip(keys, key))
        for f in rs[0]:
            if f not in keys and f not in ('round', 'errors', 'transfer', 'failed'):
                entry[f] = med([r[f] for r in rs])
        out.append(entry)
    return out
result = {"http1": table(sys.argv[1], ["target", "conns"])}
if sys.argv[2]:
    result["h2_tls"] = table(sys.argv[2], ["target"])
print(json.dumps(result, indent=1))
PY
echo "run record: $STAMP.md, $STAMP.json"
