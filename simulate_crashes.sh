#!/usr/bin/env bash
# Crashes order replicas with SIGKILL (no warning, no flush) while the system runs. Uses the
# same environment as run.sh (STATE_DIR, FRONTEND_PORT, ORDER_PORTS, ...).
#
#   ./simulate_crashes.sh <id> [--restart-after SECS]   kill replica <id> (1, 2 or 3)
#   ./simulate_crashes.sh --leader [--restart-after SECS]
#                                                       kill whichever replica leads
#   ./simulate_crashes.sh --random --count K --interval SECS [--restart-after SECS]
#                                                       K times: kill a replica (every other
#                                                       time the leader), restart it after
#                                                       --restart-after (default 1), then
#                                                       wait SECS
#
# A restarted replica catches up with the leader by itself. Killing the leader costs a
# latency blip: the front end elects the most up-to-date survivor and retries the requests
# in flight under their ids.
set -euo pipefail
cd "$(dirname "$0")"
STATE_DIR="${STATE_DIR:-$PWD/state}"
FRONTEND_PORT="${FRONTEND_PORT:-8080}"

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

leader() { # prints the leader's id according to the front end
    local reply
    exec 3<>"/dev/tcp/127.0.0.1/$FRONTEND_PORT" || return 1
    printf 'GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
    reply="$(cat <&3)"
    exec 3<&-
    sed -n 's/.*"leader":\([0-9]*\).*/\1/p' <<<"$reply"
}

kill_replica() { # id
    local pid
    pid="$(cat "$STATE_DIR/order-$1.pid" 2>/dev/null || true)"
    if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then
        echo "order-$1 is not running" >&2
        return 1
    fi
    kill -KILL "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    rm -f "$STATE_DIR/order-$1.pid"
    echo "$(date +%T) killed order-$1 (pid $pid) with SIGKILL"
}

target="" random=false count=1 interval=1 restart_after=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    [123]) target="$1"; shift ;;
    --leader) target=leader; shift ;;
    --random) random=true; shift ;;
    --count) count="${2:?}"; shift 2 ;;
    --interval) interval="${2:?}"; shift 2 ;;
    --restart-after) restart_after="${2:?}"; shift 2 ;;
    *) usage ;;
    esac
done
[[ "$count" =~ ^[0-9]+$ ]] || usage

if $random; then
    restart_after="${restart_after:-1}"
    for ((round = 1; round <= count; round++)); do
        if ((round % 2 == 1)); then
            victim="$(leader || true)"
            victim="${victim:-$((RANDOM % 3 + 1))}"
        else
            victim=$((RANDOM % 3 + 1))
        fi
        kill_replica "$victim" || continue
        sleep "$restart_after"
        ./run.sh start-order "$victim" | sed "s/^/$(date +%T) /"
        ((round < count)) && sleep "$interval"
    done
    exit 0
fi

case "$target" in
"") usage ;;
leader)
    target="$(leader)"
    [[ -n "$target" ]] || { echo "no leader known to the front end" >&2; exit 1; }
    ;;
esac
kill_replica "$target"
if [[ -n "$restart_after" ]]; then
    sleep "$restart_after"
    ./run.sh start-order "$target"
fi
