#!/usr/bin/env bash
# CI's packaging steps (called by .ci/run): static musl binary, unit checks, .deb and .rpm
# built and inspected, then installed/upgraded/removed in a throwaway root, the .deb run
# under a booted systemd, and the container image built and its entrypoint run. Root, Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
TARGET=x86_64-unknown-linux-musl
out="$CARGO_TARGET_DIR/pkg"

step_start=$SECONDS
step() { # step "name": prints the time the previous step took
    [ -z "${step_name:-}" ] || echo "packaging: step '$step_name' took $((SECONDS - step_start)) s"
    step_name=$1
    step_start=$SECONDS
    echo "== packaging: $1"
}
ok() { echo "packaging: ok: $*"; }
fail() {
    echo "packaging: FAIL: $*" >&2
    exit 1
}

step "tools (apt: musl-tools debootstrap rpm shellcheck systemd-container buildah; cargo: cargo-deb cargo-generate-rpm)"
missing=()
for tool in musl-gcc:musl-tools debootstrap:debootstrap rpm:rpm shellcheck:shellcheck \
    systemd-analyze:systemd systemd-nspawn:systemd-container zstd:zstd buildah:buildah jq:jq; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi
# Skipped when present: a cargo install of both takes ~5 minutes on 2 cores.
for tool in cargo-deb cargo-generate-rpm; do
    command -v "$tool" >/dev/null || cargo install "$tool" --locked
done
ok "$(cargo deb --version 2>&1 | head -n1), $(cargo generate-rpm --version 2>&1 | head -n1)"

