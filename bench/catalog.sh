#!/usr/bin/env bash
# Measures the catalog binary from a separate process on loopback: sequential Lookup round
# trips on one connection, and the throughput of trades a leader has it apply (Apply requests
# of 64 entries, one at a time). Alongside, as a reference measured in the same run, the round trip of a Redis
# PING on one connection (redis-benchmark), which is the loopback floor plus a minimal server.
#
#   bench/catalog.sh [ROUNDS]        (default 5 rounds; the median is printed last)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"

cargo build --release --quiet -p catalog -p bench
state="$(mktemp -d)"
log="$state/catalog.log"
cleanup() {
    [[ -n "${catalog_pid:-}" ]] && kill "$catalog_pid" 2>/dev/null && wait "$catalog_pid" 2>/dev/null
    rm -rf "$state"
}
trap cleanup EXIT

./target/release/catalog --listen 127.0.0.1:0 --state-dir "$state/catalog" \
    --seed data/catalog.csv 2>"$log" &
catalog_pid=$!
addr=""
for _ in $(seq 1 200); do
    addr="$(grep -o 'catalog serving addr=[0-9.:]*' "$log" | head -n1 | cut -d= -f2 || true)"
    [[ -n "$addr" ]] && break
    kill -0 "$catalog_pid" 2>/dev/null || { cat "$log"; echo "catalog exited" >&2; exit 1; }
    sleep 0.05
done
[[ -n "$addr" ]] || { echo "catalog did not report its address" >&2; exit 1; }

echo "machine: $(nproc) cores, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "catalog at $addr, state in $state"
./target/release/catalog_bench --addr "$addr" --rounds "$rounds"

if command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null; then
    port=$((20000 + RANDOM % 20000))
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
        >/dev/null 2>&1 &
    redis_pid=$!
    for _ in $(seq 1 100); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && break
        sleep 0.05
    done
    echo "reference: redis PING round trip, 1 connection, no pipelining:"
    redis-benchmark -p "$port" -c 1 -n 20000 -t ping_mbulk --csv 2>/dev/null | tail -n +1
    kill "$redis_pid" 2>/dev/null; wait "$redis_pid" 2>/dev/null || true
else
    echo "reference skipped: install redis-server (apt-get install redis-server) for the Redis PING floor"
fi
