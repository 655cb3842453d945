//! Golden test: our collectors on `node_exporter`'s fixture tree against
//! `node_exporter`'s own expected output for that tree.
//!
//! For every family both produce: same TYPE, same HELP, the same series (name
//! and label set) and the same values. The reverse too: every family of the
//! expected output that one of our collectors is responsible for must be
//! produced, unless it is listed in [`EXEMPT`] with the reason.

#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on a broken fixture"
)]

mod common;

use std::collections::BTreeSet;

use common::{diff_family, Exposition};
use nodewatch_agent::collector::{Paths, Sink};
use nodewatch_agent::collectors::registry;
use regex::Regex;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/linux");

/// Collectors not run here: their input is the host, not the fixture tree.
const HOST_DEPENDENT: &[(&str, &str)] = &[
    (
        "filesystem",
        "statfs(2) measures the host's mounts; mountinfo parsing is unit-tested on proc/1/mountinfo",
    ),
    (
        "zpool",
        "runs the zpool command; its parsers are tested on zpool status/list captures in zpool.rs",
    ),
];

/// Families of the expected output that our collectors cover, by collector.
const OWNED: &[(&str, &str)] = &[
    (
        "stat",
        "^node_(cpu_seconds_total|cpu_guest_seconds_total|boot_time_seconds|context_switches_total|forks_total|intr_total|procs_running|procs_blocked)$",
    ),
    ("meminfo", "^node_memory_"),
    ("loadavg", "^node_load(1|5|15)$"),
    ("pressure", "^node_pressure_"),
    ("diskstats", "^node_disk_"),
    ("netdev", "^node_network_(receive|transmit)_[a-z]+_total$"),
    (
        "netclass",
        "^node_network_(up|info|address_assign_type|carrier|carrier_(up_|down_)?changes_total|device_id|dormant|flags|iface_id|iface_link|iface_link_mode|mtu_bytes|name_assign_type|net_dev_group|speed_bytes|transmit_queue_length|protocol_type)$",
    ),
    ("netstat", "^node_netstat_"),
    ("sockstat", "^node_sockstat_"),
    ("vmstat", "^node_vmstat_"),
    ("conntrack", "^node_nf_conntrack_"),
    ("zfs", "^node_zfs_"),
];

/// Expected families matched by [`OWNED`] that we do not produce, and why.
const EXEMPT: &[(&str, &str)] = &[
    ("^node_memory_numa_", "node_exporter's meminfo_numa collector reads /sys/devices/system/node, not /proc/meminfo"),
    (
        "^node_disk_(info|ata_rotation_rate_rpm|ata_write_cache|ata_write_cache_enabled|filesystem_info|device_mapper_info)$",
        "from the udev database (/run/udev/data), which is not in the fixture tree and not read",
    ),
];

/// Relative tolerance for values: both sides print shortest round-trip f64s.
const REL: f64 = 1e-9;

fn expected() -> Exposition {
    let text = std::fs::read_to_string(format!("{FIXTURES}/expected/node_exporter-e2e-output.txt"))
        .unwrap();
    let mut e = Exposition::parse(&text).unwrap();
    // node_exporter now reads interface counters over netlink, so its current
    // output has none from the /proc/net/dev fixture. Its 2021 output, from
    // the same fixture file, is the reference for them.
    let netdev = Regex::new(OWNED.iter().find(|(c, _)| *c == "netdev").unwrap().1).unwrap();
    e.series.retain(|name, _| !netdev.is_match(name));
    e.meta.retain(|name, _| !netdev.is_match(name));
    let text = std::fs::read_to_string(format!(
        "{FIXTURES}/expected/node_exporter-e2e-output-netdev-2021.txt"
    ))
    .unwrap();
    let old = Exposition::parse(&text).unwrap();
    for (name, series) in old.series {
        if netdev.is_match(&name) {
            e.meta.insert(name.clone(), old.meta[&name].clone());
            e.series.insert(name, series);
        }
    }
    e
}

fn ours() -> Exposition {
    let root = tempfile::tempdir().unwrap();
    let paths = Paths {
        procfs: format!("{FIXTURES}/proc").into(),
        sysfs: format!("{FIXTURES}/sys").into(),
        rootfs: root.path().into(),
    };
    let mut sink = Sink::new();
    for spec in registry() {
        // Collectors that are off by default (the test sequence) are not part of the comparison.
        if !spec.default_enabled {
            continue;
        }
        if HOST_DEPENDENT.iter().any(|(n, _)| *n == spec.name) {
            continue;
        }
        let mut c = (spec.build)(&paths).unwrap_or_else(|e| panic!("{}: {e}", spec.name));
        c.collect(&mut sink)
            .unwrap_or_else(|e| panic!("collector {} failed on the fixtures: {e}", spec.name));
    }
    // Through the text format, so rendering and escaping are tested too.
    let mut e = Exposition::parse(&sink.render_text()).unwrap();
    as_in_e2e_run(&mut e);
    e
}

