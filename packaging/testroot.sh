# shellcheck shell=bash
# Sourced by test-deb.sh, test-rpm.sh and test-systemd.sh: a throwaway Debian 12 root
# (debootstrap minbase + adduser + systemd) to run the packages' real maintainer scripts in,
# and the check helpers. The root is cached as a tarball under the target dir (about a minute
# once, 3 s after).
# Sets: root (the root's path), work (a scratch dir). Needs: TEST_NAME.

[ "$(id -u)" -eq 0 ] || { echo "$TEST_NAME: must run as root (chroot)" >&2; exit 2; }

work="${CARGO_TARGET_DIR:-target}/pkgtest"
mkdir -p "$work"
work=$(realpath "$work")
# adduser is the .deb's one dependency outside minbase, baked in so no apt lists or network
# are needed at test time; systemd so test-systemd.sh can boot the root. The chroot tests
# still see no running systemd (no /run/systemd/system).
packages=adduser,systemd,systemd-sysv
cache="$work/bookworm-minbase-${packages//,/-}.tar.zst"
root="$work/root-$TEST_NAME"

host_install() { # host_install PACKAGE...: on the host, from Debian's archive
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}
ok() { echo "$TEST_NAME: ok: $*"; }
fail() {
    echo "$TEST_NAME: FAIL: $*" >&2
    exit 1
}
check() { # check "what was verified" command...
    local what=$1
    shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }
stat_of() { in_root stat -c '%a %U:%G' "$1"; } # names from the root's own /etc/passwd
user_exists() { in_root getent passwd avr-core >/dev/null; }
group_exists() { in_root getent group avr-core >/dev/null; }
no_user() { ! user_exists; }
no_group() { ! group_exists; }

testroot_cleanup() {
    if mountpoint -q "$root/proc"; then umount "$root/proc"; fi
    rm -rf "$root"
}

testroot_setup() { # testroot_setup chroot|nspawn: nspawn mounts its own /proc
    trap testroot_cleanup EXIT
    testroot_cleanup
    if [ ! -f "$cache" ]; then
        # The mirror apt already uses (CI reaches it); deb.debian.org if none is configured.
        local mirror=${MIRROR:-}
        if [ -z "$mirror" ]; then
            mirror=$(grep -rhoE '^(URIs:[[:space:]]*|deb[[:space:]]+)https?://[^[:space:]]+/debian/?([[:space:]]|$)' \
                /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
                grep -oE 'https?://[^[:space:]]+' | head -n1 || true)
        fi
        mirror=${mirror:-http://deb.debian.org/debian}
        command -v debootstrap >/dev/null || host_install debootstrap
        echo "$TEST_NAME: debootstrap bookworm minbase from $mirror (cached as $cache)"
        debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" \
            >"$work/debootstrap.log" 2>&1 || {
            tail -n 20 "$work/debootstrap.log" >&2
            exit 1
        }
        tar -C "$root" --zstd -cf "$cache.tmp" . && mv "$cache.tmp" "$cache"
        rm -rf "$root"
    fi
    mkdir -p "$root"
    tar -C "$root" --zstd -xf "$cache"
    [ "$1" = nspawn ] || mount -t proc proc "$root/proc"
    # No /run/systemd/system in the root: the scripts must see "systemd is not running" and
    # skip start/stop, as in any chroot or container.
    [ ! -e "$root/run/systemd/system" ] || fail "the root claims a running systemd"
}
