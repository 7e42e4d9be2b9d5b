#!/usr/bin/env bash
# Builds the container image localhost/avr-core:<version> (and :latest) from
# packaging/container/Containerfile with buildah, FROM scratch (no registry needed).
# Usage: packaging/container/build.sh [STATIC_BINARY]
#   Without an argument it runs packaging/build-musl.sh and uses the binary that builds.
# Prints the image name on the last line. Root, Debian 12 (installs buildah if missing).
# Storage and isolation default to what works inside CI's own container: STORAGE_DRIVER=vfs,
# BUILDAH_ISOLATION=chroot; set them to use others (e.g. STORAGE_DRIVER=overlay). test.sh
# must see the same STORAGE_DRIVER to find the image.
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE=localhost/avr-core
# Above the host's system (<1000) and login (1000-9999) ranges: see the Containerfile.
USER_ID=10001

fail() {
    echo "container-build: FAIL: $*" >&2
    exit 1
}

# buildah 1.28 ignores a STORAGE_DRIVER environment variable: it is passed as the flag.
storage=${STORAGE_DRIVER:-vfs}
isolation=${BUILDAH_ISOLATION:-chroot}

if ! command -v buildah >/dev/null; then
    echo "container-build: installing buildah"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q buildah >/dev/null
fi

if [ $# -ge 1 ]; then
    bin=$1
else
    bin=$(packaging/build-musl.sh | tee /dev/stderr | tail -n1)
fi
[ -x "$bin" ] || fail "no executable at $bin"
readelf -lW "$bin" | grep -q INTERP && fail "$bin is dynamically linked: a scratch image has no libc"
version=$("$bin" --version | awk '{ print $2 }')
[ -n "$version" ] || fail "$bin --version printed no version"

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
install -m 0755 "$bin" "$ctx/avr-core"
# /sbin/nologin does not exist in the image: nobody logs in to it.
printf '%s\n' "root:x:0:0:root:/root:/sbin/nologin" \
    "avr-core:x:$USER_ID:$USER_ID:avr-core:/var/lib/avr-core:/sbin/nologin" >"$ctx/passwd"
printf '%s\n' "root:x:0:" "avr-core:x:$USER_ID:" >"$ctx/group"
chmod 0644 "$ctx/passwd" "$ctx/group"
# The directories the image needs (see the Containerfile); 0700: dead letters hold payloads.
install -d -m 0755 "$ctx/skel/var/lib" "$ctx/state"
install -d -m 0700 "$ctx/state/avr-core"

# A rebuild moves both tags; the image they left is removed so CI's storage does not grow.
old=$(buildah --storage-driver "$storage" images --quiet --no-trunc "$IMAGE:$version" 2>/dev/null || true)
start=$SECONDS
buildah --storage-driver "$storage" bud --isolation "$isolation" --quiet --layers=false \
    -f packaging/container/Containerfile --build-arg "VERSION=$version" \
    -t "$IMAGE:$version" -t "$IMAGE:latest" "$ctx" >/dev/null
new=$(buildah --storage-driver "$storage" images --quiet --no-trunc "$IMAGE:$version")
if [ -n "$old" ] && [ "$old" != "$new" ]; then
    buildah --storage-driver "$storage" rmi "$old" >/dev/null 2>&1 || true
fi
echo "container-build: built $IMAGE:$version in $((SECONDS - start)) s (storage $storage, isolation $isolation)"
buildah --storage-driver "$storage" images --noheading "$IMAGE:$version"
echo "$IMAGE:$version"
