#!/usr/bin/env bash
# Starts the whole berth stack on the embedded metadata default: installs what it needs,
# builds release binaries and runs berthd in the foreground (Ctrl-C stops everything).
#   root:   /var/lib/berth   state: /run/berth   socket: /run/berth/berth.sock
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --release --workspace --bins --locked

bin=$PWD/target/release
socket=${BERTH_ADDRESS:-/run/berth/berth.sock}
echo "starting berthd; in another shell try:"
echo "  $bin/berth --address $socket version"
echo "  echo hello | $bin/berth --address $socket content ingest hello && $bin/berth --address $socket content ls"
echo "  ctr --address $socket content ls"
exec "$bin/berthd" --address "$socket" "$@"
