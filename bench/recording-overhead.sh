#!/usr/bin/env bash
# Cost of recording: Herse single-hop and ProxyJump throughput with full recording vs a
# bench-only build with a null recorder, in one run, same target and cipher.
# Usage: bench/recording-overhead.sh [--size-mib N] (passed to bench/spine.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/herse/target}"
W=$(mktemp -d /tmp/herse-overhead.XXXXXX)
trap 'rm -rf "$W"' EXIT
cargo build --release --quiet -p herse-gateway --features bench-null-recorder
cp "$CARGO_TARGET_DIR/release/herse" "$W/herse-null"
cargo build --release --quiet -p herse-gateway
cp "$CARGO_TARGET_DIR/release/herse" "$W/herse-recorded"
echo "recorded:"
HERSE_BIN="$W/herse-recorded" PATHS="herse-jump herse-hop" bench/spine.sh --setups 3 "$@"
echo "null recorder (bench-only build):"
HERSE_BENCH_UNRECORDED=1 HERSE_BIN="$W/herse-null" PATHS="herse-jump herse-hop" bench/spine.sh --setups 3 "$@"
