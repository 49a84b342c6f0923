#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks formatting and lints, builds every
# binary, then runs unit, integration and end-to-end tests (real berthd, real ctr).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

echo "== format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build"
cargo build --workspace --bins --locked

echo "== tests"
cargo test --workspace --locked
