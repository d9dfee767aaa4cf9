#!/usr/bin/env bash
# Measures the front end with wrk on this machine (the whole system started by run.sh on
# spare ports), next to nginx serving the same JSON bytes in the same run:
#   1. cached GET /stocks/GameStart, keep-alive, 1 thread, 32 connections, 10 s: front end vs
#      nginx, alternating, ROUNDS times each; medians and their ratio;
#   2. uncached lookup (--cache-size 0) latency with one connection (p50, p99);
#   3. POST /orders with 64 connections (trades/s end to end);
#   4. resident memory of the front end after a million requests.
#
#   bench/frontend.sh [ROUNDS]     (default 3)
# Needs wrk and nginx (apt-get install wrk nginx-light); installs them when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
    if [[ $(id -u) == 0 ]]; then
        apt-get update -qq && apt-get install -y -qq wrk nginx-light >/dev/null
    else
        echo "needs wrk and nginx: apt-get install wrk nginx-light" >&2
        exit 1
    fi
fi

work="$(mktemp -d)"
base=$((30000 + RANDOM % 20000))
export STATE_DIR="$work/state" CATALOG_PORT=$base ORDER_PORTS="$((base + 1)),$((base + 2)),$((base + 3))"
export FRONTEND_PORT=$((base + 4)) CACHE_SIZE=5 RUST_LOG=warn
nginx_port=$((base + 5))
uncached_port=$((base + 6))
cleanup() {
    [[ -n "${nginx_pid:-}" ]] && kill "$nginx_pid" 2>/dev/null
    [[ -n "${uncached_pid:-}" ]] && kill "$uncached_pid" 2>/dev/null
    ./run.sh stop >/dev/null 2>&1 || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

./run.sh >/dev/null
# The uncached front end below talks to the same services, with their token.
export BAZAAR_CLUSTER_TOKEN="$(<"$STATE_DIR/cluster-token")"
body="$(curl -s "http://127.0.0.1:$FRONTEND_PORT/stocks/GameStart")"
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$nginx_port;
        location = /stocks/GameStart {
            default_type application/json;
            return 200 '$body';
        }
    }
}
NGINX
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" &
nginx_pid=$!
./target/release/frontend --listen "127.0.0.1:$uncached_port" --catalog "127.0.0.1:$CATALOG_PORT" \
    --order-peers "1=127.0.0.1:$((base + 1)),2=127.0.0.1:$((base + 2)),3=127.0.0.1:$((base + 3))" \
    --cache-size 0 2>"$work/uncached.log" &
uncached_pid=$!
for port in $nginx_port $uncached_port; do
    for _ in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$port/stocks/GameStart" >/dev/null && break
        sleep 0.05
    done
done

rps() { wrk -t1 -c32 -d10s "$1" | awk '/Requests\/sec/ {print $2}'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "machine: $(nproc) cores, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
ours=(); theirs=()
for i in $(seq 1 "$rounds"); do
    ours+=("$(rps "http://127.0.0.1:$FRONTEND_PORT/stocks/GameStart")")
    theirs+=("$(rps "http://127.0.0.1:$nginx_port/stocks/GameStart")")
    echo "round $i: front end ${ours[-1]} req/s, nginx ${theirs[-1]} req/s"
done
m_ours="$(printf '%s\n' "${ours[@]}" | median)"
m_theirs="$(printf '%s\n' "${theirs[@]}" | median)"
echo "cached lookup, wrk -t1 -c32 -d10s: front end median $m_ours req/s, nginx median $m_theirs req/s, ratio $(awk -v a="$m_ours" -v b="$m_theirs" 'BEGIN {printf "%.2f", a / b}')"

echo "uncached lookup (--cache-size 0), one connection, wrk -t1 -c1 -d10s --latency:"
wrk -t1 -c1 -d10s --latency "http://127.0.0.1:$uncached_port/stocks/GameStart" |
    awk '/^ +(50|90|99)%/ {print "  p" $1 " " $2} /Requests\/sec/ {print "  " $0}'

echo "POST /orders, wrk -t1 -c64 -d10s:"
wrk -t1 -c64 -d10s -s bench/post.lua "http://127.0.0.1:$FRONTEND_PORT" |
    awk '/Requests\/sec|Non-2xx|Socket errors/ {print "  " $0}'

echo "memory: a million cached lookups, then the front end's resident set:"
wrk -t1 -c32 -d60s "http://127.0.0.1:$FRONTEND_PORT/stocks/GameStart" >/dev/null &
wrk_pid=$!
frontend_pid="$(cat "$STATE_DIR/frontend.pid")"
served=0
while kill -0 "$wrk_pid" 2>/dev/null; do
    served="$(curl -s "http://127.0.0.1:$FRONTEND_PORT/metrics" |
        awk '/^bazaar_http_requests_total\{route="lookup",status="200"\}/ {print $2}')"
    if ((served >= 1000000)); then kill "$wrk_pid"; break; fi
    sleep 1
done
wait "$wrk_pid" 2>/dev/null || true
echo "  requests served: $served; VmRSS: $(awk '/VmRSS/ {print $2 " " $3}' "/proc/$frontend_pid/status")"
