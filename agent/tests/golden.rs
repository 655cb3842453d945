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
use nodewatch_agent::collector::{CollectorOptions, Paths, Sink};
use nodewatch_agent::collectors::registry;
use regex::Regex;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/linux");

/// Collectors not run here: their input is the host, not the fixture tree.
const HOST_DEPENDENT: &[(&str, &str)] = &[
    (
        "filesystem",
        "statfs(2) measures the host's mounts; mountinfo parsing is unit-tested on proc/1/mountinfo, \
         and node_exporter's e2e run disables it",
    ),
    (
        "zpool",
        "runs the zpool command; its parsers are tested on zpool status/list captures in zpool.rs",
    ),
    (
        "timex",
        "adjtimex(2) reads the running kernel; node_exporter's e2e run disables it (compared live)",
    ),
    (
        "uname",
        "the kernel's own strings; node_exporter's e2e run disables it (compared live)",
    ),
];

/// Which `node_exporter` collector each family of its expected output comes
/// from: the first matching pattern wins (`$1` is the first group).
const NE_FAMILIES: &[(&str, &str)] = &[
    ("^node_memory_numa_", "meminfo_numa"),
    ("^node_memory_", "meminfo"),
    ("^node_cpu_vulnerabilities_info$", "cpu_vulnerabilities"),
    ("^node_cpu_(frequency|scaling)_", "cpufreq"),
    ("^node_cpu_", "cpu"),
    (
        "^node_(boot_time_seconds|context_switches_total|forks_total|intr_total|procs_running|procs_blocked|softirqs_total)$",
        "stat",
    ),
    ("^node_softirqs_", "softirqs"),
    ("^node_(cooling_device|thermal_zone)_", "thermal_zone"),
    ("^node_md_", "mdadm"),
    ("^node_load(1|5|15)$", "loadavg"),
    ("^node_nf_conntrack_", "conntrack"),
    ("^node_power_supply_", "powersupplyclass"),
    ("^node_udp_queues$", "udp_queues"),
    ("^node_network_(receive|transmit)_", "netdev"),
    ("^node_network_", "netclass"),
    ("^node_disk_", "diskstats"),
    ("^node_(exporter_|scrape_)|^(go|process|promhttp)_", "exporter"),
    ("^(testmetric|node_textfile_)", "textfile"),
    ("^node_tape_", "tapestats"),
    ("^node_kernel_hung", "kernel_hung"),
    ("^node_([a-z]+)_", "$1"),
];

/// `node_exporter`'s collectors enabled by default on Linux: 1.5's set,
/// plus `watchdog`, on by default since it was added.
fn ne_default(collector: &str) -> bool {
    collector == "watchdog"
        || nodewatch_agent::collectors::NODE_EXPORTER_1_5_DEFAULTS.contains(&collector)
}

/// The `node_exporter` collector a family of its output belongs to.
fn ne_collector(family: &str) -> Option<String> {
    static RES: std::sync::OnceLock<Vec<(Regex, &str)>> = std::sync::OnceLock::new();
    let res = RES.get_or_init(|| {
        NE_FAMILIES
            .iter()
            .map(|(p, c)| (Regex::new(p).unwrap(), *c))
            .collect()
    });
    res.iter().find_map(|(re, c)| {
        let caps = re.captures(family)?;
        let mut out = String::new();
        caps.expand(c, &mut out);
        Some(out)
    })
}

/// Whether a family of the expected output belongs to a default collector
/// (the exporter's own metrics do not).
fn is_default(family: &str) -> bool {
    ne_collector(family).is_some_and(|c| ne_default(&c))
}

/// Expected families of default collectors that we do not produce, and why.
const EXEMPT: &[(&str, &str)] = &[
    ("^node_memory_numa_", "node_exporter's meminfo_numa collector reads /sys/devices/system/node, not /proc/meminfo"),
    (
        "^node_cpu_(info|flag_info|bug_info|frequency_hertz)$",
        "off by default in node_exporter (--collector.cpu.info); its e2e run turns it on",
    ),
    (
        "^node_softirqs_total$",
        "off by default in node_exporter (--collector.stat.softirq); its e2e run turns it on",
    ),
    (
        "^node_bcache_priority_stats_",
        "off by default in node_exporter (--collector.bcache.priorityStats: it walks every bucket); its e2e run turns it on",
    ),
    (
        "^node_(infiniband|fibrechannel|tape)_",
        "InfiniBand, Fibre Channel and SCSI tape hardware is not on a Talos node, a Debian homelab \
         server or a VM: these collectors stay off and say why at start-up (collectors/unsupported.rs)",
    ),
];

/// Registered collectors that never run: see [`EXEMPT`]'s hardware entry.
const OFF_WITH_REASON: &[&str] = &["infiniband", "fibrechannel", "tapestats"];

/// Families of default collectors not produced yet. Unlike [`EXEMPT`] these
/// are gaps, listed so the test shows the coverage and fails when one is
/// filled without being struck from here.
const NOT_YET: &[&str] = &[];

/// netclass's families (the interface attributes, not the counters).
const NETCLASS: &str = "^node_network_(up|info|address_assign_type|carrier|carrier_(up_|down_)?changes_total|device_id|dormant|flags|iface_id|iface_link|iface_link_mode|mtu_bytes|name_assign_type|net_dev_group|speed_bytes|transmit_queue_length|protocol_type)$";

/// Relative tolerance for values: both sides print shortest round-trip f64s.
const REL: f64 = 1e-9;

