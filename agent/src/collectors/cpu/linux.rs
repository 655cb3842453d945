//! `/proc/stat` on Linux: per-CPU time (written through [`super`]) and
//! kernel activity counters; the collector is named `stat`.
//!
//! This covers what `node_exporter`'s `cpu` collector (`node_cpu_seconds_total`,
//! `node_cpu_guest_seconds_total`) and `stat` collector read from this one file.
//! Hand-parsed rather than through `procfs::KernelStats`, which drops the
//! `intr` total that `node_intr_total` needs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::collector::{CollectError, Collector, CollectorSpec, Paths, Sink, Unavailable};
use crate::collectors::parse_field;

pub const SPEC: CollectorSpec = CollectorSpec::new("stat", build);

pub fn build(paths: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
    Ok(Box::new(StatCollector::new(paths)))
}

/// Clock ticks per second of the `/proc/stat` CPU columns. The kernel reports
/// them in `USER_HZ`, which is 100 on every architecture Linux exports to user
/// space (`node_exporter` and its procfs library hard-code the same value).
pub const USER_HZ: f64 = 100.0;

/// If a CPU's idle time goes back by more than this, the CPU was hot-plugged
/// and its counters restarted: `node_exporter`'s `jumpBackSeconds`.
const JUMP_BACK_SECONDS: f64 = 3.0;

/// One `cpuN` line, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTimes {
    pub user: f64,
    pub nice: f64,
    pub system: f64,
    pub idle: f64,
    pub iowait: f64,
    pub irq: f64,
    pub softirq: f64,
    pub steal: f64,
    pub guest: f64,
    pub guest_nice: f64,
}

/// The parts of `/proc/stat` that become metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stat {
    /// Per CPU number; the aggregate `cpu` line is skipped (`node_exporter` exports
    /// only per-CPU series, sums are for `PromQL`).
    pub cpus: BTreeMap<u32, CpuTimes>,
    pub intr: Option<u64>,
    pub ctxt: Option<u64>,
    pub btime: Option<u64>,
    pub processes: Option<u64>,
    pub procs_running: Option<u64>,
    pub procs_blocked: Option<u64>,
}

/// Parses `/proc/stat`. Unknown lines (`softirq`, `page`, …) are skipped.
pub fn parse(path: &Path, text: &str) -> Result<Stat, CollectError> {
    let mut stat = Stat::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let mut fields = line.split_whitespace();
        let Some(key) = fields.next() else { continue };
        if let Some(id) = key.strip_prefix("cpu") {
            if id.is_empty() {
                continue;
            }
            let id: u32 = parse_field(path, n, "cpu number", id)?;
            let ticks = fields
                .map(|f| parse_field::<u64>(path, n, "cpu ticks", f))
                .collect::<Result<Vec<u64>, _>>()?;
            // Older kernels lack steal (added in 2.6.11), guest (2.6.24) or
            // guest_nice (2.6.33), and OpenVZ guests lack guest: missing
            // trailing columns count as zero, as in procfs' parseCPUStat.
            // Fewer than the four original columns is not a CPU line.
            if ticks.len() < 4 {
                return Err(CollectError::parse(
                    path,
                    n,
                    "cpu line has fewer than 4 columns",
                ));
            }
            let s = |k: usize| ticks.get(k).map_or(0.0, |&t| t as f64 / USER_HZ);
            stat.cpus.insert(
                id,
                CpuTimes {
                    user: s(0),
                    nice: s(1),
                    system: s(2),
                    idle: s(3),
                    iowait: s(4),
                    irq: s(5),
                    softirq: s(6),
                    steal: s(7),
                    guest: s(8),
                    guest_nice: s(9),
                },
            );
            continue;
        }
        let slot = match key {
            "intr" => &mut stat.intr,
            "ctxt" => &mut stat.ctxt,
            "btime" => &mut stat.btime,
            "processes" => &mut stat.processes,
            "procs_running" => &mut stat.procs_running,
            "procs_blocked" => &mut stat.procs_blocked,
            _ => continue,
        };
        let Some(value) = fields.next() else {
            return Err(CollectError::parse(
                path,
                n,
                format!("{key}: missing value"),
            ));
        };
        *slot = Some(parse_field(path, n, key, value)?);
    }
    Ok(stat)
}

/// Reads `/proc/stat`, keeping CPU counters monotonic across reads.
pub struct StatCollector {
    path: PathBuf,
    /// Last exported CPU times, so a counter that goes backwards (a known
    /// kernel artefact for iowait and idle) is held, as `node_exporter` does.
    cpus: BTreeMap<u32, CpuTimes>,
}

impl StatCollector {
    #[must_use]
    pub fn new(paths: &Paths) -> Self {
        Self {
            path: paths.proc("stat"),
            cpus: BTreeMap::new(),
        }
    }

    /// `node_exporter`'s `updateCPUStats`: each field only moves forward, unless
    /// idle jumped back so far that the CPU must have been re-plugged; CPUs
    /// that went offline are dropped.
    fn update_cpus(&mut self, new: &BTreeMap<u32, CpuTimes>) {
        self.cpus.retain(|id, _| new.contains_key(id));
        for (id, n) in new {
            let mut c = self.cpus.get(id).copied().unwrap_or_default();
            if c.idle - n.idle >= JUMP_BACK_SECONDS {
                c = CpuTimes::default();
            }
            let keep_max = |old: &mut f64, new: f64| {
                if new >= *old {
                    *old = new;
                }
            };
            keep_max(&mut c.user, n.user);
            keep_max(&mut c.nice, n.nice);
            keep_max(&mut c.system, n.system);
            keep_max(&mut c.idle, n.idle);
            keep_max(&mut c.iowait, n.iowait);
            keep_max(&mut c.irq, n.irq);
            keep_max(&mut c.softirq, n.softirq);
            keep_max(&mut c.steal, n.steal);
            keep_max(&mut c.guest, n.guest);
            keep_max(&mut c.guest_nice, n.guest_nice);
            self.cpus.insert(*id, c);
        }
    }
}

