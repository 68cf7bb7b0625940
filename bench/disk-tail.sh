#!/usr/bin/env bash
# Question: how far does this machine's disk move on its own? The latency benches (backup,
# priority inversion) compare tails measured seconds apart; this shows what the disk alone does
# between identical runs. fio (libaio, O_DIRECT) does 4k randwrite at QD32 and QD1 over a file
# in DIR, each alone and beside a 256 KiB sequential reader at 4 MiB/s in the idle I/O class
# (what a throttled backup copier adds), interleaved ROUNDS times, SECONDS each. Prints one
# line per job: its p99.9 in µs per round, then the median, min and max.
#
#   bash bench/disk-tail.sh ROUNDS SECONDS DIR
#   e.g. bash bench/disk-tail.sh 10 3 .cache/bench   (bench/results/backup-long.md)
set -euo pipefail
[[ $# -eq 3 ]] || { sed -n '2,10p' "$0"; exit 2; }
rounds=$1; seconds=$2; dir=$3
command -v fio >/dev/null || apt-get install -y -o DPkg::Lock::Timeout=600 fio >/dev/null
mkdir -p "$dir"
file=$dir/disk-tail-256m.raw
[[ -f $file ]] || dd if=/dev/urandom of="$file" bs=1M count=256 status=none
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
common=(--ioengine=libaio --direct=1 --time_based "--runtime=$seconds" --output-format=json
  --name=w "--filename=$file" --rw=randwrite --bs=4k)
reader=(--name=reader "--filename=$file" --rw=read --bs=256k --iodepth=1 --rate=4m --prioclass=3)
for r in $(seq 1 "$rounds"); do
  for qd in 32 1; do
    fio "${common[@]}" "--iodepth=$qd" --output="$out/qd$qd-alone-$r.json" >/dev/null
    fio "${common[@]}" "--iodepth=$qd" "${reader[@]}" --output="$out/qd$qd-reader-$r.json" >/dev/null
  done
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
for job in ('qd32-alone', 'qd32-reader', 'qd1-alone', 'qd1-reader'):
    xs = []
    for r in range(1, rounds + 1):
        d = json.load(open(f'{out}/{job}-{r}.json'))
        w = next(j for j in d['jobs'] if j['jobname'] == 'w')['write']
        xs.append(round(w['clat_ns']['percentile']['99.900000'] / 1000))
    print(f"{job:12} p99.9 us: {' '.join(map(str, xs))}  median {statistics.median(xs):.0f} min {min(xs)} max {max(xs)}")
PY
