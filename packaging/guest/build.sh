#!/usr/bin/env bash
# Build the guest assets of the VM backend:
#   OUT/vmlinuz      the guest kernel: the Stockade kernel (packaging/guest/kernel/, an
#                    uncompressed vmlinux booted through QEMU's PVH entry, everything
#                    built in) or Debian's linux-image-cloud-amd64 (a bzImage with modules)
#   OUT/initrd.img   a gzip'd cpio: stockade-agent as /init; with the cloud kernel also the
#                    modules it loads at boot (virtio-mmio, vsock, virtiofs, overlay) and
#                    those a pod may load on demand; the agent runs the guest's containers
#                    with libcontainer; Stockade's seccomp profiles compiled by it
#                    (lib/stockade/seccomp-filters)
#   OUT/guest-kernel            `stockade` or `cloud`
#   OUT/guest-kernel-release    the kernel's release
#
#   packaging/guest/build.sh [--kernel auto|stockade|cloud] [OUT]
#                    (default OUT: /usr/share/stockade). auto: the Stockade kernel, built
#                    (or taken from its cache) by packaging/guest/kernel/build.sh, and
#                    Debian's cloud kernel when it cannot be built, saying why
#   packaging/guest/build.sh --hostile [--kernel …] OUT
#                    the same, with the test-only hostile agent (cargo feature `hostile`,
#                    agent/src/hostile.rs) that misbehaves on command: for the tests that
#                    play a compromised guest, never for a node
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
FEATURES=()
KIND=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --hostile) FEATURES=(--features hostile); shift ;;
    --kernel) KIND=${2:-}; shift 2 ;;
    *) break ;;
  esac
