#!/usr/bin/env bash
# Builds the test guest into .cache/guest/: Debian's stock kernel (vmlinuz), the same kernel
# uncompressed (vmlinux, booted through its PVH entry point: TCG needs ~4 s to run the bzImage
# xz decompressor, PVH skips it), and a busybox initramfs (initramfs.cpio.gz) holding the
# virtio modules and scripts/guest-init as /init.
#
# Idempotent: does nothing when the outputs exist and are newer than this script and
# guest-init. Never installs a kernel on the host: the linux-image package is downloaded
# with `apt-get download` and unpacked with `dpkg-deb -x` into a temporary directory.
#
# Environment: VHOST_RT_GUEST_FORCE=1 rebuilds even when the outputs look fresh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$ROOT/.cache/guest"
INIT="$ROOT/scripts/guest-init"
SELF="$ROOT/scripts/build-guest.sh"

# Virtio modules the guest loads, in the order DESIGN.md gives; dependencies found in the
# modules' own .modinfo are added before their users, so the order stays valid when a
# newer kernel splits a module.
WANTED=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
  virtio_blk failover net_failover virtio_net virtio_console)

log() { echo "build-guest: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

outputs_fresh() {
  local f
  [[ ${VHOST_RT_GUEST_FORCE:-0} == 1 ]] && return 1
  for f in vmlinuz initramfs.cpio.gz kernel-version; do
    [[ -s $OUT/$f && $OUT/$f -nt $SELF && $OUT/$f -nt $INIT ]] || return 1
  done
}

# Prints the versioned kernel package that linux-image-amd64 depends on.
kernel_package() {
  local pkg
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
  if [[ -z $pkg ]]; then
    # A fresh machine may have no package lists yet.
    apt-get update -qq >&2 || die 'apt-get update failed'
    pkg=$(apt-cache depends linux-image-amd64 |
      awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
  fi
  [[ -n $pkg ]] || die 'apt-cache depends linux-image-amd64 names no linux-image-<version>'
  echo "$pkg"
}

# Downloads and unpacks the kernel package into $1/pkg.
unpack_kernel() {
  local work=$1 pkg=$2
  # Download as root into our own temp dir: _apt cannot write there, and the sandbox
  # warning would be noise.
  (cd "$work" && apt-get download -qq -o APT::Sandbox::User=root "$pkg" >&2) ||
    die "apt-get download $pkg failed"
  dpkg-deb -x "$work"/"$pkg"_*.deb "$work/pkg"
}

# Finds the file of module $2 under modules dir $1 (file names may use '-' for '_').
module_file() {
  local dir=$1 name=$2 dashed=${2//_/-}
  find "$dir/kernel" \( -name "$name.ko*" -o -name "$dashed.ko*" \) -print -quit
}

# Writes module $2 from $1 uncompressed to $3/$2.ko (the guest's busybox insmod may lack
# xz/zstd support, so decompression happens here).
copy_module() {
  local src=$1 name=$2 dst=$3/$2.ko
  case $src in
  *.ko) cp "$src" "$dst" ;;
  *.ko.xz) xz -dc "$src" >"$dst" ;;
  *.ko.zst) zstd -qdc "$src" >"$dst" ;;
  *.ko.gz) gzip -dc "$src" >"$dst" ;;
  *) die "unknown module format: $src" ;;
  esac
}

# Prints the comma-separated `depends=` of an uncompressed module.
module_depends() {
  tr '\0' '\n' <"$1" | sed -n 's/^depends=//p' | head -n 1
}

# Writes the ELF vmlinux embedded in bzImage $1 to $2 if the kernel can boot through PVH
# (QEMU loads such an ELF directly). Failure only costs boot time, so it is not fatal.
extract_vmlinux() {
  local bzimage=$1 out=$2 config=$3 magic off
  grep -q '^CONFIG_PVH=y' "$config" || return 0
  for magic in $'\xfd7zXZ\x00' $'\x28\xb5\x2f\xfd' $'\x1f\x8b\x08'; do
    off=$(LC_ALL=C grep -abo -m 1 "$magic" "$bzimage" | head -n 1 | cut -d: -f1)
    [[ -n $off ]] || continue
    tail -c +$((off + 1)) "$bzimage" | decompress_stream "$magic" >"$out.tmp" 2>/dev/null || true
    if [[ $(head -c 4 "$out.tmp" | od -An -c | tr -d ' ') == '177ELF' ]]; then
      mv -f "$out.tmp" "$out"
      return 0
    fi
  done
  rm -f "$out.tmp"
  log 'warning: no ELF vmlinux in the bzImage; guests will boot the slower vmlinuz'
}

