#!/usr/bin/env bash
# Question: what does inflight tracking (INFLIGHT_SHMFD, issue 9) cost a blk request end to
# end? The same build of vhost-rt, its daemon started with VHOST_RT_INFLIGHT=off (A: the feature
# is not offered, nothing is recorded) and without (B: the load generator's front end negotiates
# it as QEMU does, every request is recorded and cleared), interleaved A/B/A/B ROUNDS times on
# one image, each run driven by bench/loadgen. Prints one line per run and the per-round ratios
# B/A (IOPS, back-end CPU per I/O) with their median and range.
#
#   bash bench/inflight-ab.sh ROUNDS IMAGE [loadgen flags...]
#   e.g. bash bench/inflight-ab.sh 4 /tmp/img --rw randread --bs 4k --iodepth 32 --runtime 3
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n '2,10p' "$0"; exit 2; }
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rounds=$1; image=$2; shift 2
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
run() { # label round inflight-env loadgen-flags...
  local label=$1 round=$2 env=$3 sock=$dir/sock pid
  shift 3
  rm -f "$sock"
  VHOST_RT_INFLIGHT=$env node "$root/dist/src/cli/main.js" blk --socket-path "$sock" \
    --image "$image" --aio linux-aio --queues 1 --quiet 2>"$dir/err" &
  pid=$!
  for _ in $(seq 1 200); do [[ -S $sock ]] && break; sleep 0.05; done
  node "$root/dist/bench/loadgen/cli.js" --socket "$sock" --pid "$pid" --json "$@" >"$dir/$label-$round.json"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}
for r in $(seq 1 "$rounds"); do
  run A "$r" off "$@"
  run B "$r" on "$@"
done
node - "$dir" "$rounds" <<'JS'
const fs = require('fs');
const [dir, rounds] = [process.argv[2], Number(process.argv[3])];
const load = (s, r) => JSON.parse(fs.readFileSync(`${dir}/${s}-${r}.json`, 'utf8'));
const median = (xs) => { const s = [...xs].sort((x, y) => x - y); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
const iops = [], cpu = [], p50 = [];
for (let r = 1; r <= rounds; r++) {
  const a = load('A', r), b = load('B', r);
  for (const [s, x] of [['A off', a], ['B on ', b]])
    console.log(`${s} r${r} iops ${x.iops.toFixed(0)} p50 ${x.latency.p50Us.toFixed(1)} p99 ${x.latency.p99Us.toFixed(1)} cpu/io ${x.backendCpuUsPerIo?.toFixed(2)}`);
  iops.push(b.iops / a.iops);
  p50.push(b.latency.p50Us / a.latency.p50Us);
  if (a.backendCpuUsPerIo && b.backendCpuUsPerIo) cpu.push(b.backendCpuUsPerIo / a.backendCpuUsPerIo);
}
const fmt = (xs) => `${xs.map((x) => x.toFixed(3)).join(' ')} (median ${median(xs).toFixed(3)}, range ${Math.min(...xs).toFixed(3)}..${Math.max(...xs).toFixed(3)})`;
console.log(`on/off IOPS per round: ${fmt(iops)}`);
console.log(`on/off p50 latency per round: ${fmt(p50)}`);
if (cpu.length) console.log(`on/off back-end CPU per I/O per round: ${fmt(cpu)}`);
JS
