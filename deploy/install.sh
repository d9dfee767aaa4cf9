#!/usr/bin/env bash
# Installs a bundle (made by deploy/bundle.sh) on every host of a hosts file, over ssh.
#
#   deploy/install.sh HOSTS BUNDLE_DIR
#
# For each address in HOSTS, one after another: makes a private temporary directory there,
# copies BUNDLE_DIR.tar.gz into it with scp, unpacks it and runs
# `sudo install-host.sh SERVICE...` with the services that host runs, then removes the
# directory. Stops at the first host that fails.
#
# Environment:
#   DEPLOY_USER  the remote user, who may sudo (admin: the Debian AMIs' user)
#   SSH, SCP     the commands to use (ssh, scp), e.g. SSH="ssh -i key.pem" SCP="scp -i key.pem"
set -euo pipefail

deploy="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=deploy/hostsfile.sh
source "$deploy/hostsfile.sh"

if (($# != 2)); then
    echo "usage: $0 HOSTS BUNDLE_DIR" >&2
    exit 2
fi
hosts=$1
bundle=${2%/}
tarball="$bundle.tar.gz"
user="${DEPLOY_USER:-admin}"
read -r -a ssh_command <<<"${SSH:-ssh}"
read -r -a scp_command <<<"${SCP:-scp}"

if ! bazaar_read_hosts "$hosts"; then
    echo "error: $hosts is not a valid hosts file (see deploy/hosts.example)" >&2
    exit 1
fi
if [[ ! -f $tarball || ! -x $bundle/install-host.sh ]]; then
    echo "error: $bundle is not a bundle with its $tarball (make both with deploy/bundle.sh)" >&2
    exit 1
fi
# The bundle must name the same hosts, or the hosts would not find each other.
for service in "${BAZAAR_SERVICES[@]}"; do
    if ! grep -qx "${HOST_OF[$service]} $service" "$bundle/hosts"; then
        echo "error: $bundle/hosts does not put $service at ${HOST_OF[$service]}; rebuild the bundle from $hosts" >&2
        exit 1
    fi
done

for address in "${HOST_ADDRESSES[@]}"; do
    read -r -a services <<<"$(bazaar_services_on "$address")"
    # scp wants an IPv6 address in brackets.
    scp_host=$address
    [[ $address == *:* ]] && scp_host="[$address]"
    echo "== $address: ${services[*]}"
    remote_dir="$("${ssh_command[@]}" "$user@$address" 'mktemp -d /tmp/bazaar-bundle.XXXXXX')"
    if [[ ! $remote_dir =~ ^/tmp/bazaar-bundle\.[A-Za-z0-9]+$ ]]; then
        echo "error: $address: could not make a temporary directory (got '$remote_dir')" >&2
        exit 1
    fi
    "${scp_command[@]}" -q "$tarball" "$user@$scp_host:$remote_dir/bundle.tar.gz"
    "${ssh_command[@]}" "$user@$address" \
        "tar -xzf $remote_dir/bundle.tar.gz -C $remote_dir && sudo $remote_dir/install-host.sh ${services[*]}; status=\$?; rm -rf $remote_dir; exit \$status"
done
echo "installed on ${#HOST_ADDRESSES[@]} hosts"
