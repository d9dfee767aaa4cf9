#!/usr/bin/env bash
# Kills order replicas with SIGKILL while a load runs. The order replicas are not built yet in
# this version, so there is nothing to crash; this script says so instead of pretending.
set -euo pipefail
echo "simulate_crashes.sh: the order replicas are not part of this version yet; nothing to kill" >&2
exit 2
