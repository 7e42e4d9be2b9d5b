#!/usr/bin/env bash
# Installs, upgrades, removes and purges the .deb in a throwaway Debian 12 root (debootstrap
# minbase + adduser), so the real maintainer scripts run under dpkg/apt in a chroot.
# Usage: packaging/test-deb.sh OLD.deb NEW.deb   (NEW: a higher version of the same package)
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -eq 2 ] || { echo "usage: $0 OLD.deb NEW.deb" >&2; exit 2; }
old_deb=$(realpath "$1")
new_deb=$(realpath "$2")
TEST_NAME=test-deb
# shellcheck source=packaging/testroot.sh
. packaging/testroot.sh
testroot_setup chroot
cp "$old_deb" "$root/tmp/old.deb"
cp "$new_deb" "$root/tmp/new.deb"

# shellcheck disable=SC2016 # dpkg-query's own ${field} format
status_of() { in_root dpkg-query -W -f='${db:Status-Abbrev}${Version}' avr-core 2>/dev/null || true; }
env_file=/etc/avr-core/avr-core.env
unit_link=/etc/systemd/system/multi-user.target.wants/avr-core.service
apt_install() { in_root apt-get install -y -q --no-install-recommends "$@" </dev/null >"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; return 1; }; }

old_version=$(dpkg-deb -f "$old_deb" Version)
new_version=$(dpkg-deb -f "$new_deb" Version)
dpkg --compare-versions "$new_version" gt "$old_version" || fail "$new_version is not newer than $old_version"

echo "== install $old_version (apt install ./avr-core.deb)"
apt_install /tmp/old.deb
check "dpkg status is installed, version $old_version" [ "$(status_of)" = "ii $old_version" ]
passwd_line=$(in_root getent passwd avr-core) || fail "user avr-core was not created"
IFS=: read -r _ _ uid gid _ home shell <<<"$passwd_line"
check "user avr-core is a system user (uid $uid < 1000)" [ "$uid" -lt 1000 ]
check "its home is /var/lib/avr-core and its shell /usr/sbin/nologin" \
    [ "$home:$shell" = /var/lib/avr-core:/usr/sbin/nologin ]
check "group avr-core exists and is the user's primary group (gid $gid)" \
    [ "$(in_root getent group avr-core | cut -d: -f3)" = "$gid" ]
version=$(in_root /usr/bin/avr-core --version) || fail "/usr/bin/avr-core does not run in the root"
ok "/usr/bin/avr-core runs in the root: $version"
check "/lib/systemd/system/avr-core.service is installed" [ -f "$root/lib/systemd/system/avr-core.service" ]
check "$env_file is 640 root:avr-core ($(stat_of $env_file))" [ "$(stat_of $env_file)" = "640 root:avr-core" ]
# shellcheck disable=SC2016
check "$env_file is a conffile" grep -q "^ $env_file " <<<"$(in_root dpkg-query -W -f='${Conffiles}\n' avr-core)"
check "/var/lib/avr-core is 750 avr-core:avr-core ($(stat_of /var/lib/avr-core))" \
    [ "$(stat_of /var/lib/avr-core)" = "750 avr-core:avr-core" ]
check "the unit is enabled ($unit_link), systemd not running so not started" [ -L "$root$unit_link" ]
# What the service does at start: the shipped file, read as the avr-core user, is valid.
config=$(in_root runuser -u avr-core -- sh -c "set -a; . $env_file; exec avr-core check-config") ||
    fail "check-config rejects the shipped env file: $config"
check "the shipped env file is readable by avr-core and passes check-config" true
check "the shipped env file binds HTTP to 127.0.0.1" grep -qx 'HTTP_BIND_ADDRESS=127.0.0.1' <<<"$config"
check "the shipped env file binds AudioSocket to 127.0.0.1" grep -qx 'BIND_ADDRESS=127.0.0.1' <<<"$config"

echo "== edit $env_file"
sed -i 's|^STS_URL=.*|STS_URL=wss://agent.example.com/sts|' "$root$env_file"
echo 'MAX_CALLS=42' >>"$root$env_file"
echo '{"dead":"letter"}' >"$root/var/lib/avr-core/webhook-dead-letter.jsonl"
edited_sum=$(sha256sum <"$root$env_file")
ok "set STS_URL=wss://agent.example.com/sts and MAX_CALLS=42; wrote a dead letter"

echo "== upgrade to $new_version (no --force-conf* option, stdin closed: a prompt would fail)"
apt_install /tmp/new.deb
check "dpkg status is installed, version $new_version" [ "$(status_of)" = "ii $new_version" ]
check "the edited env file is kept byte for byte" [ "$(sha256sum <"$root$env_file")" = "$edited_sum" ]
check "no .dpkg-dist/.dpkg-new/.dpkg-old copy was left beside it" \
    [ -z "$(find "$root/etc/avr-core" -name '*.dpkg-*')" ]
check "the env file is still 640 root:avr-core" [ "$(stat_of $env_file)" = "640 root:avr-core" ]
check "user avr-core kept its uid ($uid)" [ "$(in_root id -u avr-core)" = "$uid" ]
check "the unit is still enabled" [ -L "$root$unit_link" ]
check "the dead letter is still there" [ -s "$root/var/lib/avr-core/webhook-dead-letter.jsonl" ]

echo "== remove (apt-get remove)"
in_root apt-get remove -y -q avr-core </dev/null >"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; fail "apt-get remove"; }
check "dpkg status is removed, config kept (rc)" [ "$(status_of)" = "rc $new_version" ]
check "/usr/bin/avr-core is gone" [ ! -e "$root/usr/bin/avr-core" ]
check "the unit file is gone" [ ! -e "$root/lib/systemd/system/avr-core.service" ]
check "the edited env file is kept" [ "$(sha256sum <"$root$env_file")" = "$edited_sum" ]
check "user avr-core is kept" user_exists

echo "== purge (apt-get purge)"
in_root apt-get purge -y -q avr-core </dev/null >"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; fail "apt-get purge"; }
check "dpkg no longer lists the package (status: '$(status_of)')" [ -z "$(status_of | tr -d ' ' | sed '/^un$/d')" ]
check "/etc/avr-core is gone" [ ! -e "$root/etc/avr-core" ]
check "/var/lib/avr-core (dead letters) is gone" [ ! -e "$root/var/lib/avr-core" ]
check "user avr-core is gone" no_user
check "group avr-core is gone" no_group
check "the enable symlink is gone" [ ! -L "$root$unit_link" ]
echo "test-deb: all checks passed"
