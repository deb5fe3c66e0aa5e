#!/usr/bin/env bash
# Build the Stockade guest kernel: Debian's linux-source, `make allnoconfig` plus
# stockade.config (next to this script), no modules; an uncompressed vmlinux that QEMU
# boots through its PVH entry.
#
#   packaging/guest/kernel/build.sh      prints the path of the built vmlinux
#
# Cached under /var/cache/stockade/stockade-kernel/<hash of the source package's version,
# the fragment and this script>: a second run with the same inputs builds nothing.
# Exits non-zero with a reason on stderr when it cannot build (setup.sh then falls back
# to Debian's cloud kernel).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${STOCKADE_KERNEL_CACHE:-/var/cache/stockade/stockade-kernel}
FRAGMENT=$HERE/stockade.config
log() { printf '[kernel] %s\n' "$*" >&2; }

for tool in make gcc flex bison bc; do
  command -v "$tool" >/dev/null || { log "cannot build: $tool is missing"; exit 1; }
done
[ -e /usr/include/libelf.h ] || { log "cannot build: libelf-dev is missing"; exit 1; }

# The newest linux-source-X.Y the machine's apt sources offer (Debian 12: 6.1).
pkg=${STOCKADE_KERNEL_SOURCE:-$(apt-cache depends linux-source 2>/dev/null |
  awk '/Depends: linux-source-[0-9]/ { print $2; exit }')}
[ -n "$pkg" ] || { log "cannot build: no linux-source package in this machine's apt sources"; exit 1; }
version=$(apt-cache policy "$pkg" | awk '/Candidate:/ { print $2 }')
[ -n "$version" ] && [ "$version" != "(none)" ] || { log "cannot build: $pkg has no candidate"; exit 1; }
hash=$( { echo "$pkg $version"; cat "$FRAGMENT" "${BASH_SOURCE[0]}"; } | sha256sum | cut -c1-16)
out=$CACHE/$hash
if [ -s "$out/vmlinux" ]; then
  echo "$out/vmlinux"
  exit 0
fi

work=$(mktemp -d /var/tmp/stockade-kernel.XXXXXX)
trap 'rm -rf "$work"' EXIT
log "building the Stockade guest kernel from $pkg $version (about 10 minutes on 2 cores)"
(cd "$work" && apt-get download -qq "$pkg=$version" 2>/dev/null) ||
  { log "cannot build: download of $pkg failed"; exit 1; }
dpkg-deb --fsys-tarfile "$work"/"$pkg"_*.deb | tar -x -C "$work" --wildcards './usr/src/*.tar.xz'
tar -xJf "$work"/usr/src/"$pkg".tar.xz -C "$work"
src=$work/$pkg
make -C "$src" -s allnoconfig KCONFIG_ALLCONFIG="$FRAGMENT" >/dev/null
# Every option the fragment asks for must have held (an unmet dependency drops it).
missing=$(grep -E '^CONFIG_[A-Z0-9_]+=' "$FRAGMENT" | while IFS= read -r want; do
  grep -qxF "$want" "$src/.config" || echo "$want"
done)
[ -z "$missing" ] || { log "cannot build: the config drops: $(echo $missing)"; exit 1; }
make -C "$src" -s -j"$(nproc)" vmlinux KBUILD_BUILD_TIMESTAMP="Debian $version" \
  KBUILD_BUILD_USER=stockade KBUILD_BUILD_HOST=stockade >"$work/build.log" 2>&1 ||
  { tail -20 "$work/build.log" >&2; log "cannot build: make failed"; exit 1; }
mkdir -p "$out.tmp"
# The symbol table is no use to QEMU: only the loadable segments and the PVH note.
objcopy --strip-all "$src/vmlinux" "$out.tmp/vmlinux"
cp "$src/.config" "$out.tmp/config"
make -C "$src" -s kernelrelease >"$out.tmp/release"
rm -rf "$out"
mv "$out.tmp" "$out"
log "built $(cat "$out/release"): $(du -h "$out/vmlinux" | cut -f1)"
echo "$out/vmlinux"
