#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks formatting and lints, builds every
# binary, then runs unit, integration and end-to-end tests (real berthd, real ctr).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

# One-shot builds gain nothing from incremental compilation, which costs gigabytes of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build"
cargo build --workspace --bins --locked

echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One summary line over every test binary (cargo prints one "test result" per binary).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
