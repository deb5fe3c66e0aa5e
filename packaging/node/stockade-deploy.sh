#!/bin/sh
# stockade-deploy.sh: installs Stockade on the Kubernetes node it runs on, and removes it
# again: the entry point of the stockade-deploy DaemonSet (stockade-deploy.yaml), in the
# manner of kata-deploy.
#
#   stockade-deploy.sh install     the payload -> /opt/stockade, the shim on containerd's
#                                  PATH, the runtime in containerd's config, the node
#                                  label, the RuntimeClass
#   stockade-deploy.sh uninstall   the reverse (the DaemonSet's preStop hook)
#
# Both are idempotent: a second install writes nothing and does not restart containerd;
# a second uninstall finds nothing to remove.
#
# Environment (the defaults are what the DaemonSet needs; the tests override them):
#   HOST_ROOT           the host's / as this container sees it (default /host)
#   PAYLOAD             the Debian package's tree: usr/bin, usr/libexec/stockade,
#                       usr/share/stockade (default /opt/stockade-artifacts)
#   NODE_NAME           this node (the DaemonSet sets it from spec.nodeName)
#   KUBECTL             kubectl (default kubectl, with the pod's service account)
#   RESTART_CONTAINERD  shell command that restarts the host's containerd (default:
#                       systemctl in the host's namespaces, through PID 1)
#   CONTAINERD_CONFIG   containerd's config, a host path (default
#                       /etc/containerd/config.toml)
#   CONTAINERD_VERSION  X.Y, only needed when that config does not exist yet and the
#                       host's `containerd --version` cannot tell
set -eu
umask 022

HOST_ROOT=${HOST_ROOT:-/host}
PAYLOAD=${PAYLOAD:-/opt/stockade-artifacts}
KUBECTL=${KUBECTL:-kubectl}
RESTART_CONTAINERD=${RESTART_CONTAINERD:-nsenter --target 1 --mount --uts --ipc --net --pid -- systemctl restart containerd}
CONTAINERD_CONFIG=${CONTAINERD_CONFIG:-/etc/containerd/config.toml}

# Host paths: what the configs and symlinks we write say. $HOST_ROOT$X is the same file
# as this container sees it.
OPT=/opt/stockade
SHIM_CONFIG=$OPT/etc/configuration.toml
SHIM_LINK=/usr/local/bin/containerd-shim-stockade-v2
SHIM_TARGET=$OPT/bin/containerd-shim-stockade-v2
LABEL=stockade.io/runtime

DEST=$HOST_ROOT$OPT
SHIM=$PAYLOAD/usr/bin/containerd-shim-stockade-v2
RUNTIMECLASS=$PAYLOAD/usr/share/stockade/kubernetes/runtimeclass.yaml

log() { echo "stockade-deploy: $*" >&2; }
die() { log "error: $*"; exit 1; }

check_payload() {
  for f in usr/bin/containerd-shim-stockade-v2 \
    usr/libexec/stockade/vhost-device-vsock usr/libexec/stockade/virtiofsd \
    usr/share/stockade/vmlinuz usr/share/stockade/initrd.img \
    usr/share/stockade/guest-kernel usr/share/stockade/guest-kernel-release \
    usr/share/stockade/configuration.toml usr/share/stockade/kubernetes/runtimeclass.yaml; do
    [ -e "$PAYLOAD/$f" ] || die "payload incomplete: $PAYLOAD/$f missing"
  done
  [ -d "$HOST_ROOT/etc" ] || die "$HOST_ROOT/etc missing: is the host's / mounted at $HOST_ROOT?"
}

check_node_name() {
  [ -n "${NODE_NAME:-}" ] || die "NODE_NAME is not set (the DaemonSet sets it from spec.nodeName)"
}

# A release is named by the hash of its files, so an unchanged payload is recognised
# without comparing trees, and a changed one never lands on top of the files a running
# pod's shim was started from.
release_id() {
  (cd "$PAYLOAD" && find usr/bin/containerd-shim-stockade-v2 usr/libexec/stockade \
    usr/share/stockade \( -type f -o -type l \) -exec sha256sum {} + | LC_ALL=C sort |
    sha256sum | cut -c1-16)
}

