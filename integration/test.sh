#!/usr/bin/env bash
# The test command: sets up what the tests need (packaging/setup.sh --deps), builds the
# workspace in release, checks formatting and lints, and runs every test: unit tests and
# the end-to-end suites against a private containerd 1.7 and dockerd 26, then the
# end-to-end suites again against containerd 2.1 and dockerd 28.
#   sudo integration/test.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
[ "$(id -u)" = 0 ] || { echo "integration/test.sh must run as root (containerd, cgroups, mounts)" >&2; exit 1; }

bash packaging/setup.sh --deps
export CARGO_TERM_COLOR=never
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== build (release)"
cargo build --release --locked --workspace
echo "== clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
# The guest agent alone: the runtime without its VM backend (cargo feature `vm`).
cargo clippy --locked -p stockade-agent --all-targets -- -D warnings
# The test-only hostile agent (agent/src/hostile.rs) is code too.
cargo clippy --locked -p stockade-agent --features hostile --all-targets -- -D warnings
if cargo tree --locked -p stockade-agent -e features -i stockade-runtime | grep 'feature "vm"' >/dev/null; then
  echo "the agent must build without the runtime's VM backend" >&2; exit 1
fi
# The hostile guest (vm_e2e's vm_hostile_* cases): the agent with its test-only
# misbehaviours, in an initramfs of its own under target/ (never installed).
echo "== hostile guest initramfs"
bash packaging/guest/build.sh --hostile "$ROOT/target/guest-hostile"
# Among them `package` builds the Debian package (packaging/deb/build.sh), installs it
# with apt-get, runs containers through the installed files only and purges it again; a
# developer's setup.sh install is moved aside meanwhile. `node_installer` runs the
# Kubernetes node installer against scratch roots.
echo "== tests (containerd 1.7 + Docker 26)"
cargo test --locked --workspace --no-fail-fast
# The version matrix's second column (README, "Compatibility"): the end-to-end suites
# again against containerd 2.1 + Docker 28 from Debian unstable, unpacked by setup.sh
# under /var/cache/stockade/matrix (integration/src/daemons.rs). The CRI suite's
# create/remove cycles are fewer here; the shim's leak check is the same.
echo "== tests (containerd 2.1 + Docker 28)"
STOCKADE_DAEMONS=2 STOCKADE_CRI_CYCLES=10 \
  cargo test --locked -p stockade-integration --test e2e --test vm_e2e --test cri --no-fail-fast