step "shell scripts (bash -n, shellcheck)"
scripts=(packaging/*.sh packaging/container/*.sh packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm .ci/run)
for f in "${scripts[@]}"; do bash -n "$f"; done
# The rpm scriptlets have no shebang: rpm runs them with /bin/sh.
shellcheck -x "${scripts[@]}"
shellcheck -s sh packaging/rpm/*.sh
ok "${#scripts[@]} scripts and the rpm scriptlets pass bash -n and shellcheck"

step "static musl release build"
packaging/build-musl.sh | tee "$CARGO_TARGET_DIR/build-musl.log"
bin=$(tail -n1 "$CARGO_TARGET_DIR/build-musl.log")

step "systemd unit (systemd-analyze verify, security)"
# verify needs ExecStart's binary to exist: check a copy that points at the one just built.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s|^ExecStart=/usr/bin/avr-core|ExecStart=$(realpath "$bin")|" avr-core.service >"$tmp/avr-core.service"
grep -q "^ExecStart=$(realpath "$bin")$" "$tmp/avr-core.service" || fail "ExecStart=/usr/bin/avr-core not found in the unit"
verify=$(systemd-analyze verify "$tmp/avr-core.service" 2>&1) || fail "systemd-analyze verify: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify printed: $verify"
ok "systemd-analyze verify avr-core.service prints nothing"
security=$(systemd-analyze security --offline=true avr-core.service 2>&1) || true
score=$(sed -n 's/.*Overall exposure level for avr-core.service: \([0-9.]*\).*/\1/p' <<<"$security")
[ -n "$score" ] || fail "no exposure level in: $security"
echo "packaging: security exposure level $score (limit 2.0)"
awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "exposure level $score is above 2.0"
ok "systemd-analyze security scores $score <= 2.0"

step "build .deb and .rpm (and a higher version of each, for the upgrade tests)"
rm -rf "$out"
version=$(cargo pkgid | sed 's/.*[#@]//')
cargo deb --target "$TARGET" --no-build --no-strip -o "$out/" >/dev/null
cargo deb --target "$TARGET" --no-build --no-strip -o "$out/" \
    --deb-version "$version+upgradetest-1" >/dev/null
cargo generate-rpm --target "$TARGET" -o "$out/" >/dev/null
cargo generate-rpm --target "$TARGET" -o "$out/" -s 'release = "2upgradetest"' >/dev/null
deb="$out/avr-core_${version}-1_amd64.deb"
deb_up="$out/avr-core_${version}+upgradetest-1_amd64.deb"
rpm_pkg="$out/avr-core-${version}-1.x86_64.rpm"
rpm_up="$out/avr-core-${version}-2upgradetest.x86_64.rpm"
ls -l "$out"

step "inspect the .deb (dpkg-deb -I/-c)"
dpkg-deb -c "$deb"
contents=$(dpkg-deb -c "$deb" | awk '{ print $1, $2, $6 }') # mode, owner, path
# Owner 0/0 = root:root. The env file ships root:root; postinst gives it to group avr-core once the group exists.
for entry in "-rwxr-xr-x 0/0 ./usr/bin/avr-core" \
    "-rw-r--r-- 0/0 ./lib/systemd/system/avr-core.service" \
    "-rw-r----- 0/0 ./etc/avr-core/avr-core.env" \
    "-rw-r--r-- 0/0 ./usr/share/doc/avr-core/README.md" \
    "-rw-r--r-- 0/0 ./usr/share/doc/avr-core/copyright"; do
    grep -qxF -- "$entry" <<<"$contents" || fail ".deb lacks: $entry"
    ok ".deb has ${entry##* } (${entry% *})"
done
cmp -s <(dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/avr-core) "$bin" || fail ".deb's binary is not the musl build"
ok ".deb's /usr/bin/avr-core is the static musl build"
[ "$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)" = /etc/avr-core/avr-core.env ] || fail "conffiles"
ok ".deb conffiles: /etc/avr-core/avr-core.env"
for f in Package Version Architecture Depends; do echo "  $f: $(dpkg-deb -f "$deb" "$f")"; done
[ "$(dpkg-deb -f "$deb" Architecture)" = amd64 ] || fail "Architecture is not amd64"
for script in postinst prerm postrm; do
    cmp -s <(dpkg-deb --ctrl-tarfile "$deb" | tar -xO "./$script") "packaging/debian/$script" ||
        fail ".deb's $script differs from packaging/debian/$script"
done
ok ".deb carries packaging/debian/{postinst,prerm,postrm} unchanged"

step "inspect the .rpm (rpm -qlp, --scripts)"
files=$(rpm -qp --qf '[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm_pkg")
for entry in "-rwxr-xr-x root:root  /usr/bin/avr-core" \
    "-rw-r--r-- root:root  /usr/lib/systemd/system/avr-core.service" \
    "-rw-r----- root:avr-core cn /etc/avr-core/avr-core.env" \
    "-rw-r--r-- root:root d /usr/share/doc/avr-core/README.md" \
    "-rw-r--r-- root:root d /usr/share/licenses/avr-core/LICENSE"; do
    grep -qxF -- "$entry" <<<"$files" || fail ".rpm lacks: $entry (has: $files)"
    ok ".rpm has ${entry##* } (${entry% *})"
done
rpm -qlp "$rpm_pkg"
scriptlets=$(rpm -qp --scripts "$rpm_pkg")
for s in preinstall postinstall preuninstall postuninstall; do
    grep -q "^$s scriptlet" <<<"$scriptlets" || fail ".rpm has no $s scriptlet"
done
grep -q 'useradd --system' <<<"$scriptlets" || fail ".rpm %pre does not create the user"
ok ".rpm has %pre (useradd --system), %post, %preun and %postun scriptlets"
echo "  requires: $(rpm -qp --requires "$rpm_pkg" | grep -v '^rpmlib' | sort -u | tr '\n' ' ')"

step "install test of the .deb in a throwaway root"
packaging/test-deb.sh "$deb" "$deb_up"

step "install test of the .rpm in a throwaway root"
packaging/test-rpm.sh "$rpm_pkg" "$rpm_up"

step "the .deb under a real systemd (systemd-nspawn boot): start, call, upgrade, stop, purge"
packaging/test-systemd.sh "$deb" "$deb_up"

step "container image (buildah, FROM scratch): build, inspect, run its entrypoint from its root"
packaging/container/build.sh "$bin" | tee "$CARGO_TARGET_DIR/container-build.log"
image=$(tail -n1 "$CARGO_TARGET_DIR/container-build.log")
packaging/container/test.sh "$image" "$bin"

step "done"
echo "packaging: all packaging checks passed; packages in $out"