# /opt/stockade/releases/<id>/{bin,libexec,share} hold the files; current -> releases/<id>;
# bin, libexec and share -> current/... are the fixed paths the node's configs name.
# A new release is copied to a temp dir beside the others and renamed into place, then
# `current` is switched with one rename(2), so a shim started at any moment sees either
# the whole old release or the whole new one. Processes running from the old release
# keep their (deleted) files open; they are not disturbed.
install_files() {
  id=$(release_id)
  mkdir -p "$DEST/releases"
  rm -rf "$DEST"/releases/.tmp.* "$DEST/.current.tmp"   # a copy interrupted earlier
  if [ "$(readlink "$DEST/current" 2>/dev/null || true)" = "releases/$id" ] &&
    [ -d "$DEST/releases/$id" ]; then
    log "files: release $id already installed in $OPT"
  else
    if [ ! -d "$DEST/releases/$id" ]; then
      tmp=$(mktemp -d "$DEST/releases/.tmp.XXXXXX")
      chmod 755 "$tmp"   # mktemp's 0700 would shut out the VM helpers' own uids
      mkdir "$tmp/bin"
      cp -a "$SHIM" "$tmp/bin/"
      cp -a "$PAYLOAD/usr/libexec/stockade" "$tmp/libexec"
      cp -a "$PAYLOAD/usr/share/stockade" "$tmp/share"
      mv "$tmp" "$DEST/releases/$id"
    fi
    ln -s "releases/$id" "$DEST/.current.tmp"
    mv -T "$DEST/.current.tmp" "$DEST/current"
    for old in "$DEST"/releases/*; do
      [ "$old" = "$DEST/releases/$id" ] || rm -rf "$old"
    done
    log "files: release $id installed in $OPT"
  fi
  for d in bin libexec share; do
    [ -L "$DEST/$d" ] || ln -s "current/$d" "$DEST/$d"
  done
}

# The node's Stockade config: the packaged one with the helper and guest asset paths
# moved to /opt/stockade. Written only when absent, so an administrator's edits survive
# upgrades (a new release's new keys keep their defaults until then).
install_config() {
  cfg=$DEST/etc/configuration.toml
  if [ -e "$cfg" ]; then
    log "config: keeping $SHIM_CONFIG (written only when absent; remove it to get the packaged one)"
    return
  fi
  mkdir -p "$DEST/etc"
  sed -E \
    -e "s|^(kernel[[:space:]]*=[[:space:]]*).*|\\1\"$OPT/share/vmlinuz\"|" \
    -e "s|^(initrd[[:space:]]*=[[:space:]]*).*|\\1\"$OPT/share/initrd.img\"|" \
    -e "s|^(vsock_backend[[:space:]]*=[[:space:]]*).*|\\1\"$OPT/libexec/vhost-device-vsock\"|" \
    -e "s|^(virtiofsd[[:space:]]*=[[:space:]]*).*|\\1\"$OPT/libexec/virtiofsd\"|" \
    "$PAYLOAD/usr/share/stockade/configuration.toml" >"$cfg.tmp"
  # A key the packaged config lacks would leave the shim's default (/usr/...) in force.
  for key in kernel initrd vsock_backend virtiofsd; do
    [ "$(grep -c "^${key}[[:space:]]*=[[:space:]]*\"$OPT/" "$cfg.tmp")" = 1 ] ||
      { rm -f "$cfg.tmp"; die "the payload's configuration.toml has no single '$key = ' line to point at $OPT"; }
  done
  mv "$cfg.tmp" "$cfg"
  log "config: wrote $SHIM_CONFIG"
}

# containerd finds a shim by its runtime type on its PATH; systemd's default PATH has
# /usr/local/bin, before /usr/bin (where the Debian package puts it, if installed too).
# Whatever is there and not our symlink stays: checked, with /opt/stockade's layout,
# before anything is written.
check_host() {
  for d in bin libexec share; do
    if [ -e "$DEST/$d" ] && [ ! -L "$DEST/$d" ]; then
      die "$OPT/$d exists and is not the symlink to current/$d this installer makes (not installed by stockade-deploy?): remove $OPT"
    fi
  done
  link=$HOST_ROOT$SHIM_LINK
  if [ -L "$link" ]; then
    case $(readlink "$link") in
      "$OPT"/*) ;;   # ours
      *) die "$SHIM_LINK is a symlink to $(readlink "$link"), not into $OPT: remove it to let stockade-deploy install" ;;
    esac
  elif [ -e "$link" ]; then
    die "$SHIM_LINK exists and is not a symlink (a manual install?): remove it to let stockade-deploy install"
  fi
}

install_link() {
  link=$HOST_ROOT$SHIM_LINK
  if [ "$(readlink "$link" 2>/dev/null || true)" = "$SHIM_TARGET" ]; then
    log "link: $SHIM_LINK -> $SHIM_TARGET already"
    return
  fi
  mkdir -p "$(dirname "$link")"
  rm -f "$link.tmp"
  ln -s "$SHIM_TARGET" "$link.tmp"
  mv -T "$link.tmp" "$link"
  log "link: $SHIM_LINK -> $SHIM_TARGET"
  if [ -e "$HOST_ROOT/usr/bin/containerd-shim-stockade-v2" ]; then
    log "note: /usr/bin/containerd-shim-stockade-v2 (the Debian package?) is shadowed by $SHIM_LINK on systemd's PATH"
  fi
}

# The host's containerd version (X.Y), for a config file the shim has to create.
containerd_version() {
  if [ -n "${CONTAINERD_VERSION:-}" ]; then
    echo "$CONTAINERD_VERSION"
    return
  fi
  v=$(chroot "$HOST_ROOT" containerd --version 2>/dev/null |
    awk '{ sub(/^v/, "", $3); split($3, p, "."); print p[1] "." p[2] }') || true
  case $v in
    [0-9]*.[0-9]*) echo "$v" ;;
    *) die "$CONTAINERD_CONFIG does not exist and the host's 'containerd --version' did not say the version: set CONTAINERD_VERSION (e.g. 1.7 or 2.1)" ;;
  esac
}

# Runs the shim's own `install|uninstall containerd` against the host's config; returns
# success when it changed the config (its last lines say `changed:` or `unchanged:`).
shim_containerd() {
  verb=$1
  shift
  out=$("$SHIM" "$verb" containerd --root "$HOST_ROOT" --config "$CONTAINERD_CONFIG" "$@") ||
    die "'containerd-shim-stockade-v2 $verb containerd' failed (its error is above)"
  printf '%s\n' "$out" | sed 's/^/stockade-deploy: shim: /' >&2
  if printf '%s\n' "$out" | grep '^changed:' >/dev/null; then
    return 0
  elif printf '%s\n' "$out" | grep '^unchanged:' >/dev/null; then
    return 1
  fi
  die "'containerd-shim-stockade-v2 $verb containerd' said neither changed: nor unchanged:"
}

restart_containerd() {
  log "restarting containerd: $RESTART_CONTAINERD"
  sh -c "$RESTART_CONTAINERD" >&2 || die "restarting containerd failed: $RESTART_CONTAINERD"
}

install() {
  check_payload
  check_node_name
  check_host
  # The shim picks the config format (version 2 or 3) of a file it creates by
  # containerd's version, which it would ask the containerd on its own PATH: none in here.
  if [ -e "$HOST_ROOT$CONTAINERD_CONFIG" ]; then
    set --
  else
    version=$(containerd_version) || exit 1
    set -- --containerd-version "$version"
  fi
  install_files
  install_config
  install_link
  if shim_containerd install --shim-config "$SHIM_CONFIG" "$@"; then
    restart_containerd
  else
    log "containerd's config unchanged: no restart"
  fi
  # Only now may pods that need Stockade be scheduled here (the RuntimeClass selects
  # nodes by this label).
  "$KUBECTL" label node "$NODE_NAME" "$LABEL=true" --overwrite >&2 ||
    die "labelling node $NODE_NAME failed"
  "$KUBECTL" apply -f "$RUNTIMECLASS" >&2 || die "creating the RuntimeClass failed"
  log "installed on node $NODE_NAME"
}

# The reverse order: the cluster first (no new Stockade pods here; a kubectl failure
# stops before the host is touched), then the host, containerd's restart last. As a
# preStop hook this runs as an exec through containerd, whose restart may cut that exec
# off: systemd finishes the restart anyway, and nothing is left to do after it.
# Pods still running with Stockade keep running from their deleted files, but containerd
# cannot clean them up without the shim: drain the node first.
uninstall() {
  check_node_name
  "$KUBECTL" label node "$NODE_NAME" "$LABEL-" >&2 ||
    die "removing label $LABEL from node $NODE_NAME failed"
  # The RuntimeClass is cluster-wide: it goes with the last node that had Stockade.
  others=$("$KUBECTL" get nodes -l "$LABEL=true" -o name) ||
    die "listing the nodes labelled $LABEL=true failed"
  if [ -z "$others" ]; then
    "$KUBECTL" delete -f "$RUNTIMECLASS" --ignore-not-found >&2 ||
      die "deleting the RuntimeClass failed"
  else
    log "keeping the RuntimeClass: other nodes still have Stockade"
  fi

  changed=0
  shim_containerd uninstall && changed=1
  link=$HOST_ROOT$SHIM_LINK
  if [ -L "$link" ]; then
    case $(readlink "$link") in
      "$OPT"/*) rm -f "$link"; log "removed $SHIM_LINK" ;;
      *) log "leaving $SHIM_LINK: it does not point into $OPT" ;;
    esac
  fi
  if [ -e "$DEST" ] || [ -L "$DEST" ]; then
    rm -rf "$DEST"
    log "removed $OPT"
  fi
  if [ "$changed" = 1 ]; then
    restart_containerd
  else
    log "containerd's config unchanged: no restart"
  fi
  log "uninstalled from node $NODE_NAME"
}

case ${1:-} in
  install) install ;;
  uninstall) uninstall ;;
  *) echo "usage: $0 install|uninstall" >&2; exit 2 ;;
esac
