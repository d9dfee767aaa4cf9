#!/usr/bin/env bash
# The course's evaluation reproduced: the whole system started by run.sh on spare ports,
# `client evaluate` (5 sessions, p = 0, 0.2, ..., 0.8) with the cache on (size 5), with the
# cache off, and with the cache on while simulate_crashes.sh --random kills and restarts
# replicas (with five times the requests, so that the crashes fall across the whole sweep).
# CSV, SVG plots, the printed tables and the audits go to docs/evaluation/.
#
#   bench/evaluate.sh [REQUESTS_PER_SESSION]     (default 400)
set -euo pipefail
cd "$(dirname "$0")/.."
requests="${1:-400}"
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
    local crash_pid=""
    if [[ "$crashes" == yes ]]; then
        ./simulate_crashes.sh --random --count 12 --interval 0.5 --restart-after 0.5 \
            >"$out/$label-kills.txt" 2>&1 &
        crash_pid=$!
    fi
    ./target/release/client evaluate --port "$FRONTEND_PORT" --sessions 5 \
        --requests "$requests" --out "$out" --label "$label" | tee "$out/$label.txt"
    [[ -n "$crash_pid" ]] && wait "$crash_pid"
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
run_config cache-on 5 no "$requests"
run_config cache-off 0 no "$requests"
# Longer sessions, so that the crashes fall across the whole sweep.
run_config crashes 5 yes $((requests * 5))
