//! Helpers shared by the eBPF integration tests (`#[path]`-included by each;
//! compiled on its own it is an empty test crate).
//!
//! These tests run against the real kernel: they load the programs, cause
//! real OOM kills, packet loss and disk I/O. Each first checks what it needs
//! (root, kernel BTF, tools). When something is missing, with `CI=true` the
//! test fails naming it; otherwise it prints why and passes without running.

// Linux only: cgroups, network namespaces, loop devices and BPF.
#![cfg(target_os = "linux")]
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::must_use_candidate
)]

use std::path::Path;
use std::process::Command;

use nodewatch_agent::collector::{Collector, Paths, Sink};
use nodewatch_agent::ebpf::{Ebpf, EbpfConfig, Lockdown};
use nodewatch_proto::v1::Event;

/// Checks requirements; `false` means "skip" (outside CI).
pub fn require(test: &str, tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".to_string());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        missing.push("kernel BTF (/sys/kernel/btf/vmlinux)".to_string());
    }
    for t in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            missing.push(format!("tool `{t}`"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: missing {}", missing.join(", "));
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
    eprintln!("skipped: {msg}");
    false
}

/// Loads the programs with run-time statistics on; a failure here is a
/// test failure once requirements are met.
pub fn start() -> (Ebpf, tokio::sync::mpsc::Receiver<Event>) {
    start_as(None, true)
}

/// [`start`], choosing the programs as under `lockdown` (`None`: as the
/// running kernel's mode says), with or without the `tp_btf` programs.
pub fn start_as(
    lockdown: Option<Lockdown>,
    btf_tracepoints: bool,
) -> (Ebpf, tokio::sync::mpsc::Receiver<Event>) {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let cfg = EbpfConfig {
        measure_cost: true,
        lockdown_override: lockdown,
        btf_tracepoints,
        ..EbpfConfig::default()
    };
    let ebpf = match Ebpf::start_with(&Paths::default(), tx, &cfg) {
        Ok(e) => e,
        Err(u) => panic!("Ebpf::start: {u}"),
    };
    (ebpf, rx)
}

/// Prints each program's mean cost per run (kernel BPF statistics).
pub fn print_costs(ebpf: &Ebpf) {
    for c in ebpf.costs() {
        if c.run_count > 0 {
            eprintln!(
                "cost {}: {} runs, {} ns/run",
                c.program,
                c.run_count,
                c.run_time_ns / c.run_count
            );
        }
    }
}

/// One collection of the eBPF collector.
pub fn collect(ebpf: &mut Ebpf) -> Sink {
    let mut sink = Sink::new();
    ebpf.collect(&mut sink).unwrap();
    sink
}

/// Sum of a series' values whose labels include all of `labels`.
pub fn value(sink: &Sink, name: &str, labels: &[(&str, &str)]) -> f64 {
    sink.samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.value)
        .sum()
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command for cleanup, ignoring failure.
pub fn run_quiet(cmd: &str, args: &[&str]) {
    let _ = Command::new(cmd).args(args).output();
}
