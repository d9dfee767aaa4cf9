#!/usr/bin/env bash
# Installs Stock Bazaar services from this bundle on this host; run as root from the
# unpacked bundle (deploy/bundle.sh makes it; deploy/install.sh runs it over ssh).
#
#   install-host.sh [--root DIR] SERVICE...     SERVICE: catalog order1 order2 order3 frontend
#
# It creates the system user `bazaar` if missing, installs the binaries and data to
# /opt/bazaar, cluster.env and the services' env files to /etc/bazaar (mode 0640, group
# bazaar), puts the bundle's hosts lines into /etc/hosts (one marked block, replaced on every
# run), installs the services' systemd units, reloads systemd and enables and starts them;
# services that were already running are restarted, so that they run what was installed.
#
# With --root DIR (or DESTDIR=DIR) everything is installed under DIR instead of /, and no
# user is created, no ownership changed and systemctl not run: a dry install to inspect.
set -euo pipefail

bundle="$(cd "$(dirname "$0")" && pwd)"
root="${DESTDIR:-}"
services=()
while (($#)); do
    case "$1" in
    --root)
        (($# >= 2)) || { echo "error: --root needs a directory" >&2; exit 2; }
        root=$2
        shift 2
        ;;
    --root=*)
        root=${1#--root=}
        shift
        ;;
    -h | --help)
        sed -n '2,14s/^# \{0,1\}//p' "$0"
        exit 0
        ;;
    -*)
        echo "error: unknown option $1" >&2
        exit 2
        ;;
    *)
        services+=("$1")
        shift
        ;;
    esac
done
if ((${#services[@]} == 0)); then
    echo "usage: $0 [--root DIR] SERVICE...  (catalog order1 order2 order3 frontend)" >&2
    exit 2
fi

units=()
for service in "${services[@]}"; do
    case "$service" in
    catalog | frontend) units+=("bazaar-$service.service") ;;
    order[123]) units+=("bazaar-order@${service#order}.service") ;;
    *)
        echo "error: unknown service '$service' (known: catalog order1 order2 order3 frontend)" >&2
        exit 2
        ;;
    esac
done
for file in bin/catalog bin/order bin/frontend bin/client data/catalog.csv env/cluster.env hosts \
    systemd/bazaar-catalog.service systemd/bazaar-order@.service systemd/bazaar-frontend.service; do
    [[ -e "$bundle/$file" ]] || { echo "error: the bundle $bundle has no $file" >&2; exit 1; }
done

if [[ -n $root ]]; then
    mkdir -p "$root"
    root="$(cd "$root" && pwd)"
    echo "installing ${services[*]} under $root (no user, ownership or systemctl)"
else
    if ((EUID != 0)); then
        echo "error: run as root (or with --root DIR for a dry install)" >&2
        exit 1
    fi
    if ! getent group bazaar >/dev/null; then
        groupadd --system bazaar
    fi
    if ! getent passwd bazaar >/dev/null; then
        useradd --system --gid bazaar --home-dir /var/lib/bazaar --no-create-home \
            --shell /usr/sbin/nologin --comment "Stock Bazaar" bazaar
    fi
fi

# Replaces $2 by $1 with mode $3 atomically, so that a running binary is never overwritten.
place() {
    install -m "$3" "$1" "$2.new"
    mv -f "$2.new" "$2"
}

install -d -m 0755 "$root/opt/bazaar" "$root/opt/bazaar/bin" "$root/opt/bazaar/data"
for binary in catalog order frontend client; do
    place "$bundle/bin/$binary" "$root/opt/bazaar/bin/$binary" 0755
done
for file in "$bundle"/data/*; do
    place "$file" "$root/opt/bazaar/data/${file##*/}" 0644
done

# Settings: readable by the services' group only (cluster.env holds the cluster's secret).
install -d -m 0750 "$root/etc/bazaar"
env_files=(cluster.env)
for service in "${services[@]}"; do
    env_files+=("$service.env")
done
for file in "${env_files[@]}"; do
    place "$bundle/env/$file" "$root/etc/bazaar/$file" 0640
    [[ -n $root ]] || chgrp bazaar "$root/etc/bazaar/$file"
done
[[ -n $root ]] || chgrp bazaar "$root/etc/bazaar"

# /etc/hosts: the cluster's names in one marked block, replaced as a whole on every run.
begin="# BEGIN Stock Bazaar (deploy/install-host.sh)"
end="# END Stock Bazaar"
hosts_file="$root/etc/hosts"
mkdir -p "$root/etc"
touch "$hosts_file"
hosts_new="$(mktemp "$root/etc/.hosts.XXXXXX")"
trap 'rm -f "$hosts_new"' EXIT
awk -v begin="$begin" -v end="$end" '
    $0 == begin { skip = 1; next }
    $0 == end { skip = 0; next }
    !skip { print }
' "$hosts_file" >"$hosts_new"
{
    echo "$begin"
    cat "$bundle/hosts"
    echo "$end"
} >>"$hosts_new"
# Rewrite in place: keeps /etc/hosts' owner, mode and inode.
cat "$hosts_new" >"$hosts_file"

install -d -m 0755 "$root/etc/systemd/system"
for service in "${services[@]}"; do
    case "$service" in
    order*) unit=bazaar-order@.service ;;
    *) unit="bazaar-$service.service" ;;
    esac
    place "$bundle/systemd/$unit" "$root/etc/systemd/system/$unit" 0644
done

if [[ -n $root ]]; then
    echo "would run: systemctl daemon-reload; systemctl enable --now ${units[*]}"
    exit 0
fi
running=()
for unit in "${units[@]}"; do
    if systemctl is-active --quiet "$unit"; then
        running+=("$unit")
    fi
done
systemctl daemon-reload
systemctl enable --now "${units[@]}"
if ((${#running[@]})); then
    systemctl restart "${running[@]}"
fi
systemctl --no-pager --lines=0 status "${units[@]}" || true
