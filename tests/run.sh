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
    iproute2 iptables e2fsprogs python3 procps >/dev/null
  step "mounting tracefs and bpffs"
  mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing || echo "tracefs: not mounted"
  mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || echo "bpffs: not mounted"
else
  echo "not root: skipping apt-get and mounts; tests needing them will skip (or fail under CI=true)"
fi

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

step "build"
cargo build --workspace --bins

step "tests"
cargo test --workspace --no-fail-fast
