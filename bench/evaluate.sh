#!/usr/bin/env bash
# The course's evaluation reproduced: the whole system started by run.sh on spare ports,
# `client evaluate` (5 sessions, p = 0, 0.2, ..., 0.8) with the cache on (size 5), with the
# cache off, and with the cache on while simulate_crashes.sh --random kills and restarts
# replicas for as long as the load runs (with five times the requests, so that the crashes
# fall across the sweep). CSV, SVG plots, the printed tables and the audits go to
# docs/evaluation/. The crash run also records every request and each leader change and
# plots latency over time with the kills and elections marked (crashes-timeline.svg).
#
#   bench/evaluate.sh [REQUESTS_PER_SESSION [CONFIGURATION...]]
#       REQUESTS_PER_SESSION   default 400
#       CONFIGURATION          cache-on, cache-off, crashes (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
requests="${1:-400}"
shift || true
configs=("$@")
((${#configs[@]} > 0)) || configs=(cache-on cache-off crashes)
for config in "${configs[@]}"; do
    case "$config" in
    cache-on | cache-off | crashes) ;;
    *) echo "unknown configuration $config (cache-on, cache-off, crashes)" >&2; exit 2 ;;
    esac
done
out=docs/evaluation
mkdir -p "$out"
cargo build --release --quiet -p catalog -p order -p frontend -p client

run_config() { # label cache-size crashes(yes|no) requests
    local label="$1" cache="$2" crashes="$3" requests="$4" work base
    work="$(mktemp -d)"
    base=$((30000 + RANDOM % 20000))
    export STATE_DIR="$work" FRONTEND_PORT=$base CATALOG_PORT=$((base + 1))
    export ORDER_PORTS="$((base + 2)),$((base + 3)),$((base + 4))" CACHE_SIZE="$cache" RUST_LOG=warn
    ./run.sh >/dev/null
    local record=()
    if [[ "$crashes" == yes ]]; then
        record=(--timeline "$out/$label-requests.csv" --leaders "$out/$label-leaders.csv")
    fi
    ./target/release/client evaluate --port "$FRONTEND_PORT" --sessions 5 \
        --requests "$requests" --out "$out" --label "$label" "${record[@]}" |
        tee "$out/$label.txt" &
    local load_pid=$!
    if [[ "$crashes" == yes ]]; then
        # Kills only while the load runs (at most 12): a kill after it would measure nothing.
        ./simulate_crashes.sh --random --count 12 --interval 0.3 --restart-after 0.3 \
            --while-running "$load_pid" >"$out/$label-kills.txt" 2>&1
    fi
    wait "$load_pid"
    if [[ "$crashes" == yes ]]; then
        ./target/release/client timeline --requests "$out/$label-requests.csv" \
            --leaders "$out/$label-leaders.csv" --kills "$out/$label-kills.txt" \
            --out "$out/$label-timeline.svg" | tee "$out/$label-timeline.txt"
        # Kept compressed (tens of thousands of rows); `gunzip -k` to re-render.
        gzip -9f "$out/$label-requests.csv"
    fi
    local dirs=()
    for id in 1 2 3; do dirs+=(--state-dir "$work/order-$id"); done
    for _ in $(seq 1 100); do
        BAZAAR_CLUSTER_TOKEN="$(<"$work/cluster-token")" \
            ./target/release/order audit "${dirs[@]}" --catalog "127.0.0.1:$CATALOG_PORT" \
            >"$out/$label-audit.txt" 2>&1 && break
        sleep 0.3
    done
    tail -n 1 "$out/$label-audit.txt"
    ./run.sh stop >/dev/null
    rm -rf "$work"
}

echo "machine: $(nproc) cores, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for config in "${configs[@]}"; do
    case "$config" in
    cache-on) run_config cache-on 5 no "$requests" ;;
    cache-off) run_config cache-off 0 no "$requests" ;;
    # Longer sessions, so that the crashes fall across the whole sweep.
    crashes) run_config crashes 5 yes $((requests * 5)) ;;
    esac
done
