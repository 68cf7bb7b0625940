#!/usr/bin/env bash
# Question (issue 12, `method: redirect`): what does writing into a file whose blocks are not
# allocated yet cost a 4k random writer's tail? A redirect backup's overlay is sparse: the
# guest's writes allocate its blocks as they land, where without a backup they overwrite the
# image's written blocks. fio (libaio, O_DIRECT) does 4k randwrite over a 256 MiB file in DIR
# at QD32 and QD1, four kinds of file per round, interleaved: written (every block written
# before with random bytes: the image), zeroed (every block written before with zeros: what
# prefill-overlay wrote first; a virtual disk may treat zero writes as discards), sparse
# (truncate: the overlay), fallocated (unwritten extents). Fresh sparse, fallocated and
# zeroed files every round.
# Prints p50 / p99 / p99.9 in µs: the median over the rounds, then min..max.
#
#   bash bench/overlay-alloc.sh ROUNDS SECONDS DIR
#   e.g. bash bench/overlay-alloc.sh 3 3 .cache/bench   (bench/results/backup-redirect.md)
set -euo pipefail
[[ $# -eq 3 ]] || { sed -n '2,12p' "$0"; exit 2; }
rounds=$1; seconds=$2; dir=$3
command -v fio >/dev/null || apt-get install -y -o DPkg::Lock::Timeout=600 fio >/dev/null
mkdir -p "$dir"
written=$dir/overlay-alloc-written.raw
[[ -f $written ]] || dd if=/dev/urandom of="$written" bs=1M count=256 status=none
out=$(mktemp -d)
trap 'rm -rf "$out" "$dir/overlay-alloc-sparse.raw" "$dir/overlay-alloc-falloc.raw" "$dir/overlay-alloc-zeroed.raw"' EXIT
run() { # kind qd round file
  fio --ioengine=libaio --direct=1 --time_based "--runtime=$seconds" --output-format=json \
    --name=w "--filename=$4" --size=256m --rw=randwrite --bs=4k "--iodepth=$2" \
    --output="$out/$1-qd$2-$3.json" >/dev/null
}
for r in $(seq 1 "$rounds"); do
  for qd in 32 1; do
    for kind in written zeroed sparse falloc; do
      f=$written
      if [[ $kind != written ]]; then
        f=$dir/overlay-alloc-$kind.raw
        rm -f "$f"
        case $kind in
          sparse) truncate -s 256M "$f" ;;
          falloc) fallocate -l 256M "$f" ;;
          zeroed) dd if=/dev/zero of="$f" bs=1M count=256 oflag=direct status=none ;;
        esac
      fi
      run "$kind" "$qd" "$r" "$f"
    done
  done
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
for qd in (32, 1):
    for kind in ("written", "zeroed", "sparse", "falloc"):
        rows = {"p50": [], "p99": [], "p99.9": [], "iops": []}
        for r in range(1, rounds + 1):
            j = json.load(open(f"{out}/{kind}-qd{qd}-{r}.json"))["jobs"][0]["write"]
            pct = j["clat_ns"]["percentile"]
            rows["p50"].append(pct["50.000000"] / 1000)
            rows["p99"].append(pct["99.000000"] / 1000)
            rows["p99.9"].append(pct["99.900000"] / 1000)
            rows["iops"].append(j["iops"])
        cells = " ".join(
            f"{k} {statistics.median(v):.0f} ({min(v):.0f}..{max(v):.0f})" for k, v in rows.items()
        )
        print(f"QD{qd} {kind:8s} {cells}")
PY