fn expected() -> Exposition {
    let text = std::fs::read_to_string(format!("{FIXTURES}/expected/node_exporter-e2e-output.txt"))
        .unwrap();
    let mut e = Exposition::parse(&text).unwrap();
    // node_exporter now reads interface counters over netlink, so its current
    // output has none from the /proc/net/dev fixture. Its 2021 output, from
    // the same fixture file, is the reference for them.
    let netdev = Regex::new("^node_network_(receive|transmit)_[a-z]+_total$").unwrap();
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
    // As node_exporter's e2e run: --path.rootfs is the fixture tree (os-release).
    let paths = Paths {
        procfs: format!("{FIXTURES}/proc").into(),
        sysfs: format!("{FIXTURES}/sys").into(),
        rootfs: FIXTURES.into(),
    };
    let options = CollectorOptions {
        textfile_directory: Some(format!("{FIXTURES}/textfile/two_metric_files").into()),
        ..CollectorOptions::default()
    };
    let mut sink = Sink::new();
    for spec in registry() {
        // Collectors that are off by default (the test sequence) are not part of the comparison.
        if !spec.default_enabled {
            continue;
        }
        if HOST_DEPENDENT.iter().any(|(n, _)| *n == spec.name)
            || OFF_WITH_REASON.contains(&spec.name)
        {
            continue;
        }
        let mut c = (spec.build)(&paths).unwrap_or_else(|e| panic!("{}: {e}", spec.name));
        c.configure(&options).unwrap();
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
/// no device ignored, a driver's -1 speed exported), the arp collector with
/// `--collector.arp.device-exclude=nope`, hwmon with
/// `--collector.hwmon.chip-include=(applesmc|asus_nb_wmi|coretemp|hwmon4|ieee80211|nct6779)`,
/// reads textfiles from a directory named relative to its repository,
/// and drops `node_textfile_mtime_seconds` and `node_time_{zone,seconds}`
/// (values of the moment) from both sides. Apply the same to our output,
/// and nothing else.
fn as_in_e2e_run(e: &mut Exposition) {
    // Its textfile directory is named relative to its repository.
    let ours = format!("{FIXTURES}/textfile/two_metric_files");
    for (_, help) in e.meta.values_mut() {
        if help.starts_with("Metric read from ") {
            *help = help.replace(&ours, "collector/fixtures/textfile/two_metric_files");
        }
    }
    let skipped = Regex::new("^(node_textfile_mtime_seconds|node_time_(zone|seconds))").unwrap();
    e.series.retain(|f, _| !skipped.is_match(f));
    if let Some(arp) = e.series.get_mut("node_arp_entries") {
        arp.retain(|l, _| l.get("device").is_none_or(|d| d != "nope"));
    }
    // The RAPL zone's path is named relative to its repository too.
    for (family, series) in &mut e.series {
        if family.starts_with("node_rapl_") {
            *series = std::mem::take(series)
                .into_iter()
                .map(|(mut l, v)| {
                    if let Some(p) = l.get_mut("path") {
                        *p = p.replace(&format!("{FIXTURES}/sys"), "collector/fixtures/sys");
                    }
                    (l, v)
                })
                .collect();
        }
    }
    let chips = Regex::new("applesmc|asus_nb_wmi|coretemp|hwmon4|ieee80211|nct6779").unwrap();
    for (family, series) in &mut e.series {
        if family.starts_with("node_hwmon_") {
            series.retain(|l, _| l.get("chip").is_none_or(|c| chips.is_match(c)));
        }
    }
    let netclass = Regex::new(NETCLASS).unwrap();
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
    let (mut default_families, mut covered, mut exempted) = (0, 0, 0);
    let mut missing = Vec::new();
    for family in want.series.keys() {
        if !is_default(family) {
            continue;
        }
        default_families += 1;
        if produced.contains(family) {
            covered += 1;
            if NOT_YET.contains(&family.as_str()) {
                problems.push(format!("{family}: produced now; strike it from NOT_YET"));
            }
        } else if exempt.iter().any(|r| r.is_match(family)) {
            exempted += 1;
        } else if NOT_YET.contains(&family.as_str()) {
            missing.push(family.as_str());
        } else {
            problems.push(format!(
                "{family}: in node_exporter's output (collector {}), not produced by us",
                ne_collector(family).unwrap_or_default()
            ));
        }
    }
    println!(
        "coverage: {covered} of {default_families} families of node_exporter's default collectors \
         ({:.0} %), {exempted} exempt with a reason, {} not yet: {missing:?}",
        100.0 * f64::from(covered) / f64::from(default_families.max(1)),
        missing.len()
    );

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
    let want = expected();
    let got = ours();
    let paths = Paths {
        procfs: format!("{FIXTURES}/proc").into(),
        sysfs: format!("{FIXTURES}/sys").into(),
        rootfs: FIXTURES.into(),
    };
    // `testseq` is a deterministic test source, off unless a test turns it on.
    for spec in registry().into_iter().filter(|s| s.name != "testseq") {
        assert!(
            spec.default_enabled,
            "{} should be enabled by default",
            spec.name
        );
        if HOST_DEPENDENT.iter().any(|(n, _)| *n == spec.name) {
            continue;
        }
        if OFF_WITH_REASON.contains(&spec.name) {
            let why = (spec.build)(&paths).err().unwrap().0;
            assert!(why.contains("not read by this agent"), "{why}");
            continue;
        }
        // Each collector's families, on its own: at least one is in node_exporter's output.
        let mut sink = Sink::new();
        let mut c = (spec.build)(&paths).unwrap();
        c.collect(&mut sink).unwrap();
        let theirs = sink
            .families
            .keys()
            .filter(|f| want.series.contains_key(*f))
            .count();
        assert!(
            theirs > 0 || spec.name == "selinux",
            "collector {} produced none of node_exporter's families on the fixtures",
            spec.name
        );
        assert!(sink
            .families
            .keys()
            .all(|f| got.meta.contains_key(f) || !want.series.contains_key(f)));
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
