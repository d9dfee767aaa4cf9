#!/usr/bin/env bash
# Runs the simulator for as long as it is given, on every core: each job takes its own range
# of seeds, all stop at the deadline, and the total seeds and events per second are reported.
# Exits 1 if any seed broke an invariant (its replay command is printed).
#
#   sim/soak.sh [SECONDS] [JOBS] [FIRST_SEED]     (600 s, one job per core, seed 0)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-600}
jobs=${2:-$(nproc)}
first=${3:-0}
cargo build --release -p simulator --bin simulate >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Seeds 10^12 apart per job, so that no two jobs ever run the same seed.
for job in $(seq 0 $((jobs - 1))); do
    target/release/simulate --for "$seconds" --first $((first + job * 1000000000000)) \
        >"$out/$job" 2>&1 &
done
wait || true

failed=0
for job in $(seq 0 $((jobs - 1))); do
    if grep -q VIOLATION "$out/$job"; then
        failed=1
        grep -E "VIOLATION|^replay:" "$out/$job"
    fi
done
awk '/ seeds, / { seeds += $1; events += $3; if ($(NF-5) + 0 > took) took = $(NF-5) + 0 }
     END { printf "%d jobs: %.0f seeds, %.0f events in %.0f s: %.0f seeds/s, %.0f events/s\n",
           NR, seeds, events, took, seeds / took, events / took }' \
    <(grep -h " seeds, " "$out"/*) | sed "s/^[0-9]* jobs/$jobs jobs/"
exit $failed
