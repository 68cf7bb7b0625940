#!/bin/bash
# A file system on a zram device (RAM, compressed), mounted at MOUNTPOINT: a block device
# whose own latency tail is steady, where this machine's disk changes mode between seconds
# (bench/disk-tail.sh). bench/backup.ts --dir MOUNTPOINT then measures what a backup adds
# to the guest's writes without the disk's noise. `down` unmounts and resets the device.
#
#   bash bench/zram-fs.sh up [MOUNTPOINT=/mnt/vhost-rt-zram] [SIZE=3G] [FS=ext4|xfs]
#   bash bench/zram-fs.sh down [MOUNTPOINT]
set -euo pipefail
cmd=${1:?usage: zram-fs.sh up|down [MOUNTPOINT] [SIZE] [FS]}
mnt=${2:-/mnt/vhost-rt-zram}
size=${3:-3G}
fs=${4:-ext4}
if [ ! -d /sys/class/zram-control ]; then
  echo "zram-fs.sh: this kernel has no zram (no /sys/class/zram-control)" >&2
  exit 1
fi
case "$cmd" in
up)
  dev=$(cat /sys/class/zram-control/hot_add)
  echo 1 >"/sys/block/zram$dev/reset" 2>/dev/null || true
  echo lz4 >"/sys/block/zram$dev/comp_algorithm"
  echo "$size" >"/sys/block/zram$dev/disksize"
  case "$fs" in
  ext4) mkfs.ext4 -q "/dev/zram$dev" ;;
  xfs) mkfs.xfs -q -m reflink=1 "/dev/zram$dev" ;;
  *) echo "zram-fs.sh: FS must be ext4 or xfs, not $fs" >&2; exit 1 ;;
  esac
  mkdir -p "$mnt"
  mount "/dev/zram$dev" "$mnt"
  echo "/dev/zram$dev ($fs, $size) on $mnt"
  ;;
down)
  dev=$(findmnt -n -o SOURCE "$mnt")
  umount "$mnt"
  n=${dev#/dev/zram}
  echo 1 >"/sys/block/zram$n/reset"
  echo "$n" >/sys/class/zram-control/hot_remove 2>/dev/null || true
  echo "$dev reset"
  ;;
*)
  echo "zram-fs.sh: unknown command $cmd (up or down)" >&2
  exit 1
  ;;
esac
