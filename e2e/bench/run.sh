#!/usr/bin/env bash
# Benchmarks berth against containerd in the same run; paste the output into BENCHMARKS.md.
# Needs root (containerd). Usage: e2e/bench/run.sh [BENCH...] (default: all of them);
# ROUNDS=N sets the number of alternating rounds (default 3).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/install-deps.sh
cargo build --release --workspace --bins --locked
benches=("$@")
if [ ${#benches[@]} -eq 0 ]; then
    benches=(content_ingest metadata_ops unpack tasks)
fi
for bench in "${benches[@]}"; do
    echo "## $bench"
    BERTH_BIN_DIR=$PWD/target/release cargo bench -p berth-e2e --bench "$bench"
done
