#!/usr/bin/env bash
# The network benchmark of record (issue 13): builds vhost-rt, then runs
# bench/net-dpdk.ts — dpdk-testpmd (two net_virtio_user ports) driving
# `vhost-rt net` and, interleaved, a DPDK net_vhost io switch on the same core.
# Installs Debian's dpdk packages when dpdk-testpmd is missing (root).
#   bash bench/net-dpdk.sh [--rounds 3] [--seconds 5] [--md bench/results/net-dpdk-run.md] ...
set -euo pipefail
cd "$(dirname "$0")/.."
flock /tmp/vhost-rt-tsc.lock node_modules/.bin/tsc -p tsconfig.json --incremental --tsBuildInfoFile dist/.tsbuildinfo
exec node dist/bench/net-dpdk.js "$@"
