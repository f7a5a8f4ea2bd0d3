#!/usr/bin/env bash
# Layer-4 (TCP) relay benchmark: iperf3 through Dwaar's `layer4` proxy and through nginx's
# `stream` proxy_pass, each with one worker on core 1; iperf3's client and server run on
# core 0. Both directions are measured (client to server, and `-R`, server to client).
# Reported per proxy: throughput (Gbit/s, iperf3's receiver side) and CPU per GB relayed
# (user+sys ticks of the proxy's processes over the run / bytes), the median of
# BENCH_ROUNDS interleaved rounds.
#
# Env: BENCH_SECONDS (10) BENCH_ROUNDS (3) DWAAR_BIN (unset: build target/release/dwaar)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-3}
WORK=$(mktemp -d /tmp/dwaar-l4-bench.XXXXXX)
CLK=$(getconf CLK_TCK)

BOOTSTRAP_BENCH=1 scripts/bootstrap
for tool in iperf3 nginx taskset; do
	command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
[ -f "$STREAM_MODULE" ] || { echo "nginx's stream module is required (libnginx-mod-stream)" >&2; exit 1; }
if [ -n "${DWAAR_BIN:-}" ]; then DWAAR=$DWAAR_BIN; else cargo build --release -q -p dwaar-cli; DWAAR=$ROOT/target/release/dwaar; fi

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

# CPU ticks (user+sys) of a process and its children.
ticks() {
	local total=0 p
	for p in $1 $(pgrep -P "$1" || true); do
		[ -r "/proc/$p/stat" ] || continue
		total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
	done
	echo "$total"
}

taskset -c 0 iperf3 -s -p 5301 >/dev/null 2>&1 & PIDS+=($!)

cat > "$WORK/Dwaarfile" <<EOF
{
	admin off
	layer4 {
		127.0.0.1:5302 {
			route {
				proxy 127.0.0.1:5301
			}
		}
	}
}
EOF
taskset -c 1 "$DWAAR" run --config "$WORK/Dwaarfile" --threads 1 >"$WORK/dwaar.log" 2>&1 & PIDS+=($!); DWAAR_PID=$!

mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<EOF
load_module $STREAM_MODULE;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 1024; }
stream {
  server { listen 127.0.0.1:5303; proxy_pass 127.0.0.1:5301; }
}
EOF
taskset -c 1 nginx -c "$WORK/nginx/nginx.conf" -g 'daemon off;' & PIDS+=($!); NGINX_PID=$!
wait_port 5301; wait_port 5302; wait_port 5303

# One run: prints "<Gbit/s> <CPU seconds per GB>".
measure() { # pid port extra-args
	local before after out bytes secs
	before=$(ticks "$1")
	out=$(taskset -c 0 iperf3 -c 127.0.0.1 -p "$2" -t "$SECONDS_PER_RUN" -J $3)
	after=$(ticks "$1")
	bytes=$(echo "$out" | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["end"]["sum_received"]["bytes"]))')
	secs=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["seconds"])')
	python3 -c "b=$bytes; print(f'{b*8/$secs/1e9:.2f} {($after-$before)/$CLK/(b/1e9):.4f}')"
}

median() { sort -n | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }

printf '%-8s %-10s %12s %16s\n' proxy direction Gbit/s "CPU s/GB"
for dir in upload download; do
	extra=""; [ "$dir" = download ] && extra="-R"
	for name in dwaar nginx; do : > "$WORK/$name.$dir"; done
	for _ in $(seq 1 "$ROUNDS"); do
		measure "$DWAAR_PID" 5302 "$extra" >> "$WORK/dwaar.$dir"
		measure "$NGINX_PID" 5303 "$extra" >> "$WORK/nginx.$dir"
	done
	for name in dwaar nginx; do
		gbps=$(awk '{print $1}' "$WORK/$name.$dir" | median)
		cpu=$(awk '{print $2}' "$WORK/$name.$dir" | median)
		printf '%-8s %-10s %12s %16s\n' "$name" "$dir" "$gbps" "$cpu"
	done
done
