//! nodewatch agent: reads host signals and streams them to the aggregator.
//!
//! # Layout
//! - [`collector`]: the `Collector` trait, the `Sink` collectors write into, per-collector timing.
//! - [`sys`]: system plumbing the collectors share (commands and `statfs` with a deadline).
//! - [`collectors`]: one module per signal (`cpu`, `meminfo`, `filesystem`, …; a signal Linux and FreeBSD share has a part for each) and the registry list.
//! - [`config`]: the YAML configuration and its validation.
//! - [`batch`]: collections and their encoding into wire batches (symbol table per stream).
//! - [`stream`]: one reconnecting stream per aggregator, reading the spool from its own cursor.
//! - [`runtime`]: the main loop tying them together.
//! - [`hostinfo`]: what Hello says about the host.
//! - [`bootstrap`]: the node certificate from a Kubernetes ServiceAccount token.
//! - [`spool`]: the on-disk log of unacknowledged collections.
//! - [`ebpf`]: eBPF programs and their maps (OOM kill records, TCP, drop reasons, block latency); Linux only.
//! - [`oom`]: OOM kills (from the eBPF ring buffer, `/dev/kmsg`, or FreeBSD's system log) → `OomKill` events and `nodewatch_oom_kills_total`.
//! - [`containers`]: cgroup path → pod UID / container id, and the pod name cache; Linux only.
//! - [`kube`]: the node's pods and Node object from the kubelet and the API server (pod names for OOM kills, requests, limits, image pull failures); Linux only.
//! - [`freebsd`]: OPNsense/FreeBSD-only collectors and the sysctl FFI (parsers everywhere, system calls on FreeBSD only).

pub mod batch;
pub mod bootstrap;
pub mod collector;
pub mod collectors;
pub mod config;
#[cfg(target_os = "linux")]
pub mod containers;
#[cfg(target_os = "linux")]
pub mod ebpf;
pub mod freebsd;
pub mod hostinfo;
#[cfg(target_os = "linux")]
pub mod kube;
pub mod oom;
pub mod runtime;
pub mod spool;
pub mod stream;
pub mod sys;
