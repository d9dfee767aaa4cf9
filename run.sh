#!/usr/bin/env bash
# Starts Stock Bazaar on this machine, in the background; `./run.sh stop` stops it and
# `./run.sh status` shows what runs.
#
# Services started: the catalog, three order replicas and the front end, which elects the
# order leader; the script waits until the front end's /health is 200.
#
# Environment:
#   FRONTEND_PORT  front end (HTTP) port (8080)
#   CACHE_SIZE     front-end lookup cache size, 0 = off (5)
#   CATALOG_PORT   catalog port (7000)
#   ORDER_PORTS    ports of order replicas 1,2,3 (7001,7002,7003)
#   METRICS_PORTS  metrics ports of the catalog and replicas 1,2,3 (9100,9101,9102,9103);
#                  the front end's metrics are on its own port, /metrics
#   WRITE_QUORUM   all | majority (all)
#   STATE_DIR      runtime state, logs and pid files (./state)
#   RUST_LOG       log filter (info)
#   PROFILE        cargo profile to build and run (release; the tests use dev)
#   BAZAAR_CLUSTER_TOKEN  the secret every internal connection must present; by default
#                  generated once into $STATE_DIR/cluster-token (mode 0600) and reused
set -euo pipefail
cd "$(dirname "$0")"

FRONTEND_PORT="${FRONTEND_PORT:-8080}"
CACHE_SIZE="${CACHE_SIZE:-5}"
CATALOG_PORT="${CATALOG_PORT:-7000}"
ORDER_PORTS="${ORDER_PORTS:-7001,7002,7003}"
METRICS_PORTS="${METRICS_PORTS:-9100,9101,9102,9103}"
WRITE_QUORUM="${WRITE_QUORUM:-all}"
STATE_DIR="${STATE_DIR:-$PWD/state}"
mkdir -p "$STATE_DIR"
STATE_DIR="$(cd "$STATE_DIR" && pwd)"
# The cargo profile built and run: release, or dev (target/debug; the tests use it, to skip a
# second, optimised build of everything).
PROFILE="${PROFILE:-release}"
case "$PROFILE" in
dev) BIN="$PWD/target/debug" ;;
*) BIN="$PWD/target/$PROFILE" ;;
esac
export RUST_LOG="${RUST_LOG:-info}"

# Closed by default: every service gets the cluster token through its environment (not its
# command line, which any local user can read).
TOKEN_FILE="$STATE_DIR/cluster-token"
TOKEN_SOURCE="BAZAAR_CLUSTER_TOKEN from the environment"
if [[ -z "${BAZAAR_CLUSTER_TOKEN:-}" ]]; then
    TOKEN_SOURCE="$TOKEN_FILE"
    if [[ ! -s "$TOKEN_FILE" ]]; then
        (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$TOKEN_FILE.new" &&
            mv "$TOKEN_FILE.new" "$TOKEN_FILE")
    fi
    chmod 600 "$TOKEN_FILE"
    BAZAAR_CLUSTER_TOKEN="$(<"$TOKEN_FILE")"
fi
export BAZAAR_CLUSTER_TOKEN

