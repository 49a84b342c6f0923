#!/usr/bin/env bash
# Benchmarks berth against containerd in the same run; paste the output into BENCHMARKS.md.
# Needs root (containerd). ROUNDS=N sets the number of alternating rounds (default 3).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/install-deps.sh
cargo build --release --workspace --bins --locked
BERTH_BIN_DIR=$PWD/target/release cargo bench -p berth-e2e --bench content_ingest
