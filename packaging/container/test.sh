#!/usr/bin/env bash
# Tests the image built by packaging/container/build.sh without running a container (the
# runtimes need setrlimit, which CI's own container refuses): reads the image's config,
# copies its root filesystem out with buildah, checks what is (and is not) in it, then runs
# its entrypoint in that root (chroot) with the image's environment, as the image's user,
# and calls /health. Also checks compose.yaml names this image.
# Usage: packaging/container/test.sh IMAGE [STATIC_BINARY]
#   STATIC_BINARY: the binary the image should hold, byte for byte (optional).
# Root (buildah mount, chroot). STORAGE_DRIVER as for build.sh (default vfs).
set -euo pipefail
cd "$(dirname "$0")/../.."

[ $# -ge 1 ] || { echo "usage: $0 IMAGE [STATIC_BINARY]" >&2; exit 2; }
image=$1
bin=${2:-}
storage=${STORAGE_DRIVER:-vfs}
# The Containerfile's choices, checked here rather than read back from it.
USER_ID=10001
STATE_DIR=/var/lib/avr-core
# Startup on a busy 2-core runner takes milliseconds; 10 s leaves room for a loaded one.
START_SECONDS=10
# No call is live, so SIGTERM ends the process at once; 15 s covers the webhook queue's drain.
STOP_SECONDS=15

ok() { echo "container-test: ok: $*"; }
fail() {
    echo "container-test: FAIL: $*" >&2
    exit 1
}
bah() { buildah --storage-driver "$storage" "$@"; }

[ "$(id -u)" -eq 0 ] || fail "must run as root (buildah mount, chroot)"
work=$(mktemp -d)
ctr=""
pid=""
cleanup() {
    [ -z "$pid" ] || kill -KILL "$pid" 2>/dev/null || true
    [ -z "$ctr" ] || bah rm "$ctr" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# --- The image's config --------------------------------------------------------------------
config=$(bah inspect --type image "$image" | jq '.OCIv1.config')
echo "$config" | jq -c '{User, Entrypoint, Cmd, ExposedPorts, Env, WorkingDir}'
[ "$(jq -r .User <<<"$config")" = "$USER_ID:$USER_ID" ] || fail "User is not $USER_ID:$USER_ID"
ok "User $USER_ID:$USER_ID (not root)"
[ "$(jq -c .Entrypoint <<<"$config")" = '["/usr/bin/avr-core"]' ] || fail "Entrypoint is not [\"/usr/bin/avr-core\"]"
[ "$(jq -c '.Cmd // []' <<<"$config")" = '[]' ] || fail "Cmd is set: arguments would be added to the server's"
ok "Entrypoint [\"/usr/bin/avr-core\"], no Cmd"
[ "$(jq -c '.ExposedPorts | keys' <<<"$config")" = '["5001/tcp","6001/tcp"]' ] || fail "ExposedPorts is not 5001/tcp, 6001/tcp"
ok "EXPOSE 5001/tcp 6001/tcp"
mapfile -t image_env < <(jq -r '.Env[]' <<<"$config")
for want in PORT=5001 HTTP_PORT=6001 BIND_ADDRESS=0.0.0.0 HTTP_BIND_ADDRESS=0.0.0.0 "STATE_DIRECTORY=$STATE_DIR"; do
    printf '%s\n' "${image_env[@]}" | grep -qxF "$want" || fail "Env lacks $want"
done
ok "Env has the upstream core's PORT=5001, HTTP_PORT=6001, binds 0.0.0.0, STATE_DIRECTORY=$STATE_DIR"

# --- The root filesystem -------------------------------------------------------------------
ctr=$(bah from --pull-never --quiet "$image")
rootfs="$work/rootfs"
mkdir "$rootfs"
cp -a "$(bah mount "$ctr")/." "$rootfs/"
bah umount "$ctr" >/dev/null
(cd "$rootfs" && find . -printf '%M %u:%g %p\n' | sort -k3)
shells=$(find "$rootfs" -name sh -o -name bash -o -name dash -o -name busybox)
[ -z "$shells" ] || fail "the image has a shell: $shells"
ok "no shell in the image"
files=$(cd "$rootfs" && find . -not -type d | sort | tr '\n' ' ')
[ "$files" = "./etc/group ./etc/passwd ./usr/bin/avr-core " ] || fail "unexpected files: $files"
ok "files: exactly /etc/group, /etc/passwd, /usr/bin/avr-core"
readelf -lW "$rootfs/usr/bin/avr-core" | grep -q INTERP && fail "/usr/bin/avr-core is dynamically linked"
ok "/usr/bin/avr-core is static (no ELF interpreter)"
if [ -n "$bin" ]; then
    cmp -s "$bin" "$rootfs/usr/bin/avr-core" || fail "/usr/bin/avr-core differs from $bin"
    ok "/usr/bin/avr-core is $bin, byte for byte"
fi
[ "$(stat -c '%a %u:%g' "$rootfs/usr/bin/avr-core")" = "755 0:0" ] || fail "/usr/bin/avr-core is not 755 root:root"
[ "$(stat -c '%a %u:%g' "$rootfs$STATE_DIR")" = "700 $USER_ID:$USER_ID" ] || fail "$STATE_DIR is not 700 $USER_ID:$USER_ID"
[ "$(stat -c '%u' "$rootfs/var/lib")" = 0 ] || fail "/var/lib is not root's"
ok "binary 755 root:root (the user cannot replace it); $STATE_DIR 700 owned by $USER_ID"
grep -qx "avr-core:x:$USER_ID:$USER_ID:avr-core:$STATE_DIR:/sbin/nologin" "$rootfs/etc/passwd" || fail "/etc/passwd lacks the avr-core user"
grep -qx "avr-core:x:$USER_ID:" "$rootfs/etc/group" || fail "/etc/group lacks the avr-core group"
ok "/etc/passwd and /etc/group name $USER_ID avr-core"

# --- Run the entrypoint in the root, as the image's user ------------------------------------
# chroot --userspec keeps nothing of the host's filesystem in view, as a container would (a
# missing file the binary needs would show here); the process's credentials are read back
# from /proc below rather than trusted. chroot needs the root's parents to be traversable.
chmod 0755 "$work"
in_image() { # in_image VAR=value...: exec the entrypoint with the image's Env, then these, as the user
    exec env -i "${image_env[@]}" "$@" chroot --userspec="$USER_ID:$USER_ID" --groups="$USER_ID" \
        "$rootfs" /usr/bin/avr-core
}
in_image_cmd() { # in_image_cmd ARG...: avr-core ARG... in the root, as the user
    env -i "${image_env[@]}" STS_URL=ws://127.0.0.1:1 chroot --userspec="$USER_ID:$USER_ID" \
        --groups="$USER_ID" "$rootfs" /usr/bin/avr-core "$@"
}
version=$(in_image_cmd --version) || fail "avr-core --version failed in the image"
[ -z "$bin" ] || [ "$version" = "$("$bin" --version)" ] || fail "--version says $version"
ok "avr-core --version in the image: $version"
effective=$(in_image_cmd check-config) || fail "check-config rejects the image's environment: $effective"
for want in PORT=5001 HTTP_PORT=6001; do
    grep -qx "$want" <<<"$effective" || fail "check-config does not show $want: $effective"
done
ok "check-config accepts the image's environment (+ STS_URL) and shows PORT 5001, HTTP_PORT 6001"

free_port() { # a TCP port nothing listens on (the test's own listeners start right after)
    local p
    while :; do
        p=$((20000 + RANDOM % 20000))
        [ -z "$(ss -Htln "sport = :$p")" ] && { echo "$p"; return; }
    done
}
port=$(free_port)
http_port=$(free_port)
[ "$port" != "$http_port" ] || http_port=$((port + 1))
# The image's Env, with the test's ports on loopback; STS_URL points at a closed port (no call
# is placed, so no agent is needed).
in_image STS_URL=ws://127.0.0.1:1 PORT="$port" HTTP_PORT="$http_port" BIND_ADDRESS=127.0.0.1 \
    HTTP_BIND_ADDRESS=127.0.0.1 >"$work/avr-core.log" 2>&1 &
pid=$!
health=$(curl -sS --max-time 2 --retry-connrefused --retry 20 --retry-max-time "$START_SECONDS" \
    -w ' %{http_code}' "http://127.0.0.1:$http_port/health") || {
    cat "$work/avr-core.log" >&2
    fail "GET /health did not answer within $START_SECONDS s"
}
[ "${health##* }" = 200 ] || fail "GET /health answered ${health##* }: ${health% *}"
ok "GET /health on the image's HTTP service: 200 ${health% *}"
[ -n "$(ss -Htln "sport = :$port")" ] || fail "nothing listens on the AudioSocket port $port"
ok "AudioSocket listening on $port"
status=$(cat "/proc/$pid/status")
for want in "Uid:	$USER_ID	$USER_ID	$USER_ID	$USER_ID" "Gid:	$USER_ID	$USER_ID	$USER_ID	$USER_ID" \
    "Groups:	$USER_ID" "CapEff:	0000000000000000"; do
    grep -qx "$want *" <<<"$status" || fail "the process's status lacks '$want': $(grep -E '^(Uid|Gid|Groups|CapEff)' <<<"$status")"
done
ok "the process runs as uid/gid $USER_ID with no capabilities"
[ "$(readlink "/proc/$pid/root")" = "$rootfs" ] || fail "the process's root is not the image's"
ok "the process sees only the image's root"

kill -TERM "$pid"
rc=0
timeout "$STOP_SECONDS" tail --pid="$pid" -f /dev/null || fail "avr-core did not stop within $STOP_SECONDS s of SIGTERM"
wait "$pid" || rc=$?
pid=""
[ "$rc" -eq 0 ] || { cat "$work/avr-core.log" >&2; fail "avr-core exited $rc after SIGTERM"; }
ok "SIGTERM: avr-core stopped, exit 0"

# --- compose.yaml uses this image ----------------------------------------------------------
grep -qx "    image: $image" packaging/container/compose.yaml || fail "compose.yaml does not use $image"
ok "compose.yaml's avr-core service uses $image"
echo "container-test: all checks passed"
