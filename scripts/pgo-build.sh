#!/usr/bin/env bash
# Profile-guided build of dwaar: instrumented build, a workload, profile merge, optimised
# build. The result is target/pgo/release/dwaar (the normal target/ is left alone).
#
# Env: PROFILE_DIR (/tmp/dwaar-pgo)   where raw and merged profiles go
#      PGO_DURATION (20s)             how long the default workload runs
#      PGO_WORKLOAD (unset)           a script to run instead of the default workload; it
#                                     gets STRESS_TARGET=127.0.0.1:PORT of the running dwaar
#      DWAAR_CONFIG (unset)           the Dwaarfile to profile with; by default a site that
#                                     proxies to a local nginx and answers one path itself,
#                                     plus the same proxy over TLS, driven with HTTP/2
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE_DIR=${PROFILE_DIR:-/tmp/dwaar-pgo}
DURATION=${PGO_DURATION:-20s}
WORK=$(mktemp -d /tmp/dwaar-pgo-work.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

BOOTSTRAP_BENCH=1 scripts/bootstrap
rustup component add llvm-tools >/dev/null 2>&1
PROFDATA=$(find "$(rustc --print sysroot)" -name llvm-profdata -type f | head -1)
[ -x "$PROFDATA" ] || { echo "llvm-profdata not found (rustup component add llvm-tools)"; exit 1; }

rm -rf "$PROFILE_DIR"; mkdir -p "$PROFILE_DIR"
echo "== instrumented build"
RUSTFLAGS="-Cprofile-generate=$PROFILE_DIR" cargo build --release -q -p dwaar-cli --target-dir target/pgo-gen

echo "== workload"
PORT=16199
cat > "$WORK/backend.conf" <<NGX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:19199; location / { return 200 "OK\n"; } } }
NGX
nginx -c "$WORK/backend.conf" -g 'daemon off;' & PIDS+=($!)
CONFIG=${DWAAR_CONFIG:-$WORK/Dwaarfile}
TLS_PORT=16198
if [ -z "${DWAAR_CONFIG:-}" ]; then
  # HTTP/2 over TLS is profiled too: a self-signed certificate for the TLS site.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -subj /CN=localhost 2>/dev/null
  cat > "$CONFIG" <<DW
{
	admin off
	grace_period 1s
	auto_https disable_redirects
}
:$PORT {
	header X-Profiled yes
	respond /local "local answer"
	reverse_proxy 127.0.0.1:19199
}
https://:$TLS_PORT {
	tls $WORK/cert.pem $WORK/key.pem
	reverse_proxy 127.0.0.1:19199
}
DW
fi
target/pgo-gen/release/dwaar run --config "$CONFIG" & DWAAR_PID=$!
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
if [ -n "${PGO_WORKLOAD:-}" ]; then
  STRESS_TARGET=127.0.0.1:$PORT "$PGO_WORKLOAD"
else
  wrk -t2 -c100 -d"$DURATION" "http://127.0.0.1:$PORT/" >/dev/null
  wrk -t1 -c20 -d5s "http://127.0.0.1:$PORT/local" >/dev/null
  h2load -D 5 -c 20 -m 10 -t 1 "https://127.0.0.1:$TLS_PORT/" >/dev/null
fi
# A graceful stop writes the profile.
kill -TERM "$DWAAR_PID"; wait "$DWAAR_PID" || true

echo "== merge"
"$PROFDATA" merge -o "$PROFILE_DIR/merged.profdata" "$PROFILE_DIR"/*.profraw

echo "== optimised build"
RUSTFLAGS="-Cprofile-use=$PROFILE_DIR/merged.profdata" cargo build --release -q -p dwaar-cli --target-dir target/pgo
echo "PGO binary: $PWD/target/pgo/release/dwaar"
