#!/usr/bin/env bash
# The test command: sets up what the tests need (packaging/setup.sh --deps), builds the
# workspace in release, checks formatting and lints, and runs every test: unit tests and
# the end-to-end suite against a private containerd 1.7 and dockerd 26.
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
echo "== tests"
cargo test --locked --workspace --no-fail-fast
