#!/usr/bin/env bash
# Cost of recording: Herse single-hop and ProxyJump throughput with full recording vs a
# bench-only build with a null recorder, same target and cipher. The two builds run in
# alternation, ROUNDS times (default 3), and the table gives medians: one pair of runs
# on this shared 2-core machine moves by about ±0.1 in ratio.
# Usage: [ROUNDS=N] bench/recording-overhead.sh [--size-mib N] [--cipher C] (passed to bench/spine.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/herse/target}"
ROUNDS=${ROUNDS:-3}
W=$(mktemp -d /tmp/herse-overhead.XXXXXX)
trap 'rm -rf "$W"' EXIT
cargo build --release --quiet -p herse-gateway --features bench-null-recorder
cp "$CARGO_TARGET_DIR/release/herse" "$W/herse-null"
cargo build --release --quiet -p herse-gateway
cp "$CARGO_TARGET_DIR/release/herse" "$W/herse-recorded"
for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS: recorded" >&2
  HERSE_BIN="$W/herse-recorded" PATHS="herse-jump herse-hop" bench/spine.sh --setups 3 "$@" \
    | grep '^| herse-' | sed 's/^/recorded /' >> "$W/rows"
  echo "round $round/$ROUNDS: null recorder (bench-only build)" >&2
  HERSE_BENCH_UNRECORDED=1 HERSE_BIN="$W/herse-null" PATHS="herse-jump herse-hop" bench/spine.sh --setups 3 "$@" \
    | grep '^| herse-' | sed 's/^/null /' >> "$W/rows"
done
python3 - "$W/rows" "$ROUNDS" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    build, rest = line.split(" ", 1)
    cells = [c.strip() for c in rest.strip().strip("|").split("|")]
    # path, setup median, setup p90, MB/s, client, middle, target
    rows.setdefault((cells[0], build), []).append((float(cells[3]), float(cells[5])))
print(f"{sys.argv[2]} rounds, medians (ratio: median of each round's recorded/null)")
print()
print("| path | recorded MB/s | null MB/s | ratio | gateway CPU-s/GiB recorded / null |")
print("|---|---|---|---|---|")
for path in ("herse-hop", "herse-jump"):
    rec, null = rows.get((path, "recorded"), []), rows.get((path, "null"), [])
    if not rec or not null:
        continue
    ratio = statistics.median(r[0] / n[0] for r, n in zip(rec, null))
    med = lambda xs, i: statistics.median(x[i] for x in xs)
    print(f"| {path} | {med(rec, 0):.0f} | {med(null, 0):.0f} | {ratio:.2f} | "
          f"{med(rec, 1):.2f} / {med(null, 1):.2f} |")
EOF