/// `node_exporter`'s end-to-end-test.sh runs the netclass collector with
/// `--collector.netclass.ignored-devices=(dmz|int)` and
/// `--collector.netclass.ignore-invalid-speed` (our defaults are upstream's:
/// no device ignored, a driver's -1 speed exported). Apply the same to our
/// output, and nothing else.
fn as_in_e2e_run(e: &mut Exposition) {
    let netclass = Regex::new(OWNED.iter().find(|(c, _)| *c == "netclass").unwrap().1).unwrap();
    for (family, series) in &mut e.series {
        if !netclass.is_match(family) {
            continue;
        }
        series.retain(|labels, value| {
            let ignored = labels
                .get("device")
                .is_some_and(|d| d == "dmz" || d == "int");
            let invalid_speed = family == "node_network_speed_bytes" && *value < 0.0;
            !ignored && !invalid_speed
        });
    }
    e.series.retain(|_, s| !s.is_empty());
}

#[test]
fn fixture_output_matches_node_exporter() {
    let want = expected();
    let got = ours();
    let owned: Vec<Regex> = OWNED.iter().map(|(_, p)| Regex::new(p).unwrap()).collect();
    let exempt: Vec<Regex> = EXEMPT.iter().map(|(p, _)| Regex::new(p).unwrap()).collect();

    let mut problems = Vec::new();
    let mut compared = 0;
    let mut series = 0;
    for (family, ours) in &got.series {
        let Some(theirs) = want.series.get(family) else {
            // A family node_exporter's fixture run does not have (e.g. a
            // meminfo field its typed parser skips): nothing to compare.
            continue;
        };
        compared += 1;
        series += ours.len();
        if got.meta.get(family) != want.meta.get(family) {
            problems.push(format!(
                "{family}: TYPE/HELP differ\n  ours   {:?}\n  theirs {:?}",
                got.meta.get(family),
                want.meta.get(family)
            ));
        }
        let d = diff_family(family, ours, theirs, Some(REL));
        if !d.is_empty() {
            problems.push(format!("{family}:\n{}", d.join("\n")));
        }
    }

    let produced: BTreeSet<&String> = got.series.keys().collect();
    for family in want.series.keys() {
        if !owned.iter().any(|r| r.is_match(family)) || produced.contains(family) {
            continue;
        }
        if exempt.iter().any(|r| r.is_match(family)) {
            continue;
        }
        problems.push(format!(
            "{family}: in node_exporter's output, not produced by us"
        ));
    }

    assert!(
        problems.is_empty(),
        "{} problem(s) against node_exporter's e2e output:\n{}",
        problems.len(),
        problems.join("\n")
    );
    // Guard against a vacuous pass (e.g. every family renamed).
    assert!(compared >= 100, "only {compared} families compared");
    println!("compared {compared} families, {series} series: identical");
}

#[test]
fn every_registered_collector_is_covered_or_explained() {
    // `testseq` is a deterministic test source, off unless a test turns it on.
    for spec in registry().into_iter().filter(|s| s.name != "testseq") {
        assert!(
            OWNED.iter().any(|(n, _)| *n == spec.name)
                || HOST_DEPENDENT.iter().any(|(n, _)| *n == spec.name),
            "collector {} is neither compared nor exempted",
            spec.name
        );
        assert!(
            spec.default_enabled,
            "{} should be enabled by default",
            spec.name
        );
    }
}

#[test]
fn the_comparison_reports_differences() {
    let a = Exposition::parse("x{d=\"a\"} 1\nx{d=\"b\"} 2\n").unwrap();
    let b = Exposition::parse("x{d=\"a\"} 1.5\nx{d=\"c\",e=\"\"} 2\n").unwrap();
    let d = diff_family("x", &a.series["x"], &b.series["x"], Some(REL));
    assert_eq!(d.len(), 3, "{d:?}");
    assert!(d
        .iter()
        .any(|l| l.contains("only ours") && l.contains("\"b\"")));
    assert!(d
        .iter()
        .any(|l| l.contains("only theirs") && l.contains("\"c\"") && !l.contains("e=")));
    assert!(d.iter().any(|l| l.contains("ours 1 theirs 1.5")));
}
