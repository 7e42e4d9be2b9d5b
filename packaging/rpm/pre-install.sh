# avr-core %pre: the system user exists before the files land, so the env file can be
# shipped as root:avr-core. useradd, not systemd-sysusers: a root without systemd lacks it.
getent group avr-core >/dev/null || groupadd --system avr-core
getent passwd avr-core >/dev/null || useradd --system --gid avr-core \
    --home-dir /var/lib/avr-core --no-create-home --shell /sbin/nologin \
    --comment "AVR Core" avr-core
exit 0
