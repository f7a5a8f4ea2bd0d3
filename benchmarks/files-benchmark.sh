#!/usr/bin/env bash
# Static-file benchmark: Dwaar's file_server against nginx and Caddy serving the same
# directory on the same core.
#
# Files: small.html (1 KiB, the typical hot asset), medium.bin (1 MB) and big.bin (10 MB). Each server has
# one worker on core 1 (LAYOUT=split, default) with access logs off; wrk runs on core 0.
# Small file: wrk with BENCH_CONNECTIONS (100) connections; big file: BENCH_BIG_CONNECTIONS
# (10). Targets are interleaved for BENCH_ROUNDS rounds and the median is reported, with
# each server's CPU time per request (user+sys ticks of all its processes / requests).
#
# Env: BENCH_DURATION (15s) BENCH_ROUNDS (3) BENCH_CONNECTIONS (100)
#      BENCH_BIG_CONNECTIONS (10) DWAAR_BIN (unset: build target/release/dwaar)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${BENCH_DURATION:-15s}
ROUNDS=${BENCH_ROUNDS:-3}
CONNS=${BENCH_CONNECTIONS:-100}
BIG_CONNS=${BENCH_BIG_CONNECTIONS:-10}
LAYOUT=${LAYOUT:-split}
WORK=$(mktemp -d /tmp/dwaar-files-bench.XXXXXX)
RESULTS=$ROOT/benchmarks/results
mkdir -p "$RESULTS"
CLK=$(getconf CLK_TCK)
if [ "$LAYOUT" = split ]; then SRV_CPUS=1; LOAD_CPUS=0; else SRV_CPUS=0,1; LOAD_CPUS=0,1; fi

BOOTSTRAP_BENCH=1 scripts/bootstrap
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ -n "${DWAAR_BIN:-}" ]; then DWAAR=$DWAAR_BIN; else cargo build --release -q -p dwaar-cli; DWAAR=$ROOT/target/release/dwaar; fi

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

