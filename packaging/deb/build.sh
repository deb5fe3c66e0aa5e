#!/usr/bin/env bash
# Build the Stockade Debian package:
#
#   packaging/deb/build.sh [--lintian]
#
# prints the path of target/debian/stockade_<version>-<revision>_amd64.deb as its last
# (and only) line on stdout; everything else goes to stderr. --lintian also runs lintian
# on it and fails on any error or warning. Idempotent; any cwd; run as root after
# `packaging/setup.sh --deps` (build deps, the bundled helpers in /usr/local/bin, the
# cached guest kernel). About 20 seconds when cargo has built already.
#
# The package is staged by hand and built with `dpkg-deb --build --root-owner-group`,
# not with cargo-deb: cargo-deb is not installed here (nor in Debian 12), and it packages
# a cargo target's outputs, while this package also ships the guest kernel and initramfs
# (packaging/guest/build.sh), virtiofsd and vhost-device-vsock (built from crates.io by
# setup.sh, bundled because Debian 12 packages neither), and generated files
# (Depends from dpkg-shlibdeps, debian/copyright with the linked crates).
#
# Environment:
#   VHOST_DEVICE_VSOCK, VIRTIOFSD   the helpers to bundle (default /usr/local/bin/...)
#   GUEST_KERNEL                    stockade (default), auto or cloud: packaging/guest/
#                                   build.sh --kernel; the Stockade kernel comes from its
#                                   cache (/var/cache/stockade/stockade-kernel)
#   SOURCE_DATE_EPOCH               mtimes in the package (default: the last commit's)
#
# Sources kept next to this script: changelog (its newest entry's version must be
# Cargo.toml's plus a Debian revision), copyright (a template: the crate lists are
# filled in here), postrm, lintian-overrides, containerd-shim-stockade-v2.8 (the man
# page), completion.bash.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/packaging/deb
OUT=$ROOT/target/debian
PKG=stockade
ARCH=amd64
LIBEXEC=/usr/libexec/stockade
log() { printf '[deb] %s\n' "$*" >&2; }
die() { printf '[deb] error: %s\n' "$*" >&2; exit 1; }

LINTIAN=0
case "${1:-}" in
  "") ;;
  --lintian) LINTIAN=1 ;;
  *) echo "usage: packaging/deb/build.sh [--lintian]" >&2; exit 2 ;;
esac

for tool in cargo dpkg-deb dpkg-shlibdeps dpkg-parsechangelog strip strings readelf gzip cpio md5sum; do
  command -v "$tool" >/dev/null || die "$tool is missing (run packaging/setup.sh --deps)"
done
[ "$(dpkg --print-architecture)" = "$ARCH" ] || die "builds the $ARCH package only, on $ARCH"

