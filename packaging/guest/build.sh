#!/usr/bin/env bash
# Build the guest assets of the VM backend from Debian's linux-image-cloud-amd64:
#   OUT/vmlinuz     the kernel
#   OUT/initrd.img  a gzip'd cpio: stockade-agent as /init, plus the kernel modules it
#                   loads at boot (virtio-mmio, vsock, virtiofs, overlay) and their order;
#                   the agent runs the guest's containers with libcontainer
#   packaging/guest/build.sh [OUT]        (default OUT: /usr/share/stockade)
#   packaging/guest/build.sh --hostile OUT
#                   the same, with the test-only hostile agent (cargo feature `hostile`,
#                   agent/src/hostile.rs) that misbehaves on command: for the tests that
#                   play a compromised guest, never for a node
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
FEATURES=()
if [ "${1:-}" = "--hostile" ]; then
  FEATURES=(--features hostile)
  shift
  [ -n "${1:-}" ] || { echo "--hostile needs an output dir" >&2; exit 2; }
fi
OUT=${1:-/usr/share/stockade}
TARGET=x86_64-unknown-linux-gnu

# The guest kernel: Debian's linux-image-cloud-amd64, unpacked (not installed: installing
# would add it to the host's bootloader) by setup.sh under /var/cache/stockade.
KROOT=${STOCKADE_KERNEL_ROOT:-/var/cache/stockade/guest-kernel}
kver=${STOCKADE_GUEST_KERNEL:-$(ls "$KROOT/lib/modules" 2>/dev/null | grep -E 'cloud-amd64$' | sort -V | tail -1)}
[ -n "$kver" ] && [ -e "$KROOT/boot/vmlinuz-$kver" ] || {
  echo "no cloud-amd64 guest kernel under $KROOT (run packaging/setup.sh --deps)" >&2
  exit 1
}

# The agent is PID 1 of a guest with no libc: link it statically, libseccomp included
# (the guest's containers get the same seccomp hardening as the container backend's).
(cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" \
  LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
  cargo build --release --locked -p stockade-agent --target "$TARGET" "${FEATURES[@]}")
agent=$ROOT/target/$TARGET/release/stockade-agent

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{proc,sys,dev,run,tmp,lib/modules/stockade}
install -m 0755 "$agent" "$work/init"
# Dependency order: a module after everything it needs.
modules=(
  drivers/virtio/virtio_ring
  drivers/virtio/virtio
  drivers/virtio/virtio_mmio
  net/core/failover
  drivers/net/net_failover
  drivers/net/virtio_net
  net/vmw_vsock/vsock
  net/vmw_vsock/vmw_vsock_virtio_transport_common
  net/vmw_vsock/vmw_vsock_virtio_transport
  fs/fuse/fuse
  fs/fuse/virtiofs
  fs/overlayfs/overlay
)
: >"$work/lib/modules/stockade/order"
for m in "${modules[@]}"; do
  src=$KROOT/lib/modules/$kver/kernel/$m
  name=$(basename "$m").ko
  if [ -e "$src.ko" ]; then
    cp "$src.ko" "$work/lib/modules/stockade/$name"
  elif [ -e "$src.ko.xz" ]; then
    xz -dc "$src.ko.xz" >"$work/lib/modules/stockade/$name"
  else
    # Built into this kernel: nothing to load.
    continue
  fi
  echo "$name" >>"$work/lib/modules/stockade/order"
done
mkdir -p "$OUT"
(cd "$work" && find . -print0 | sort -z | cpio --null -o -H newc --quiet --owner=0:0) | gzip -6 >"$OUT/initrd.img.tmp"
mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
install -m 0644 "$KROOT/boot/vmlinuz-$kver" "$OUT/vmlinuz"
echo "$kver" >"$OUT/guest-kernel-release"
echo "guest assets in $OUT: vmlinuz ($kver), initrd.img ($(du -h "$OUT/initrd.img" | cut -f1))"
