#!/usr/bin/env bash
# Builds the static release binary for x86_64-unknown-linux-musl and checks it: static (no
# ELF interpreter), at most MAX_BYTES, runs. Prints the binary's path on the last line.
# Needs: rustup (for the musl std) and musl-gcc (Debian's musl-tools: ring has C code).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-musl
MAX_BYTES=${MAX_BYTES:-$((4 * 1024 * 1024))} # 4 MiB: the appliance budget

if ! command -v musl-gcc >/dev/null; then
    echo "build-musl: installing musl-tools (musl-gcc, for ring's C code)"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q musl-tools >/dev/null
fi
if ! rustup target list --installed | grep -qx "$TARGET"; then
    echo "build-musl: rustup target add $TARGET"
    rustup target add "$TARGET"
fi

# cc-rs would guess musl-gcc too; saying it keeps a host gcc from being used by mistake.
export CC_x86_64_unknown_linux_musl=musl-gcc
cargo build --release --locked --target "$TARGET" --bin avr-core

bin="${CARGO_TARGET_DIR:-target}/$TARGET/release/avr-core"

# Static: no PT_INTERP program header, and ldd agrees.
if readelf -lW "$bin" | grep -q 'INTERP'; then
    echo "build-musl: FAIL: $bin has an ELF interpreter (dynamically linked)" >&2
    exit 1
fi
ldd_out=$(ldd "$bin" 2>&1 || true)
case "$ldd_out" in
    *"not a dynamic executable"* | *"statically linked"*) ;;
    *)
        echo "build-musl: FAIL: ldd $bin says: $ldd_out" >&2
        exit 1
        ;;
esac
echo "build-musl: ok: static (no ELF interpreter; ldd: $(echo "$ldd_out" | head -n1 | sed 's/^[[:space:]]*//'))"

size=$(stat -c %s "$bin")
echo "build-musl: binary size $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.2f", s / 1048576 }') MiB), limit $MAX_BYTES"
if [ "$size" -gt "$MAX_BYTES" ]; then
    echo "build-musl: FAIL: binary is larger than $MAX_BYTES bytes" >&2
    exit 1
fi
echo "build-musl: ok: size within limit"

version=$("$bin" --version)
STS_URL=ws://127.0.0.1:6030 "$bin" check-config >/dev/null
echo "build-musl: ok: runs ($version; check-config accepts a minimal config)"
echo "$bin"
