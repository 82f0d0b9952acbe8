#!/usr/bin/env bash
# Sluice vs nginx, HTTP/1.1 keep-alive, 64 connections: one scenario of the peer comparison
# runner (benches/README.md), kept as a shortcut. ROUNDS and DURATION (e.g. 10s) default to the
# full run's 7 rounds of 5 s; results go to benches/results/scratch/. As root, Sluice is measured twice: alone
# (`sluice`) and with its eBPF datapath (`sluice-ebpf`, built by `cargo xtask ebpf`).
# Extra arguments go to the runner (`--peers sluice,nginx,haproxy` replaces the peer list).
set -euo pipefail
ROUNDS=${ROUNDS:-7}
DURATION=${DURATION:-5s}
cd "$(dirname "$0")/../.."
PEERS=sluice,nginx
if [ "$(id -u)" = 0 ]; then
    PEERS=sluice,sluice-ebpf,nginx
fi
exec cargo xtask bench --scenario h1-keepalive-64 --peers "$PEERS" \
    --rounds "$ROUNDS" --seconds "${DURATION%s}" "$@"
