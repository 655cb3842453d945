#!/usr/bin/env bash
# Builds the nodewatch container image for linux/amd64 and linux/arm64 with
# podman (or buildah), and pushes it if asked:
#
#   deploy/container/build.sh                              # both architectures, release build
#   deploy/container/build.sh --arch amd64                 # one architecture
#   deploy/container/build.sh --push ghcr.io/me/nodewatch  # build, then push REPO:VERSION
#   deploy/container/build.sh --debug --image localhost/nodewatch-test   # quicker build (tests)
#
# The image (`FROM scratch`, deploy/container/Containerfile) holds
# nodewatch-agent, nodewatch-aggregator and nodewatch as static musl
# binaries, the build machine's CA bundle and a passwd/group naming the
# non-root user 65532, nothing else. The binaries are built for every
# requested architecture in one `cargo zigbuild` (Rust targets
# x86_64-unknown-linux-musl, aarch64-unknown-linux-musl; zig from PyPI links
# them and compiles ring's C for either CPU), in target/container. What is
# missing is installed: the rustup targets, zig and cargo-zigbuild
# (deploy/zig-env.sh, shared with the OPNsense build).
#
# Result: NAME:VERSION-ARCH for each architecture, and NAME:VERSION (a
# manifest list over both, or the one image). VERSION is the workspace's
# version. Every image is built under a temporary name first and tagged only
# when all of them built: a failure leaves the previous tags as they were
# and no half-built image behind. A failed push leaves the complete local
# image and says how to push it again.
set -euo pipefail

me=deploy/container/build.sh
die() {
  printf '%s: %s\n' "$me" "$*" >&2
  exit 1
}
usage() {
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  echo
  echo "options: --arch amd64|arm64 (repeatable; default both), --debug, --profile NAME,"
  echo "         --image NAME (default nodewatch), --push REPO, --insecure (push without TLS),"
  echo "         --engine podman|buildah"
}

archs=()
profile=release
image=nodewatch
push=
tls_verify=true
engine=
while [ $# -gt 0 ]; do
  case "$1" in
    --arch)
      [ $# -ge 2 ] || die "--arch needs amd64 or arm64"
      case "$2" in amd64 | arm64) archs+=("$2") ;; *) die "--arch $2: not amd64 or arm64" ;; esac
      shift 2 ;;
    --debug) profile=dev; shift ;;
    --profile)
      [ $# -ge 2 ] || die "--profile needs a cargo profile name"
      profile=$2; shift 2 ;;
    --image)
      [ $# -ge 2 ] || die "--image needs a name"
      image=$2; shift 2 ;;
    --push)
      [ $# -ge 2 ] || die "--push needs REGISTRY/REPO, e.g. ghcr.io/me/nodewatch"
      push=$2; shift 2 ;;
    --insecure) tls_verify=false; shift ;;
    --engine)
      [ $# -ge 2 ] || die "--engine needs podman or buildah"
      engine=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[ ${#archs[@]} -gt 0 ] || archs=(amd64 arm64)
case "$push" in
  '' | */*) ;;
  *) die "--push $push: name the registry and repository, e.g. ghcr.io/me/nodewatch" ;;
esac

# What is needed, checked before anything is compiled.
if [ -z "$engine" ]; then
  if command -v podman >/dev/null 2>&1; then
    engine=podman
  elif command -v buildah >/dev/null 2>&1; then
    engine=buildah
  else
    die "neither podman nor buildah is on PATH: install one (Debian/Ubuntu: apt-get install podman; Fedora: dnf install podman)"
  fi
fi
command -v "$engine" >/dev/null 2>&1 || die "$engine is not on PATH: install it (Debian/Ubuntu: apt-get install $engine)"
case $0 in */*) cd "${0%/*}/../.." ;; *) cd ../.. ;; esac
[ -f deploy/container/Containerfile ] || die "run me from the nodewatch repository (deploy/container/Containerfile not found)"
ca_bundle=
for f in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/cert.pem; do
  [ -f "$f" ] && { ca_bundle=$f; break; }
done
[ -n "$ca_bundle" ] || die "no CA bundle on this machine for the image (Debian/Ubuntu: apt-get install ca-certificates)"
command -v readelf >/dev/null 2>&1 || die "readelf is not on PATH (it checks that the binaries are static): install binutils"
command -v python3 >/dev/null 2>&1 || die "python3 is not on PATH (zig comes from PyPI): install python3 and python3-venv"
command -v rustup >/dev/null 2>&1 ||
  die "rustup is not on PATH: the static builds need the Rust targets x86_64-unknown-linux-musl and aarch64-unknown-linux-musl, which rustup installs (https://rustup.rs)"

triple() { case "$1" in amd64) echo x86_64-unknown-linux-musl ;; arm64) echo aarch64-unknown-linux-musl ;; esac; }
installed=$(rustup target list --installed) || die "rustup target list failed (is a default toolchain set? rustup default stable)"
target_args=()
for arch in "${archs[@]}"; do
  t=$(triple "$arch")
  if ! grep -qx "$t" <<<"$installed"; then
    echo "adding the Rust target $t (rustup)"
    rustup target add "$t" ||
      die "the Rust target $t is missing and rustup could not add it: run 'rustup target add $t' where static.rust-lang.org is reachable"
  fi
  target_args+=(--target "$t")
done

