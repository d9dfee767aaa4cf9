#!/usr/bin/env bash
# Builds the image `stock-bazaar` (tag: $BAZAAR_IMAGE, default stock-bazaar:latest) from
# nothing: static release binaries (glibc's crt-static, so names still resolve through the
# container's /etc/hosts and DNS), the shipped data/, on `FROM scratch`. Prints the image's
# size.
#
#   image/build.sh                  # build the binaries and the image
#   image/build.sh --bin-dir        # build the binaries, print where they are
#   PROFILE=dev image/build.sh      # debug binaries (faster to build; what the tests use)
set -euo pipefail
cd "$(dirname "$0")/.."
image="${BAZAAR_IMAGE:-stock-bazaar:latest}"
profile="${PROFILE:-release}"
target=x86_64-unknown-linux-gnu
case "$profile" in
    release) bin_dir="target/$target/release" ;;
    dev) bin_dir="target/$target/debug" ;;
    *) echo "image/build.sh: PROFILE must be release or dev, not $profile" >&2; exit 2 ;;
esac

# --target keeps the flag off build scripts and proc macros, which cannot be static.
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --profile "$profile" --quiet --target "$target" -p catalog -p order -p frontend -p client
for binary in catalog order frontend client; do
    # A static(-pie) binary asks for no program interpreter and no shared library.
    headers="$(readelf -lW "$bin_dir/$binary")"
    dynamic="$(readelf -d "$bin_dir/$binary")"
    if [[ $headers == *INTERP* || $dynamic == *NEEDED* ]]; then
        echo "image/build.sh: $bin_dir/$binary is not static" >&2
        exit 1
    fi
done
if [[ "${1:-}" == --bin-dir ]]; then
    echo "$bin_dir"
    exit 0
fi

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/bin" "$context/state"
cp "$bin_dir"/{catalog,order,frontend,client} "$context/bin/"
# The image needs no debug information: a quarter of its size.
strip --strip-all "$context"/bin/*
cp -r data "$context/data"
if ! docker build -t "$image" -f image/Dockerfile "$context" >"$context/build.log" 2>&1; then
    cat "$context/build.log" >&2
    exit 1
fi
size="$(docker image inspect --format '{{.Size}}' "$image")"
echo "built $image: $((size / 1024 / 1024)) MiB ($size bytes)"
