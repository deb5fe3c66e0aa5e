#!/usr/bin/env bash
# Stockade setup for a fresh Debian 12 (bookworm) machine. Idempotent.
#
#   packaging/setup.sh            install system deps, build, install the shim + config
#   packaging/setup.sh --deps     only the system dependencies (what the tests need)
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
  runc iproute2 busybox-static ca-certificates curl
  build-essential pkg-config protobuf-compiler
  libseccomp-dev libelf-dev libcap-ng-dev
  containernetworking-plugins
)

need_apt=0
for p in "${BOOKWORM_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  log "installing Debian 12 packages"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${BOOKWORM_PKGS[@]}" >/dev/null
fi

# containerd 1.7 and docker.io 26 from trixie.
have_ver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }
if ! have_ver containerd | grep -q '^1\.7' || ! have_ver docker.io | grep -q '^26\.'; then
  log "fetching containerd 1.7 and docker.io 26 from Debian 13"
  state=/var/cache/stockade/apt-trixie
  mkdir -p "$state"/{lists/partial,archives/partial,etc/sources.list.d,etc/preferences.d}
  cat >"$state/etc/sources.list.d/trixie.sources" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  : >"$state/etc/sources.list"
  opts=(-o "Dir::State=$state" -o "Dir::State::Lists=$state/lists" -o "Dir::State::status=/var/lib/dpkg/status"
        -o "Dir::Cache=$state" -o "Dir::Cache::Archives=$state/archives"
        -o "Dir::Etc::SourceList=$state/etc/sources.list" -o "Dir::Etc::SourceParts=$state/etc/sources.list.d"
        -o "Dir::Etc::Preferences=$state/etc/preferences" -o "Dir::Etc::PreferencesParts=$state/etc/preferences.d"
        -o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1")
  apt-get "${opts[@]}" update -qq
  debs=$state/debs
  rm -rf "$debs"; mkdir -p "$debs"
  (cd "$debs" && apt-get "${opts[@]}" download containerd docker.io docker-cli)
  log "installing $(ls "$debs" | tr '\n' ' ')"
  # dockerd must not start on install with its own config; we start private daemons.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "$debs"/*.deb >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

# Host-wide daemons started by the packages would fight our private ones for nothing.
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl disable --now docker.service docker.socket >/dev/null 2>&1 || true
fi

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
