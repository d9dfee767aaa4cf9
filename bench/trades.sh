#!/usr/bin/env bash
# Trades against the references, all in one run on this machine:
#   1. POST /orders through the front end (wrk -t1 -c64 -d5s, one GameStart sell per request)
#      against Redis SET with `appendfsync always` (redis-benchmark -t set -c50 -n 100000) and
#      against a three-member etcd cluster taking PUTs through its JSON gateway at the leader
#      (wrk -t1 -c64 -d5s); alternating, ROUNDS times each; medians and ratios;
#   2. a sequential trade (client run --sessions 1 --p 1, trade p50) against one durable round
#      of this disk (p50 of three concurrent fdatasyncs of small appends, bench/fsync_probe.py);
#   3. CPU per 1,000 trades of every process (utime + stime from /proc over a wrk -c64 10 s
#      run): front end, leader, followers, catalog, and wrk separately.
# The whole system is started by run.sh on spare ports (release build, RUST_LOG=warn).
#
#   bench/trades.sh [ROUNDS]       (default 3)
# Needs wrk, redis-server, redis-tools and etcd-server from Debian; installs them when root.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
command -v etcd >/dev/null || need+=(etcd-server)
if ((${#need[@]})); then
    if [[ $(id -u) == 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "needs: apt-get install ${need[*]}" >&2
        exit 1
    fi
fi
cargo build --release --quiet -p catalog -p order -p frontend -p client

work="$(mktemp -d)"
base=$((30000 + RANDOM % 20000))
export STATE_DIR="$work/state" CATALOG_PORT=$base ORDER_PORTS="$((base + 1)),$((base + 2)),$((base + 3))"
export FRONTEND_PORT=$((base + 4)) METRICS_PORTS="$((base + 5)),$((base + 6)),$((base + 7)),$((base + 8))"
export CACHE_SIZE=5 RUST_LOG=warn
redis_port=$((base + 9))
etcd_ports=($((base + 10)) $((base + 11)) $((base + 12)))
etcd_peer_ports=($((base + 13)) $((base + 14)) $((base + 15)))
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    ./run.sh stop >/dev/null 2>&1 || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
    for _ in $(seq 1 200); do
        port_open "$1" && return 0
        sleep 0.05
    done
    echo "port $1 never opened" >&2
    return 1
}
median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

./run.sh >/dev/null

mkdir -p "$work/redis"
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work/redis" --save '' \
    --appendonly yes --appendfsync always --daemonize no >"$work/redis.log" 2>&1 &
pids+=($!)

cluster=""
for i in 0 1 2; do
    cluster+="${cluster:+,}m$i=http://127.0.0.1:${etcd_peer_ports[$i]}"
done
for i in 0 1 2; do
    etcd --name "m$i" --data-dir "$work/etcd-$i" \
        --listen-client-urls "http://127.0.0.1:${etcd_ports[$i]}" \
        --advertise-client-urls "http://127.0.0.1:${etcd_ports[$i]}" \
        --listen-peer-urls "http://127.0.0.1:${etcd_peer_ports[$i]}" \
        --initial-advertise-peer-urls "http://127.0.0.1:${etcd_peer_ports[$i]}" \
        --initial-cluster "$cluster" --initial-cluster-state new \
        --initial-cluster-token bench >"$work/etcd-$i.log" 2>&1 &
    pids+=($!)
done
wait_port "$redis_port"
for port in "${etcd_ports[@]}"; do wait_port "$port"; done
# The member that leads takes the PUTs (a follower would forward them).
etcd_leader=""
for _ in $(seq 1 100); do
    for port in "${etcd_ports[@]}"; do
        status="$(curl -s -X POST "http://127.0.0.1:$port/v3/maintenance/status" -d '{}' || true)"
        if python3 -c 'import json,sys; s=json.loads(sys.argv[1]); sys.exit(0 if s.get("leader") and s["leader"] == s["header"]["member_id"] else 1)' "$status" 2>/dev/null; then
            etcd_leader=$port
        fi
    done
    [[ -n "$etcd_leader" ]] && break
    sleep 0.1
done
[[ -n "$etcd_leader" ]] || { echo "etcd elected no leader" >&2; exit 1; }

cat >"$work/sell.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"name":"GameStart","quantity":1,"type":"sell"}'
wrk.headers["Content-Type"] = "application/json"
LUA
cat >"$work/put.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"key":"Z2FtZXN0YXJ0","value":"MQ=="}'
wrk.headers["Content-Type"] = "application/json"
LUA

# One wrk run; prints requests/s, and fails loudly on any non-2xx answer or socket error.
wrk_rps() { # seconds url script
    local out
    out="$(wrk -t1 -c64 -d"$1"s -s "$3" "$2")"
    if grep -q 'Non-2xx\|Socket errors' <<<"$out"; then
        echo "wrk saw errors at $2:" >&2
        grep 'Non-2xx\|Socket errors' <<<"$out" >&2
    fi
    awk '/Requests\/sec/ {print $2}' <<<"$out"
}
redis_rps() {
    redis-benchmark -p "$redis_port" -t set -c 50 -n 100000 -q 2>/dev/null |
        tr '\r' '\n' | awk '/^SET:/ {print $2}' | tail -n 1
}

echo "machine: $(nproc) cores, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
ours=(); redis=(); etcd=()
for i in $(seq 1 "$rounds"); do
    ours+=("$(wrk_rps 5 "http://127.0.0.1:$FRONTEND_PORT/orders" "$work/sell.lua")")
    redis+=("$(redis_rps)")
    etcd+=("$(wrk_rps 5 "http://127.0.0.1:$etcd_leader/v3/kv/put" "$work/put.lua")")
    echo "round $i: POST /orders ${ours[-1]}/s, Redis SET (appendfsync always) ${redis[-1]}/s, etcd PUT ${etcd[-1]}/s"
done
m_ours="$(printf '%s\n' "${ours[@]}" | median)"
m_redis="$(printf '%s\n' "${redis[@]}" | median)"
m_etcd="$(printf '%s\n' "${etcd[@]}" | median)"
echo "medians: POST /orders $m_ours/s; Redis $m_redis/s (ratio $(ratio "$m_ours" "$m_redis")); etcd $m_etcd/s (ratio $(ratio "$m_ours" "$m_etcd"))"
# The references are done; they must not share the cores with what follows.
for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
wait "${pids[@]}" 2>/dev/null || true
pids=()

round="$(python3 bench/fsync_probe.py "$work" 1000)"
trade="$(target/release/client run --port "$FRONTEND_PORT" --sessions 1 --requests 2000 --p 1 --json |
    python3 -c 'import json,sys; s=json.load(sys.stdin); print("%.0f" % ([l["p50_ms"] for l in s["latency"] if str(l["kind"]).lower() == "trade"][0] * 1000))' 2>/dev/null || echo "?")"
round_after="$(python3 bench/fsync_probe.py "$work" 1000)"
echo "sequential trade p50 ${trade} µs; one durable round (three concurrent fdatasyncs) p50/p99 ${round% *}/${round#* } µs before, ${round_after% *}/${round_after#* } µs after"

ticks() { # pid: utime + stime, in clock ticks
    awk '{print $14 + $15}' "/proc/$1/stat"
}
leader="$(curl -s "http://127.0.0.1:$FRONTEND_PORT/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["leader"])')"
names=(frontend catalog order-1 order-2 order-3)
declare -A pid_of before after
for name in "${names[@]}"; do
    pid_of[$name]="$(cat "$STATE_DIR/$name.pid")"
    before[$name]="$(ticks "${pid_of[$name]}")"
done
placed_before="$(curl -s "http://127.0.0.1:$FRONTEND_PORT/metrics" |
    awk '/^bazaar_http_requests_total\{route="trade",status="200"\}/ {print $2}')"
wrk -t1 -c64 -d10s -s "$work/sell.lua" "http://127.0.0.1:$FRONTEND_PORT/orders" >"$work/wrk.out" &
wrk_pid=$!
sleep 0.2
wrk_before="$(ticks "$wrk_pid")"
sleep 9.6
wrk_after="$(ticks "$wrk_pid" 2>/dev/null || echo "$wrk_before")"
wait "$wrk_pid"
for name in "${names[@]}"; do after[$name]="$(ticks "${pid_of[$name]}")"; done
placed_after="$(curl -s "http://127.0.0.1:$FRONTEND_PORT/metrics" |
    awk '/^bazaar_http_requests_total\{route="trade",status="200"\}/ {print $2}')"
trades=$((${placed_after%.*} - ${placed_before:-0}))
hz="$(getconf CLK_TCK)"
per_k() { awk -v t="$1" -v hz="$hz" -v n="$trades" 'BEGIN {printf "%.1f", t * 1000 / hz / (n / 1000)}'; }
total=0
line=""
for name in "${names[@]}"; do
    used=$((${after[$name]} - ${before[$name]}))
    total=$((total + used))
    role="$name"
    [[ "$name" == "order-$leader" ]] && role="$name (leader)"
    line+="$role $(per_k "$used"), "
done
echo "CPU per 1,000 trades (ms, $trades trades in 10 s): ${line}services $(per_k "$total"); wrk $(per_k $((wrk_after - wrk_before))) (9.6 s of its run)"
