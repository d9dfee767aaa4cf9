#!/usr/bin/env bash
# Tests deploy/: builds a bundle from deploy/hosts.example with the release binaries, checks
# what it holds, refuses malformed hosts files and tokens, installs it with
# `install-host.sh --root` into a temporary root and checks the tree, runs deploy/install.sh
# against stand-ins for ssh and scp (no host is contacted), and checks the systemd units with
# `systemd-analyze verify` against the installed root, which must also refuse broken units.
#
#   deploy/test.sh        BIN_DIR=DIR to take the binaries from DIR (target/release)
#
# Needs bash, coreutils, tar, gzip and systemd-analyze (package systemd). Exits 1 on the
# first failure.
set -euo pipefail

deploy="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$deploy")"
bin_dir="${BIN_DIR:-$repo/target/release}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

fail() {
    echo "FAIL: $*" >&2
    exit 1
}
pass() {
    echo "ok: $*"
}
# Expects the command to fail and to say $1 on stderr.
expect_refusal() {
    local said=$1
    shift
    if "$@" >"$tmp/out" 2>"$tmp/err"; then
        fail "accepted, expected a refusal: $*"
    fi
    grep -qF -- "$said" "$tmp/err" || fail "refused without saying '$said': $(cat "$tmp/err")"
}
# The mode of a file as octal digits.
mode_of() {
    stat -c %a "$1"
}

command -v systemd-analyze >/dev/null || fail "systemd-analyze is missing (apt-get install systemd)"
for binary in catalog order frontend client; do
    [[ -x $bin_dir/$binary ]] || fail "$bin_dir/$binary is missing (build with cargo build --release or set BIN_DIR)"
done
# Small stand-in binaries for the bundles whose binaries do not matter.
stub_bin="$tmp/stub-bin"
mkdir -p "$stub_bin"
for binary in catalog order frontend client; do
    printf '#!/bin/sh\nexit 0\n' >"$stub_bin/$binary"
    chmod 0755 "$stub_bin/$binary"
done

# (a) The bundle of the example hosts file.
bundle="$tmp/bundle"
"$deploy/bundle.sh" "$deploy/hosts.example" "$bundle" "$bin_dir" >"$tmp/out" ||
    fail "bundle.sh on hosts.example: $(cat "$tmp/out")"

# (b) What it holds.
for binary in catalog order frontend client; do
    [[ -x $bundle/bin/$binary ]] || fail "bundle: bin/$binary is missing or not executable"
    cmp -s "$bin_dir/$binary" "$bundle/bin/$binary" || fail "bundle: bin/$binary differs from $bin_dir"
done
diff -r "$repo/data" "$bundle/data" >/dev/null || fail "bundle: data/ differs from the repository's"
for service in catalog order1 order2 order3 frontend; do
    cmp -s "$deploy/env/$service.env" "$bundle/env/$service.env" ||
        fail "bundle: env/$service.env differs from deploy/env"
done
grep -qxE 'BAZAAR_CLUSTER_TOKEN=[0-9a-f]{64}' "$bundle/env/cluster.env" ||
    fail "bundle: env/cluster.env is not one line BAZAAR_CLUSTER_TOKEN=<64 hex digits>"
(($(wc -l <"$bundle/env/cluster.env") == 1)) || fail "bundle: env/cluster.env has more than one line"
[[ $(mode_of "$bundle/env/cluster.env") == 600 ]] || fail "bundle: env/cluster.env is not mode 0600"
[[ $(mode_of "$bundle.tar.gz") == 600 ]] || fail "bundle: the tarball is not mode 0600"
expected_hosts=$'10.0.1.10 catalog\n10.0.1.11 order1\n10.0.1.12 order2\n10.0.1.13 order3\n10.0.1.10 frontend'
[[ "$(grep -v '^#' "$bundle/hosts")" == "$expected_hosts" ]] ||
    fail "bundle: hosts is not the example's in /etc/hosts form: $(cat "$bundle/hosts")"
for unit in bazaar-catalog.service bazaar-order@.service bazaar-frontend.service; do
    cmp -s "$deploy/systemd/$unit" "$bundle/systemd/$unit" || fail "bundle: systemd/$unit is missing or differs"
