#!/usr/bin/env bash
# Interleaved A/B of two builds of vhost-rt on one workload: the daemon of tree A, then of
# tree B, ROUNDS times (A/B/A/B...), each driven by tree B's load generator on the same image.
# Answers "did this change move the hot path?" with the spread across rounds, not one run.
#
#   bash bench/ab-trees.sh OLD_TREE NEW_TREE ROUNDS IMAGE [loadgen flags...]
#   e.g. git worktree add /tmp/old HEAD~3 && (cd /tmp/old && npm run build)
#        bash bench/ab-trees.sh /tmp/old . 4 /tmp/img --rw randread --bs 4k --iodepth 1 --runtime 5
#
# Prints one line per run: tree, round, IOPS, p50/p99 µs, back-end CPU µs per I/O; then the
# per-round ratios B/A of IOPS and CPU per I/O with their median.
set -euo pipefail
[[ $# -ge 4 ]] || { sed -n '2,10p' "$0"; exit 2; }
a=$(cd "$1" && pwd); b=$(cd "$2" && pwd); rounds=$3; image=$4; shift 4
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
run() { # tree label round loadgen-flags...
  local tree=$1 label=$2 round=$3 sock=$dir/sock pid
  shift 3
  rm -f "$sock"
  node "$tree/dist/src/cli/main.js" blk --socket-path "$sock" --image "$image" --aio linux-aio --quiet 2>"$dir/err" &
  pid=$!
  for _ in $(seq 1 200); do [[ -S $sock ]] && break; sleep 0.05; done
  node "$b/dist/bench/loadgen/cli.js" --socket "$sock" --pid "$pid" --json "$@" >"$dir/$label-$round.json"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}
for r in $(seq 1 "$rounds"); do
  run "$a" A "$r" "$@"
  run "$b" B "$r" "$@"
done
node - "$dir" "$rounds" <<'JS'
const fs = require('fs');
const [dir, rounds] = [process.argv[2], Number(process.argv[3])];
const load = (s, r) => JSON.parse(fs.readFileSync(`${dir}/${s}-${r}.json`, 'utf8'));
const median = (xs) => { const s = [...xs].sort((x, y) => x - y); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
const iops = [], cpu = [];
for (let r = 1; r <= rounds; r++) {
  const a = load('A', r), b = load('B', r);
  for (const [s, x] of [['A', a], ['B', b]])
    console.log(`${s} r${r} iops ${x.iops.toFixed(0)} p50 ${x.latency.p50Us.toFixed(1)} p99 ${x.latency.p99Us.toFixed(1)} cpu/io ${x.backendCpuUsPerIo?.toFixed(1)}`);
  iops.push(b.iops / a.iops);
  if (a.backendCpuUsPerIo && b.backendCpuUsPerIo) cpu.push(b.backendCpuUsPerIo / a.backendCpuUsPerIo);
}
const fmt = (xs) => `${xs.map((x) => x.toFixed(3)).join(' ')} (median ${median(xs).toFixed(3)}, range ${Math.min(...xs).toFixed(3)}..${Math.max(...xs).toFixed(3)})`;
console.log(`B/A IOPS per round: ${fmt(iops)}`);
if (cpu.length) console.log(`B/A CPU per I/O per round: ${fmt(cpu)}`);
JS
