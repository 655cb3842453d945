//! node-mixin works unchanged: every metric name its alert rules, recording
//! rules and dashboards read (`tests/fixtures/node-mixin/metrics.tsv`, taken
//! from `node_exporter`'s `docs/node-mixin`, source commit in that file) is
//! produced by the agent's default collectors on this machine or on
//! `node_exporter`'s fixture tree, unless listed in [`NOT_LINUX_AGENT`] with
//! the reason.

#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on a broken fixture"
)]

use std::collections::BTreeSet;

use nodewatch_agent::collector::{CollectorOptions, Paths, Sink};
use nodewatch_agent::collectors::registry;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/linux");
const LIST: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/node-mixin/metrics.tsv"
));

/// Names node-mixin reads that a Linux agent does not produce, and why.
const NOT_LINUX_AGENT: &[(&str, &str)] = &[
    (
        "node_memory_wired_bytes",
        "macOS only: the Darwin dashboard (sysname=\"Darwin\")",
    ),
    ("node_memory_compressed_bytes", "macOS only: the Darwin dashboard"),
    ("node_memory_internal_bytes", "macOS only: the Darwin dashboard"),
    ("node_memory_purgeable_bytes", "macOS only: the Darwin dashboard"),
    ("node_memory_total_bytes", "macOS only: the Darwin dashboard"),
    ("node_memory_available_bytes", "macOS only: the Darwin dashboard"),
    (
        "node_systemd_unit_state",
        "node_exporter's systemd collector is off by default, and Talos has no systemd",
    ),
    (
        "node_systemd_service_restart_total",
        "node_exporter's systemd collector is off by default, and Talos has no systemd",
    ),
    (
        "node_exporter_build_info",
        "the exporter's own build; the USE cluster dashboard reads it only for its cluster variable",
    ),
];

fn families(paths: &Paths, options: &CollectorOptions, sink: &mut Sink) {
    for spec in registry().into_iter().filter(|s| s.default_enabled) {
        let Ok(mut c) = (spec.build)(paths) else {
            continue;
        };
        c.configure(options).unwrap();
        // A collector that fails on one tree is judged by the other.
        let _ = c.collect(sink);
    }
}

#[test]
fn every_metric_node_mixin_reads_is_produced() {
    let mut sink = Sink::new();
    families(&Paths::default(), &CollectorOptions::default(), &mut sink);
    families(
        &Paths {
            procfs: format!("{FIXTURES}/proc").into(),
            sysfs: format!("{FIXTURES}/sys").into(),
            rootfs: FIXTURES.into(),
        },
        &CollectorOptions {
            textfile_directory: Some(format!("{FIXTURES}/textfile/two_metric_files").into()),
            ..CollectorOptions::default()
        },
        &mut sink,
    );
    let produced: BTreeSet<&str> = sink.samples.iter().map(|s| s.name.as_str()).collect();
    let mut wanted = BTreeSet::new();
    let mut missing = Vec::new();
    for line in LIST
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (name, file) = line.split_once('\t').unwrap();
        wanted.insert(name);
        if !produced.contains(name) && !NOT_LINUX_AGENT.iter().any(|(n, _)| *n == name) {
            missing.push(format!("{name} (read by {file})"));
        }
    }
    for (n, _) in NOT_LINUX_AGENT {
        assert!(
            wanted.contains(n),
            "{n} is excused but node-mixin does not read it"
        );
    }
    assert!(
        wanted.len() >= 40,
        "only {} names in the list",
        wanted.len()
    );
    assert!(
        missing.is_empty(),
        "node-mixin reads {} metric(s) the agent does not produce:\n{}",
        missing.len(),
        missing.join("\n")
    );
    println!(
        "{} metric names node-mixin reads: {} produced, {} not Linux-agent metrics",
        wanted.len(),
        wanted.len() - NOT_LINUX_AGENT.len(),
        NOT_LINUX_AGENT.len()
    );
}
