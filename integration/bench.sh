#!/usr/bin/env bash
# Benchmark (not a test): Stockade's container backend against runc's shim on the same
# private containerd, in one run.
#   - N sequential `ctr run --rm IMAGE true`, interleaved stockade/runc: medians, ratio
#   - RSS of one idle shim of each runtime (a container sleeping)
#   sudo integration/bench.sh [N]        (build first: cargo build --release)
set -euo pipefail
N=${1:-20}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHIM_DIR=${STOCKADE_SHIM_DIR:-$ROOT/target/release}
[ -x "$SHIM_DIR/containerd-shim-stockade-v2" ] || { echo "build first: cargo build --release" >&2; exit 1; }
tmp=$(mktemp -d /tmp/stockade-bench.XXXXXX)
sock=$tmp/containerd.sock
cat >"$tmp/config.toml" <<TOML
version = 2
root = "$tmp/root"
state = "$tmp/state"
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
TOML
printf '[runtime]\nmode = "container"\nstate_dir = "%s/stockade"\n' "$tmp" >"$tmp/stockade.toml"
PATH="$SHIM_DIR:$PATH" STOCKADE_CONFIG="$tmp/stockade.toml" containerd --config "$tmp/config.toml" >"$tmp/containerd.log" 2>&1 &
ctd=$!
cleanup() {
  ctr -a "$sock" -n bench task kill -s SIGKILL idle-stockade >/dev/null 2>&1 || true
  ctr -a "$sock" -n bench task kill -s SIGKILL idle-runc >/dev/null 2>&1 || true
  sleep 0.5
  for id in idle-stockade idle-runc; do
    ctr -a "$sock" -n bench task delete "$id" >/dev/null 2>&1 || true
    ctr -a "$sock" -n bench container delete "$id" >/dev/null 2>&1 || true
  done
  kill "$ctd" 2>/dev/null; wait "$ctd" 2>/dev/null || true
  grep -o " $tmp[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
C=(ctr -a "$sock" -n bench)
bash "$ROOT/integration/image/build.sh" "$tmp/img.tar" stockade.test/busybox:latest
"${C[@]}" images import "$tmp/img.tar" >/dev/null
IMG=stockade.test/busybox:latest

now() { date +%s%N; }
one() { # runtime id -> nanoseconds
  local t0 t1
  t0=$(now)
  "${C[@]}" run --rm --runtime "$1" "$IMG" "$2" true
  t1=$(now)
  echo $((t1 - t0))
}
# Warm up both (page cache, snapshot).
one io.containerd.stockade.v2 warm-s >/dev/null
one io.containerd.runc.v2 warm-r >/dev/null
s_times=(); r_times=()
for i in $(seq "$N"); do
  s_times+=("$(one io.containerd.stockade.v2 s$i)")
  r_times+=("$(one io.containerd.runc.v2 r$i)")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print int((a[NR/2]+a[NR/2+1])/2)}'; }
ms=$(median "${s_times[@]}"); mr=$(median "${r_times[@]}")
printf 'ctr run --rm true, %d runs each, interleaved\n' "$N"
printf '  stockade (container backend) median: %6.1f ms\n' "$(echo "$ms / 1000000" | bc -l)"
printf '  runc shim                   median: %6.1f ms\n' "$(echo "$mr / 1000000" | bc -l)"
printf '  ratio stockade/runc: %.3f (target <= 1.0)\n' "$(echo "$ms / $mr" | bc -l)"

"${C[@]}" run -d --runtime io.containerd.stockade.v2 "$IMG" idle-stockade sleep 1000 >/dev/null
"${C[@]}" run -d --runtime io.containerd.runc.v2 "$IMG" idle-runc sleep 1000 >/dev/null
sleep 2
rss() { # pattern -> KiB
  local pid
  pid=$(pgrep -f -- "$1.*-id $2 .*$sock" | head -1)
  awk '/^VmRSS/ {print $2}' "/proc/$pid/status"
}
rs=$(rss containerd-shim-stockade-v2 idle-stockade); rr=$(rss containerd-shim-runc-v2 idle-runc)
printf 'idle shim RSS: stockade %d KiB (%.1f MiB, target <= 8 MiB), runc %d KiB (%.1f MiB)\n' \
  "$rs" "$(echo "$rs/1024" | bc -l)" "$rr" "$(echo "$rr/1024" | bc -l)"
