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
#       [--while-running PID]                           ... stopping early, after a round,
#                                                       once process PID has exited
#
# Every kill and restart is logged with the wall-clock time, for people (HH:MM:SS.mmm) and
# for programs (unix_ms=, milliseconds since the epoch), e.g.
#   01:46:17.123 unix_ms=1712345177123 killed order-3 (pid 22579) with SIGKILL
#   01:46:18.456 unix_ms=1712345178456 order-3 restarted (pid 22665)
# A restart is stamped when the replica listens again.
#
# A restarted replica catches up with the leader by itself. Killing the leader costs a
# latency blip: the front end elects the most up-to-date survivor and retries the requests
# in flight under their ids.
set -euo pipefail
cd "$(dirname "$0")"
STATE_DIR="${STATE_DIR:-$PWD/state}"
FRONTEND_PORT="${FRONTEND_PORT:-8080}"

usage() {
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

stamp() { # the time now: HH:MM:SS.mmm unix_ms=<milliseconds since the epoch>
    local ms
    ms="$(date +%s%3N)"
    printf '%s.%03d unix_ms=%s' "$(date -d "@$((ms / 1000))" +%T)" "$((ms % 1000))" "$ms"
}

restart_replica() { # id
    local started
    started="$(./run.sh start-order "$1")"
    echo "$(stamp) $started"
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
    local at
    at="$(stamp)"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    rm -f "$STATE_DIR/order-$1.pid"
    echo "$at killed order-$1 (pid $pid) with SIGKILL"
}

target="" random=false count=1 interval=1 restart_after="" while_running=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    [123]) target="$1"; shift ;;
    --leader) target=leader; shift ;;
    --random) random=true; shift ;;
    --count) count="${2:?}"; shift 2 ;;
    --interval) interval="${2:?}"; shift 2 ;;
    --restart-after) restart_after="${2:?}"; shift 2 ;;
    --while-running) while_running="${2:?}"; shift 2 ;;
    *) usage ;;
    esac
done
[[ "$count" =~ ^[0-9]+$ ]] || usage
[[ -z "$while_running" || "$while_running" =~ ^[0-9]+$ ]] || usage

if $random; then
    restart_after="${restart_after:-1}"
    for ((round = 1; round <= count; round++)); do
        if [[ -n "$while_running" ]] && ! kill -0 "$while_running" 2>/dev/null; then
            break
        fi
        if ((round % 2 == 1)); then
            victim="$(leader || true)"
            victim="${victim:-$((RANDOM % 3 + 1))}"
        else
            victim=$((RANDOM % 3 + 1))
        fi
        kill_replica "$victim" || continue
        sleep "$restart_after"
        restart_replica "$victim"
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
    restart_replica "$target"
fi
