//! Live comparison with the real `node_exporter` on this host.
//!
//! Starts `prometheus-node-exporter` (Debian's package) on a free loopback
//! port with its default collectors, scrapes it between two runs of our
//! default collectors on the real `/proc`, `/sys` and `/`, and checks
//! (a) values of slow-moving gauges and counters agree within 1 %, and
//! (b) both expose the same series (names and label sets) for the families
//! both produce, apart from the differences listed in [`ONLY_THEIRS`] and
//! [`ONLY_OURS`] with their reasons.
//!
//! Without the binary the test is skipped, unless `CI=true`: then it fails.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{show, Exposition, Labels};
use nodewatch_agent::collector::{Paths, Sink};
use nodewatch_agent::collectors::registry;
use regex::Regex;

/// Binary names to look for on `PATH` (Debian's, then upstream's);
/// `NODE_EXPORTER` overrides.
const BINARIES: &[&str] = &["prometheus-node-exporter", "node_exporter"];

/// Families `node_exporter` may expose that we do not, and why.
const ONLY_THEIRS: &[(&str, &str)] = &[
    (
        "^(node_exporter_build_info|promhttp_metric_handler_)",
        "the exporter's own metrics",
    ),
    (
        "^node_scrape_collector_",
        "node_exporter's own bookkeeping (ours is nodewatch_agent_collector_*)",
    ),
    (
        "^node_network_receive_nohandler_total$",
        "read over netlink by node_exporter ≥ 1.4; /proc/net/dev has no such column",
    ),
    (
        "^node_cpu_online$",
        "added after node_exporter 1.5; not in its default output there",
    ),
    (
        "^node_cpu_(info|flag_info|bug_info)$",
        "from /proc/cpuinfo (off by default upstream)",
    ),
    (
        "^(go|process)_",
        "the Go runtime and process of the exporter itself",
    ),
];

/// Families we expose that an older `node_exporter` (Debian 12 ships 1.5.0) does not.
const ONLY_OURS: &[(&str, &str)] = &[
    (
        "^node_softnet_(backlog_len|cpu_collision_total|flow_limit_count_total|received_rps_total)$",
        "added in node_exporter 1.6/1.7 (more /proc/net/softnet_stat columns)",
    ),
    ("^node_watchdog_", "the watchdog collector came after node_exporter 1.5"),
    (
        "^node_md_(raid_disks|degraded)$",
        "read from md sysfs since node_exporter 1.8",
    ),
    (
        "^node_nvme_namespace_",
        "NVMe namespaces since node_exporter 1.8",
    ),
    (
        "^node_cpu_frequency_avg_hertz$",
        "cpuinfo_avg_freq since node_exporter 1.9",
    ),
    ("^node_filesystem_mount_info$", "added in node_exporter 1.9"),
    (
        "^node_pressure_irq_stalled_seconds_total$",
        "added in node_exporter 1.9",
    ),
    (
        "^node_memory_",
        "node_exporter ≥ 1.9 exports only the meminfo fields its procfs struct names; \
         we export every field, as it did up to 1.8 (families both have are still compared)",
    ),
];

/// Filters passed to `node_exporter` explicitly: ours are upstream's current
/// defaults (checked against upstream in the unit tests), while distribution
/// builds change theirs (Debian's 1.5 excludes `lo`, `/run`, `/mnt`, `/media`,
/// and has an older netstat field list). With the same filters the
/// comparison is about reading and naming, not about defaults.
fn filter_flags() -> Vec<String> {
    use nodewatch_agent::collectors::{diskstats, filesystem, netstat, vmstat};
    vec![
        format!(
            "--collector.diskstats.device-exclude={}",
            diskstats::DEFAULT_DEVICE_EXCLUDE
        ),
        format!(
            "--collector.filesystem.mount-points-exclude={}",
            filesystem::DEFAULT_MOUNT_POINTS_EXCLUDE
        ),
        format!(
            "--collector.filesystem.fs-types-exclude={}",
            filesystem::DEFAULT_FS_TYPES_EXCLUDE
        ),
        // Upstream's default excludes nothing; `^$` is the explicit way to say so.
        "--collector.netdev.device-exclude=^$".to_string(),
        format!("--collector.netstat.fields={}", netstat::DEFAULT_FIELDS),
        format!("--collector.vmstat.fields={}", vmstat::DEFAULT_FIELDS),
    ]
}

/// Labels ignored when matching series, added after `node_exporter` 1.5:
/// `device_error` (statfs error text on failing mounts, 1.9),
/// `adminstate` on `node_network_info` (1.6, #2515) and `rotational` on
/// `node_disk_info` (1.10).
const IGNORED_LABELS: &[&str] = &["device_error", "adminstate", "rotational"];

