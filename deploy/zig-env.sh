# shellcheck shell=bash
# Sourced, from the repository root, by the scripts that link with
# `cargo zigbuild` (deploy/opnsense/build.sh: FreeBSD; deploy/container/build.sh:
# static Linux binaries for amd64 and arm64). Installs what is missing, once
# for both: zig from PyPI (`ziglang`) in a venv under target/zig (Debian's
# python3 takes no pip installs) and cargo-zigbuild. Puts the venv's python3
# first on PATH, where cargo-zigbuild looks for `python3 -m ziglang`.
# Needs python3 with venv (Debian: python3-venv).
zig_venv=target/zig/venv
if [ ! -x "$zig_venv/bin/python3" ]; then
  python3 -m venv "$zig_venv" || {
    echo "cannot make a Python venv for zig in $zig_venv: install python3 with venv (Debian: apt-get install python3-venv)" >&2
    return 1
  }
fi
"$zig_venv/bin/python3" -c 'import ziglang' 2>/dev/null ||
  "$zig_venv/bin/pip" install --quiet --disable-pip-version-check ziglang || {
    echo "cannot install zig (PyPI package ziglang) into $zig_venv: pip needs to reach PyPI" >&2
    return 1
  }
export PATH="$PWD/$zig_venv/bin:$PATH"
command -v cargo-zigbuild >/dev/null 2>&1 || cargo install --locked --quiet cargo-zigbuild || {
  echo "cannot install cargo-zigbuild (cargo install cargo-zigbuild): cargo needs to reach crates.io" >&2
  return 1
}
