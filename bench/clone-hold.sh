#!/usr/bin/env bash
# Question: how long does FICLONE take against the image's extent count? A clone backup
# (`method: clone`, and `auto` where the file system can clone) holds the guest's writes for
# that long at its start, so `auto` journals instead past AUTO_CLONE_MAX_EXTENTS
# (src/worker/backup.ts). On a fresh XFS (reflink=1) on a direct-I/O loop device over a file
# in DIR (as bench/backup.ts --xfs), files with every other 4 KiB block written (one extent
# each, as FIEMAP counts them) are cloned ROUNDS times each with `cp --reflink=always` (the
# FICLONE ioctl). Prints one line per clone: the extent count and the milliseconds.
#
#   bash bench/clone-hold.sh ROUNDS DIR [WRITTEN_BLOCKS...]
#   e.g. bash bench/clone-hold.sh 3 .cache/bench 1000 5000 20000 50000   (backup-yield.md)
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n '2,11p' "$0"; exit 2; }
rounds=$1; dir=$2; shift 2
sizes=("$@"); [[ ${#sizes[@]} -gt 0 ]] || sizes=(1000 5000 20000 50000)
work=$dir/clone-hold; rm -rf "$work"; mkdir -p "$work/m"
truncate -s 3G "$work/xfs.img"
loop=$(losetup --find --show --direct-io=on "$work/xfs.img")
trap 'umount "$work/m" 2>/dev/null || true; losetup -d "$loop"; rm -rf "$work"' EXIT
mkfs.xfs -q -f -m reflink=1 "$loop"
mount "$loop" "$work/m"
for n in "${sizes[@]}"; do
  f=$work/m/img$n
  python3 - "$f" "$n" <<'PY'
import os, sys
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_CREAT | os.O_RDWR)
os.ftruncate(fd, 2 * n * 4096)
block = b'\xa5' * 4096
for i in range(n):
    os.pwrite(fd, block, 2 * i * 4096)
os.fsync(fd)
os.close(fd)
PY
  extents=$(filefrag "$f" | awk '{print $2}')
  for _ in $(seq 1 "$rounds"); do
    rm -f "$f.clone"; sync
    t0=$(date +%s%N); cp --reflink=always "$f" "$f.clone"; t1=$(date +%s%N)
    echo "extents $extents clone_ms $(( (t1 - t0) / 1000000 ))"
  done
  rm -f "$f" "$f.clone"
done
