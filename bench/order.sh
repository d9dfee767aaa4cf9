#!/usr/bin/env bash
# Measures the order service: the catalog and three order replicas (release binaries, every
# one fsyncing its own log) on loopback, replica 1 elected leader; `order_bench` in a separate
# process measures sequential PlaceOrder round trips and throughput with 64 in flight on one
# connection. Alongside, as the floor of what one order must wait for, it reports fdatasync
# latency on the same disk.
#
#   bench/order.sh [ROUNDS]        (default 5 rounds; the median is printed last)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"

cargo build --release --quiet -p catalog -p order -p bench
state="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$state"
}
trap cleanup EXIT

base=$((30000 + RANDOM % 20000))
catalog="127.0.0.1:$base"
peers="1=127.0.0.1:$((base + 1)),2=127.0.0.1:$((base + 2)),3=127.0.0.1:$((base + 3))"
./target/release/catalog --listen "$catalog" --state-dir "$state/catalog" \
    --seed data/catalog.csv 2>"$state/catalog.log" &
pids+=($!)
for id in 1 2 3; do
    ./target/release/order --id "$id" --peers "$peers" --catalog "$catalog" \
        --state-dir "$state/order-$id" 2>"$state/order-$id.log" &
    pids+=($!)
done
for port in $base $((base + 1)) $((base + 2)) $((base + 3)); do
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.05
    done
done

echo "machine: $(nproc) cores, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
python3 - "$state" <<'PY'
import os, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
samples = []
for _ in range(500):
    os.write(fd, b"x" * 100)
    t = time.perf_counter(); os.fdatasync(fd); samples.append(time.perf_counter() - t)
samples.sort()
print("reference: fdatasync of a small append on this disk: p50 %.0f us, p99 %.0f us"
      % (samples[250] * 1e6, samples[495] * 1e6))
PY
./target/release/order_bench --addr "127.0.0.1:$((base + 1))" --elect-at "$catalog" --leader-id 1 \
    --rounds "$rounds"
