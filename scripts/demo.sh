#!/usr/bin/env bash
# The demo, from a fresh machine: set-up (idempotent), then a QEMU guest on a vhost-rt disk.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node dist/scripts/demo.js