SITE=$WORK/site
mkdir -p "$SITE"
head -c 1024 /dev/urandom | base64 -w0 | head -c 1024 > "$SITE/small.html"
head -c $((1024 * 1024)) /dev/urandom > "$SITE/medium.bin"
head -c $((10 * 1024 * 1024)) /dev/urandom > "$SITE/big.bin"
# nginx workers run as an unprivileged user: the tree must be world-readable.
chmod 755 "$WORK" "$SITE"; chmod 644 "$SITE"/*

# --- servers -------------------------------------------------------------------------
cat > "$WORK/Dwaarfile" <<EOF
{
	admin off
}
:8190 {
	root * $SITE
	file_server
}
EOF
taskset -c $SRV_CPUS "$DWAAR" run --config "$WORK/Dwaarfile" --threads 1 >"$WORK/dwaar.log" 2>&1 & PIDS+=($!); DWAAR_PID=$!

mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 10000; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  open_file_cache max=1000 inactive=60s;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  server { listen 127.0.0.1:8191 backlog=4096; root $SITE; }
}
EOF
taskset -c $SRV_CPUS nginx -c "$WORK/nginx/nginx.conf" -g 'daemon off;' & PIDS+=($!); NGINX_PID=$!

cat > "$WORK/Caddyfile" <<EOF
{
	admin off
	auto_https off
}
:8192 {
	root * $SITE
	file_server
}
EOF
GOMAXPROCS=1 taskset -c $SRV_CPUS caddy run --config "$WORK/Caddyfile" --adapter caddyfile >"$WORK/caddy.log" 2>&1 & PIDS+=($!); CADDY_PID=$!
for p in 8190 8191 8192; do wait_port $p; done
# Every server must really serve the files (a 403 would benchmark nothing).
for p in 8190 8191 8192; do
	for f in small.html medium.bin big.bin; do
		code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p/$f")
		[ "$code" = 200 ] || { echo "port $p /$f answered $code" >&2; exit 1; }
	done
done

ticks() { # user+sys ticks of a process and its children threads
	local t=0
	for pid in $(pgrep -P "$1") "$1"; do
		[ -r /proc/$pid/stat ] || continue
		t=$((t + $(awk '{print $14+$15}' /proc/$pid/stat)))
	done
	echo $t
}

run_one() { # name port path conns -> "rps mbps cpu_us_per_req"
	local name=$1 port=$2 path=$3 conns=$4 pid
	case $name in dwaar) pid=$DWAAR_PID ;; nginx) pid=$NGINX_PID ;; caddy) pid=$CADDY_PID ;; esac
	local t0 t1 out reqs rps mb
	t0=$(ticks "$pid")
	out=$(taskset -c $LOAD_CPUS wrk -t1 -c"$conns" -d"$DURATION" --latency "http://127.0.0.1:$port/$path" 2>&1)
	t1=$(ticks "$pid")
	reqs=$(echo "$out" | awk '/requests in/ {print $1}')
	rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
	mb=$(echo "$out" | awk '/Transfer\/sec/ {v=$2; if (v ~ /GB/) {sub("GB","",v); v*=1024} else if (v ~ /MB/) {sub("MB","",v)} else if (v ~ /KB/) {sub("KB","",v); v/=1024}; print v}')
	local cpu
	cpu=$(echo "$t0 $t1 $reqs $CLK" | awk '{ if ($3>0) printf "%.1f", ($2-$1)/$4*1e6/$3; else print "nan" }')
	echo "$rps $mb $cpu"
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

declare -A R
for round in $(seq 1 "$ROUNDS"); do
	for t in dwaar nginx caddy; do
		case $t in dwaar) port=8190 ;; nginx) port=8191 ;; caddy) port=8192 ;; esac
		R[$t,small,$round]=$(run_one $t $port small.html "$CONNS")
		R[$t,medium,$round]=$(run_one $t $port medium.bin "$BIG_CONNS")
		R[$t,big,$round]=$(run_one $t $port big.bin "$BIG_CONNS")
		echo "round $round $t small: ${R[$t,small,$round]} medium: ${R[$t,medium,$round]} big: ${R[$t,big,$round]}" >&2
	done
done

DATE=$(date -u +%Y-%m-%d)
HOST=$(hostname)
OUT=$RESULTS/$DATE-$HOST-files.md
{
	echo "# Static files, $DATE on $HOST ($(nproc) cores, layout $LAYOUT, $ROUNDS rounds of $DURATION, medians)"
	echo
	echo "| Server | small.html RPS (c=$CONNS) | CPU µs/req | medium.bin (1 MB) RPS (c=$BIG_CONNS) | CPU µs/req | big.bin MB/s (c=$BIG_CONNS) | CPU µs/req |"
	echo "|---|---|---|---|---|---|---|"
	for t in dwaar nginx caddy; do
		sr=$(for r in $(seq 1 "$ROUNDS"); do echo "${R[$t,small,$r]}" | awk '{print $1}'; done | median)
		sc=$(for r in $(seq 1 "$ROUNDS"); do echo "${R[$t,small,$r]}" | awk '{print $3}'; done | median)
		mr=$(for r in $(seq 1 "$ROUNDS"); do echo "${R[$t,medium,$r]}" | awk '{print $1}'; done | median)
		mc=$(for r in $(seq 1 "$ROUNDS"); do echo "${R[$t,medium,$r]}" | awk '{print $3}'; done | median)
		bm=$(for r in $(seq 1 "$ROUNDS"); do echo "${R[$t,big,$r]}" | awk '{print $2}'; done | median)
		bc=$(for r in $(seq 1 "$ROUNDS"); do echo "${R[$t,big,$r]}" | awk '{print $3}'; done | median)
		echo "| $t | $sr | $sc | $mr | $mc | $bm | $bc |"
	done
} | tee "$OUT"