source deploy/zig-env.sh

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || die "no version in Cargo.toml's [workspace.package]"
source_url=$(sed -n '/^\[workspace.package\]/,/^\[/s/^repository *= *"\(.*\)"/\1/p' Cargo.toml)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$revision" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  revision="$revision-dirty"
fi
# Layer timestamps from the commit, so the same sources give the same image.
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)

# The musl targets link statically by default (crt-static). Their own
# target folder: the rest of the workspace's builds never wait for or
# invalidate these. Debug info goes (the image stays small); symbols stay
# for backtraces.
dir="${CARGO_TARGET_DIR:-$PWD/target}/container"
case "$profile" in dev) pdir=debug ;; *) pdir=$profile ;; esac
echo "building nodewatch $version ($profile) for ${archs[*]}"
cargo zigbuild --locked --profile "$profile" --config "profile.$profile.strip=\"debuginfo\"" \
  --target-dir "$dir" "${target_args[@]}" -p nodewatch-agent -p nodewatch-aggregator -p nodewatch-cli --bins

# One root file system per architecture: the Containerfile copies
# <context>/$TARGETARCH/.
stage="$dir/image/$pdir"
rm -rf "$stage"
for arch in "${archs[@]}"; do
  root="$stage/$arch"
  mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs"
  for b in nodewatch-agent nodewatch-aggregator nodewatch; do
    bin="$dir/$(triple "$arch")/$pdir/$b"
    [ -x "$bin" ] || die "$bin was not built"
    # Nothing in a scratch image could load a shared library.
    headers=$(readelf -lW "$bin")
    dynamic=$(readelf -dW "$bin")
    if grep -q INTERP <<<"$headers" || grep -q NEEDED <<<"$dynamic"; then
      die "$bin is not static (it names a loader or shared libraries)"
    fi
    install -m 0755 "$bin" "$root/usr/local/bin/$b"
  done
  # The eBPF objects are compiled into the agent (include_bytes!); check
  # each committed object is there byte for byte.
  python3 - "$root/usr/local/bin/nodewatch-agent" ebpf/*.bpf.o <<'PY' || die "the $arch agent does not embed every ebpf/*.bpf.o"
import sys
exe = open(sys.argv[1], "rb").read()
missing = [o for o in sys.argv[2:] if open(o, "rb").read() not in exe]
if missing:
    print("not embedded:", *missing, file=sys.stderr)
    sys.exit(1)
PY
  install -m 0644 "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'nodewatch:x:65532:65532:nodewatch:/nonexistent:/sbin/nologin' >"$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nodewatch:x:65532:' >"$root/etc/group"
  chmod 0644 "$root/etc/passwd" "$root/etc/group"
done

# Build under temporary names; tag only when every architecture built.
# Each image joins the temporary manifest list as it is built (`--manifest`:
# a list assembled with `manifest add containers-storage:…` trips podman
# 4.3's `podman images`). No intermediate layers are kept.
tmp="localhost/nodewatch-build-$$"
committed=false
cleanup() {
  for arch in "${archs[@]}"; do
    "$engine" rmi "$tmp:$arch" >/dev/null 2>&1 || true
  done
  "$engine" manifest rm "$tmp:list" >/dev/null 2>&1 || true
  if [ "$committed" = false ]; then
    # Images of this run that lost their temporary names (none tagged yet).
    for id in "${built[@]}"; do "$engine" rmi "$id" >/dev/null 2>&1 || true; done
  fi
}
built=()
trap cleanup EXIT
for arch in "${archs[@]}"; do
  "$engine" build --platform "linux/$arch" --layers=false --timestamp "$epoch" \
    --build-arg VERSION="$version" --build-arg REVISION="$revision" \
    --build-arg SOURCE="${source_url:-https://github.com/nodewatch/nodewatch}" \
    --manifest "$tmp:list" -f deploy/container/Containerfile -t "$tmp:$arch" "$stage" ||
    die "$engine build for linux/$arch failed (see above); no image was tagged"
  built+=("$("$engine" image inspect --format '{{.Id}}' "$tmp:$arch")")
done

# Commit: the per-architecture tags, then NAME:VERSION (the list, or the
# one image). An earlier manifest list of that name is untagged first (a
# tag would not replace it).
for arch in "${archs[@]}"; do
  "$engine" tag "$tmp:$arch" "$image:$version-$arch"
done
"$engine" manifest rm "$image:$version" >/dev/null 2>&1 || true
if [ ${#archs[@]} -gt 1 ]; then
  "$engine" tag "$tmp:list" "$image:$version"
else
  "$engine" tag "$tmp:${archs[0]}" "$image:$version"
fi
committed=true
for arch in "${archs[@]}"; do
  size=$("$engine" image inspect --format '{{.Size}}' "$image:$version-$arch")
  echo "$image:$version-$arch: linux/$arch, $((size / 1024)) KiB"
done

if [ -n "$push" ]; then
  dest="docker://$push:$version"
  if [ ${#archs[@]} -gt 1 ]; then
    pushed=("$engine" manifest push --all --tls-verify="$tls_verify" "$image:$version" "$dest")
  else
    pushed=("$engine" push --tls-verify="$tls_verify" "$image:$version" "$dest")
  fi
  echo "pushing $image:$version to $push:$version"
  "${pushed[@]}" || die "pushing to $push:$version failed (see above): log in first ($engine login ${push%%/*}), check that the repository exists and the account may write to it; the image is built locally as $image:$version, to push it again: ${pushed[*]}"
fi
echo "$image:$version"
