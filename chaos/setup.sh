#!/usr/bin/env bash
# Installs what the chaos tests need besides Rust (Debian packages), when missing: libfaketime
# for the skewed-clock front end, iproute2 and iptables for the network-namespace partitions.
set -euo pipefail
need=()
[[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ]] || need+=(faketime)
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
if ((${#need[@]} == 0)); then
    exit 0
fi
sudo=""
if [[ "$(id -u)" != 0 ]]; then
    sudo="sudo"
fi
$sudo apt-get update -qq
$sudo apt-get install -y -qq "${need[@]}" >/dev/null
