#!/usr/bin/env bash
# Build the test image offline from Debian's busybox-static (plus a static syscall probe)
# as a docker-archive tarball that both `ctr images import` and `docker load` accept.
# The same rootfs, with ENTRYPOINT ["/pause"], serves as the CRI tests' pause image.
#   integration/image/build.sh OUT.tar [REF] [ENTRYPOINT-JSON]
set -euo pipefail
out=$1
ref=${2:-stockade.test/busybox:latest}
entrypoint=${3:-null}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,root,var/run}
chmod 1777 "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
gcc -static -O2 -o "$root/bin/probe" "$here/probe.c"
gcc -static -O2 -o "$root/pause" "$here/pause.c"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
tar --numeric-owner --owner=0 --group=0 --sort=name --mtime=@0 -C "$root" -cf "$work/layer.tar" .
layer_sha=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
mkdir -p "$work/img/$layer_sha"
mv "$work/layer.tar" "$work/img/$layer_sha/layer.tar"
cat >"$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Entrypoint":$entrypoint,"Cmd":$( [ "$entrypoint" = null ] && echo '["sh"]' || echo null ),"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:$layer_sha"]},"history":[{"created_by":"stockade integration/image/build.sh"}]}
JSON
cfg_sha=$(sha256sum "$work/config.json" | cut -d' ' -f1)
mv "$work/config.json" "$work/img/$cfg_sha.json"
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]\n' "$cfg_sha" "$ref" "$layer_sha" >"$work/img/manifest.json"
tar --numeric-owner --owner=0 --group=0 -C "$work/img" -cf "$out" .
