#!/usr/bin/env bash
# Installs, upgrades and erases the .rpm with `rpm --root` in a throwaway Debian 12 root, so
# the real scriptlets run chrooted (useradd, groupadd, getent are what they need; --nodeps
# because the root's rpm database is empty). Checks the file ownership, %config(noreplace)
# and the scriptlets; systemd is not running there, so start/stop are skipped, as in any root.
# Usage: packaging/test-rpm.sh OLD.rpm NEW.rpm   (NEW: a higher version of the same package)
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -eq 2 ] || { echo "usage: $0 OLD.rpm NEW.rpm" >&2; exit 2; }
old_rpm=$(realpath "$1")
new_rpm=$(realpath "$2")
TEST_NAME=test-rpm
# shellcheck source=packaging/testroot.sh
. packaging/testroot.sh
command -v rpm >/dev/null || host_install rpm
testroot_setup chroot

# --force-debian: Debian's rpm otherwise warns that apt should be used.
rpm_root() { rpm --force-debian --root "$root" --dbpath /var/lib/rpm "$@"; }
evr_of() { rpm -qp --qf '%{VERSION}-%{RELEASE}' "$1"; }
env_file=/etc/avr-core/avr-core.env
rpm --root "$root" --dbpath /var/lib/rpm --initdb

echo "== install $(evr_of "$old_rpm") (rpm -i)"
rpm_root -i --nodeps "$old_rpm"
check "rpm lists avr-core-$(evr_of "$old_rpm")" [ "$(rpm_root -q avr-core)" = "avr-core-$(evr_of "$old_rpm").x86_64" ]
passwd_line=$(in_root getent passwd avr-core) || fail "user avr-core was not created by %pre"
IFS=: read -r _ _ uid _ _ home shell <<<"$passwd_line"
check "user avr-core is a system user (uid $uid < 1000)" [ "$uid" -lt 1000 ]
check "its home is /var/lib/avr-core and its shell /sbin/nologin" [ "$home:$shell" = /var/lib/avr-core:/sbin/nologin ]
version=$(in_root /usr/bin/avr-core --version) || fail "/usr/bin/avr-core does not run in the root"
ok "/usr/bin/avr-core runs in the root: $version"
check "/usr/lib/systemd/system/avr-core.service is installed" [ -f "$root/usr/lib/systemd/system/avr-core.service" ]
check "$env_file is 640 root:avr-core ($(stat_of $env_file))" [ "$(stat_of $env_file)" = "640 root:avr-core" ]
check "/var/lib/avr-core is 750 avr-core:avr-core ($(stat_of /var/lib/avr-core))" \
    [ "$(stat_of /var/lib/avr-core)" = "750 avr-core:avr-core" ]
check "rpm verifies every file (rpm -V)" rpm_root -V --nodeps avr-core

sed -i 's|^STS_URL=.*|STS_URL=wss://agent.example.com/sts|' "$root$env_file"
edited_sum=$(sha256sum <"$root$env_file")
ok "edited $env_file"

echo "== upgrade to $(evr_of "$new_rpm") (rpm -U)"
rpm_root -U --nodeps "$new_rpm"
check "rpm lists avr-core-$(evr_of "$new_rpm") only" [ "$(rpm_root -q avr-core)" = "avr-core-$(evr_of "$new_rpm").x86_64" ]
check "the edited env file is kept byte for byte" [ "$(sha256sum <"$root$env_file")" = "$edited_sum" ]
check "no .rpmnew/.rpmsave beside it (the packaged file did not change)" \
    [ -z "$(find "$root/etc/avr-core" -name '*.rpm*')" ]
check "user avr-core kept its uid ($uid)" [ "$(in_root id -u avr-core)" = "$uid" ]

echo "== erase (rpm -e)"
rpm_root -e avr-core
check "rpm no longer lists avr-core" bash -c "! rpm --root '$root' --dbpath /var/lib/rpm -q avr-core >/dev/null"
check "/usr/bin/avr-core is gone" [ ! -e "$root/usr/bin/avr-core" ]
check "the edited env file is saved as avr-core.env.rpmsave" [ "$(sha256sum <"$root$env_file.rpmsave")" = "$edited_sum" ]
check "user avr-core is kept (rpm has no purge)" user_exists
check "/var/lib/avr-core (dead letters) is kept" [ -d "$root/var/lib/avr-core" ]
echo "test-rpm: all checks passed"