/// Counters compared by bracketing: `node_exporter`'s reading must lie between
/// our readings before and after its scrape (±1 %).
const COUNTERS: &[&str] = &[
    "node_cpu_seconds_total",
    "node_context_switches_total",
    "node_forks_total",
    "node_intr_total",
    "node_disk_read_bytes_total",
    "node_disk_written_bytes_total",
    "node_disk_reads_completed_total",
    "node_disk_writes_completed_total",
    "node_network_receive_bytes_total",
    "node_network_transmit_bytes_total",
    "node_network_receive_packets_total",
    "node_network_transmit_packets_total",
    "node_vmstat_pgfault",
    "node_vmstat_pgpgin",
    "node_vmstat_pgpgout",
    "node_netstat_Tcp_InSegs",
    "node_netstat_Tcp_OutSegs",
    "node_pressure_cpu_waiting_seconds_total",
    "node_pressure_io_waiting_seconds_total",
    "node_pressure_memory_waiting_seconds_total",
    "node_softnet_processed_total",
];

/// Slow-moving gauges: within 1 % of either of our readings.
const GAUGES: &[&str] = &[
    "node_memory_MemTotal_bytes",
    "node_memory_SwapTotal_bytes",
    "node_memory_HugePages_Total",
    "node_memory_Hugepagesize_bytes",
    "node_boot_time_seconds",
    "node_filesystem_size_bytes",
    "node_filesystem_files",
    "node_filesystem_readonly",
    "node_network_mtu_bytes",
    "node_nf_conntrack_entries_limit",
    "node_filefd_maximum",
    "node_entropy_pool_size_bits",
    "node_os_version",
    "node_timex_tick_seconds",
    "node_timex_status",
    "node_time_zone_offset_seconds",
];

const TOLERANCE: f64 = 0.01;

/// Kills and reaps `node_exporter` on every path out of the test.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NODE_EXPORTER") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| BINARIES.iter().map(move |b| dir.join(b)))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    l.local_addr().unwrap().port()
}

