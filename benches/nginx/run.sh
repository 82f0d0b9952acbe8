#!/usr/bin/env bash
# Sluice vs nginx as HTTP/1.1 reverse proxies, one worker each, keep-alive on both sides,
# in front of the same backend (nginx answering a static 64-byte body).
#
#   benches/nginx/run.sh            # 3 rounds A B A B A B, 10 s each, 64 connections
#   ROUNDS=5 DURATION=20s CONNS=64 benches/nginx/run.sh
#
# Both proxies add X-Forwarded-For/-Proto and pass Host, i.e. do the same work. With 2+ CPUs
# the proxy under test is pinned to CPU $PROXY_CPU and wrk + backend to $LOAD_CPUS, so each
# proxy gets one core of its own. Prints medians of req/s, p99 latency and the proxy's CPU time
# per request (user+system, from /proc: the figure least disturbed by other load on the machine)
# and the ratios.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
BACKEND_PORT=${BACKEND_PORT:-18080}
NGINX_PORT=${NGINX_PORT:-18081}
SLUICE_PORT=${SLUICE_PORT:-18082}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need wrk; then
    echo "installing nginx and wrk from Debian" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk >/dev/null
fi
NGINX=$(command -v nginx)

# Benchmark processes run at a higher priority (NICE, default -10 when root) so that other work
# on the machine disturbs both proxies less; both get the same treatment.
NICE=${NICE:-$([ "$(id -u)" = 0 ] && echo -10 || echo 0)}
prio=(nice -n "$NICE")
NCPU=$(nproc)
if [ "$NCPU" -ge 2 ]; then
    PROXY_CPU=${PROXY_CPU:-1}
    LOAD_CPUS=${LOAD_CPUS:-0}
    pin_proxy=("${prio[@]}" taskset -c "$PROXY_CPU")
    pin_load=("${prio[@]}" taskset -c "$LOAD_CPUS")
else
    pin_proxy=("${prio[@]}")
    pin_load=("${prio[@]}")
fi

echo "building the serve example (release)" >&2
cargo build --release -q -p sluice-proxy --example serve --manifest-path "$ROOT/Cargo.toml"
SERVE="$CARGO_TARGET_DIR/release/examples/serve"

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

BODY=$(printf 'x%.0s' $(seq 1 63))   # 63 bytes + newline = 64-byte body
cat >"$TMP/backend.conf" <<EOF
worker_processes 1;
pid $TMP/backend.pid;
error_log $TMP/backend.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$BACKEND_PORT backlog=4096;
        default_type text/plain;
        location / { return 200 "$BODY\n"; }
    }
}
EOF
cat >"$TMP/proxy.conf" <<EOF
worker_processes 1;
pid $TMP/proxy.pid;
error_log $TMP/proxy.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 256;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
EOF
cat >"$TMP/snapshot.json" <<EOF
{
  "version": 1,
  "listeners": [{
    "name": "tcp:127.0.0.1:$SLUICE_PORT", "address": "127.0.0.1", "port": $SLUICE_PORT,
    "protocol": "HTTP",
    "virtualHosts": [{ "hostname": "*", "routes": [{
      "id": { "route": { "kind": "HTTPRoute", "namespace": "bench", "name": "backend" }, "rule": 0 },
      "match": { "path": { "prefix": "/" } },
      "backends": [{ "weight": 1, "cluster": "bench/backend:80" }]
    }]}]
  }],
  "clusters": [{ "name": "bench/backend:80",
                 "endpoints": [{ "address": "127.0.0.1", "port": $BACKEND_PORT }] }]
}
EOF

"${pin_load[@]}" "$NGINX" -c "$TMP/backend.conf" -g 'daemon off;' &
PIDS+=($!)
"${pin_proxy[@]}" "$NGINX" -c "$TMP/proxy.conf" -g 'daemon off;' &
NGINX_MASTER=$!
PIDS+=($NGINX_MASTER)
RUST_LOG=warn "${pin_proxy[@]}" "$SERVE" "$TMP/snapshot.json" --workers 1 &
SLUICE_PID=$!
PIDS+=($SLUICE_PID)

for port in $BACKEND_PORT $NGINX_PORT $SLUICE_PORT; do
    for _ in $(seq 1 100); do
        curl -fs -o /dev/null "http://127.0.0.1:$port/" && break
        sleep 0.1
    done
    curl -fs -o /dev/null "http://127.0.0.1:$port/" || { echo "port $port not serving" >&2; exit 1; }
done

NGINX_WORKER=$(pgrep -P "$NGINX_MASTER" | head -1)
TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# run_wrk PORT PID -> "req_per_s p99_ms cpu_us_per_request"
run_wrk() {
    local t0 t1
    t0=$(cpu_ticks "$2")
    "${pin_load[@]}" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$1/" >"$TMP/wrk.out"
    t1=$(cpu_ticks "$2")
    awk -v dt=$((t1 - t0)) -v tck="$TCK" '
        /requests in/ { n = $1 }
        /Requests\/sec:/ { rps = $2 }
        $1 == "99%" {
            v = $2
            if (v ~ /us$/) { sub(/us$/, "", v); ms = v / 1000 }
            else if (v ~ /ms$/) { sub(/ms$/, "", v); ms = v }
            else if (v ~ /s$/) { sub(/s$/, "", v); ms = v * 1000 }
        }
        END { printf "%s %s %.2f\n", rps, ms, dt / tck * 1e6 / n }' "$TMP/wrk.out"
}

echo "warm-up" >&2
wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$NGINX_PORT/" >/dev/null
wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$SLUICE_PORT/" >/dev/null

: >"$TMP/nginx.txt"
: >"$TMP/sluice.txt"
for r in $(seq 1 "$ROUNDS"); do
    a=$(run_wrk "$NGINX_PORT" "$NGINX_WORKER")
    echo "$a" >>"$TMP/nginx.txt"
    b=$(run_wrk "$SLUICE_PORT" "$SLUICE_PID")
    echo "$b" >>"$TMP/sluice.txt"
    echo "round $r: nginx $a | sluice $b   (req/s p99_ms cpu_us/req)" >&2
done

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
n_rps=$(cut -d' ' -f1 "$TMP/nginx.txt" | median)
n_p99=$(cut -d' ' -f2 "$TMP/nginx.txt" | median)
s_rps=$(cut -d' ' -f1 "$TMP/sluice.txt" | median)
s_p99=$(cut -d' ' -f2 "$TMP/sluice.txt" | median)
n_cpu=$(cut -d' ' -f3 "$TMP/nginx.txt" | median)
s_cpu=$(cut -d' ' -f3 "$TMP/sluice.txt" | median)
echo
echo "HTTP/1.1 keep-alive, 64-byte body, 1 proxy worker, $CONNS connections, $ROUNDS x $DURATION, medians"
printf '%-8s %12s %10s %14s\n' proxy req/s p99_ms cpu_us/req
printf '%-8s %12s %10s %14s\n' nginx "$n_rps" "$n_p99" "$n_cpu"
printf '%-8s %12s %10s %14s\n' sluice "$s_rps" "$s_p99" "$s_cpu"
awk -v s="$s_rps" -v n="$n_rps" -v sp="$s_p99" -v np="$n_p99" -v sc="$s_cpu" -v nc="$n_cpu" \
    'BEGIN { printf "ratio sluice/nginx: req/s %.3f, p99 %.3f, cpu/req %.3f\n", s / n, sp / np, sc / nc }'