done
[[ -x $bundle/install-host.sh ]] || fail "bundle: install-host.sh is missing or not executable"
diff <(cd "$bundle" && find . | sort) <(tar -tzf "$bundle.tar.gz" | sed 's,/$,,' | sort) >/dev/null ||
    fail "bundle: the tarball does not hold what the directory holds"
"$deploy/bundle.sh" "$deploy/hosts.example" "$tmp/second" "$stub_bin" >/dev/null
cmp -s "$bundle/env/cluster.env" "$tmp/second/env/cluster.env" &&
    fail "bundle: two bundles got the same fresh token"
pass "bundle.sh: bin, data, env, cluster.env (fresh token), hosts, systemd, install-host.sh, tarball"

printf 'BAZAAR_CLUSTER_TOKEN=%s\n' "$(printf 'ab%.0s' {1..32})" >"$tmp/token.env"
BAZAAR_TOKEN_FILE="$tmp/token.env" "$deploy/bundle.sh" "$deploy/hosts.example" "$tmp/given" "$stub_bin" >/dev/null
cmp -s "$tmp/token.env" "$tmp/given/env/cluster.env" || fail "bundle: BAZAAR_TOKEN_FILE was not used"
printf 'BAZAAR_CLUSTER_TOKEN=short\n' >"$tmp/short.env"
BAZAAR_TOKEN_FILE="$tmp/short.env" expect_refusal "must hold one line" \
    "$deploy/bundle.sh" "$deploy/hosts.example" "$tmp/short" "$stub_bin"
printf 'BAZAAR_CLUSTER_TOKEN="%s"\n' "$(printf 'ab%.0s' {1..32})" >"$tmp/quoted.env"
BAZAAR_TOKEN_FILE="$tmp/quoted.env" expect_refusal "must hold one line" \
    "$deploy/bundle.sh" "$deploy/hosts.example" "$tmp/quoted" "$stub_bin"
pass "bundle.sh: BAZAAR_TOKEN_FILE is used as given; a short or quoted token is refused"

# Malformed hosts files: each is refused, saying why, and no bundle is made.
bad_hosts() {
    local said=$1 name=$2
    shift 2
    printf '%s\n' "$@" >"$tmp/$name.hosts"
    expect_refusal "$said" "$deploy/bundle.sh" "$tmp/$name.hosts" "$tmp/$name" "$stub_bin"
    [[ ! -e $tmp/$name.tar.gz ]] || fail "a bundle was made from the malformed $name.hosts"
}
good=("catalog 10.0.0.1" "order1 10.0.0.2" "order2 10.0.0.3" "order3 10.0.0.4" "frontend 10.0.0.1")
bad_hosts "service 'order3' has no host" missing "${good[@]:0:3}" "${good[4]}"
bad_hosts "service 'order1' is listed twice" twice "${good[@]}" "order1 10.0.0.9"
bad_hosts "unknown service 'order4'" unknown "${good[@]}" "order4 10.0.0.5"
bad_hosts "'10.0.0.256' is not an IPv4 or IPv6 address" address "${good[@]:0:4}" "frontend 10.0.0.256"
bad_hosts "expected \`<service> <address>\`" fields "${good[@]:0:4}" "frontend 10.0.0.1 extra"
bad_hosts "'catalog.internal' is not an IPv4 or IPv6 address" name "catalog catalog.internal" "${good[@]:1}"
expect_refusal "does not exist" "$deploy/bundle.sh" "$tmp/none.hosts" "$tmp/none" "$stub_bin"
expect_refusal "exists and is not empty" "$deploy/bundle.sh" "$deploy/hosts.example" "$bundle" "$stub_bin"
printf '%s\n' "# comment" "" "${good[@]:0:4}" "frontend   fd00::1   # IPv6 is fine" >"$tmp/ok.hosts"
"$deploy/bundle.sh" "$tmp/ok.hosts" "$tmp/ok" "$stub_bin" >/dev/null || fail "a valid hosts file with comments was refused"
grep -qx 'fd00::1 frontend' "$tmp/ok/hosts" || fail "bundle: hosts lacks 'fd00::1 frontend'"
pass "bundle.sh: missing, doubled, unknown, badly formed entries and an existing OUT_DIR are refused"