/// A plain HTTP/1.0 GET; the server closes the connection after the body.
fn scrape(port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    // Ask for the classic text format explicitly (not protobuf or OpenMetrics).
    s.write_all(
        b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/plain;version=0.0.4\r\n\r\n",
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "HTTP status: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok(body.to_string())
}

fn ours() -> Exposition {
    let paths = Paths::default();
    let mut sink = Sink::new();
    for spec in registry() {
        // As in the agent, collectors off by default do not run.
        if !spec.default_enabled {
            continue;
        }
        // As in the agent: a collector that cannot run on this host (no ZFS) stays off.
        let Ok(mut c) = (spec.build)(&paths) else {
            continue;
        };
        c.collect(&mut sink)
            .unwrap_or_else(|e| panic!("collector {} failed on this host: {e}", spec.name));
    }
    Exposition::parse(&sink.render_text()).unwrap()
}

fn strip(series: &BTreeMap<Labels, f64>) -> BTreeMap<Labels, f64> {
    series
        .iter()
        .map(|(l, v)| {
            let mut l = l.clone();
            l.retain(|k, _| !IGNORED_LABELS.contains(&k.as_str()));
            (l, *v)
        })
        .collect()
}

/// How far `x` lies outside `[lo, hi]`, relative to the bound it missed.
fn deviation(x: f64, lo: f64, hi: f64) -> f64 {
    let (lo, hi) = (lo.min(hi), lo.max(hi));
    if x < lo {
        (lo - x) / lo.abs().max(1e-12)
    } else if x > hi {
        (x - hi) / hi.abs().max(1e-12)
    } else {
        0.0
    }
}

fn matches_any(patterns: &[(&str, &str)], name: &str) -> bool {
    patterns
        .iter()
        .any(|(p, _)| Regex::new(p).unwrap().is_match(name))
}

#[allow(
    clippy::too_many_lines,
    reason = "one comparison, family by family, read top to bottom"
)]
#[test]
fn agrees_with_node_exporter_on_this_host() {
    let Some(bin) = find_binary() else {
        let msg = format!(
            "node_exporter not found (looked for {BINARIES:?} on PATH, or $NODE_EXPORTER); \
             install Debian's prometheus-node-exporter"
        );
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("skipping: {msg}");
        return;
    };
    let port = free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new(&bin);
    // Its default collectors, as ours run with theirs; no textfile directory
    // on either side (Debian's build defaults to one of its own).
    cmd.arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--web.disable-exporter-metrics")
        .arg("--collector.textfile.directory=");
    cmd.args(filter_flags());
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let mut guard = Guard(child);

    // Wait until it serves (its start-up is well under a second).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            let log = std::fs::read_to_string(log.path()).unwrap_or_default();
            panic!("{} exited with {status}:\n{log}", bin.display());
        }
        if scrape(port).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not serve on port {port}",
            bin.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let before = ours();
    let theirs_text = scrape(port).unwrap();
    let after = ours();
    drop(guard);
    let theirs = Exposition::parse(&theirs_text).unwrap();
    println!(
        "node_exporter {}: {} series; ours: {} series",
        bin.display(),
        theirs.len(),
        after.len()
    );

    let mut problems = Vec::new();

    // (b) Series names and label sets.
    let mut shared = 0;
    for (family, t) in &theirs.series {
        match after.series.get(family) {
            Some(o) => {
                shared += 1;
                // A series may appear or vanish between reads (a new mount or
                // interface): one of theirs must be in one of our readings,
                // and one in both of ours must be in theirs.
                let (t, oa) = (strip(t), strip(o));
                let ob = before.series.get(family).map(strip).unwrap_or_default();
                let mut d = Vec::new();
                for l in t
                    .keys()
                    .filter(|l| !ob.contains_key(*l) && !oa.contains_key(*l))
                {
                    d.push(format!("  - {} (only theirs)", show(family, l)));
                }
                for l in oa
                    .keys()
                    .filter(|l| ob.contains_key(*l) && !t.contains_key(*l))
                {
                    d.push(format!("  + {} (only ours)", show(family, l)));
                }
                if !d.is_empty() {
                    problems.push(format!("{family}: series differ\n{}", d.join("\n")));
                }
            }
            None if matches_any(ONLY_THEIRS, family) => {}
            None => problems.push(format!("{family}: exposed by node_exporter, not by us")),
        }
    }
    for family in after.series.keys() {
        if !theirs.series.contains_key(family) && !matches_any(ONLY_OURS, family) {
            problems.push(format!("{family}: exposed by us, not by node_exporter"));
        }
    }

    // (a) Values.
    let mut compared = 0;
    // Per family: values compared and the largest plain difference to our after-reading.
    let mut per_family: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
    let mut worst = (0.0_f64, String::new());
    // Informational: the plain relative difference to our reading after the scrape.
    let mut raw_worst = (0.0_f64, String::new());
    for (families, bracket) in [(COUNTERS, true), (GAUGES, false)] {
        for family in families {
            let Some(t) = theirs.series.get(*family) else {
                continue;
            };
            let t = strip(t);
            let b = before.series.get(*family).map(strip).unwrap_or_default();
            let a = after.series.get(*family).map(strip).unwrap_or_default();
            for (labels, tv) in &t {
                let (Some(bv), Some(av)) = (b.get(labels), a.get(labels)) else {
                    continue;
                };
                compared += 1;
                let dev = if bracket {
                    deviation(*tv, *bv, *av)
                } else {
                    deviation(*tv, *bv, *bv).min(deviation(*tv, *av, *av))
                };
                let raw = deviation(*tv, *av, *av);
                let entry = per_family.entry(family).or_default();
                entry.0 += 1;
                entry.1 = entry.1.max(raw);
                if raw > raw_worst.0 || raw_worst.1.is_empty() {
                    raw_worst = (raw, show(family, labels));
                }
                if dev > worst.0 || worst.1.is_empty() {
                    worst = (dev, show(family, labels));
                }
                if dev > TOLERANCE {
                    problems.push(format!(
                        "{}: node_exporter {tv}, ours {bv} before / {av} after ({:.3} % off)",
                        show(family, labels),
                        dev * 100.0
                    ));
                }
            }
        }
    }
    println!(
        "{shared} families in both; {compared} values compared; max deviation outside \
         our before/after bracket {:.6} % ({}); max difference to our after-reading {:.6} % ({})",
        worst.0 * 100.0,
        worst.1,
        raw_worst.0 * 100.0,
        raw_worst.1
    );

    for (family, (n, raw)) in &per_family {
        println!(
            "  {family}: {n} value(s), max difference {:.6} %",
            raw * 100.0
        );
    }

    assert!(
        problems.is_empty(),
        "{} difference(s) from node_exporter:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(compared > 0, "no values compared");
}

#[test]
fn deviation_is_zero_inside_the_bracket() {
    assert!(deviation(5.0, 4.0, 6.0).abs() < f64::EPSILON);
    assert!((deviation(101.0, 100.0, 100.0) - 0.01).abs() < 1e-12);
    assert!((deviation(99.0, 100.0, 120.0) - 0.01).abs() < 1e-12);
}
