#!/usr/bin/env bash
# The cache, end to end, on local processes:
#  1. soak: wrk streams CACHE_SOAK_URLS (1,000,000) distinct cacheable URLs through dwaar
#     with `cache { max_size 64mb }`; resident memory is sampled every second and the
#     peak reported next to the cache's own count of entries and bytes.
#  2. hits: wrk against one cached URL through dwaar and through nginx with
#     `proxy_cache` (one worker each, pinned to core 1; wrk and the origin on core 0),
#     BENCH_DURATION (10s) each, BENCH_ROUNDS (2) rounds, CPU time per request from /proc.
# Env: CACHE_SOAK_URLS, CACHE_SIZE (64mb), BENCH_DURATION, BENCH_ROUNDS, DWAAR_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
URLS=${CACHE_SOAK_URLS:-1000000}
SIZE=${CACHE_SIZE:-64mb}
DURATION=${BENCH_DURATION:-10s}
ROUNDS=${BENCH_ROUNDS:-2}
WORK=$(mktemp -d /tmp/dwaar-cache.XXXXXX)
CLK=$(getconf CLK_TCK)
BOOTSTRAP_BENCH=1 scripts/bootstrap
if [ -n "${DWAAR_BIN:-}" ]; then DWAAR=$DWAAR_BIN; else cargo build --release -q -p dwaar-cli; DWAAR=$ROOT/target/release/dwaar; fi
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }

# Origin: 1 KiB cacheable answers for any path.
BODY=$(head -c 1024 /dev/zero | tr '\0' 'x')
# nginx_conf NAME: one-worker nginx config with logs off; the http block's body on stdin.
nginx_conf() {
  { printf 'worker_processes 1;\npid %s/%s.pid;\nerror_log %s/%s-error.log;\n' "$WORK" "$1" "$WORK" "$1"
    printf 'events { worker_connections 10000; }\nhttp {\n  access_log off;\n  keepalive_requests 1000000;\n'
    cat
    printf '}\n'; } > "$WORK/$1.conf"
}
nginx_conf origin <<NGX
  server { listen 127.0.0.1:19400 backlog=4096;
    location / { add_header Cache-Control "max-age=600"; return 200 "$BODY"; } }
NGX
taskset -c 0 nginx -c "$WORK/origin.conf" -g 'daemon off;' & PIDS+=($!)
wait_port 19400

cat > "$WORK/Dwaarfile" <<DW
{
	admin 127.0.0.1:19402
	grace_period 1s
}
:19401 {
	cache {
		max_size $SIZE
	}
	reverse_proxy 127.0.0.1:19400
}
DW
taskset -c 1 "$DWAAR" run --config "$WORK/Dwaarfile" --threads 1 >"$WORK/dwaar.log" 2>&1 & DPID=$!; PIDS+=($DPID)
wait_port 19401

# --- 1. soak --------------------------------------------------------------------
cat > "$WORK/distinct.lua" <<'LUA'
local counter = 0
local limit = tonumber(os.getenv("URLS"))
request = function()
  counter = counter + 1
  if counter > limit then counter = 1 end
  return wrk.format("GET", "/item/" .. counter .. "/" .. math.random(1, 1000000000))
end
LUA
rss() { awk '/VmRSS/{print $2}' /proc/$DPID/status; }
idle=$(rss)
peak=0
( while kill -0 $DPID 2>/dev/null; do r=$(rss); echo "$r"; sleep 1; done ) > "$WORK/rss.txt" & SAMPLER=$!
# wrk's Lua counter is per thread: one thread, enough time for URLS requests.
URLS=$URLS taskset -c 0 wrk -t1 -c50 -d60s -s "$WORK/distinct.lua" http://127.0.0.1:19401/ > "$WORK/soak.txt" 2>&1 || true
kill $SAMPLER 2>/dev/null || true
peak=$(sort -n "$WORK/rss.txt" | tail -1)
served=$(awk '/requests in/{print $1}' "$WORK/soak.txt")
stats=$(curl -s http://127.0.0.1:19402/cache/stats)
echo "soak: $served requests of distinct URLs, cache max_size $SIZE"
echo "  RSS idle ${idle} kB, peak ${peak} kB, after $(rss) kB"
echo "  cache stats: $stats"

# --- 2. hits: dwaar vs nginx proxy_cache -------------------------------------------
# nginx's workers (user nobody when started as root) must reach the cache directory.
mkdir -p "$WORK/nginx-cache"
chmod 755 "$WORK"
chmod 777 "$WORK/nginx-cache"
nginx_conf proxy <<NGX
  proxy_cache_path $WORK/nginx-cache keys_zone=c:64m max_size=64m;
  proxy_cache_valid 200 10m;
  upstream o { server 127.0.0.1:19400; keepalive 64; }
  server { listen 127.0.0.1:19403 backlog=4096;
    location / { proxy_cache c; proxy_http_version 1.1; proxy_set_header Connection "";
      add_header X-Cache \$upstream_cache_status; proxy_pass http://o; } }
NGX
taskset -c 1 nginx -c "$WORK/proxy.conf" -g 'daemon off;' & NPID=$!; PIDS+=($NPID)
wait_port 19403
curl -s -o /dev/null http://127.0.0.1:19401/hot; curl -s -o /dev/null http://127.0.0.1:19403/hot
echo "hit check: dwaar $(curl -s -D- -o /dev/null http://127.0.0.1:19401/hot | grep -i x-cache | tr -d '\r'), nginx $(curl -s -D- -o /dev/null http://127.0.0.1:19403/hot | grep -i x-cache | tr -d '\r')"
cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
printf "%-8s %10s %10s %10s %10s\n" target RPS p50 p99 CPU/req
for round in $(seq 1 "$ROUNDS"); do
  for t in dwaar nginx; do
    if [ $t = dwaar ]; then port=19401; pids="$DPID"; else port=19403; pids="$NPID $(pgrep -P $NPID | tr '\n' ' ')"; fi
    before=$(cpu_ticks $pids)
    out=$(taskset -c 0 wrk -t2 -c100 -d"$DURATION" --latency http://127.0.0.1:$port/hot 2>&1)
    after=$(cpu_ticks $pids)
    reqs=$(echo "$out" | awk '/requests in/{print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
    p50=$(echo "$out" | awk '$1=="50%"{print $2}')
    p99=$(echo "$out" | awk '$1=="99%"{print $2}')
    cpu=$(python3 -c "print('%.1fus' % (($after-$before)/$CLK*1e6/$reqs))")
    printf "%-8s %10s %10s %10s %10s\n" "$t" "$rps" "$p50" "$p99" "$cpu"
  done
done
