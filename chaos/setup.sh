#!/usr/bin/env bash
# Installs what the chaos tests need besides Rust (Debian packages), when missing: libfaketime
# for the skewed-clock front end, iproute2 and iptables for the network-namespace partitions,
# util-linux's unshare for the one-process-per-host test, systemd-analyze for the units of
# deploy/, binutils (readelf, strip) for image/build.sh and docker-compose for the container
# test (the Docker Engine itself is the machine's).
set -euo pipefail
need=()
[[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ]] || need+=(faketime)
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
command -v unshare >/dev/null || need+=(util-linux)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v readelf >/dev/null || need+=(binutils)
command -v docker-compose >/dev/null || need+=(docker-compose)
if ((${#need[@]} == 0)); then
    exit 0
fi
sudo=""
if [[ "$(id -u)" != 0 ]]; then
    sudo="sudo"
fi
$sudo apt-get update -qq
$sudo apt-get install -y -qq "${need[@]}" >/dev/null
