#!/usr/bin/env bash
# Brings a fresh Debian 12 machine (root, Node 20) to the state the tests need, idempotently:
# apt packages, npm dependencies, the native addon, the TypeScript build and the QEMU test
# guest. Quiet unless it changes something; a no-op run takes well under 3 s.
# Non-interactive: safe with CI=true and no stdin.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export DEBIAN_FRONTEND=noninteractive

# qemu-system-x86 brings qemu-system-common (qemu-storage-daemon); xz-utils/zstd unpack
# kernel modules and vmlinux; g++/make/python3 are node-gyp's toolchain.
# dpdk-dev (dpdk-testpmd) + the virtio_user/vhost PMDs: the independent net front end of the
# packed-ring e2e test and bench/net-dpdk.ts. rt-tests (cyclictest): the machine's own latency
# floor that bench/priority-inversion*.ts measure in the same run.
APT_PACKAGES=(qemu-system-x86 qemu-utils busybox-static cpio libaio-dev liburing-dev fio socat
  iproute2 xz-utils zstd gzip g++ make python3 libnbd-dev nbdkit prometheus
  libvirt-daemon-system libvirt-clients xfsprogs dpdk-dev librte-net-vhost23 librte-net-virtio23
  rt-tests)
NATIVE_ADDON=native/build/Release/vhost_rt.node

log() { echo "setup: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# Runs a noisy command; shows its output only when it fails.
quietly() {
  local out
  if ! out=$("$@" 2>&1 </dev/null); then
    printf '%s\n' "$out" >&2
    die "failed: $*"
  fi
}

check_node() {
  command -v node >/dev/null || die 'node is not installed (Node 20 is required)'
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  ((major >= 20)) || die "Node $major found; Node 20 or newer is required"
}

ensure_apt_packages() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  log "installing apt packages: ${missing[*]}"
  quietly apt-get update -qq
  quietly apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# True when node_modules is missing or older than the lock file. npm rewrites
# node_modules/.package-lock.json on every install, so that is the install's timestamp.
npm_stale() {
  [[ -d node_modules ]] || return 0
  [[ -f package-lock.json ]] || return 1
  local marker=node_modules/.package-lock.json
  [[ -e $marker ]] || marker=node_modules
  [[ package-lock.json -nt $marker ]]
}

ensure_npm_deps() {
  npm_stale || return 0
  if [[ -f package-lock.json ]]; then
    log 'npm ci'
    npm ci --no-audit --no-fund >/dev/null 2>&1 </dev/null && return 0
    # npm ci refuses a lock file that lacks other platforms' optional packages; install
    # without touching the (shared, committed) lock file instead.
    log 'npm ci refused package-lock.json; npm install --no-save'
    quietly npm install --no-save --no-audit --no-fund
  else
    log 'npm install (no package-lock.json)'
    quietly npm install --no-audit --no-fund
  fi
}

# True when the addon is missing or older than any native source.
native_stale() {
  [[ -f $NATIVE_ADDON ]] || return 0
  [[ -n $(find native -maxdepth 1 \( -name '*.cc' -o -name '*.h' -o -name binding.gyp \) \
    -newer "$NATIVE_ADDON" -print -quit) ]]
}

ensure_native() {
  [[ -f native/binding.gyp ]] || {
    log 'warning: native/binding.gyp is missing; native addon not built'
    return 0
  }
  native_stale || return 0
  local args=(rebuild --directory native) prefix
  # Use the headers installed next to node (no download from nodejs.org) when present.
  prefix=$(dirname "$(dirname "$(node -p process.execPath)")")
  [[ ! -f $prefix/include/node/node_api.h ]] || args+=("--nodedir=$prefix")
  log 'building native addon'
  quietly node_modules/.bin/node-gyp "${args[@]}"
}

# tsc always runs; incremental state lives inside dist/, so deleting dist/ also forgets it and
# forces a full emit. (The local binaries, not npx: npx costs ~0.3 s a call.)
build_ts() {
  quietly node_modules/.bin/tsc -p tsconfig.json --incremental --tsBuildInfoFile dist/.tsbuildinfo
}

main() {
  check_node
  ensure_apt_packages
  ensure_npm_deps
  ensure_native
  bash scripts/build-guest.sh
  # Last, so a type error elsewhere in the tree still leaves a usable guest and addon.
  build_ts
}

main "$@"
