#!/usr/bin/env bash
# Stockade setup for a fresh Debian 12 (bookworm) machine. Idempotent.
#
#   packaging/setup.sh            deps, build, install the shim + config, then run a
#                                 container through Stockade to show it works
#   packaging/setup.sh --deps     only the system dependencies (what the tests need)
#   packaging/setup.sh --no-demo  everything but the demo container
#
# Debian 12's containerd (1.6) and docker.io (20.10) cannot drive shim v2 runtimes the
# way we need, so containerd 1.7 and docker.io 26 come from Debian 13 (trixie) .debs,
# downloaded through a private apt state dir and installed with their dependencies
# resolved from Debian 12.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=${1:-all}
PREFIX=${PREFIX:-/usr/local}
log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "setup.sh must run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

BOOKWORM_PKGS=(
  runc iproute2 busybox-static ca-certificates curl procps bc bsdutils
  build-essential pkg-config protobuf-compiler flex bison
  libseccomp-dev libelf-dev libcap-ng-dev
  containernetworking-plugins
  qemu-system-x86 cpio xz-utils kmod
  lintian
)

need_apt=0
for p in "${BOOKWORM_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep 'install ok installed' >/dev/null || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  log "installing Debian 12 packages"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${BOOKWORM_PKGS[@]}" >/dev/null
fi

# .debs from another Debian suite, through a private apt state dir whose only source
# is the archive this machine's own apt configuration uses (behind any mirror or proxy).
#   fetch_debs SUITE DIR PACKAGE...   downloads into DIR (emptied first)
fetch_debs() {
  local suite=$1 dir=$2; shift 2
  local state=/var/cache/stockade/apt-$suite
  mkdir -p "$state"/{lists/partial,archives/partial,etc/sources.list.d,etc/preferences.d}
  local codename archive
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  archive=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null |
    awk -v c="$codename" '$2 == c { print $1; exit }')
  [ -n "$archive" ] || { echo "setup.sh: no apt source for Debian $codename in this machine's apt configuration" >&2; exit 1; }
  cat >"$state/etc/sources.list.d/$suite.sources" <<SRC
Types: deb
URIs: $archive
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  : >"$state/etc/sources.list"
  local opts=(-o "Dir::State=$state" -o "Dir::State::Lists=$state/lists" -o "Dir::State::status=/var/lib/dpkg/status"
        -o "Dir::Cache=$state" -o "Dir::Cache::Archives=$state/archives"
        -o "Dir::Etc::SourceList=$state/etc/sources.list" -o "Dir::Etc::SourceParts=$state/etc/sources.list.d"
        -o "Dir::Etc::Preferences=$state/etc/preferences" -o "Dir::Etc::PreferencesParts=$state/etc/preferences.d"
        -o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1")
  apt-get "${opts[@]}" update -qq
  rm -rf "$dir"; mkdir -p "$dir"
  (cd "$dir" && apt-get "${opts[@]}" download -qq "$@" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  for p in "$@"; do
    ls "$dir"/"${p}"_*.deb >/dev/null 2>&1 || { echo "setup.sh: $p not found in Debian $suite" >&2; exit 1; }
  done
}

# containerd 1.7 and docker.io 26 from trixie.
have_ver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }
if ! have_ver containerd | grep '^1\.7' >/dev/null || ! have_ver docker.io | grep '^26\.' >/dev/null; then
  log "fetching containerd 1.7 and docker.io 26 from Debian 13"
  debs=/var/cache/stockade/apt-trixie/debs
  fetch_debs trixie "$debs" containerd docker.io docker-cli
  log "installing $(ls "$debs" | tr '\n' ' ')"
  # dockerd must not start on install with its own config; we start private daemons.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "$debs"/*.deb >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

# The version matrix's second column (integration/src/daemons.rs): containerd 2.1 and
# docker.io 28 from Debian unstable, unpacked into a private prefix, never installed.
matrix=/var/cache/stockade/matrix/containerd2
if [ ! -x "$matrix/usr/bin/containerd" ] || [ ! -x "$matrix/usr/sbin/dockerd" ]; then
  log "fetching containerd 2.1 and docker.io 28 from Debian unstable into $matrix"
  debs=/var/cache/stockade/apt-sid/debs
  fetch_debs sid "$debs" containerd docker.io docker-cli
  rm -rf "$matrix"; mkdir -p "$matrix"
  for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$matrix"; done
  "$matrix/usr/bin/containerd" --version >&2
fi

