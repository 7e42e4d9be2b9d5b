# avr-core %post ($1: 1 = install, 2 = upgrade): enable and start on first install when
# systemd is running; an upgrade restarts in %postun, once the new files are in place.
install -d -o avr-core -g avr-core -m 0750 /var/lib/avr-core
if [ "$1" -eq 1 ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    # A start that fails (say, a bad STS_URL) must not fail the install; it is logged.
    systemctl enable --now avr-core.service >/dev/null 2>&1 || :
fi
exit 0
