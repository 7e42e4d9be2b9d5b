# avr-core %preun ($1: 0 = erase, 1 = upgrade): stop and disable on erase only.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now avr-core.service >/dev/null 2>&1 || :
fi
exit 0
