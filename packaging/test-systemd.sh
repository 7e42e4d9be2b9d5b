#!/usr/bin/env bash
# Boots a throwaway Debian 12 root with systemd-nspawn (systemd as PID 1, loopback-only
# network) and runs packaging/systemd-test-inner.sh in it: the .deb installed, started,
# called, upgraded, stopped, removed and purged under a real systemd, with the unit's
# sandbox in force. Usage: packaging/test-systemd.sh OLD.deb NEW.deb
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -eq 2 ] || { echo "usage: $0 OLD.deb NEW.deb" >&2; exit 2; }
old_deb=$(realpath "$1")
new_deb=$(realpath "$2")
TEST_NAME=test-systemd
# shellcheck source=packaging/testroot.sh
. packaging/testroot.sh
command -v systemd-nspawn >/dev/null || host_install systemd-container
testroot_setup nspawn

cp "$old_deb" "$root/root/old.deb"
cp "$new_deb" "$root/root/new.deb"
install -m 0755 packaging/systemd-test-inner.sh "$root/usr/local/sbin/pkgtest"
cat >"$root/etc/systemd/system/pkgtest.service" <<'UNIT'
[Unit]
Description=avr-core package test
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/pkgtest
UNIT
ln -s /etc/systemd/system/pkgtest.service "$root/etc/systemd/system/multi-user.target.wants/pkgtest.service"
# No getty on the container's console: nothing reads it.
ln -sf /dev/null "$root/etc/systemd/system/console-getty.service"

# --register=no --keep-unit: no systemd on the host to register with or allocate a scope from.
start=$SECONDS
rc=0
timeout 300 systemd-nspawn --quiet -D "$root" --boot --register=no --keep-unit \
    --private-network --console=pipe >"$work/nspawn.log" 2>&1 </dev/null || rc=$?
echo "$TEST_NAME: container booted, ran the test and powered off in $((SECONDS - start)) s (exit $rc)"
cat "$root/pkgtest.log" 2>/dev/null || true
if [ "$(cat "$root/pkgtest.result" 2>/dev/null)" != PASS ]; then
    echo "--- nspawn output" >&2
    tail -n 30 "$work/nspawn.log" >&2
    echo "--- journalctl -u avr-core" >&2
    tail -n 40 "$root/pkgtest.journal" >&2 2>/dev/null || true
    fail "the test inside the container did not pass"
fi
echo "$TEST_NAME: all checks passed"