# The VM backend's pieces: the guest kernel (unpacked, never installed on the host),
# the vhost-user vsock backend, virtiofsd, and the guest assets built from them.
kroot=/var/cache/stockade/guest-kernel
if ! ls "$kroot"/boot/vmlinuz-*-cloud-amd64 >/dev/null 2>&1; then
  log "unpacking Debian's cloud kernel for the guest"
  kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  [ -n "$kpkg" ] || { apt-get update -qq; kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'); }
  dl=$(mktemp -d)
  (cd "$dl" && apt-get download -qq "$kpkg")
  rm -rf "$kroot"; mkdir -p "$kroot"
  dpkg-deb -x "$dl"/*.deb "$kroot"
  rm -rf "$dl"
fi
if [ ! -x /usr/local/bin/vhost-device-vsock ]; then
  log "building vhost-device-vsock (crates.io)"
  cargo install --locked --quiet vhost-device-vsock --root /usr/local
fi
# virtio-fs: one virtiofsd per pod exports the container rootfs to the guest.
if [ ! -x /usr/local/bin/virtiofsd ]; then
  log "building virtiofsd (crates.io)"
  cargo install --locked --quiet virtiofsd --root /usr/local
fi
# The guest kernel is the Stockade kernel (packaging/guest/kernel/: built from Debian's
# linux-source once, about 5 minutes on 2 cores, then cached by the hash of its inputs),
# or Debian's cloud kernel when it cannot be built. The cloud kernel's assets also go to
# /usr/share/stockade/cloud, for the kernel benchmark and the test that keeps it working.
log "building the guest assets into /usr/share/stockade"
bash "$ROOT/packaging/guest/build.sh" /usr/share/stockade
bash "$ROOT/packaging/guest/build.sh" --kernel cloud /usr/share/stockade/cloud

[ "$MODE" = "--deps" ] && { log "dependencies ready"; exit 0; }

log "building the workspace (release)"
cd "$ROOT"
cargo build --release --locked -p stockade-shim
install -m 0755 target/release/containerd-shim-stockade-v2 "$PREFIX/bin/containerd-shim-stockade-v2"
mkdir -p /etc/stockade /usr/share/stockade
install -m 0644 configs/configuration.toml /usr/share/stockade/configuration.toml
if [ ! -e /etc/stockade/configuration.toml ]; then
  install -m 0644 configs/configuration.toml /etc/stockade/configuration.toml
else
  log "keeping the existing /etc/stockade/configuration.toml"
fi
log "installed $PREFIX/bin/containerd-shim-stockade-v2"
# The warm pool's unit, installed disabled: [pool] size is 0 until an operator sizes it.
sed "s#/usr/local/bin/#$PREFIX/bin/#" packaging/systemd/stockade-pool.service \
  >/etc/systemd/system/stockade-pool.service 2>/dev/null || true

# On a systemd host, the node's own containerd and dockerd serve Stockade from now on.
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl enable --now containerd.service docker.service >/dev/null 2>&1 || true
fi

[ "$MODE" = "--no-demo" ] && exit 0

# Demo: run a container through Stockade. Uses the node's dockerd or containerd when
# they answer, else a throwaway containerd in a temp dir (removed afterwards).
log "running a container through Stockade"
# The VM backend too: a container in its own guest prints the guest kernel's release.
# Software emulation (TCG) where KVM is not usable: slow, but the same guest.
vm_demo() { # ctr address
  local cfg accel
  accel=tcg
  containerd-shim-stockade-v2 check 2>/dev/null | grep '^kvm: usable' >/dev/null && accel=kvm
  cfg=$(mktemp /tmp/stockade-vm-demo.XXXXXX)
  printf '[runtime]\nmode = "vm"\n[hypervisor]\naccel = "%s"\n' "$accel" >"$cfg"
  log "running a container in a Stockade VM ($accel)"
  printf 'guest kernel: %s (host: %s)\n' \
    "$(ctr -a "$1" run --rm --runtime io.containerd.stockade.v2 --runtime-config-path "$cfg" \
        docker.io/library/busybox:latest stockade-vm-demo-$$ uname -r)" "$(uname -r)"
  rm -f "$cfg"
}
tar=/var/cache/stockade/busybox.tar
mkdir -p /var/cache/stockade
bash "$ROOT/integration/image/build.sh" "$tar" busybox:latest
if docker info >/dev/null 2>&1 && docker load -i "$tar" >/dev/null; then
  docker run --rm --runtime io.containerd.stockade.v2 busybox echo "hello from a Stockade container (docker)"
  if ctr version >/dev/null 2>&1; then
    ctr images import "$tar" >/dev/null
    vm_demo /run/containerd/containerd.sock
  fi
elif ctr version >/dev/null 2>&1; then
  ctr images import "$tar" >/dev/null
  ctr run --rm --runtime io.containerd.stockade.v2 docker.io/library/busybox:latest stockade-demo-$$ \
    echo "hello from a Stockade container (containerd)"
  vm_demo /run/containerd/containerd.sock
else
  tmp=$(mktemp -d /tmp/stockade-demo.XXXXXX)
  cat >"$tmp/config.toml" <<TOML
version = 2
root = "$tmp/root"
state = "$tmp/state"
[grpc]
  address = "$tmp/containerd.sock"
[ttrpc]
  address = "$tmp/containerd.sock.ttrpc"
TOML
  containerd --config "$tmp/config.toml" >"$tmp/containerd.log" 2>&1 &
  ctd=$!
  cleanup() {
    kill "$ctd" 2>/dev/null; wait "$ctd" 2>/dev/null || true
    grep -o " $tmp[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$tmp"
  }
  trap cleanup EXIT
  for _ in $(seq 100); do [ -S "$tmp/containerd.sock" ] && break; sleep 0.1; done
  ctr -a "$tmp/containerd.sock" images import "$tar" >/dev/null
  ctr -a "$tmp/containerd.sock" run --rm --runtime io.containerd.stockade.v2 \
    docker.io/library/busybox:latest demo echo "hello from a Stockade container (containerd)"
  vm_demo "$tmp/containerd.sock"
fi
