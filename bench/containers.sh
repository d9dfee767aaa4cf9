#!/usr/bin/env bash
# Sizing for t2-class hosts: two Compose stacks of the release image side by side, one
# unlimited and one with every container at a t2.micro's size (bench/compose.t2micro.yaml:
# --cpus 1 --memory 1g). Reports each service's resident memory (VmRSS of its process) idle
# and after the load, and `client run` (in a container on the stack's network, unlimited)
# throughput and p50/p99 of lookups and trades, alternating between the stacks ROUNDS times;
# medians.
#
#   bench/containers.sh [ROUNDS] [REQUESTS]     (default 3 rounds of 8 sessions x 2,000)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
requests="${2:-2000}"
image="stock-bazaar:bench"
work="$(mktemp -d)"
tag="bzbench$$"
(umask 077; echo "BAZAAR_CLUSTER_TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$work/cluster.env")
base=$((30000 + RANDOM % 20000))

compose() { # name extra-file... -- args
    local name=$1 port=$2
    shift 2
    BAZAAR_IMAGE=$image BAZAAR_CLUSTER_ENV=$work/cluster.env FRONTEND_PORT=$port \
        docker-compose -p "$name" "$@"
}
cleanup() {
    compose "${tag}u" "$base" -f compose.yaml down -v -t 5 >/dev/null 2>&1 || true
    compose "${tag}l" "$((base + 1))" -f compose.yaml -f bench/compose.t2micro.yaml down -v -t 5 \
        >/dev/null 2>&1 || true
    docker rmi "$image" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

BAZAAR_IMAGE=$image bash image/build.sh
compose "${tag}u" "$base" -f compose.yaml up -d >/dev/null 2>&1
compose "${tag}l" "$((base + 1))" -f compose.yaml -f bench/compose.t2micro.yaml up -d >/dev/null 2>&1
for port in "$base" "$((base + 1))"; do
    for _ in $(seq 1 120); do
        curl -sf -m 2 "http://127.0.0.1:$port/health" >/dev/null && break
        sleep 0.5
    done
    curl -sf -m 2 "http://127.0.0.1:$port/health" >/dev/null
done

compose_ps() { # project service: its container (Compose v1 and v2 name them differently)
    compose "$1" "$base" -f compose.yaml ps -q "$2"
}
rss() { # project label
    local line="$2:"
    for service in catalog order1 order2 order3 frontend; do
        pid=$(docker inspect --format "{{.State.Pid}}" "$(compose_ps "$1" "$service")")
        kb=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
        line+=" $service $((kb / 1024)).$(((kb % 1024) * 10 / 1024)) MiB,"
    done
    echo "${line%,}"
}
limits=$(docker inspect --format '{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}' "$(compose_ps "${tag}l" frontend)")
echo "machine: $(nproc) cores, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "limited stack: NanoCpus Memory = $limits"
rss "${tag}u" "resident, idle, unlimited"
rss "${tag}l" "resident, idle, t2.micro "

run_client() { # project
    docker run --rm --network "$1_default" "$image" client run --host frontend --sessions 8 \
        --requests "$requests" --json
}
summary() { # json on stdin: "ops/s lookup-p50 lookup-p99 trade-p50 trade-p99 clean"
    python3 -c '
import json, sys
s = json.load(sys.stdin)
lat = {l["kind"]: l for l in s["latency"]}
ops = sum(l["count"] for k, l in lat.items() if k in ("lookup", "trade")) / s["seconds"]
print("%.0f %.3f %.3f %.3f %.3f %s" % (ops, lat["lookup"]["p50_ms"], lat["lookup"]["p99_ms"],
      lat["trade"]["p50_ms"], lat["trade"]["p99_ms"], s["clean"]))'
}
: >"$work/u"
: >"$work/l"
for i in $(seq 1 "$rounds"); do
    u=$(run_client "${tag}u" | summary)
    l=$(run_client "${tag}l" | summary)
    echo "round $i: unlimited $u | t2.micro $l   (ops/s, lookup p50 p99 ms, trade p50 p99 ms, clean)"
    echo "$u" >>"$work/u"
    echo "$l" >>"$work/l"
done
median() { # column file
    awk -v c="$1" '{print $c}' "$2" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'
}
for which in u l; do
    name=$([[ $which == u ]] && echo "unlimited" || echo "t2.micro ")
    echo "median $name: $(median 1 "$work/$which") lookups+trades/s; lookup p50 $(median 2 "$work/$which") ms p99 $(median 3 "$work/$which") ms; trade p50 $(median 4 "$work/$which") ms p99 $(median 5 "$work/$which") ms"
done
rss "${tag}u" "resident, after load, unlimited"
rss "${tag}l" "resident, after load, t2.micro "