IFS=, read -r -a order_ports <<<"$ORDER_PORTS"
if ((${#order_ports[@]} != 3)); then
    echo "error: ORDER_PORTS must name three ports, e.g. 7001,7002,7003" >&2
    exit 2
fi
IFS=, read -r -a metrics_ports <<<"$METRICS_PORTS"
if ((${#metrics_ports[@]} != 4)); then
    echo "error: METRICS_PORTS must name four ports (catalog, replicas 1-3), e.g. 9100,9101,9102,9103" >&2
    exit 2
fi
PEERS="1=127.0.0.1:${order_ports[0]},2=127.0.0.1:${order_ports[1]},3=127.0.0.1:${order_ports[2]}"
SERVICES=(catalog order-1 order-2 order-3 frontend)

pid_of() { cat "$STATE_DIR/$1.pid" 2>/dev/null || true; }
alive() { local pid; pid="$(pid_of "$1")"; [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port_of() {
    case "$1" in
    catalog) echo "$CATALOG_PORT" ;;
    frontend) echo "$FRONTEND_PORT" ;;
    order-*) echo "${order_ports[$((${1#order-} - 1))]}" ;;
    esac
}

metrics_url() { # name
    case "$1" in
    catalog) echo "http://127.0.0.1:${metrics_ports[0]}/metrics" ;;
    frontend) echo "http://127.0.0.1:$FRONTEND_PORT/metrics" ;;
    order-*) echo "http://127.0.0.1:${metrics_ports[${1#order-}]}/metrics" ;;
    esac
}

launch() { # name command...
    local name="$1"
    shift
    if alive "$name"; then
        echo "$name already running (pid $(pid_of "$name"))"
        return
    fi
    if port_open "$(port_of "$name")"; then
        echo "error: port $(port_of "$name") for $name is already in use by another process" >&2
        exit 1
    fi
    "$@" >>"$STATE_DIR/$name.log" 2>&1 &
    echo $! >"$STATE_DIR/$name.pid"
}

start_catalog() {
    launch catalog "$BIN/catalog" --listen "127.0.0.1:$CATALOG_PORT" \
        --state-dir "$STATE_DIR/catalog" --seed "$PWD/data/catalog.csv" --peers "$PEERS" \
        --metrics-listen "127.0.0.1:${metrics_ports[0]}"
}

start_order() { # id
    launch "order-$1" "$BIN/order" --id "$1" --peers "$PEERS" \
        --catalog "127.0.0.1:$CATALOG_PORT" --state-dir "$STATE_DIR/order-$1" \
        --write-quorum "$WRITE_QUORUM" --metrics-listen "127.0.0.1:${metrics_ports[$1]}"
}

start_frontend() {
    launch frontend "$BIN/frontend" --listen "127.0.0.1:$FRONTEND_PORT" \
        --catalog "127.0.0.1:$CATALOG_PORT" --order-peers "$PEERS" --cache-size "$CACHE_SIZE"
}

health() { # prints the status code of GET /health
    exec 3<>"/dev/tcp/127.0.0.1/$FRONTEND_PORT" || return 1
    printf 'GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
    head -n 1 <&3 | cut -d' ' -f2
    exec 3<&-
}

wait_for() { # name
    local port deadline=$((SECONDS + 30))
    port="$(port_of "$1")"
    until port_open "$port"; do
        if ! alive "$1"; then
            echo "error: $1 exited during start-up; see $STATE_DIR/$1.log" >&2
            tail -n 20 "$STATE_DIR/$1.log" >&2 || true
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "error: $1 did not start listening on port $port within 30 s; see $STATE_DIR/$1.log" >&2
            exit 1
        fi
        sleep 0.1
    done
}

stop_one() { # name
    local pid
    pid="$(pid_of "$1")"
    if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$STATE_DIR/$1.pid"
        return
    fi
    kill -TERM "$pid"
    local deadline=$((SECONDS + 15))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            echo "$1 did not stop within 15 s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    rm -f "$STATE_DIR/$1.pid"
    echo "stopped $1"
}

case "${1:-start}" in
start)
    cargo build --profile "$PROFILE" --quiet -p catalog -p order -p frontend -p client
    start_catalog
    wait_for catalog
    for id in 1 2 3; do start_order "$id"; done
    for id in 1 2 3; do wait_for "order-$id"; done
    start_frontend
    wait_for frontend
    deadline=$((SECONDS + 30))
    until [[ "$(health 2>/dev/null)" == 200 ]]; do
        if ((SECONDS >= deadline)); then
            echo "error: the front end's /health did not turn 200 within 30 s; see $STATE_DIR/frontend.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "frontend http://127.0.0.1:$FRONTEND_PORT  (pid $(pid_of frontend)), cache size $CACHE_SIZE"
    echo "catalog  127.0.0.1:$CATALOG_PORT  (pid $(pid_of catalog)), state $STATE_DIR/catalog"
    for id in 1 2 3; do
        echo "order-$id  127.0.0.1:${order_ports[$((id - 1))]}  (pid $(pid_of "order-$id")), state $STATE_DIR/order-$id"
    done
    echo "cluster page: http://127.0.0.1:$FRONTEND_PORT/status"
    echo "cluster token: $TOKEN_SOURCE"
    echo "metrics: ./run.sh status lists every service's metrics URL"
    echo "logs: $STATE_DIR/<service>.log; stop with: ./run.sh stop"
    ;;
stop)
    for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do stop_one "${SERVICES[$i]}"; done
    ;;
start-order)
    # Used by simulate_crashes.sh to bring a replica back with the same settings.
    start_order "${2:?replica id}"
    wait_for "order-$2"
    echo "order-$2 restarted (pid $(pid_of "order-$2"))"
    ;;
status)
    for name in "${SERVICES[@]}"; do
        if alive "$name"; then
            echo "$name  running, pid $(pid_of "$name"), port $(port_of "$name"), metrics $(metrics_url "$name")"
        else
            echo "$name  not running"
        fi
    done
    echo "cluster page: http://127.0.0.1:$FRONTEND_PORT/status"
    echo "the backends' metrics need the cluster token ($TOKEN_SOURCE) as a bearer token, e.g. curl -H \"Authorization: Bearer \$(cat $TOKEN_FILE)\" URL"
    echo "(in Prometheus: authorization: {credentials_file: $TOKEN_FILE})"
    if alive frontend && exec 3<>"/dev/tcp/127.0.0.1/$FRONTEND_PORT"; then
        printf 'GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
        reply="$(cat <&3)"
        exec 3<&-
        leader="$(sed -n 's/.*"leader":\([0-9]*\).*/\1/p' <<<"$reply")"
        epoch="$(sed -n 's/.*"epoch":\([0-9]*\).*/\1/p' <<<"$reply")"
        in_sync="$(sed -n 's/.*"in_sync":\[\([0-9,]*\)\].*/\1/p' <<<"$reply")"
        if [[ -n "$leader" ]]; then
            echo "order leader: replica $leader (epoch $epoch), in sync: $in_sync"
        else
            # 503: no leader serves, a service is unreachable, or a disk failed (the service
            # then restarts itself in place, same pid, once its disk takes writes again).
            echo "health: $(sed -n 's/.*"message":"\(.*\)"}}.*/\1/p' <<<"$reply")"
        fi
    fi
    ;;
*)
    echo "usage: $0 [start|stop|status|start-order ID]" >&2
    exit 2
    ;;
esac
