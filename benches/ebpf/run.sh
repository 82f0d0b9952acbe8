#!/usr/bin/env bash
# Sluice eBPF datapath benchmark: socket-LB vs iptables DNAT vs direct, tc NodePort vs
# iptables DNAT, sockmap vs plain loopback TCP. Runs on this machine only, in network
# namespaces it creates (a node, a client on a bridged LAN, one pod) and a child cgroup; removes
# everything on exit. Needs root, the kernel object (`cargo xtask ebpf`), iptables, nginx, wrk.
#
#   benches/ebpf/run.sh [ROUNDS] [SECONDS]     (defaults: 5 rounds of 3 s per variant)
#
# Env: ONLY=REGEX (variants to run), DATAPATH_ARGS (extra datapath example flags), VERBOSE=1.
# Variants run alternately within each round; the report gives per-variant medians over rounds
# and the ratios. Load tools: the `probe` example (connect+request, ping-pong) and wrk (HTTP with
# `Connection: close`, i.e. one connection per request, against nginx).
set -euo pipefail

ROUNDS=${1:-5}
SECS=${2:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
ID=slb$$
NODE=$ID-node CLIENT=$ID-client LAN=$ID-lan POD=$ID-pod
CG=/sys/fs/cgroup/unified/sluice-bench-$ID
[ -d /sys/fs/cgroup/unified ] || CG=/sys/fs/cgroup/sluice-bench-$ID
PIN=/sys/fs/bpf/sluice-bench-$ID
WORK=$(mktemp -d)
OUT=${OUT:-$ROOT/benches/results/raw/ebpf-$(date +%Y%m%d-%H%M%S).txt}
PIDS=()

[ "$(id -u)" = 0 ] || { echo "SKIPPED: the eBPF benchmark needs root"; exit 0; }
OBJ=${SLUICE_EBPF_OBJECT:-$ROOT/target/bpf/sluice.bpf.o}
[ -f "$OBJ" ] || { echo "SKIPPED: $OBJ missing; run cargo xtask ebpf"; exit 0; }
for t in iptables nginx wrk python3; do
  command -v $t >/dev/null || { echo "SKIPPED: $t missing (apt-get install -y iptables nginx wrk)"; exit 0; }
done

cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$PIN"                      # releasing the pins detaches the programs
  for ns in $NODE $CLIENT $LAN $POD; do ip netns del $ns 2>/dev/null; done
  for _ in $(seq 20); do rmdir "$CG" 2>/dev/null && break; sleep 0.1; done
  rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --quiet --release -p sluice-ebpf-loader --examples
PROBE=$CARGO_TARGET_DIR/release/examples/probe
DATAPATH=$CARGO_TARGET_DIR/release/examples/datapath

# Topology: client (10.99.0.2) --LAN-- node eth0 (10.99.0.1) --pod1-- pod (10.98.1.2).
for ns in $NODE $CLIENT $LAN $POD; do ip netns add $ns; ip -n $ns link set lo up; done
ip -n $LAN link add br0 type bridge; ip -n $LAN link set br0 up
for pair in "$NODE pn 10.99.0.1" "$CLIENT pc 10.99.0.2"; do
  set -- $pair
  ip -n $1 link add eth0 type veth peer name $2 netns $LAN
  ip -n $LAN link set $2 master br0 up
  ip -n $1 addr add $3/24 dev eth0; ip -n $1 link set eth0 up
done
ip -n $NODE link add pod1 type veth peer name eth0 netns $POD
ip -n $NODE addr add 10.98.1.1/24 dev pod1; ip -n $NODE link set pod1 up
ip -n $POD addr add 10.98.1.2/24 dev eth0; ip -n $POD link set eth0 up
ip -n $POD route add default via 10.98.1.1
ip -n $CLIENT route add 10.98.0.0/16 via 10.99.0.1
# A default route, as a real node has: iptables' OUTPUT DNAT needs the VIP to be routable.
ip -n $NODE route add default via 10.99.0.2
for ns in $NODE $CLIENT; do
  ip netns exec $ns sysctl -qw net.ipv4.ip_local_port_range="10000 60999" net.ipv4.tcp_tw_reuse=1
done
ip netns exec $NODE sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
  net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0
mkdir -p "$CG"

# Backends in the pod: the probe's line server on 8080, nginx on 8081.
ip netns exec $POD "$PROBE" serve --id pod --tcp 0.0.0.0:8080 >/dev/null & PIDS+=($!)
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx/pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx;
  fastcgi_temp_path $WORK/nginx; uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  server { listen 8081; location / { return 200 "ok\n"; } }
}
EOF
ip netns exec $POD nginx -c "$WORK/nginx/nginx.conf" -g 'daemon off;' & PIDS+=($!)

