#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) in turn for SECONDS_PER_TARGET seconds each.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]      (default: 600 s, every target)
#
# Each target starts from the committed seeds (corpus/<t>/), copied into its grown corpus
# (grown/<t>/, ignored by git), where libFuzzer keeps what it adds. A crash is written to
# artifacts/<t>/; the target is then started again for the rest of its time (at most
# MAX_RESTARTS times). Logs: artifacts/logs/<t>.log. At the end a table gives, per target,
# executions, seconds, exec/s, grown corpus size and crashes. Exit status 1 if anything
# crashed.
set -uo pipefail

cd "$(dirname "$0")"
FUZZ_DIR=$(pwd)

SECONDS_PER_TARGET=${1:-600}
shift || true
ALL_TARGETS=(http_head order_body frame order_log_line catalog_record leadership_record)
if [ $# -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi
MAX_RESTARTS=${MAX_RESTARTS:-5}
export RUSTC_BOOTSTRAP=1   # cargo-fuzz passes -Z flags; the toolchain is stable
# Sanitizer: address by default; SANITIZER=none if ASan cannot be built or linked.
SANITIZER=${SANITIZER:-address}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked || exit 1
fi

echo "building the fuzz targets (sanitizer: $SANITIZER)"
cargo fuzz build -s "$SANITIZER" || exit 1

mkdir -p artifacts/logs
summary=()
failed=0
for t in "${TARGETS[@]}"; do
    if [ ! -f "fuzz_targets/$t.rs" ]; then
        echo "no target $t" >&2
        exit 2
    fi
    mkdir -p "grown/$t" "artifacts/$t"
    cp -n "corpus/$t/"* "grown/$t/" 2>/dev/null || true
    log="artifacts/logs/$t.log"
    : > "$log"
    runs=0 secs=0 crashes=0 starts=0
    start=$(date +%s)
    remaining=$SECONDS_PER_TARGET
    while [ "$remaining" -gt 0 ] && [ "$starts" -le "$MAX_RESTARTS" ]; do
        starts=$((starts + 1))
        echo "=== $t: run $starts, ${remaining}s ($(date -u +%H:%M:%S))" | tee -a "$log"
        part=$(mktemp)
        run_start=$(date +%s)
        cargo fuzz run -s "$SANITIZER" "$t" "grown/$t" "corpus/$t" -- \
            -max_total_time="$remaining" -rss_limit_mb=2048 -max_len=65536 -timeout=10 \
            -jobs=1 -print_final_stats=1 >"$part" 2>&1
        rc=$?
        cat "$part" >> "$log"
        # libFuzzer's -jobs mode also leaves the job's log in the working directory.
        rm -f fuzz-*.log
        # 'Done N runs in S second(s)' ends a clean run; a crash leaves only the final stats.
        n=$(grep -oE '^Done [0-9]+ runs' "$part" | tail -1 | grep -oE '[0-9]+')
        [ -z "$n" ] && n=$(grep -oE '^stat::number_of_executed_units: [0-9]+' "$part" | tail -1 | grep -oE '[0-9]+$')
        [ -z "$n" ] && n=$(grep -oE '^#[0-9]+' "$part" | tail -1 | tr -d '#')
        runs=$((runs + ${n:-0}))
        # Seconds spent fuzzing, as libFuzzer counts them (wall time of the run if it crashed).
        s=$(grep -oE '^Done [0-9]+ runs in [0-9]+ second' "$part" | tail -1 | awk '{print $5}')
        [ -z "$s" ] && s=$(( $(date +%s) - run_start ))
        secs=$((secs + s))
        if grep -qE 'Test unit written to|ERROR: libFuzzer|ERROR: AddressSanitizer|panicked at' "$part" || [ $rc -ne 0 ]; then
            crashes=$((crashes + 1))
            failed=1
            echo "!!! $t crashed (exit $rc):" | tee -a "$log"
            grep -E 'panicked at|ERROR:|Test unit written to' "$part" | head -5 | tee -a "$log"
        fi
        rm -f "$part"
        elapsed=$(( $(date +%s) - start ))
        remaining=$((SECONDS_PER_TARGET - elapsed))
        [ $rc -eq 0 ] && break   # a clean run used all its time
    done
    wall=$(( $(date +%s) - start ))
    files=$(find "grown/$t" -type f | wc -l)
    bytes=$(find "grown/$t" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
    rate=$(( secs > 0 ? runs / secs : runs ))
    line=$(printf '%-18s runs=%-11s secs=%-5s (wall %ss) exec/s=%-8s corpus=%s files/%s bytes crashes=%s' \
        "$t" "$runs" "$secs" "$wall" "$rate" "$files" "$bytes" "$crashes")
    echo "$line" | tee -a "$log"
    summary+=("$line")
done

echo
echo "=== summary (sanitizer: $SANITIZER, ${SECONDS_PER_TARGET}s per target)"
printf '%s\n' "${summary[@]}"
if [ $failed -ne 0 ]; then
    echo "crashes: see artifacts/<target>/ and artifacts/logs/"
    exit 1
fi
