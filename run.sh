#!/usr/bin/env bash
# Starts Stock Bazaar on this machine, in the background; `./run.sh stop` stops it and
# `./run.sh status` shows what runs.
#
# Services started: the catalog (the order replicas and the front end are not built yet).
#
# Environment:
#   CATALOG_PORT   catalog port (7000)
#   STATE_DIR      runtime state, logs and pid files (./state)
#   RUST_LOG       log filter (info)
set -euo pipefail
cd "$(dirname "$0")"

CATALOG_PORT="${CATALOG_PORT:-7000}"
STATE_DIR="${STATE_DIR:-$PWD/state}"
mkdir -p "$STATE_DIR"
STATE_DIR="$(cd "$STATE_DIR" && pwd)"
BIN="$PWD/target/release"

pid_of() { cat "$STATE_DIR/$1.pid" 2>/dev/null || true; }
alive() { local pid; pid="$(pid_of "$1")"; [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_catalog() {
    if alive catalog; then
        echo "catalog already running (pid $(pid_of catalog))"
        return
    fi
    RUST_LOG="${RUST_LOG:-info}" "$BIN/catalog" \
        --listen "127.0.0.1:$CATALOG_PORT" \
        --state-dir "$STATE_DIR/catalog" \
        --seed "$PWD/data/catalog.csv" \
        >>"$STATE_DIR/catalog.log" 2>&1 &
    echo $! >"$STATE_DIR/catalog.pid"
}

wait_for() { # name port
    local deadline=$((SECONDS + 30))
    until port_open "$2"; do
        if ! alive "$1"; then
            echo "error: $1 exited during start-up; see $STATE_DIR/$1.log" >&2
            tail -n 20 "$STATE_DIR/$1.log" >&2 || true
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "error: $1 did not start listening on port $2 within 30 s; see $STATE_DIR/$1.log" >&2
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
    cargo build --release --quiet -p catalog
    start_catalog
    wait_for catalog "$CATALOG_PORT"
    echo "catalog  listening on 127.0.0.1:$CATALOG_PORT  (pid $(pid_of catalog))"
    echo "         state $STATE_DIR/catalog, log $STATE_DIR/catalog.log"
    echo "stop with: ./run.sh stop"
    ;;
stop)
    stop_one catalog
    ;;
status)
    if alive catalog; then
        echo "catalog  running, pid $(pid_of catalog), port $CATALOG_PORT"
    else
        echo "catalog  not running"
    fi
    ;;
*)
    echo "usage: $0 [start|stop|status]" >&2
    exit 2
    ;;
esac