# Decompresses the first stream of stdin (the payload is followed by other data).
decompress_stream() {
  case $1 in
  $'\xfd7zXZ\x00') xz -dc --single-stream ;;
  $'\x28\xb5\x2f\xfd') zstd -qdc ;;
  *) gzip -dc ;;
  esac
}

# Depth-first: copies module $3 and its dependencies, appending each to the load order
# after everything it depends on.
add_module() {
  local kdir=$1 dst=$2 name=$3 src dep deps
  [[ -e $dst/$name.ko ]] && return 0
  src=$(module_file "$kdir" "$name")
  [[ -n $src ]] || die "module $name not found in $kdir"
  copy_module "$src" "$name" "$dst"
  deps=$(module_depends "$dst/$name.ko")
  for dep in ${deps//,/ }; do
    add_module "$kdir" "$dst" "$dep"
  done
  echo "$name" >>"$dst/load-order"
}

# Populates the initramfs tree $1 with busybox, its applet links, /init and device nodes.
stage_rootfs() {
  local root=$1 applet
  mkdir -p "$root"/{bin,dev,proc,sys,tmp,run,lib/modules,etc,root,usr}
  ln -s bin "$root/sbin"
  ln -s ../bin "$root/usr/bin"
  ln -s ../bin "$root/usr/sbin"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [[ -e $root/bin/$applet ]] || ln -s busybox "$root/bin/$applet"
  done
  install -m 0755 "$INIT" "$root/init"
  # The kernel opens /dev/console for init before /init can mount devtmpfs.
  mknod -m 600 "$root/dev/console" c 5 1
  mknod -m 666 "$root/dev/null" c 1 3
}

# Packs tree $1 into a reproducible newc archive $2 (root-owned, sorted, no gzip timestamp).
pack_rootfs() {
  (cd "$1" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible | gzip -9 -n) >"$2"
}

main() {
  outputs_fresh && return 0
  mkdir -p "$OUT"
  # Test files running in parallel may all ask for the image: one builds, the others wait
  # and then find it fresh.
  exec 9>"$OUT/.lock"
  flock 9
  outputs_fresh && return 0
  command -v busybox >/dev/null && [[ -x /bin/busybox ]] || die 'busybox-static is not installed'
  local work pkg kver kdir name
  # Global so the EXIT trap still sees it after main returns.
  WORK=$(mktemp -d /tmp/vhost-rt-guest.XXXXXX)
  trap 'rm -rf "$WORK"' EXIT
  work=$WORK
  pkg=$(kernel_package)
  kver=${pkg#linux-image-}
  log "building guest from $pkg"
  unpack_kernel "$work" "$pkg"
  kdir="$work/pkg/lib/modules/$kver"
  [[ -d $kdir ]] || die "no modules directory $kdir in $pkg"
  stage_rootfs "$work/root"
  for name in "${WANTED[@]}"; do
    add_module "$kdir" "$work/root/lib/modules" "$name"
  done
  pack_rootfs "$work/root" "$work/initramfs.cpio.gz"
  cp "$work/pkg/boot/vmlinuz-$kver" "$work/vmlinuz"
  extract_vmlinux "$work/vmlinuz" "$work/vmlinux" "$work/pkg/boot/config-$kver"
  # Move into place last, stamp file last of all, so an interrupted build never looks fresh.
  rm -f "$OUT/kernel-version" "$OUT/vmlinux"
  [[ ! -e $work/vmlinux ]] || mv -f "$work/vmlinux" "$OUT/vmlinux"
  mv -f "$work/vmlinuz" "$OUT/vmlinuz"
  mv -f "$work/initramfs.cpio.gz" "$OUT/initramfs.cpio.gz"
  echo "$kver" >"$OUT/kernel-version"
  log "guest ready: $OUT (kernel $kver, modules: $(paste -sd ' ' "$work/root/lib/modules/load-order"))"
}

main "$@"
