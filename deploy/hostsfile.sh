# shellcheck shell=bash
# Reads a deployment's hosts file (sourced by bundle.sh and install.sh, not run).
#
# The file names which host runs what: one line per service, `<service> <address>`, where
# the services are catalog, order1, order2, order3 and frontend, each exactly once, and the
# address is the IPv4 or IPv6 address the other hosts reach it at (several services may
# share one). `#` starts a comment; blank lines are ignored.

# The services of one cluster, in the order they are started and listed.
BAZAAR_SERVICES=(catalog order1 order2 order3 frontend)

# True when $1 is a dotted-quad IPv4 address or looks like an IPv6 address.
bazaar_is_address() {
    local address=$1 part
    if [[ $address =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]]; then
        local IFS=.
        for part in $address; do
            ((10#$part <= 255)) || return 1
        done
        return 0
    fi
    [[ $address == *:*:* && $address =~ ^[0-9A-Fa-f:.]+$ ]]
}

# Parses and validates the hosts file $1 into the associative array HOST_OF (service ->
# address) and the array HOST_ADDRESSES (each address once, in the order of the file).
# Prints every problem found, with its line number, and returns 1 if there is any.
bazaar_read_hosts() {
    local file=$1 line number=0 service address extra known problems=0
    declare -gA HOST_OF=()
    declare -ga HOST_ADDRESSES=()
    if [[ ! -f $file ]]; then
        echo "error: hosts file $file does not exist" >&2
        return 1
    fi
    while IFS= read -r line || [[ -n $line ]]; do
        number=$((number + 1))
        line=${line%%#*}
        read -r service address extra <<<"$line" || true
        [[ -z $service ]] && continue
        if [[ -z $address || -n $extra ]]; then
            echo "error: $file:$number: expected \`<service> <address>\`, got: $line" >&2
            problems=$((problems + 1))
            continue
        fi
        known=no
        [[ " ${BAZAAR_SERVICES[*]} " == *" $service "* ]] && known=yes
        if [[ $known == no ]]; then
            echo "error: $file:$number: unknown service '$service' (known: ${BAZAAR_SERVICES[*]})" >&2
            problems=$((problems + 1))
            continue
        fi
        if ! bazaar_is_address "$address"; then
            echo "error: $file:$number: '$address' is not an IPv4 or IPv6 address" >&2
            problems=$((problems + 1))
            continue
        fi
        if [[ -n ${HOST_OF[$service]:-} ]]; then
            echo "error: $file:$number: service '$service' is listed twice" >&2
            problems=$((problems + 1))
            continue
        fi
        HOST_OF[$service]=$address
        [[ " ${HOST_ADDRESSES[*]} " == *" $address "* ]] || HOST_ADDRESSES+=("$address")
    done <"$file"
    for service in "${BAZAAR_SERVICES[@]}"; do
        if [[ -z ${HOST_OF[$service]:-} ]]; then
            echo "error: $file: service '$service' has no host" >&2
            problems=$((problems + 1))
        fi
    done
    ((problems == 0))
}

# Prints the services that run on address $1, space-separated (after bazaar_read_hosts).
bazaar_services_on() {
    local address=$1 service on=()
    for service in "${BAZAAR_SERVICES[@]}"; do
        [[ ${HOST_OF[$service]} == "$address" ]] && on+=("$service")
    done
    echo "${on[*]}"
}