# Services: 10.96.0.10:80 -> probe, 10.96.0.20:80 -> nginx, NodePorts 30080/30081.
cat > "$WORK/snap.json" <<EOF
{ "version": 1,
  "clusters": [
    { "name": "bench/http:80", "endpoints": [ { "address": "10.98.1.2", "port": 8081 } ] },
    { "name": "bench/line:80", "endpoints": [ { "address": "10.98.1.2", "port": 8080 } ] } ],
  "services": [
    { "name": "bench/http", "clusterIp": "10.96.0.20",
      "ports": [ { "protocol": "TCP", "port": 80, "nodePort": 30081, "cluster": "bench/http:80" } ] },
    { "name": "bench/line", "clusterIp": "10.96.0.10",
      "ports": [ { "protocol": "TCP", "port": 80, "nodePort": 30080, "cluster": "bench/line:80" } ] } ] }
EOF
"$DATAPATH" --object "$OBJ" --snapshot "$WORK/snap.json" --cgroup "$CG" --iface eth0 \
  --netns /var/run/netns/$NODE --pin-dir "$PIN" --local-cidr 10.98.0.0/16 --keep --quiet ${DATAPATH_ARGS:-} \
  --seconds 100000 >"$WORK/datapath.log" 2>&1 & PIDS+=($!)
for _ in $(seq 50); do grep -q synced "$WORK/datapath.log" && break; sleep 0.1; done
grep -q synced "$WORK/datapath.log" || { cat "$WORK/datapath.log"; exit 1; }

# The kube-proxy way for the same services: iptables DNAT (conntrack) on other VIPs/ports.
# The rules exist only while the iptables variants run, so conntrack does not tax the others.
ipt_on() {
  ip netns exec $NODE iptables -t nat -A OUTPUT -d 10.96.1.10 -p tcp --dport 80 -j DNAT --to-destination 10.98.1.2:8080
  ip netns exec $NODE iptables -t nat -A OUTPUT -d 10.96.1.20 -p tcp --dport 80 -j DNAT --to-destination 10.98.1.2:8081
  ip netns exec $NODE iptables -t nat -A PREROUTING -d 10.99.0.1 -p tcp --dport 31080 -j DNAT --to-destination 10.98.1.2:8080
  ip netns exec $NODE iptables -t nat -A PREROUTING -d 10.99.0.1 -p tcp --dport 31081 -j DNAT --to-destination 10.98.1.2:8081
}
ipt_off() { ip netns exec $NODE iptables -t nat -F; }

# Sockmap: echo servers on the node, one in the cgroup (accelerated), one outside (plain).
sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG" ip netns exec $NODE "$PROBE" serve --id fast --tcp 127.0.0.1:9000 --echo >/dev/null & PIDS+=($!)
ip netns exec $NODE "$PROBE" serve --id plain --tcp 127.0.0.1:9001 --echo >/dev/null & PIDS+=($!)
sleep 0.5

