#!/usr/bin/env bash
# What the blk device's per-queue accounting (counters + latency histograms) costs: interleaved
# A/B of one tree's daemon with it off (--no-latency-histograms, A) and on (the default, B), on
# one workload, ROUNDS times (A/B/A/B...), driven by bench/loadgen on the same image.
#
#   bash bench/latency-histograms-ab.sh ROUNDS IMAGE AIO [loadgen flags...]
#   e.g. bash bench/latency-histograms-ab.sh 3 /var/tmp/img linux-aio --rw randread --bs 4k --iodepth 1 --runtime 4
#
# BLK_FLAGS adds daemon flags to both (e.g. BLK_FLAGS=--readonly for a shared image lock).
# Prints one line per run (IOPS, p50/p99 µs, back-end CPU µs per I/O), then the per-round ratios
# B/A of IOPS and of CPU per I/O with their median. Results: bench/results/latency-histograms.md.
set -euo pipefail
[[ $# -ge 3 ]] || { sed -n '2,10p' "$0"; exit 2; }
tree=$(cd "$(dirname "$0")/.." && pwd); rounds=$1; image=$2; aio=$3; shift 3
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
run() { # label round daemon-flag...
  local label=$1 round=$2 sock=$dir/sock pid
  shift 2
  rm -f "$sock"
  node "$tree/dist/src/cli/main.js" blk --socket-path "$sock" --image "$image" --aio "$aio" \
    --queues 1 --quiet ${BLK_FLAGS:-} "$@" 2>"$dir/err" &
  pid=$!
  for _ in $(seq 1 200); do [[ -S $sock ]] && break; sleep 0.05; done
  node "$tree/dist/bench/loadgen/cli.js" --socket "$sock" --pid "$pid" --json "${loadgen[@]}" \
    >"$dir/$label-$round.json"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}
loadgen=("$@")
for r in $(seq 1 "$rounds"); do
  run A "$r" --no-latency-histograms
  run B "$r"
done
node - "$dir" "$rounds" <<'JS'
const fs = require('fs');
const [dir, rounds] = [process.argv[2], Number(process.argv[3])];
const load = (s, r) => JSON.parse(fs.readFileSync(`${dir}/${s}-${r}.json`, 'utf8'));
const median = (xs) => { const s = [...xs].sort((x, y) => x - y); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
const iops = [], cpu = [];
for (let r = 1; r <= rounds; r++) {
  const a = load('A', r), b = load('B', r);
  for (const [s, x] of [['A off', a], ['B on ', b]])
    console.log(`${s} r${r} iops ${x.iops.toFixed(0)} p50 ${x.latency.p50Us.toFixed(1)} p99 ${x.latency.p99Us.toFixed(1)} cpu/io ${x.backendCpuUsPerIo?.toFixed(2)}`);
  iops.push(b.iops / a.iops);
  if (a.backendCpuUsPerIo && b.backendCpuUsPerIo) cpu.push(b.backendCpuUsPerIo / a.backendCpuUsPerIo);
}
const fmt = (xs) => `${xs.map((x) => x.toFixed(3)).join(' ')} (median ${median(xs).toFixed(3)}, range ${Math.min(...xs).toFixed(3)}..${Math.max(...xs).toFixed(3)})`;
console.log(`B/A IOPS per round: ${fmt(iops)}`);
if (cpu.length) console.log(`B/A CPU per I/O per round: ${fmt(cpu)}`);
JS
