#!/usr/bin/env bash
# Crashes an order replica: SIGKILL, no warning, no flush. Uses the same environment as
# run.sh (STATE_DIR, ORDER_PORTS, ...).
#
#   ./simulate_crashes.sh <id>                       kill replica <id> (1, 2 or 3)
#   ./simulate_crashes.sh <id> --restart-after SECS  ... and start it again SECS later; it
#                                                    catches up with the leader on its own
#
# Killing the leader costs a latency blip: the front end notices and elects a new one.
set -euo pipefail
cd "$(dirname "$0")"
STATE_DIR="${STATE_DIR:-$PWD/state}"

usage() { echo "usage: $0 <id> [--restart-after SECS]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
id="$1"
shift
[[ "$id" =~ ^[123]$ ]] || usage
restart_after=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    --restart-after) restart_after="${2:?}"; shift 2 ;;
    *) usage ;;
    esac
done

pid="$(cat "$STATE_DIR/order-$id.pid" 2>/dev/null || true)"
if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then
    echo "order-$id is not running" >&2
    exit 1
fi
kill -KILL "$pid"
while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
rm -f "$STATE_DIR/order-$id.pid"
echo "killed order-$id (pid $pid) with SIGKILL"

if [[ -n "$restart_after" ]]; then
    sleep "$restart_after"
    ./run.sh start-order "$id"
fi