impl Collector for StatCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        let text = crate::collector::read_file(&self.path)?;
        let stat = parse(&self.path, &text)?;
        self.update_cpus(&stat.cpus);
        write(sink, &self.cpus, &stat);
        Ok(())
    }
}

fn write(sink: &mut Sink, cpus: &BTreeMap<u32, CpuTimes>, stat: &Stat) {
    const GUEST_HELP: &str = "Seconds the CPUs spent in guests (VMs) for each mode.";
    for (id, c) in cpus {
        let cpu = id.to_string();
        super::write_seconds(
            sink,
            &cpu,
            [
                ("user", c.user),
                ("nice", c.nice),
                ("system", c.system),
                ("idle", c.idle),
                ("iowait", c.iowait),
                ("irq", c.irq),
                ("softirq", c.softirq),
                ("steal", c.steal),
            ],
        );
        // Guest time is also counted in user and nice; node_exporter exposes
        // it separately so it can be subtracted.
        sink.counter(
            "node_cpu_guest_seconds_total",
            GUEST_HELP,
            &[("cpu", &cpu), ("mode", "user")],
            c.guest,
        );
        sink.counter(
            "node_cpu_guest_seconds_total",
            GUEST_HELP,
            &[("cpu", &cpu), ("mode", "nice")],
            c.guest_nice,
        );
    }
    if let Some(v) = stat.intr {
        sink.counter(
            "node_intr_total",
            "Total number of interrupts serviced.",
            &[],
            v as f64,
        );
    }
    if let Some(v) = stat.ctxt {
        sink.counter(
            "node_context_switches_total",
            "Total number of context switches.",
            &[],
            v as f64,
        );
    }
    if let Some(v) = stat.processes {
        sink.counter("node_forks_total", "Total number of forks.", &[], v as f64);
    }
    if let Some(v) = stat.btime {
        sink.gauge(
            "node_boot_time_seconds",
            "Node boot time, in unixtime.",
            &[],
            v as f64,
        );
    }
    if let Some(v) = stat.procs_running {
        sink.gauge(
            "node_procs_running",
            "Number of processes in runnable state.",
            &[],
            v as f64,
        );
    }
    if let Some(v) = stat.procs_blocked {
        sink.gauge(
            "node_procs_blocked",
            "Number of processes blocked waiting for I/O to complete.",
            &[],
            v as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    const FIXTURE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/linux/proc/stat"
    ));

    #[test]
    fn parses_fixture() {
        let s = parse(Path::new("stat"), FIXTURE).unwrap();
        assert_eq!(s.cpus.len(), 8);
        let c0 = s.cpus[&0];
        assert!((c0.user - 444.90).abs() < 1e-9);
        assert!((c0.idle - 10870.69).abs() < 1e-9);
        assert!((c0.guest - 0.02).abs() < 1e-9);
        assert!((c0.guest_nice - 0.01).abs() < 1e-9);
        assert_eq!(s.intr, Some(8_885_917));
        assert_eq!(s.ctxt, Some(38_014_093));
        assert_eq!(s.btime, Some(1_418_183_276));
        assert_eq!(s.processes, Some(26442));
        assert_eq!(s.procs_running, Some(2));
        assert_eq!(s.procs_blocked, Some(0));
    }

    #[test]
    fn short_cpu_lines_default_missing_columns() {
        let s = parse(Path::new("stat"), "cpu0 1 2 3 4 5\n").unwrap();
        assert!((s.cpus[&0].iowait - 0.05).abs() < 1e-12);
        assert!(s.cpus[&0].guest.abs() < f64::EPSILON);
        assert!(parse(Path::new("stat"), "cpu0 1 2\n").is_err());
        assert!(parse(Path::new("stat"), "cpuX 1 2 3 4\n").is_err());
        assert!(parse(Path::new("stat"), "ctxt\n").is_err());
    }

    #[test]
    fn counters_never_go_backwards_unless_cpu_replugged() {
        let mut c = StatCollector::new(&Paths::default());
        let mut m = BTreeMap::new();
        let t = CpuTimes {
            user: 10.0,
            idle: 100.0,
            iowait: 5.0,
            ..CpuTimes::default()
        };
        m.insert(0, t);
        c.update_cpus(&m);
        m.insert(
            0,
            CpuTimes {
                iowait: 4.99,
                idle: 99.0,
                ..t
            },
        );
        c.update_cpus(&m);
        assert!((c.cpus[&0].iowait - 5.0).abs() < 1e-12);
        assert!((c.cpus[&0].idle - 100.0).abs() < 1e-12);
        m.insert(
            0,
            CpuTimes {
                idle: 1.0,
                ..CpuTimes::default()
            },
        );
        c.update_cpus(&m);
        assert!((c.cpus[&0].idle - 1.0).abs() < 1e-12);
        assert!(c.cpus[&0].user.abs() < 1e-12);
        c.update_cpus(&BTreeMap::new());
        assert!(c.cpus.is_empty());
    }

    #[test]
    fn fuzz_no_panic() {
        testutil::assert_no_panic(FIXTURE, 1, |t| parse(Path::new("stat"), t));
    }
}
