#!/usr/bin/env bash
# Recording format benchmark: writer throughput and memory, seek to the middle of a
# large recording through the index vs a scan, and full verification speed.
# Usage: bench/recordings.sh [SIZE_MIB]   (default 1024; needs that much free disk)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/herse/target}"
cargo build --release --quiet -p session-recordings --example seek_bench
W=$(mktemp -d /var/tmp/herse-recbench.XXXXXX)
trap 'rm -rf "$W"' EXIT
echo "| measure | value |"
echo "|---|---|"
"$CARGO_TARGET_DIR/release/examples/seek_bench" "$W" "${1:-1024}"
