#!/usr/bin/env bash
# Shows that the simulator has teeth: switches off each safety rule in turn and runs seeds
# until a violation turns up, reporting the seed, the invariant broken and the time it took.
# The test suite does the same within 3,000 seeds; this runs every rule with a larger budget
# and says how long each took.
#
#   sim/teeth.sh [MAX_SEEDS]     (500000)
set -euo pipefail
cd "$(dirname "$0")/.."

max=${1:-500000}
cargo build --release -p simulator --bin simulate >/dev/null
status=0
for rule in $(target/release/simulate --list-rules | awk '{ print $1 }'); do
    started=$(date +%s.%N)
    found=$(target/release/simulate --break "$rule" --seeds "$max" --trace-lines 0 2>/dev/null |
        grep -m1 VIOLATION || true)
    took=$(echo "$(date +%s.%N) - $started" | bc)
    if [ -n "$found" ]; then
        printf '%-24s caught in %6.1f s: %s\n' "$rule" "$took" "$found"
    else
        printf '%-24s NOT caught in %d seeds\n' "$rule" "$max"
        status=1
    fi
done
exit $status