# The version: the workspace's, plus the changelog's Debian revision.
VERSION=$(awk '/^\[workspace\.package\]/ { p = 1; next } /^\[/ { p = 0 }
  p && $1 == "version" { gsub(/"/, "", $3); print $3; exit }' "$ROOT/Cargo.toml")
[ -n "$VERSION" ] || die "no version in [workspace.package] of $ROOT/Cargo.toml"
DEBVER=$(dpkg-parsechangelog -l "$HERE/changelog" -S Version)
[ "${DEBVER%-*}" = "$VERSION" ] ||
  die "packaging/deb/changelog's newest entry is $DEBVER but Cargo.toml says $VERSION: add an entry for $VERSION-1"
DEB=$OUT/${PKG}_${DEBVER}_${ARCH}.deb

# Reproducible mtimes (dpkg-deb clamps to it) and gzip headers.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null ||
    dpkg-parsechangelog -l "$HERE/changelog" -S Timestamp)
fi
export SOURCE_DATE_EPOCH

VSOCK=${VHOST_DEVICE_VSOCK:-/usr/local/bin/vhost-device-vsock}
VIRTIOFSD=${VIRTIOFSD:-/usr/local/bin/virtiofsd}
for helper in "$VSOCK" "$VIRTIOFSD"; do
  [ -x "$helper" ] || die "$helper is missing: run packaging/setup.sh --deps (it builds vhost-device-vsock and virtiofsd from crates.io into /usr/local/bin), or set VHOST_DEVICE_VSOCK / VIRTIOFSD"
done

log "building containerd-shim-stockade-v2 (release)"
# Without SOURCE_DATE_EPOCH: libbpf-sys's build script tracks it, and a value other than
# the developer's builds' (none) would rebuild the shim's whole dependency chain.
(cd "$ROOT" && env -u SOURCE_DATE_EPOCH cargo build --release --locked -p stockade-shim >&2)
SHIM=$ROOT/target/release/containerd-shim-stockade-v2

mkdir -p "$OUT"
WORK=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# The stage is debian/<package> of a source-like tree, where dpkg-shlibdeps expects it.
S=$WORK/src/debian/$PKG
umask 022
mkdir -p "$S"

# dh_strip's way: no symbols, no .comment/.note (the build id stays).
install_elf() { # src dst
  install -D -m 0755 "$1" "$2"
  strip --remove-section=.comment --remove-section=.note --strip-unneeded "$2"
}
install_elf "$SHIM" "$S/usr/bin/containerd-shim-stockade-v2"
install_elf "$VSOCK" "$S$LIBEXEC/vhost-device-vsock"
install_elf "$VIRTIOFSD" "$S$LIBEXEC/virtiofsd"

# The guest assets, built into the stage (never into /usr/share/stockade, whose dev
# assets the tests use).
log "building the guest assets"
bash "$ROOT/packaging/guest/build.sh" --kernel "${GUEST_KERNEL:-stockade}" "$S/usr/share/stockade" >&2
for f in vmlinuz initrd.img guest-kernel guest-kernel-release; do
  [ -s "$S/usr/share/stockade/$f" ] || die "packaging/guest/build.sh made no $f"
  chmod 0644 "$S/usr/share/stockade/$f"
done

# The configuration, pointing at the bundled helpers: the node's copy (a conffile) and
# the defaults the shim falls back to.
conf=$WORK/configuration.toml
sed -e "s#^vsock_backend = .*#vsock_backend = \"$LIBEXEC/vhost-device-vsock\"#" \
    -e "s#^virtiofsd = .*#virtiofsd = \"$LIBEXEC/virtiofsd\"#" \
    "$ROOT/configs/configuration.toml" >"$conf"
if ! grep -qx "vsock_backend = \"$LIBEXEC/vhost-device-vsock\"" "$conf" ||
  ! grep -qx "virtiofsd = \"$LIBEXEC/virtiofsd\"" "$conf"; then
  die "configs/configuration.toml: the vsock_backend / virtiofsd lines were not rewritten to $LIBEXEC (did their form change?)"
fi
! grep -n /usr/local "$conf" >&2 || die "configs/configuration.toml still names /usr/local (above)"
install -D -m 0644 "$conf" "$S/etc/stockade/configuration.toml"
install -D -m 0644 "$conf" "$S/usr/share/stockade/configuration.toml"

# Snippets for the daemons, for the admin to use (or `containerd-shim-stockade-v2
# install`): the package never writes under /etc/containerd or /etc/docker.
install -D -m 0644 "$ROOT/configs/containerd-cri.toml" "$S/usr/share/stockade/containerd/config-v2.toml"
install -D -m 0644 "$ROOT/configs/containerd2-cri.toml" "$S/usr/share/stockade/containerd/config-v3.toml"
install -D -m 0644 "$ROOT/configs/docker-daemon.json" "$S/usr/share/stockade/docker/daemon.json"
install -D -m 0644 "$ROOT/configs/runtimeclass.yaml" "$S/usr/share/stockade/kubernetes/runtimeclass.yaml"

# The warm pool's unit: installed, never enabled or started here ([pool] size is 0).
unit=$S/lib/systemd/system/stockade-pool.service
install -D -m 0644 "$ROOT/packaging/systemd/stockade-pool.service" "$unit"
sed -i -e 's#/usr/local/bin/#/usr/bin/#g' \
  -e '/^Description=/a Documentation=man:containerd-shim-stockade-v2(8)' "$unit"
grep -qx 'ExecStart=/usr/bin/containerd-shim-stockade-v2 pool' "$unit" ||
  die "packaging/systemd/stockade-pool.service: ExecStart was not rewritten to /usr/bin"
! grep -n /usr/local "$unit" >&2 || die "the pool unit still names /usr/local (above)"

install -d -m 0755 "$S/usr/share/man/man8"
gzip -9n <"$HERE/containerd-shim-stockade-v2.8" >"$S/usr/share/man/man8/containerd-shim-stockade-v2.8.gz"
install -D -m 0644 "$HERE/completion.bash" "$S/usr/share/bash-completion/completions/containerd-shim-stockade-v2"
install -D -m 0644 "$HERE/lintian-overrides" "$S/usr/share/lintian/overrides/$PKG"
install -d -m 0755 "$S/usr/share/doc/$PKG"
gzip -9n <"$HERE/changelog" >"$S/usr/share/doc/$PKG/changelog.Debian.gz"

# debian/copyright: the template with the crates each Rust binary links statically.
# Every license expression must be one the template's License fields cover: a new one
# stops the build until someone adds it there and here.
KNOWN_LICENSES=(
  "Apache-2.0" "MIT" "Zlib" "BSD-2-Clause" "BSD-3-Clause" "MPL-2.0"
  "MIT OR Apache-2.0" "Apache-2.0 OR MIT" "MIT/Apache-2.0" "Apache-2.0/MIT" "Apache-2.0 / MIT"
  "Apache-2.0 WITH LLVM-exception OR Apache-2.0 OR MIT" "0BSD OR MIT OR Apache-2.0"
  "MIT OR Zlib OR Apache-2.0" "Unlicense OR MIT" "Unlicense/MIT"
  "(MIT OR Apache-2.0) AND Unicode-3.0" "MPL-2.0 OR LGPL-3.0-or-later"
  "Apache-2.0 AND BSD-3-Clause" "Apache-2.0 OR BSD-3-Clause" "BSD-3-Clause OR Apache-2.0"
  "BSD-2-Clause OR Apache-2.0 OR MIT" "Apache-2.0 OR BSL-1.0"
)
# Crates that name a license file instead of an expression, and what it is.
declare -A LICENSE_FILES=([rust-criu]=MIT)
license_die() { printf '[deb] error: %s\n' "$*" >&2; exit 3; }
crate_list() { # cargo tree args -> " name version: license" lines, or fails
  local tree line name ver lic
  tree=$(cargo tree --offline --locked -e normal,no-proc-macro --prefix none \
    --format '{p}|{l}' "$@" 2>/dev/null) || return 1
  printf '%s\n' "$tree" | sed -e 's/ (\*)$//' -e 's/ ([^)|]*)|/|/' | grep -v '^$' |
    grep -v '^stockade-' | sort -u |
    while IFS='|' read -r line lic; do
      name=${line% *}; ver=${line##* v}
      if [ -z "$lic" ]; then
        lic=${LICENSE_FILES[$name]:-}
        [ -n "$lic" ] || license_die "crate $name $ver names a license file; see what it is, add it to LICENSE_FILES in packaging/deb/build.sh and to packaging/deb/copyright"
        lic="$lic (license file)"
      # grep without -q: under pipefail, -q's early exit can fail the pipeline with
      # the writer's SIGPIPE (one CI run lost the package build so).
      elif ! printf '%s\n' "${KNOWN_LICENSES[@]}" | grep -xF -- "$lic" >/dev/null; then
        license_die "crate $name $ver: license \"$lic\" is not covered by packaging/deb/copyright; add its text there and the expression to KNOWN_LICENSES in packaging/deb/build.sh"
      fi
      printf ' %s %s: %s\n' "$name" "$ver" "$lic"
    done
}
registry_crate() { # name version -> its source dir in cargo's registry, if there
  local d
  for d in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"$1-$2"; do
    [ -f "$d/Cargo.lock" ] && { echo "$d"; return 0; }
  done
  return 1
}
helper_crates() { # binary crate-name -> version in $hv, crate lines in $hc
  hv=$("$1" --version 2>/dev/null | awk -v n="$2" '$1 == n { print $2; exit }')
  local src rc=0
  if [ -n "$hv" ] && src=$(registry_crate "$2" "$hv"); then
    hc=$(crate_list --manifest-path "$src/Cargo.toml") || rc=$?
    [ "$rc" != 3 ] || exit 1
    [ "$rc" != 0 ] || return 0
  fi
  log "no crate list for $2 ${hv:-(version unknown)}: its source is not in cargo's registry"
  hc=" (not listed here: $2 ${hv:-} was not found in cargo's registry when this package was built; see the Cargo.lock of its crates.io release)"
  hv=${hv:-"(version unknown)"}
}
rc=0
stockade_crates=$(cd "$ROOT" && crate_list -p stockade-shim -p stockade-agent --target x86_64-unknown-linux-gnu) || rc=$?
[ "$rc" = 0 ] || { [ "$rc" = 3 ] && exit 1; die "cargo tree failed for the workspace"; }
[ -n "$stockade_crates" ] || die "cargo tree listed no crates"
helper_crates "$VIRTIOFSD" virtiofsd; virtiofsd_version=$hv; virtiofsd_crates=$hc
helper_crates "$VSOCK" vhost-device-vsock; vsock_version=$hv; vsock_crates=$hc
kind=$(cat "$S/usr/share/stockade/guest-kernel")
release=$(cat "$S/usr/share/stockade/guest-kernel-release")
if [ "$kind" = stockade ]; then
  source_version=$(strings "$S/usr/share/stockade/vmlinuz" |
    sed -n 's/^Linux version .* Debian \([^ ]*\)$/\1/p' | head -1)
  kernel="the Stockade kernel $release, built from Debian's linux source package
 ${source_version:-(version unknown)} (as shipped in linux-source-${release%.*})."
else
  kernel="Debian's cloud kernel $release (package linux-image-$release); initrd.img
 then also holds modules of it (GPL-2)."
fi
export stockade_crates virtiofsd_crates vsock_crates virtiofsd_version vsock_version kernel
awk '
  $0 == "@CRATES_STOCKADE@" { print ENVIRON["stockade_crates"]; next }
  $0 == "@CRATES_VIRTIOFSD@" { print ENVIRON["virtiofsd_crates"]; next }
  $0 == "@CRATES_VSOCK@" { print ENVIRON["vsock_crates"]; next }
  $0 == " @KERNEL@" { print " " ENVIRON["kernel"]; next }
  { gsub(/@VIRTIOFSD_VERSION@/, ENVIRON["virtiofsd_version"]);
    gsub(/@VSOCK_VERSION@/, ENVIRON["vsock_version"]); print }
' "$HERE/copyright" >"$S/usr/share/doc/$PKG/copyright"
! grep -n '@[A-Z_]*@' "$S/usr/share/doc/$PKG/copyright" >&2 || die "copyright: placeholders left (above)"
chmod 0644 "$S/usr/share/doc/$PKG/copyright"

# Depends: the shared libraries of every dynamically linked ELF file, through
# dpkg-shlibdeps (which wants a debian/control to read), then what the shim runs.
elves=()
while IFS= read -r -d '' f; do
  [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ] || continue
  if LC_ALL=C readelf -d "$f" 2>/dev/null | grep '(NEEDED)' >/dev/null; then
    elves+=("-edebian/$PKG/${f#"$S"/}")
  else
    log "static ELF, no shared library dependencies: ${f#"$S"}"
  fi
done < <(find "$S" -type f -print0 | sort -z)
# (It finds a binary's package by the DEBIAN dir above it.)
mkdir -p "$S/DEBIAN"
printf 'Source: %s\n\nPackage: %s\nArchitecture: %s\n' "$PKG" "$PKG" "$ARCH" >"$WORK/src/debian/control"
shlibs=$(cd "$WORK/src" && dpkg-shlibdeps -O "${elves[@]}" 2>"$WORK/shlibdeps.log") ||
  { cat "$WORK/shlibdeps.log" >&2; die "dpkg-shlibdeps failed"; }
cat "$WORK/shlibdeps.log" >&2
shlibs=${shlibs#shlibs:Depends=}
[ -n "$shlibs" ] || die "dpkg-shlibdeps found no dependencies"

installed_size=$(du -sk --exclude=./DEBIAN "$S" | cut -f1)
# Beyond the libraries: QEMU runs every VM (Debian 12's is 1:7.2); the VM backend's pod
# network is set up with ip and tc (iproute2); kubectl port-forward into a VM pod adds
# an iptables NAT rule in the pod's namespace (iptables, recommended).
cat >"$S/DEBIAN/control" <<EOF
Package: $PKG
Version: $DEBVER
Architecture: $ARCH
Maintainer: Stockade developers <stockade@example.invalid>
Installed-Size: $installed_size
Depends: $shlibs, qemu-system-x86 (>= 1:7.2), iproute2
Recommends: containerd (>= 1.7) | containerd.io, iptables
Suggests: docker.io
Section: admin
Priority: optional
Description: containerd runtime that runs each pod in a KVM microVM
 Stockade is a containerd runtime v2 shim, containerd-shim-stockade-v2
 (runtime type io.containerd.stockade.v2), for containerd, Docker, nerdctl
 and Kubernetes through containerd's CRI plugin. In VM mode each pod, or
 standalone container, gets its own QEMU microvm guest with Stockade's guest
 kernel and agent, its root file system shared over virtio-fs. On nodes
 without usable KVM it falls back to a hardened Linux container that shares
 the host's kernel.
 .
 This package ships the shim, the guest kernel and initramfs, virtiofsd and
 vhost-device-vsock (bundled: Debian 12 packages neither), the configuration
 in /etc/stockade, snippets for containerd, Docker and Kubernetes, and the
 warm pool's systemd unit, which is not enabled. It never changes the
 configuration of containerd or Docker: "containerd-shim-stockade-v2 install
 docker|containerd" does that when the admin runs it.
EOF
echo /etc/stockade/configuration.toml >"$S/DEBIAN/conffiles"
install -m 0755 "$HERE/postrm" "$S/DEBIAN/postrm"
(cd "$S" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
  xargs -0 md5sum) >"$S/DEBIAN/md5sums"
chmod 0644 "$S/DEBIAN/control" "$S/DEBIAN/conffiles" "$S/DEBIAN/md5sums"

# Modes: directories 0755, files 0644 but for executables.
find "$S" -type d -exec chmod 0755 {} +
find "$S" -type f ! -perm -u+x -exec chmod 0644 {} +
find "$S" -type f -perm -u+x -exec chmod 0755 {} +

# Only this build's package in target/debian (an older version's would be linted too).
rm -f "$OUT/${PKG}"_*_"$ARCH".deb
dpkg-deb --build --root-owner-group -Zxz "$S" "$DEB" >&2
log "built $DEB ($(du -h "$DEB" | cut -f1)); Depends: $shlibs, qemu-system-x86 (>= 1:7.2), iproute2"

if [ "$LINTIAN" = 1 ]; then
  command -v lintian >/dev/null || die "lintian is not installed (apt-get install lintian)"
  log "lintian"
  lintian --info --display-info --fail-on error,warning "$DEB" >&2
fi
echo "$DEB"
