#!/usr/bin/env bash
# Cross-builds nodewatch-agent for OPNsense / FreeBSD (x86_64) on Linux:
# the Rust FreeBSD target, with zig (from PyPI) as the linker through
# cargo-zigbuild. Installs what is missing (the rustup target, ziglang in a
# venv under target/zig, cargo-zigbuild), then prints the binary's path.
# Needs python3 with venv (Debian: python3-venv).
#
#   deploy/opnsense/build.sh            # release build
#   deploy/opnsense/build.sh --debug    # debug build (quicker; used by tests/run.sh)
#
# The libc and sysinfo crates name FreeBSD base-system libraries (libgeom,
# libkvm, libmemstat, libprocstat, libdevstat) that zig's FreeBSD sysroot
# does not carry. The agent calls none of their functions, so empty
# stand-ins with the base system's sonames satisfy the linker and
# `--as-needed` leaves them out: the binary needs only libc, libm and libthr.
# Should the agent ever call one, the link fails naming the symbol.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=x86_64-unknown-freebsd
profile=release
flag=--release
if [ "${1:-}" = --debug ]; then profile=debug; flag=; fi

# Its own target folder: the stand-ins' -L flag would otherwise make every
# `cargo check --target x86_64-unknown-freebsd` rebuild from scratch.
dir=target/freebsd
mkdir -p "$dir"

rustup target add "$target" >/dev/null
# zig (PyPI, in a venv under target/zig) and cargo-zigbuild, shared with
# deploy/container/build.sh.
source deploy/zig-env.sh

stubs="$dir/base-libs"
mkdir -p "$stubs"
: > "$stubs/empty.c"
for lib in geom:5 kvm:7 memstat:3 procstat:1 devstat:7; do
  name=${lib%%:*}
  [ -e "$stubs/lib$name.so" ] && continue
  python3 -m ziglang cc -target x86_64-freebsd -shared \
    -Wl,-soname,"lib$name.so.${lib##*:}" -o "$stubs/lib$name.so" "$stubs/empty.c"
done

CARGO_TARGET_X86_64_UNKNOWN_FREEBSD_RUSTFLAGS="-L native=$PWD/$stubs" \
  cargo zigbuild $flag --target "$target" --target-dir "$dir" -p nodewatch-agent --bin nodewatch-agent
bin="$dir/$target/$profile/nodewatch-agent"
echo "$bin"
