#!/usr/bin/env bash
# Question (issue 12, `method: redirect`): does this disk take 4k random writes equally fast in
# every file? A redirect backup moves the guest's writes from the image's blocks to a new
# file's (the overlay); if the disk is faster in some places than in others, the during/idle
# ratio of the bench measures that placement as much as the method. fio alone: FILES files of
# SIZE MiB made the same way (urandom, O_DIRECT, one after the other) in DIR, then ROUNDS
# interleaved rounds of SECONDS each per file of 4k randwrite QD32 and of 4k randread QD32
# (libaio, O_DIRECT). Prints per file: its fill, where its first extent is on the device and
# how many extents it has, unwritten ones apart (filefrag),
# median write IOPS and p50, median read IOPS and p50; then the fastest file's write IOPS
# over the slowest's.
#
# FILL (default urandom) says what the files are made of, as a comma-separated list cycled
# over the files (so different kinds share the rounds): `urandom` (from /dev/urandom, O_DIRECT
# 1 MiB writes); `zero` (buffered writes of zeros, then fdatasync: how `prefill-overlay` wrote
# an overlay's data area at first); `pattern` (one random MiB repeated, buffered, then
# fdatasync). `/direct` or `/buffered` after a kind overrides how it is written
# (`urandom/buffered`, `zero/direct`, `pattern/direct`).
#
#   bash bench/file-write-spread.sh FILES SIZE_MIB ROUNDS SECONDS DIR [FILL]
#   e.g. bash bench/file-write-spread.sh 4 2048 3 5 .cache/bench   (bench/results/backup-redirect.md)
set -euo pipefail
[[ $# -eq 5 || $# -eq 6 ]] || { sed -n '2,21p' "$0"; exit 2; }
files=$1; size=$2; rounds=$3; seconds=$4; dir=$5; fill=${6:-urandom}
command -v fio >/dev/null || apt-get install -y -o DPkg::Lock::Timeout=600 fio >/dev/null
mkdir -p "$dir"
out=$(mktemp -d)
names=()
for i in $(seq 1 "$files"); do names+=("$dir/file-write-spread-$i.raw"); done
trap 'rm -rf "$out" "${names[@]}"' EXIT
IFS=, read -ra kinds <<<"$fill"
fills=()
for i in $(seq 0 $((files - 1))); do fills+=("${kinds[$((i % ${#kinds[@]}))]}"); done
head -c 1M /dev/urandom >"$out/mib"
source_of() { # kind: the bytes, on stdout
  case ${1%%/*} in
    urandom) head -c "${size}M" /dev/urandom ;;
    zero) head -c "${size}M" /dev/zero ;;
    pattern) for _ in $(seq 1 "$size"); do cat "$out/mib"; done ;;
  esac
}
for i in $(seq 1 "$files"); do
  kind=${fills[$((i - 1))]}
  case $kind in
    urandom | urandom/buffered | zero | zero/direct | pattern | pattern/direct) ;;
    *) echo "FILL lists urandom, zero or pattern (with /direct or /buffered), not '$kind'" >&2; exit 2 ;;
  esac
  mode=$([[ $kind == urandom || $kind == */direct ]] && echo oflag=direct || echo conv=fdatasync)
  source_of "$kind" | dd of="${names[$((i - 1))]}" bs=1M iflag=fullblock "$mode" status=none
done

run() { # rw file index round
  fio --ioengine=libaio --direct=1 --time_based "--runtime=$seconds" --output-format=json \
    --name=p "--filename=$2" "--size=${size}m" "--rw=$1" --bs=4k --iodepth=32 \
    --output="$out/$1-$3-$4.json" >/dev/null
}
for r in $(seq 1 "$rounds"); do
  for rw in randwrite randread; do
    for i in $(seq 1 "$files"); do run "$rw" "${names[$((i - 1))]}" "$i" "$r"; done
  done
done
for i in $(seq 1 "$files"); do
  # The first extent's physical start, in MiB from the device's start.
  filefrag -v "${names[$((i - 1))]}" | awk -v i="$i" -v fill="${fills[$((i - 1))]}" \
    '$1 == "0:" { split($4, a, "."); start = a[1] * 4 / 1024 }
     $1 ~ /^[0-9]+:$/ { n++; if ($0 ~ /unwritten/) u++ }
     END { printf "%s %s, at %d MiB, %d extents (%d unwritten)\n", i, fill, start, n, u + 0 }'
done >"$out/where"
python3 - "$out" "$files" "$rounds" <<'PY'
import json, statistics, sys
out, files, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
where = dict(line.rstrip("\n").split(" ", 1) for line in open(f"{out}/where"))
write_iops = []
for i in range(1, files + 1):
    cells = []
    for rw, key in (("randwrite", "write"), ("randread", "read")):
        iops, p50 = [], []
        for r in range(1, rounds + 1):
            j = json.load(open(f"{out}/{rw}-{i}-{r}.json"))["jobs"][0][key]
            iops.append(j["iops"])
            p50.append(j["clat_ns"]["percentile"]["50.000000"] / 1000)
        cells.append(f"{rw} {statistics.median(iops):.0f} IOPS ({min(iops):.0f}..{max(iops):.0f}) p50 {statistics.median(p50):.0f} µs")
        if rw == "randwrite":
            write_iops.append(statistics.median(iops))
    print(f"file {i} ({where.get(str(i), '?')}): " + "; ".join(cells))
print(f"write IOPS, fastest file over slowest: {max(write_iops) / min(write_iops):.2f}x")
PY