incg() { sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG" "$@"; }
conn() { # NS CGROUP(0/1) ADDR -> "ops p50"
  local ns=$1 cg=$2 addr=$3 line
  if [ "$cg" = 1 ]; then line=$(incg ip netns exec $ns "$PROBE" connect-bench $addr --seconds $SECS | tr '\n' ' ')
  else line=$(ip netns exec $ns "$PROBE" connect-bench $addr --seconds $SECS | tr '\n' ' '); fi
  [ -z "${VERBOSE:-}" ] || echo "$addr: $line" >&2
  echo "$line" | sed -E 's/.*p50_us=([0-9.]+) p99_us=([0-9.]+) ops_per_s=([0-9]+).*/\3 \1 \2/'
}
http() { # NS CGROUP URL -> "req/s p50"
  local ns=$1 cg=$2 url=$3 out
  local cmd=(ip netns exec $ns wrk -t1 -c8 -d${SECS}s --latency -H "Connection: close" $url)
  if [ "$cg" = 1 ]; then out=$(incg "${cmd[@]}"); else out=$("${cmd[@]}"); fi
  local rps p50
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {v=$2; if (v ~ /ms$/) {sub("ms","",v); v*=1000} else if (v ~ /us$/) {sub("us","",v)} else if (v ~ /s$/) {sub("s","",v); v*=1000000}; print v}')
  echo "$rps $p50"
}
pingpong() { # CGROUP PORT -> "ops p50"
  local cg=$1 port=$2 line
  local n=$((SECS * 30000))
  if [ "$cg" = 1 ]; then line=$(incg ip netns exec $NODE "$PROBE" pingpong 127.0.0.1:$port --size 64 --count $n | grep bench=)
  else line=$(ip netns exec $NODE "$PROBE" pingpong 127.0.0.1:$port --size 64 --count $n | grep bench=); fi
  echo "$line" | sed -E 's/.*p50_us=([0-9.]+).*ops_per_s=([0-9]+).*/\2 \1/'
}

# ONLY=REGEX runs just the matching variants.
want() { [[ -z "${ONLY:-}" || "$1" =~ $ONLY ]]; }
RES=$WORK/results.tsv
: > "$RES"
for r in $(seq "$ROUNDS"); do
  echo "round $r/$ROUNDS" >&2
  if want conn_direct; then echo -e "conn_direct\t$(conn $NODE 0 10.98.1.2:8080)" >> "$RES"; fi
  if want conn_direct_cg; then echo -e "conn_direct_cg\t$(conn $NODE 1 10.98.1.2:8080)" >> "$RES"; fi
  if want conn_socketlb; then echo -e "conn_socketlb\t$(conn $NODE 1 10.96.0.10:80)" >> "$RES"; fi
  if want conn_iptables; then ipt_on; echo -e "conn_iptables\t$(conn $NODE 0 10.96.1.10:80)" >> "$RES"; ipt_off; fi
  if want http_direct; then echo -e "http_direct\t$(http $NODE 0 http://10.98.1.2:8081/)" >> "$RES"; fi
  if want http_socketlb; then echo -e "http_socketlb\t$(http $NODE 1 http://10.96.0.20/)" >> "$RES"; fi
  if want http_iptables; then ipt_on; echo -e "http_iptables\t$(http $NODE 0 http://10.96.1.20/)" >> "$RES"; ipt_off; fi
  if want np_direct; then echo -e "np_direct\t$(conn $CLIENT 0 10.98.1.2:8080)" >> "$RES"; fi
  if want np_tc; then echo -e "np_tc\t$(conn $CLIENT 0 10.99.0.1:30080)" >> "$RES"; fi
  if want np_iptables; then ipt_on; echo -e "np_iptables\t$(conn $CLIENT 0 10.99.0.1:31080)" >> "$RES"; ipt_off; fi
  if want nphttp_tc; then echo -e "nphttp_tc\t$(http $CLIENT 0 http://10.99.0.1:30081/)" >> "$RES"; fi
  if want nphttp_iptables; then ipt_on; echo -e "nphttp_iptables\t$(http $CLIENT 0 http://10.99.0.1:31081/)" >> "$RES"; ipt_off; fi
  if want pp_sockmap; then echo -e "pp_sockmap\t$(pingpong 1 9000)" >> "$RES"; fi
  if want pp_loopback; then echo -e "pp_loopback\t$(pingpong 0 9001)" >> "$RES"; fi
done

mkdir -p "$(dirname "$OUT")"
python3 - "$RES" "$ROUNDS" "$SECS" <<'EOF' | tee "$OUT"
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) >= 3:
        rows.setdefault(parts[0], []).append(tuple(float(x) for x in parts[1:4]))
med = {k: tuple(statistics.median(r[i] for r in v) for i in range(len(v[0]))) for k, v in rows.items()}
print(f"Sluice eBPF datapath benchmark: {sys.argv[2]} alternating rounds x {sys.argv[3]} s per variant (medians)")
print(f"{'variant':<16} {'ops/s':>10} {'p50 us':>9} {'p99 us':>9}")
for k, m in med.items():
    p99 = f"{m[2]:>9.1f}" if len(m) > 2 else f"{'-':>9}"
    print(f"{k:<16} {m[0]:>10.0f} {m[1]:>9.1f} {p99}")
def ratio(a, b, label):
    if a in med and b in med and med[b][0] and med[a][1]:
        print(f"{label:<48} throughput x{med[a][0]/med[b][0]:.2f}   p50 latency x{med[a][1]/med[b][1]:.2f}")
print()
ratio("conn_socketlb", "conn_iptables", "connect+request: socket-LB / iptables DNAT")
ratio("conn_socketlb", "conn_direct", "connect+request: socket-LB / direct")
ratio("conn_iptables", "conn_direct", "connect+request: iptables DNAT / direct")
ratio("http_socketlb", "http_iptables", "HTTP (wrk, conn: close): socket-LB / iptables")
ratio("http_socketlb", "http_direct", "HTTP (wrk, conn: close): socket-LB / direct")
ratio("np_tc", "np_iptables", "NodePort connect+request: tc / iptables DNAT")
ratio("np_tc", "np_direct", "NodePort connect+request: tc / direct to pod")
ratio("nphttp_tc", "nphttp_iptables", "NodePort HTTP (wrk, conn: close): tc / iptables")
ratio("pp_sockmap", "pp_loopback", "64-byte ping-pong: sockmap / loopback TCP")
EOF
