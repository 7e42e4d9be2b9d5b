# avr-core %postun ($1: 0 = erase, 1 = upgrade): restart after an upgrade.
# RPM has no purge: on erase an edited env file is kept as avr-core.env.rpmsave, and the
# user and /var/lib/avr-core (dead letters) stay, as Fedora's packaging guidelines ask.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart avr-core.service >/dev/null 2>&1 || :
    fi
fi
exit 0