# (c) A dry install of every service into a temporary root.
root="$tmp/root"
mkdir -p "$root/etc"
printf '127.0.0.1 localhost\n10.9.9.9 other # kept\n' >"$root/etc/hosts"
"$bundle/install-host.sh" --root "$root" catalog order1 order2 order3 frontend >"$tmp/out" ||
    fail "install-host.sh --root: $(cat "$tmp/out")"
"$bundle/install-host.sh" --root "$root" catalog order1 order2 order3 frontend >"$tmp/out" ||
    fail "install-host.sh --root, a second time: $(cat "$tmp/out")"
for binary in catalog order frontend client; do
    cmp -s "$bin_dir/$binary" "$root/opt/bazaar/bin/$binary" || fail "install: /opt/bazaar/bin/$binary differs"
    [[ $(mode_of "$root/opt/bazaar/bin/$binary") == 755 ]] || fail "install: /opt/bazaar/bin/$binary is not 0755"
done
cmp -s "$repo/data/catalog.csv" "$root/opt/bazaar/data/catalog.csv" || fail "install: /opt/bazaar/data/catalog.csv differs"
[[ $(mode_of "$root/opt/bazaar/data/catalog.csv") == 644 ]] || fail "install: the seed is not 0644"
[[ $(mode_of "$root/etc/bazaar") == 750 ]] || fail "install: /etc/bazaar is not 0750"
for file in cluster catalog order1 order2 order3 frontend; do
    cmp -s "$bundle/env/$file.env" "$root/etc/bazaar/$file.env" || fail "install: /etc/bazaar/$file.env differs"
    [[ $(mode_of "$root/etc/bazaar/$file.env") == 640 ]] || fail "install: /etc/bazaar/$file.env is not 0640"
done
for unit in bazaar-catalog.service bazaar-order@.service bazaar-frontend.service; do
    cmp -s "$bundle/systemd/$unit" "$root/etc/systemd/system/$unit" || fail "install: unit $unit differs"
done
(($(grep -c '^# BEGIN Stock Bazaar' "$root/etc/hosts") == 1)) ||
    fail "install: /etc/hosts does not hold exactly one Stock Bazaar block after two installs"
for line in "127.0.0.1 localhost" "10.9.9.9 other # kept"; do
    grep -qx "$line" "$root/etc/hosts" || fail "install: /etc/hosts lost its own line '$line'"
done
for line in "10.0.1.10 catalog" "10.0.1.11 order1" "10.0.1.12 order2" "10.0.1.13 order3" "10.0.1.10 frontend"; do
    grep -qx "$line" "$root/etc/hosts" || fail "install: /etc/hosts lacks '$line'"
done
leftovers="$(find "$root" -name '*.new' -o -name '.hosts.*')"
[[ -z $leftovers ]] || fail "install: left temporary files: $leftovers"

# Only what a host runs: DESTDIR, one replica.
DESTDIR="$tmp/one" "$bundle/install-host.sh" order2 >/dev/null
[[ -f $tmp/one/etc/bazaar/order2.env && -f $tmp/one/etc/systemd/system/bazaar-order@.service ]] ||
    fail "install order2: its env file or unit is missing"
[[ ! -e $tmp/one/etc/bazaar/catalog.env && ! -e $tmp/one/etc/systemd/system/bazaar-catalog.service ]] ||
    fail "install order2: installed the catalog's files too"
expect_refusal "unknown service 'order4'" "$bundle/install-host.sh" --root "$tmp/bad" order4
pass "install-host.sh --root / DESTDIR: binaries, data, env files 0640, units, one /etc/hosts block kept on re-runs"

# install.sh against stand-ins: ssh runs the command here, with sudo and the install
# redirected into a root per host; scp copies the file. The bundle with stand-in binaries
# keeps this quick.
fake="$tmp/fake"
mkdir -p "$fake/bin"
cat >"$fake/ssh" <<EOF
#!/usr/bin/env bash
set -euo pipefail
target=\$1
shift
echo "ssh \$target" >>"$fake/calls"
export DESTDIR="$fake/hosts/\${target#*@}"
PATH="$fake/bin:\$PATH" exec bash -c "\$*"
EOF
cat >"$fake/scp" <<EOF
#!/usr/bin/env bash
set -euo pipefail
[[ \$1 == -q ]] && shift
echo "scp \$2" >>"$fake/calls"
cp "\$1" "\${2#*:}"
EOF
printf '#!/bin/sh\nexec "$@"\n' >"$fake/bin/sudo"
chmod 0755 "$fake/ssh" "$fake/scp" "$fake/bin/sudo"
SSH="$fake/ssh" SCP="$fake/scp" "$deploy/install.sh" "$deploy/hosts.example" "$tmp/second" >"$tmp/out" ||
    fail "install.sh: $(cat "$tmp/out")"
