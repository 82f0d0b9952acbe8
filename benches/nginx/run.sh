#!/usr/bin/env bash
# Sluice vs nginx, HTTP/1.1 keep-alive, 64 connections: now one scenario of the peer comparison
# runner (benches/README.md), kept as a shortcut. ROUNDS and DURATION (e.g. 10s) as before;
# results go to benches/results/scratch/.
set -euo pipefail
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
cd "$(dirname "$0")/../.."
exec cargo xtask bench --scenario h1-keepalive-64 --peers sluice,nginx \
    --rounds "$ROUNDS" --seconds "${DURATION%s}" "$@"
