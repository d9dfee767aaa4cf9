#!/usr/bin/env bash
# A/B of end-to-end trades between two checkouts of this repository, each built (release)
# and started with its own run.sh on its own ports: POST /orders with wrk (-t1 -c64, 10 s),
# alternating A and B, ROUNDS times; medians and the ratio B/A. Use it to show that a change
# on the trade path costs nothing measurable on this noisy machine.
#
#   bench/trades_ab.sh DIR_A DIR_B [ROUNDS]      (default 3; needs wrk)
set -euo pipefail
script="$(cd "$(dirname "$0")" && pwd)/post.lua"
a="$(cd "$1" && pwd)"
b="$(cd "$2" && pwd)"
rounds="${3:-3}"
work="$(mktemp -d)"
base=$((30000 + RANDOM % 20000))
env_of() { # base
    echo "STATE_DIR=$work/state-$1 CATALOG_PORT=$1 ORDER_PORTS=$(($1 + 1)),$(($1 + 2)),$(($1 + 3)) FRONTEND_PORT=$(($1 + 4)) METRICS_PORTS=$(($1 + 5)),$(($1 + 6)),$(($1 + 7)),$(($1 + 8)) RUST_LOG=warn"
}
run_in() { # dir base command...
    local dir="$1" port="$2"
    shift 2
    (cd "$dir" && env $(env_of "$port") ./run.sh "$@" >/dev/null)
}
cleanup() {
    run_in "$a" "$base" stop || true
    run_in "$b" "$((base + 10))" stop || true
    rm -rf "$work"
}
trap cleanup EXIT
run_in "$a" "$base"
run_in "$b" "$((base + 10))"
post() { # port
    wrk -t1 -c64 -d10s -s "$script" "http://127.0.0.1:$1" |
        awk '/Requests\/sec/ {rps = $2} /Non-2xx|Socket errors/ {bad = bad " " $0} END {print rps bad}'
}
median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
echo "machine: $(nproc) cores, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
ra=(); rb=()
for i in $(seq 1 "$rounds"); do
    ra+=("$(post $((base + 4)))")
    rb+=("$(post $((base + 14)))")
    echo "round $i: A ${ra[-1]} trades/s, B ${rb[-1]} trades/s"
done
ma="$(printf '%s\n' "${ra[@]}" | awk '{print $1}' | median)"
mb="$(printf '%s\n' "${rb[@]}" | awk '{print $1}' | median)"
echo "POST /orders medians: A $ma, B $mb trades/s; B/A $(awk -v a="$ma" -v b="$mb" 'BEGIN {printf "%.2f", b / a}')"
