#!/usr/bin/env bash
# Installs what the chaos tests need besides Rust (Debian packages), when missing: libfaketime
# for the skewed-clock front end, iproute2 and iptables for the network-namespace partitions,
# util-linux's unshare for the one-process-per-host test, systemd-analyze for the units of
# deploy/, binutils (readelf, strip) for image/build.sh, docker-compose for the container
# test (the Docker Engine itself is the machine's), and chromium plus the Python client
# prometheus_client (from PyPI) for the observability test.
set -euo pipefail
need=()
[[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ]] || need+=(faketime)
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
command -v unshare >/dev/null || need+=(util-linux)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v readelf >/dev/null || need+=(binutils)
command -v docker-compose >/dev/null || need+=(docker-compose)
lean=()
command -v chromium >/dev/null || lean+=(chromium)
sudo=""
if [[ "$(id -u)" != 0 ]]; then
    sudo="sudo"
fi
if ((${#need[@]} + ${#lean[@]} > 0)); then
    $sudo apt-get update -qq
fi
if ((${#need[@]} > 0)); then
    $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Headless only: what chromium recommends (printing, notifications, a desktop) is not needed.
if ((${#lean[@]} > 0)); then
    $sudo apt-get install -y -qq --no-install-recommends "${lean[@]}" >/dev/null
fi
if ! python3 -c 'import prometheus_client.openmetrics.parser' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check 'prometheus_client>=0.20,<1'
fi