installed_hosts="$(cd "$fake/hosts" && printf '%s ' *)"
[[ $installed_hosts == "10.0.1.10 10.0.1.11 10.0.1.12 10.0.1.13 " ]] ||
    fail "install.sh: installed on $installed_hosts instead of the four example hosts"
[[ "$(ls "$fake/hosts/10.0.1.10/etc/systemd/system")" == $'bazaar-catalog.service\nbazaar-frontend.service' ]] ||
    fail "install.sh: 10.0.1.10 did not get exactly the catalog and the front end"
[[ "$(ls "$fake/hosts/10.0.1.12/etc/bazaar")" == $'cluster.env\norder2.env' ]] ||
    fail "install.sh: 10.0.1.12 did not get exactly cluster.env and order2.env"
grep -qv '^ssh admin@\|^scp admin@' "$fake/calls" && fail "install.sh: did not log in as admin: $(cat "$fake/calls")"
[[ -z "$(ls /tmp/bazaar-bundle.* 2>/dev/null || true)" ]] || fail "install.sh: left its temporary directory behind"
DEPLOY_USER=ops SSH="$fake/ssh" SCP="$fake/scp" "$deploy/install.sh" "$deploy/hosts.example" "$tmp/second" >/dev/null
grep -q '^scp ops@10.0.1.13:' "$fake/calls" || fail "install.sh: DEPLOY_USER was not used"
SSH="$fake/ssh" SCP="$fake/scp" expect_refusal "does not put catalog at 10.0.0.1" \
    "$deploy/install.sh" "$tmp/ok.hosts" "$tmp/second"
pass "install.sh: each host gets its own services, as \$DEPLOY_USER (admin), through \$SSH and \$SCP"

# (d) The units, verified against the installed root: the binaries they start must be there.
# systemd-analyze --root resolves every unit, the targets included, inside the root.
system_units=/usr/lib/systemd/system
[[ -f $system_units/multi-user.target ]] || system_units=/lib/systemd/system
[[ -f $system_units/multi-user.target ]] || fail "no system units (multi-user.target) to verify against"
mkdir -p "$root/usr/lib/systemd"
cp -R "$system_units" "$root/usr/lib/systemd/system"
units=(bazaar-catalog.service bazaar-order@1.service bazaar-order@2.service bazaar-order@3.service
    bazaar-frontend.service)
# Fails when systemd-analyze fails or warns about anything (an unknown key is only a warning).
verify() {
    local report
    if ! report="$(systemd-analyze verify --root="$root" "$@" 2>&1)"; then
        echo "$report"
        return 1
    fi
    if [[ -n $report ]]; then
        echo "$report"
        return 1
    fi
}
report="$(verify "${units[@]}")" || fail "systemd-analyze verify: $report"
pass "systemd-analyze verify ($(systemd-analyze --version | head -1)): ${units[*]}"

# The check has teeth: a unit starting a binary that is not there, and a misspelt key.
unit_file="$root/etc/systemd/system/bazaar-order@.service"
sed -i 's,^ExecStart=/opt/bazaar/bin/order$,ExecStart=/opt/bazaar/bin/ordr,' "$unit_file"
if report="$(verify bazaar-order@2.service)"; then
    fail "systemd-analyze verify accepted a unit whose ExecStart binary is missing"
fi
cp "$bundle/systemd/bazaar-order@.service" "$unit_file"
sed -i 's,^ProtectHome=yes$,ProtectHomes=yes,' "$unit_file"
if report="$(verify bazaar-order@2.service)"; then
    fail "systemd-analyze verify accepted a unit with a misspelt key"
fi
cp "$bundle/systemd/bazaar-order@.service" "$unit_file"
verify "${units[@]}" >/dev/null || fail "systemd-analyze verify: the restored unit fails"
pass "systemd-analyze verify refuses a missing ExecStart binary and a misspelt key"

echo "deploy: all checks passed"
