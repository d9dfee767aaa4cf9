#!/usr/bin/env bash
# Builds a release bundle for small VMs: a directory OUT_DIR and the same as OUT_DIR.tar.gz.
#
#   deploy/bundle.sh HOSTS OUT_DIR [BIN_DIR]
#
# HOSTS is the hosts file (see deploy/hosts.example); it is checked first. BIN_DIR holds the
# binaries catalog, order, frontend and client; without it they are built with image/build.sh
# (static binaries) if that script exists, else taken from target/release.
#
# The bundle holds:
#   bin/        the four binaries
#   data/       the initial catalog (the repository's data/)
#   env/        deploy/env/*.env unchanged, and cluster.env: BAZAAR_CLUSTER_TOKEN, read from
#               $BAZAAR_TOKEN_FILE if set, else 32 fresh random bytes in hex
#   hosts       the cluster's names in /etc/hosts form, `<address> <service>`
#   systemd/    the units
#   install-host.sh
#
# The bundle and the tarball hold the cluster token: they are made readable by their owner
# only; keep them so.
set -euo pipefail

deploy="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$deploy")"
# shellcheck source=deploy/hostsfile.sh
source "$deploy/hostsfile.sh"

if (($# < 2 || $# > 3)); then
    echo "usage: $0 HOSTS OUT_DIR [BIN_DIR]" >&2
    exit 2
fi
hosts=$1
out=${2%/}
bin_dir=${3:-}

if ! bazaar_read_hosts "$hosts"; then
    echo "error: $hosts is not a valid hosts file (see deploy/hosts.example)" >&2
    exit 1
fi
if [[ -e $out && -n "$(ls -A "$out" 2>/dev/null)" ]]; then
    echo "error: $out exists and is not empty; remove it or choose another OUT_DIR" >&2
    exit 1
fi

# The token: visible ASCII only, 16 to 1024 characters (common::config::parse_token), and
# nothing that an environment file would read differently (quotes, backslashes, `$`, `#`).
token_pattern='^[A-Za-z0-9._+/=~:@-]{16,1024}$'
if [[ -n ${BAZAAR_TOKEN_FILE:-} ]]; then
    if [[ ! -r $BAZAAR_TOKEN_FILE ]]; then
        echo "error: BAZAAR_TOKEN_FILE=$BAZAAR_TOKEN_FILE cannot be read" >&2
        exit 1
    fi
    mapfile -t token_lines < <(grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$BAZAAR_TOKEN_FILE")
    token=""
    if ((${#token_lines[@]} == 1)) && [[ ${token_lines[0]} == BAZAAR_CLUSTER_TOKEN=* ]]; then
        token=${token_lines[0]#BAZAAR_CLUSTER_TOKEN=}
    fi
    if [[ ! $token =~ $token_pattern ]]; then
        echo "error: $BAZAAR_TOKEN_FILE must hold one line BAZAAR_CLUSTER_TOKEN=<token>, the token" \
            "16-1024 letters, digits or -_.+/=~:@ (make one with: echo BAZAAR_CLUSTER_TOKEN=\$(openssl rand -hex 32))" >&2
        exit 1
    fi
else
    token="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [[ -z $bin_dir ]]; then
    if [[ -x $repo/image/build.sh ]]; then
        # `image/build.sh --bin-dir` builds the static binaries and prints their directory,
        # relative to the repository.
        bin_dir="$("$repo/image/build.sh" --bin-dir | tail -n 1)"
        [[ $bin_dir == /* ]] || bin_dir="$repo/$bin_dir"
    else
        bin_dir="$repo/target/release"
    fi
fi
for binary in catalog order frontend client; do
    if [[ ! -x $bin_dir/$binary ]]; then
        echo "error: $bin_dir/$binary is missing (build with \`cargo build --release\` or pass BIN_DIR)" >&2
        exit 1
    fi
done
for service in "${BAZAAR_SERVICES[@]}"; do
    if [[ ! -f $deploy/env/$service.env ]]; then
        echo "error: $deploy/env/$service.env is missing" >&2
        exit 1
    fi
done

umask 077
stage="$work/bundle"
mkdir -p "$stage/bin" "$stage/env" "$stage/systemd"
for binary in catalog order frontend client; do
    cp "$bin_dir/$binary" "$stage/bin/$binary"
    chmod 0755 "$stage/bin/$binary"
done
cp -R "$repo/data" "$stage/data"
for service in "${BAZAAR_SERVICES[@]}"; do
    cp "$deploy/env/$service.env" "$stage/env/"
done
printf 'BAZAAR_CLUSTER_TOKEN=%s\n' "$token" >"$stage/env/cluster.env"
{
    echo "# Stock Bazaar hosts, from $(basename "$hosts"): <address> <service>"
    for service in "${BAZAAR_SERVICES[@]}"; do
        printf '%s %s\n' "${HOST_OF[$service]}" "$service"
    done
} >"$stage/hosts"
cp "$deploy"/systemd/*.service "$stage/systemd/"
cp "$deploy/install-host.sh" "$stage/install-host.sh"
chmod 0755 "$stage/install-host.sh"

mkdir -p "$out"
cp -R "$stage/." "$out/"
chmod 0700 "$out"
# gzip -1: the binaries are most of it, and a faster build beats a few more megabytes.
tar -C "$out" -cf - . | gzip -1 >"$out.tar.gz"
chmod 0600 "$out.tar.gz"
echo "bundle: $out ($out.tar.gz)"
for address in "${HOST_ADDRESSES[@]}"; do
    echo "  $address: $(bazaar_services_on "$address")"
done
