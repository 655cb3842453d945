//! The end-to-end tests that may share one binary (one link instead of
//! fifteen), each module once a binary of its own.
//!
//! Cargo runs the tests of one binary side by side. Every test here first
//! takes the crate-wide host lock (`nodewatch_tests::host_exclusive` or
//! `host_shared`): the modules marked *alone* below change host-wide state
//! (OOM kills the kernel counts for every agent, memory cgroups, network
//! namespaces and firewall rules, tmpfs mounts) or load the machine
//! (connection floods) or time what they check, so each of their tests runs with no other test of
//! this binary; the rest run beside each other.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod alerting;
mod bootstrap;
/// Alone: OOM kills in a memory cgroup, eBPF.
mod dashboard;
mod deploy;
/// Alone: tmpfs mounts, handshake and Bootstrap floods, SIGSTOPped aggregators.
mod hardening;
mod integration;
mod kubelet;
/// Alone: OOM kills in a memory cgroup.
mod no_bpf;
/// Alone: OOM kills in a memory cgroup, eBPF.
mod oom_alert;
/// Alone: OOM kills in memory cgroups, eBPF.
mod oom_attribution;
/// Alone: a network namespace, a veth pair and iptables rules.
mod partition;
mod prometheus;
mod promql_api;
/// Alone: kill -9s at random moments and timings (one aggregator down must
/// not slow the other) that a busy neighbour could upset.
mod reliability;
mod remote_write;