done
case "$KIND" in auto|stockade|cloud) ;; *) echo "--kernel auto|stockade|cloud" >&2; exit 2 ;; esac
[ ${#FEATURES[@]} = 0 ] || [ -n "${1:-}" ] || { echo "--hostile needs an output dir" >&2; exit 2; }
OUT=${1:-/usr/share/stockade}
TARGET=x86_64-unknown-linux-gnu

vmlinux=""
if [ "$KIND" != cloud ]; then
  if vmlinux=$(bash "$ROOT/packaging/guest/kernel/build.sh"); then
    KIND=stockade
  elif [ "$KIND" = stockade ]; then
    echo "the Stockade guest kernel could not be built (above)" >&2
    exit 1
  else
    echo "guest kernel: the Stockade kernel could not be built (above); using Debian's cloud kernel" >&2
    KIND=cloud
  fi
fi

if [ "$KIND" = cloud ]; then
  # Debian's linux-image-cloud-amd64, unpacked (not installed: installing would add it
  # to the host's bootloader) by setup.sh under /var/cache/stockade.
  KROOT=${STOCKADE_KERNEL_ROOT:-/var/cache/stockade/guest-kernel}
  kver=${STOCKADE_GUEST_KERNEL:-$(ls "$KROOT/lib/modules" 2>/dev/null | grep -E 'cloud-amd64$' | sort -V | tail -1)}
  [ -n "$kver" ] && [ -e "$KROOT/boot/vmlinuz-$kver" ] || {
    echo "no cloud-amd64 guest kernel under $KROOT (run packaging/setup.sh --deps)" >&2
    exit 1
  }
fi

# The agent is PID 1 of a guest with no libc: link it statically, libseccomp included
# (the guest's containers get the same seccomp hardening as the container backend's).
# Without SOURCE_DATE_EPOCH (packaging/deb/build.sh sets it for the archive below): a
# build script tracks it, and a new value would rebuild the agent's dependency chain.
(cd "$ROOT" && env -u SOURCE_DATE_EPOCH RUSTFLAGS="-C target-feature=+crt-static" \
  LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
  cargo build --release --locked -p stockade-agent --target "$TARGET" "${FEATURES[@]}")
agent=$ROOT/target/$TARGET/release/stockade-agent

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{proc,sys,dev,run,tmp,newroot,lib/modules/stockade}
install -m 0755 "$agent" "$work/init"
# Stockade's seccomp profiles, compiled once here by the agent itself (the same binary
# hashes and loads them): otherwise every guest compiles them at boot, which under TCG
# takes about 65 ms of a cold pod's first create.
mkdir -p "$work/lib/stockade"
"$agent" --precompile-filters >"$work/lib/stockade/seccomp-filters"
if [ "$KIND" = cloud ]; then
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

  # What a pod may use of its own VM's kernel beyond the boot set, loaded on demand: the
  # kernel asks for a module by name or alias (`ip link add … type bridge` asks for
  # rtnl-link-bridge) through /proc/sys/kernel/modprobe, which the agent points at itself
  # (agent/src/modprobe.rs). Shipped with their dependencies and two tables: the kernel's
  # aliases of these modules, and each module's dependencies in load order.
  features=(
    bridge br_netfilter veth tun macvlan ipvlan vxlan dummy
    nf_tables nft_chain_nat nft_ct nft_nat nft_masq nft_compat nft_reject_inet nft_fib_inet
    ip_tables iptable_filter iptable_nat iptable_mangle iptable_raw
    ip6_tables ip6table_filter ip6table_nat ip6table_mangle
    xt_MASQUERADE xt_conntrack xt_addrtype xt_nat xt_comment xt_mark xt_multiport xt_tcpudp
    xt_REDIRECT xt_state
  )
  kmods=$KROOT/lib/modules/$kver
  depmod -b "$KROOT" "$kver"
  declare -A modpath moddeps
  while IFS= read -r line; do
    path=${line%%:*}
    name=$(basename "$path"); name=${name%.xz}; name=${name%.ko}; name=${name//-/_}
    modpath[$name]=$path
    deps=""
    for d in ${line#*:}; do
      dn=$(basename "$d"); dn=${dn%.xz}; dn=${dn%.ko}; deps="$deps ${dn//-/_}"
    done
    moddeps[$name]=$deps
  done <"$kmods/modules.dep"
  declare -A shipped
  load_order() { # name -> the names it needs, deepest first, then itself
    local m=$1 d
    for d in ${moddeps[$m]:-}; do load_order "$d"; done
    echo "$m"
  }
  : >"$work/lib/modules/stockade/modules.dep"
  for f in "${features[@]}"; do
    f=${f//-/_}
    [ -n "${modpath[$f]:-}" ] || { echo "guest module $f: not in $kver, skipped" >&2; continue; }
    order=$(load_order "$f" | awk '!seen[$0]++')
    for m in $order; do
      [ -n "${shipped[$m]:-}" ] && continue
      shipped[$m]=1
      src=$kmods/${modpath[$m]}
      dst=$work/lib/modules/stockade/$m.ko
      [ -e "$dst" ] && continue
      case "$src" in
        *.xz) xz -dc "$src" >"$dst" ;;
        *) cp "$src" "$dst" ;;
      esac
    done
  done
  for m in "${!shipped[@]}"; do
    echo "$m: $(load_order "$m" | awk '!seen[$0]++' | grep -vx "$m" | tr '\n' ' ')"
  done | sort >"$work/lib/modules/stockade/modules.dep"
  awk 'NR==FNR { ok[$1] = 1; next } $1 == "alias" { m = $3; gsub("-", "_", m); if (m in ok) print $2, m }' \
    <(printf '%s\n' "${!shipped[@]}") "$kmods/modules.alias" >"$work/lib/modules/stockade/modules.alias"

fi

mkdir -p "$OUT"
# The Stockade kernel's initramfs is the agent alone: left uncompressed, the kernel
# copies it instead of inflating it (QEMU loads it either way).
compress="gzip -6"
[ "$KIND" = stockade ] && compress=cat
cpio_opts=()
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
  # A reproducible archive (packaging/deb/build.sh sets it): fixed mtimes, and inode
  # and device numbers that do not depend on this build's temp dir.
  find "$work" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  cpio_opts=(--reproducible)
fi
(cd "$work" && find . -print0 | sort -z | cpio --null -o -H newc --quiet --owner=0:0 "${cpio_opts[@]}") | $compress >"$OUT/initrd.img.tmp"
mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
if [ "$KIND" = cloud ]; then
  install -m 0644 "$KROOT/boot/vmlinuz-$kver" "$OUT/vmlinuz.tmp"
else
  install -m 0644 "$vmlinux" "$OUT/vmlinuz.tmp"
  kver=$(cat "$(dirname "$vmlinux")/release")
fi
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
echo "$kver" >"$OUT/guest-kernel-release"
echo "$KIND" >"$OUT/guest-kernel"
echo "guest assets in $OUT: vmlinuz ($KIND kernel $kver), initrd.img ($(du -h "$OUT/initrd.img" | cut -f1))"
