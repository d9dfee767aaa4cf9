#!/usr/bin/env bash
# Where the trade path's CPU goes: the whole system started by run.sh on spare ports (release
# build, RUST_LOG=warn), POST /orders with wrk -t1 -c64 for 10 s, and `perf record -e cpu-clock`
# on the order leader, a follower, the catalog and the front end meanwhile. Prints each one's
# share of time in the kernel, the share of a few kernel paths (fdatasync, TCP send and
# receive, epoll_wait, futex; each with what it calls) and its top symbols (self time, kernel
# included); the raw profiles stay in OUT for `perf report -i`.
#
#   bench/profile.sh [OUT]        (default target/profile)
# Needs wrk and perf (apt-get install wrk linux-perf); installs them when root.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/profile}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

if ! command -v wrk >/dev/null || ! command -v perf >/dev/null; then
    if [[ $(id -u) == 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk linux-perf >/dev/null
    else
        echo "needs wrk and perf: apt-get install wrk linux-perf" >&2
        exit 1
    fi
fi
cargo build --release --quiet -p catalog -p order -p frontend

work="$(mktemp -d)"
base=$((30000 + RANDOM % 20000))
export STATE_DIR="$work/state" CATALOG_PORT=$base ORDER_PORTS="$((base + 1)),$((base + 2)),$((base + 3))"
export FRONTEND_PORT=$((base + 4)) METRICS_PORTS="$((base + 5)),$((base + 6)),$((base + 7)),$((base + 8))"
export RUST_LOG=warn
cleanup() {
    ./run.sh stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
./run.sh >/dev/null

cat >"$work/sell.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"name":"GameStart","quantity":1,"type":"sell"}'
wrk.headers["Content-Type"] = "application/json"
LUA
leader="$(curl -s "http://127.0.0.1:$FRONTEND_PORT/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["leader"])')"
follower=$((leader % 3 + 1))
declare -A pid_of=([leader]="$(cat "$STATE_DIR/order-$leader.pid")" [follower]="$(cat "$STATE_DIR/order-$follower.pid")" [catalog]="$(cat "$STATE_DIR/catalog.pid")" [frontend]="$(cat "$STATE_DIR/frontend.pid")")

# Warm up, then profile the three processes during one loaded run.
wrk -t1 -c64 -d2s -s "$work/sell.lua" "http://127.0.0.1:$FRONTEND_PORT/orders" >/dev/null
wrk -t1 -c64 -d10s -s "$work/sell.lua" "http://127.0.0.1:$FRONTEND_PORT/orders" >"$work/wrk.out" &
wrk_pid=$!
sleep 1
perfs=()
names=(leader follower catalog frontend)
for name in "${names[@]}"; do
    perf record -q -e cpu-clock -F 999 -g -p "${pid_of[$name]}" -o "$out/$name.data" -- sleep 8 \
        >/dev/null 2>&1 &
    perfs+=($!)
done
wait "${perfs[@]}" "$wrk_pid"
echo "machine: $(nproc) cores, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "load: $(awk '/Requests\/sec/ {print $2}' "$work/wrk.out") trades/s (wrk -t1 -c64 -d10s, POST /orders)"
share() { # report symbol
    awk -v s="$2" '$4 == s {print $1; found = 1; exit} END {if (!found) print "0%"}' <<<"$1"
}
for name in "${names[@]}"; do
    inclusive="$(perf report -i "$out/$name.data" --children --sort symbol --stdio -g none 2>/dev/null | grep -E "^ +[0-9]")"
    report="$(perf report -i "$out/$name.data" --no-children --sort symbol --stdio -g none 2>/dev/null | grep -E "^ +[0-9]" | sed -E "s/ +- +- *$//; s/ +$//")"
    kernel="$(awk '/\[k\]/ {sum += $1} END {printf "%.0f", sum}' <<<"$report")"
    echo "== $name (pid ${pid_of[$name]}): ${kernel}% of samples in the kernel"
    echo "   fdatasync $(share "$inclusive" __x64_sys_fdatasync), TCP send $(share "$inclusive" tcp_sendmsg), TCP receive $(share "$inclusive" tcp_recvmsg), epoll_wait $(share "$inclusive" __x64_sys_epoll_wait), futex $(share "$inclusive" __x64_sys_futex); top symbols:"
    head -n 15 <<<"$report"
done
echo "raw profiles: $out/{leader,follower,catalog,frontend}.data (perf report -i FILE)"
