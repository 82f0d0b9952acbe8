#!/usr/bin/env bash
# Regenerates src/*.rs from the Gateway API v1.6.1 CRDs (experimental channel: a superset of
# standard) and copies the CRD manifests into crds/. Needs kopium 0.24:
#   cargo install kopium@^0.24 --locked
# Run from anywhere: gateway-crds/generate.sh [path-to-crds-dir]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
src=${1:-../../shared/conformance/crds}
gen() { # module file api-version
  local mod=$1 file=$2 ver=$3
  kopium -f "$src/experimental/$file" --api-version "$ver" -A -D Default -D PartialEq --smart-derive-elision > "src/$mod.rs"
}
gen gatewayclasses gateway.networking.k8s.io_gatewayclasses.yaml v1
gen gateways gateway.networking.k8s.io_gateways.yaml v1
gen httproutes gateway.networking.k8s.io_httproutes.yaml v1
gen grpcroutes gateway.networking.k8s.io_grpcroutes.yaml v1
gen tlsroutes gateway.networking.k8s.io_tlsroutes.yaml v1
gen tcproutes gateway.networking.k8s.io_tcproutes.yaml v1
gen udproutes gateway.networking.k8s.io_udproutes.yaml v1
gen referencegrants gateway.networking.k8s.io_referencegrants.yaml v1
gen backendtlspolicies gateway.networking.k8s.io_backendtlspolicies.yaml v1
gen listenersets gateway.networking.k8s.io_listenersets.yaml v1
for channel in standard experimental; do
  mkdir -p "$here/crds/$channel"
  cp "$src/$channel"/gateway.networking.*.yaml "$here/crds/$channel/"
done
chmod -R u+w "$here/crds"
cargo fmt -p sluice-gateway-crds 2>/dev/null || true
