//! ZFS pool health from the `zpool` command (Linux and FreeBSD).
//!
//! The kstats say little about health (only the pool state on Linux, nothing
//! on FreeBSD), so this collector runs `zpool status` and `zpool list`:
//!
//! - `zpool status -j -p` (JSON, OpenZFS 2.3+, format in `man/man8/zpool-status.8`)
//!   when the binary knows `-j`, otherwise `zpool status -p` or plain
//!   `zpool status` (text, as `cmd/zpool/zpool_main.c` `status_callback`
//!   prints it); the collector remembers which form works;
//! - `zpool list -Hp -o name,health,size,alloc,free,fragmentation,capacity,dedupratio`
//!   (tab-separated, exact numbers; the same columns telegraf's zfs input
//!   uses), or `-H` without `-p` on a `zpool` that lacks it.
//!
//! Exported:
//!
//! - `nodewatch_zpool_health{zpool,state}`: one series per known state, 1 for
//!   the current one (as node_exporter's `node_zfs_zpool_state`);
//! - `nodewatch_zpool_vdev_state{zpool,vdev,state}` likewise per vdev, and
//!   `nodewatch_zpool_vdev_errors_total{zpool,vdev,kind="read|write|checksum"}`;
//!   a vdev is named by its path in the tree below the pool
//!   (`mirror-0/sda`, `spares/sdf`); the pool's root vdev is named after the pool;
//! - `nodewatch_zpool_scan_state{zpool,function,state}` (1 for the current
//!   scan), `nodewatch_zpool_scan_progress_ratio{zpool}` while a scan runs,
//!   `nodewatch_zpool_scan_errors{zpool}` and
//!   `nodewatch_zpool_scan_last_completion_timestamp_seconds{zpool,function}`
//!   once one finished;
//! - `nodewatch_zpool_data_errors{zpool}`: files with permanent errors;
//! - from `zpool list`: `nodewatch_zpool_size_bytes`, `…_allocated_bytes`,
//!   `…_free_bytes`, `…_fragmentation_ratio`, `…_dedup_ratio` (`{zpool}`).
//!
//! A pool whose state differs from the previous collection emits one
//! `ZpoolStateChange` event.
//!
//! The parsers are pure functions on `&str`; they return what they could read
//! and never panic (each has a mutation test).

#![allow(
    clippy::doc_markdown,
    reason = "project and tool names (OpenZFS, node_exporter, ZoL) are prose here, not code"
)]

use std::collections::BTreeMap;

use chrono::{NaiveDateTime, TimeZone};
use nodewatch_proto::v1::{event, ZpoolStateChange};

use crate::collector::{CollectError, Collector, CollectorSpec, Paths, Sink, Unavailable};
use crate::sys::command::{find_program, CommandRunner, SystemRunner};
use command::{run_forms, Form, LIST_FORMS, STATUS_FORMS, ZPOOL_DIRS};

mod command;
mod json;
mod list;
mod text;

pub use json::parse_status_json;
pub use list::parse_list;
pub use text::{parse_scan, parse_status_text, parse_zpool_time};

/// Pool states node_exporter enumerates for `node_zfs_zpool_state`, in its order.
pub use super::zfs::POOL_STATES;

/// Vdev states (`zpool_state_to_name` in `lib/libzfs/libzfs_pool.c`), plus
/// the hot-spare states `avail` and `inuse`.
pub const VDEV_STATES: &[&str] = &[
    "online", "degraded", "faulted", "offline", "removed", "unavail", "avail", "inuse",
];

/// What a scan (scrub or resilver) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanFunction {
    None,
    Scrub,
    Resilver,
    Unknown,
}

impl ScanFunction {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Scrub => "scrub",
            Self::Resilver => "resilver",
            Self::Unknown => "unknown",
        }
    }
}

/// Where the last scan stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanState {
    /// Never scanned (new pool, `none requested`).
    None,
    InProgress,
    Paused,
    Finished,
    Canceled,
    Unknown,
}

impl ScanState {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::InProgress => "in_progress",
            Self::Paused => "paused",
            Self::Finished => "finished",
            Self::Canceled => "canceled",
            Self::Unknown => "unknown",
        }
    }
}

/// The `scan:` (older releases: `scrub:`) section of a pool.
#[derive(Clone, Debug, PartialEq)]
pub struct Scan {
    pub function: ScanFunction,
    pub state: ScanState,
    /// 0..=1 while in progress.
    pub progress: Option<f64>,
    /// Errors the last finished scan found.
    pub errors: Option<u64>,
    /// When the last scan finished, in the host's local time as `zpool` prints it.
    pub end_time: Option<NaiveDateTime>,
    /// Same, when the source gave seconds since the epoch (JSON).
    pub end_epoch: Option<i64>,
}

/// One vdev row of the config tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vdev {
    /// Path below the pool: `mirror-0/sda`, `spares/sdf`; the root vdev is the pool name.
    pub path: String,
    /// Upper case as printed: `ONLINE`, `UNAVAIL`, `AVAIL`; JSON `HEALTHY` is kept as is.
    pub state: String,
    pub read: Option<u64>,
    pub write: Option<u64>,
    pub checksum: Option<u64>,
}

/// One pool of `zpool status`.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolStatus {
    pub name: String,
    /// Upper case as printed (`ONLINE`, `DEGRADED`, …).
    pub state: String,
    pub scan: Option<Scan>,
    pub vdevs: Vec<Vdev>,
    /// Number of files with permanent errors (`errors:` section), when said.
    pub data_errors: Option<u64>,
}

/// One row of `zpool list -Hp`.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolList {
    pub name: String,
    pub health: String,
    pub size: Option<f64>,
    pub allocated: Option<f64>,
    pub free: Option<f64>,
    /// 0..=1.
    pub fragmentation: Option<f64>,
    pub dedup: Option<f64>,
}

/// Registry entry.
pub const SPEC: CollectorSpec = CollectorSpec::new("zpool", build);

fn build(_paths: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
    let program = find_program("zpool", ZPOOL_DIRS).ok_or_else(|| {
        Unavailable("no zpool binary in PATH or /sbin, /usr/sbin, /usr/local/sbin".into())
    })?;
    let mut c = ZpoolCollector::new(Box::new(SystemRunner::default()));
    c.program = program.to_string_lossy().into_owned();
    Ok(Box::new(c))
}

/// Pool health from `zpool status` and sizes from `zpool list`.
pub struct ZpoolCollector {
    runner: Box<dyn CommandRunner>,
    /// The `zpool` program (a name looked up in `PATH`, or a full path).
    program: String,
    /// The `zpool status` form of [`STATUS_FORMS`] this `zpool` accepts.
    status_form: Form,
    /// The `zpool list` form of [`LIST_FORMS`] this `zpool` accepts.
    list_form: Form,
    /// Pool state at the previous collection, for `ZpoolStateChange`.
    previous: BTreeMap<String, String>,
}

impl ZpoolCollector {
    #[must_use]
    pub fn new(runner: Box<dyn CommandRunner>) -> Self {
        Self {
            runner,
            program: "zpool".to_string(),
            status_form: Form::Unknown,
            list_form: Form::Unknown,
            previous: BTreeMap::new(),
        }
    }

    fn status(&mut self) -> Result<Option<Vec<PoolStatus>>, CollectError> {
        run_forms(
            self.runner.as_ref(),
            &self.program,
            STATUS_FORMS,
            &mut self.status_form,
            |i, out| {
                if i == 0 {
                    // Not JSON (no pools prints a sentence): try the text forms.
                    parse_status_json(out).ok()
                } else {
                    Some(parse_status_text(out))
                }
            },
        )
    }

    fn list(&mut self) -> Result<Option<Vec<PoolList>>, CollectError> {
        run_forms(
            self.runner.as_ref(),
            &self.program,
            LIST_FORMS,
            &mut self.list_form,
            |_, out| Some(parse_list(out)),
        )
    }
}

/// Writes one series per state in `known`, 1 for `current` (lowercased); a
/// state outside the list gets its own series so it is never lost.
fn state_set(
    sink: &mut Sink,
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    known: &[&str],
    current: &str,
) {
    let current = current.to_ascii_lowercase();
    for s in known {
        let mut l = labels.to_vec();
        l.push(("state", s));
        sink.gauge(name, help, &l, if *s == current { 1.0 } else { 0.0 });
    }
    if !known.contains(&current.as_str()) {
        let mut l = labels.to_vec();
        l.push(("state", &current));
        sink.gauge(name, help, &l, 1.0);
    }
}

/// Writes the samples of one pool's status.
pub fn write_status(sink: &mut Sink, p: &PoolStatus) {
    let pool = p.name.as_str();
    state_set(
        sink,
        "nodewatch_zpool_health",
        "Pool health from zpool status: 1 for the current state.",
        &[("zpool", pool)],
        POOL_STATES,
        &p.state,
    );
    for v in &p.vdevs {
        let labels = [("zpool", pool), ("vdev", v.path.as_str())];
        state_set(
            sink,
            "nodewatch_zpool_vdev_state",
            "Vdev state from zpool status: 1 for the current state.",
            &labels,
            VDEV_STATES,
            &v.state,
        );
        for (kind, n) in [
            ("read", v.read),
            ("write", v.write),
            ("checksum", v.checksum),
        ] {
            if let Some(n) = n {
                sink.counter(
                    "nodewatch_zpool_vdev_errors_total",
                    "I/O errors of a vdev since the pool was imported or cleared (zpool status READ/WRITE/CKSUM).",
                    &[("zpool", pool), ("vdev", v.path.as_str()), ("kind", kind)],
                    n as f64,
                );
            }
        }
    }
    if let Some(scan) = &p.scan {
        sink.gauge(
            "nodewatch_zpool_scan_state",
            "The pool's current or last scan: 1 for its function and state.",
            &[
                ("zpool", pool),
                ("function", scan.function.as_str()),
                ("state", scan.state.as_str()),
            ],
            1.0,
        );
        if let Some(progress) = scan.progress {
            sink.gauge(
                "nodewatch_zpool_scan_progress_ratio",
                "Progress of the running scrub or resilver (0 to 1).",
                &[("zpool", pool)],
                progress,
            );
        }
        if let Some(errors) = scan.errors {
            sink.gauge(
                "nodewatch_zpool_scan_errors",
                "Errors the last finished scan found.",
                &[("zpool", pool)],
                errors as f64,
            );
        }
        let end = scan.end_epoch.or_else(|| {
            scan.end_time.and_then(|t| {
                // zpool prints local time (ctime(3)); an ambiguous hour at a DST change takes the earlier.
                chrono::Local
                    .from_local_datetime(&t)
                    .earliest()
                    .map(|t| t.timestamp())
            })
        });
        if let Some(end) = end {
            sink.gauge(
                "nodewatch_zpool_scan_last_completion_timestamp_seconds",
                "When the last scrub or resilver finished, seconds since the epoch.",
                &[("zpool", pool), ("function", scan.function.as_str())],
                end as f64,
            );
        }
    }
    if let Some(n) = p.data_errors {
        sink.gauge(
            "nodewatch_zpool_data_errors",
            "Files (or objects) with permanent errors (zpool status errors:).",
            &[("zpool", pool)],
            n as f64,
        );
    }
}

/// Writes the samples of one `zpool list` row.
pub fn write_list(sink: &mut Sink, p: &PoolList) {
    let labels = [("zpool", p.name.as_str())];
    let rows = [
        (
            "nodewatch_zpool_size_bytes",
            "Pool size (zpool list SIZE).",
            p.size,
        ),
        (
            "nodewatch_zpool_allocated_bytes",
            "Space allocated in the pool (zpool list ALLOC).",
            p.allocated,
        ),
        (
            "nodewatch_zpool_free_bytes",
            "Space free in the pool (zpool list FREE).",
            p.free,
        ),
        (
            "nodewatch_zpool_fragmentation_ratio",
            "Fragmentation of the pool's free space (zpool list FRAG, 0 to 1).",
            p.fragmentation,
        ),
        (
            "nodewatch_zpool_dedup_ratio",
            "Deduplication ratio (zpool list DEDUP).",
            p.dedup,
        ),
    ];
    for (name, help, v) in rows {
        if let Some(v) = v {
            sink.gauge(name, help, &labels, v);
        }
    }
}

impl Collector for ZpoolCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        // No `zpool` binary: ZFS is not installed, nothing to say.
        let Some(pools) = self.status()? else {
            return Ok(());
        };
        let mut seen = BTreeMap::new();
        for p in &pools {
            write_status(sink, p);
            if let Some(from) = self.previous.get(&p.name) {
                if *from != p.state {
                    sink.event(event::Kind::ZpoolStateChange(ZpoolStateChange {
                        zpool: p.name.clone(),
                        from: from.clone(),
                        to: p.state.clone(),
                    }));
                }
            }
            seen.insert(p.name.clone(), p.state.clone());
        }
        // Pools that were exported or destroyed are forgotten: a pool
        // imported again later starts without a transition.
        self.previous = seen;

        for p in self.list()?.unwrap_or_default() {
            write_list(sink, &p);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::command::{
        LIST_ARGS, LIST_LEGACY_ARGS, STATUS_JSON_ARGS, STATUS_LEGACY_ARGS, STATUS_TEXT_ARGS,
    };
    use super::text::{parse_count, parse_nicenum};
    use super::*;
    use crate::collectors::testutil::{fixture_text, fuzz_inputs, value};
    use crate::sys::command::CommandError;
    use chrono::NaiveDate;

    fn status(rel: &str) -> PoolStatus {
        let pools = parse_status_text(&fixture_text(rel));
        assert_eq!(pools.len(), 1, "{rel}");
        pools.into_iter().next().unwrap()
    }

    fn vdev<'a>(p: &'a PoolStatus, path: &str) -> &'a Vdev {
        p.vdevs
            .iter()
            .find(|v| v.path == path)
            .unwrap_or_else(|| panic!("no vdev {path} in {:?}", p.vdevs))
    }

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Option<NaiveDateTime> {
        NaiveDate::from_ymd_opt(y, mo, d).and_then(|x| x.and_hms_opt(h, mi, s))
    }

    /// Pool state, device states and error counts from danjl1100's expected
    /// outputs (`tests/input/output-NN-*.txt`; their `dev="mirror-0/x"` naming
    /// is ours too, their root `__root__` is our pool name).
    #[test]
    fn zse_01_corrupted() {
        let p = status("zfs/zpool-status-zse-01-corrupted.txt");
        assert_eq!(p.name, "dummy");
        assert_eq!(p.state, "DEGRADED");
        assert_eq!(p.vdevs.len(), 7);
        assert_eq!(vdev(&p, "dummy").state, "DEGRADED");
        assert_eq!(vdev(&p, "mirror-1").state, "DEGRADED");
        assert_eq!(vdev(&p, "mirror-1/loop3").state, "UNAVAIL");
        assert_eq!(vdev(&p, "mirror-0/loop0").state, "ONLINE");
        let scan = p.scan.clone().unwrap();
        assert_eq!(
            (scan.function, scan.state),
            (ScanFunction::Scrub, ScanState::Finished)
        );
        assert_eq!(scan.errors, Some(0));
        assert_eq!(scan.end_time, at(2024, 2, 10, 20, 34, 42));
        assert_eq!(p.data_errors, None);
    }

    #[test]
    fn zse_02_data_corruption() {
        let p = status("zfs/zpool-status-zse-02-online-data-corruption.txt");
        assert_eq!(p.state, "ONLINE");
        assert_eq!(p.data_errors, Some(1));
        let scan = p.scan.clone().unwrap();
        assert_eq!(scan.errors, Some(1));
        assert_eq!(scan.end_time, at(2024, 2, 4, 20, 54, 25));
        assert_eq!(p.vdevs.len(), 4);
    }

    #[test]
    fn zse_03_resilvered_04_scrub_progress() {
        let p = status("zfs/zpool-status-zse-03-resilvered.txt");
        let scan = p.scan.clone().unwrap();
        assert_eq!(
            (scan.function, scan.state),
            (ScanFunction::Resilver, ScanState::Finished)
        );
        assert_eq!(scan.end_time, at(2024, 2, 10, 20, 30, 44));
        assert_eq!(p.data_errors, Some(0));

        let p = status("zfs/zpool-status-zse-04-scrub-progress.txt");
        let scan = p.scan.clone().unwrap();
        assert_eq!(
            (scan.function, scan.state),
            (ScanFunction::Scrub, ScanState::InProgress)
        );
        assert_eq!(scan.progress, Some(0.0));
        assert_eq!(scan.end_time, None);
    }

    #[test]
    fn zse_05_to_11() {
        for (file, state, vdevs) in [
            ("zfs/zpool-status-zse-06-removed.txt", "DEGRADED", Some(4)),
            ("zfs/zpool-status-zse-07-unavail.txt", "DEGRADED", Some(5)),
            ("zfs/zpool-status-zse-08-features-alt.txt", "ONLINE", None),
            (
                "zfs/zpool-status-zse-09-scrub-cancel.txt",
                "ONLINE",
                Some(4),
            ),
            ("zfs/zpool-status-zse-10-new-pool.txt", "ONLINE", Some(4)),
            (
                "zfs/zpool-status-zse-11-degraded-no-scan.txt",
                "DEGRADED",
                Some(4),
            ),
        ] {
            let p = status(file);
            assert_eq!(p.state, state, "{file}");
            if let Some(n) = vdevs {
                assert_eq!(p.vdevs.len(), n, "{file}");
            }
            assert!(!p.vdevs.is_empty(), "{file}");
        }
        let pools = parse_status_text(&fixture_text("zfs/zpool-status-zse-05-features.txt"));
        let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["rpool", "wilbur"]);
        assert!(pools
            .iter()
            .all(|p| p.state == "ONLINE" && !p.vdevs.is_empty()));
        let p = status("zfs/zpool-status-zse-06-removed.txt");
        assert_eq!(vdev(&p, "mirror-0/drive0-part1").state, "REMOVED");
        let p = status("zfs/zpool-status-zse-11-degraded-no-scan.txt");
        assert_eq!((p.scan.clone(), p.data_errors), (None, Some(0)));
        assert_eq!(vdev(&p, "mirror-0/loop1").state, "UNAVAIL");
        let p = status("zfs/zpool-status-zse-07-unavail.txt");
        let v = vdev(&p, "mirror-0/12345678901234567890");
        assert_eq!(
            (v.state.as_str(), v.read, v.write, v.checksum),
            ("UNAVAIL", Some(0), Some(0), Some(100_980))
        );
        let p = status("zfs/zpool-status-zse-09-scrub-cancel.txt");
        assert_eq!(p.scan.clone().unwrap().state, ScanState::Canceled);
        let p = status("zfs/zpool-status-zse-10-new-pool.txt");
        assert_eq!(p.scan, None);
        assert_eq!(p.data_errors, Some(0));
    }

    /// Every danjl1100 capture against the upstream expected outputs
    /// (`tests/input/output-NN-*.txt`): pool state, scan state (their
    /// ScrubRepaired/Resilvered/ScrubInProgress/ScrubCanceled/NeverScanned),
    /// error state (their Ok/DataErrors; no `errors:` line = unknown), the
    /// number of devices below the pool root, and the one non-zero error
    /// counter among all of them (07: `mirror-0/12345678901234567890` CKSUM 100980).
    #[allow(
        clippy::too_many_lines,
        reason = "one fixture table checked row by row"
    )]
    #[test]
    fn zse_all_against_upstream_expected() {
        use ScanFunction as F;
        use ScanState as S;
        type Row = (
            &'static str,
            &'static str,
            Option<(F, S)>,
            Option<u64>,
            usize,
        );
        let table: &[(&str, &[Row])] = &[
            (
                "01-corrupted",
                &[("dummy", "DEGRADED", Some((F::Scrub, S::Finished)), None, 6)],
            ),
            (
                "02-online-data-corruption",
                &[(
                    "jeremy",
                    "ONLINE",
                    Some((F::Scrub, S::Finished)),
                    Some(1),
                    3,
                )],
            ),
            (
                "03-resilvered",
                &[(
                    "dummy",
                    "ONLINE",
                    Some((F::Resilver, S::Finished)),
                    Some(0),
                    6,
                )],
            ),
            (
                "04-scrub-progress",
                &[(
                    "neptune",
                    "ONLINE",
                    Some((F::Scrub, S::InProgress)),
                    Some(0),
                    3,
                )],
            ),
            (
                "05-features",
                &[
                    ("rpool", "ONLINE", Some((F::Scrub, S::Finished)), Some(0), 3),
                    (
                        "wilbur",
                        "ONLINE",
                        Some((F::Scrub, S::Finished)),
                        Some(0),
                        3,
                    ),
                ],
            ),
            (
                "06-removed",
                &[(
                    "dummy",
                    "DEGRADED",
                    Some((F::Scrub, S::Finished)),
                    Some(0),
                    3,
                )],
            ),
            (
                "07-unavail",
                &[(
                    "mypool",
                    "DEGRADED",
                    Some((F::Scrub, S::Finished)),
                    Some(0),
                    4,
                )],
            ),
            (
                "08-features-alt",
                &[(
                    "mypool",
                    "ONLINE",
                    Some((F::Scrub, S::Finished)),
                    Some(0),
                    3,
                )],
            ),
            (
                "09-scrub-cancel",
                &[(
                    "neptune",
                    "ONLINE",
                    Some((F::Scrub, S::Canceled)),
                    Some(0),
                    3,
                )],
            ),
            ("10-new-pool", &[("milton", "ONLINE", None, Some(0), 3)]),
            (
                "11-degraded-no-scan",
                &[("broken", "DEGRADED", None, Some(0), 3)],
            ),
        ];
        for (file, rows) in table {
            let pools =
                parse_status_text(&fixture_text(&format!("zfs/zpool-status-zse-{file}.txt")));
            assert_eq!(pools.len(), rows.len(), "{file}");
            for (p, (name, state, scan, errors, below_root)) in pools.iter().zip(rows.iter()) {
                assert_eq!(
                    (p.name.as_str(), p.state.as_str()),
                    (*name, *state),
                    "{file}"
                );
                assert_eq!(
                    p.scan.as_ref().map(|s| (s.function, s.state)),
                    *scan,
                    "{file}"
                );
                assert_eq!(p.data_errors, *errors, "{file}");
                assert_eq!(vdev(p, name).state, *state, "{file}: root vdev");
                assert_eq!(p.vdevs.len(), below_root + 1, "{file}");
                for v in &p.vdevs {
                    let counts = (v.read, v.write, v.checksum);
                    if *file == "07-unavail" && v.path == "mirror-0/12345678901234567890" {
                        assert_eq!(counts, (Some(0), Some(0), Some(100_980)));
                    } else {
                        assert_eq!(counts, (Some(0), Some(0), Some(0)), "{file}: {}", v.path);
                    }
                }
            }
        }
    }

    #[test]
    fn jc_multi_pool_and_spares() {
        let pools = parse_status_text(&fixture_text("zfs/jc-zpool-status-v.txt"));
        let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["zhgstera6", "zint500", "zsam53"]);
        assert_eq!(pools[0].vdevs[1].path, "726060ALE614-K8JAPRGN:10");
        assert_eq!(pools[0].scan.as_ref().unwrap().state, ScanState::Canceled);
        assert_eq!(
            pools[1].scan.as_ref().unwrap().end_time,
            at(2022, 8, 16, 0, 20, 50)
        );

        let p = status("zfs/jc-zpool-status-spares.txt");
        let spare = vdev(&p, "spares/sdf");
        assert_eq!((spare.state.as_str(), spare.read), ("AVAIL", None));
        assert_eq!(p.vdevs.len(), 14);
        assert_eq!(p.scan.clone().unwrap().end_time, None);

        let p = status("zfs/jc-zpool-status-v3.txt");
        assert_eq!(p.state, "UNAVAIL");
        assert_eq!(p.data_errors, Some(3));
        let v = vdev(&p, "c1t1d0");
        assert_eq!((v.read, v.write, v.checksum), (Some(4), Some(1), Some(0)));
        let scan = p.scan.clone().unwrap();
        assert_eq!(scan.state, ScanState::Finished);
        assert_eq!(scan.end_time, at(2010, 2, 2, 13, 8, 42));
    }

    #[test]
    fn openzfs_docs_examples() {
        let p = status("zfs/openzfs-docs-ZFS-8000-9P-replacing-legacy-resilver.txt");
        let scan = p.scan.clone().unwrap();
        assert_eq!(
            (scan.function, scan.state),
            (ScanFunction::Resilver, ScanState::InProgress)
        );
        assert!((scan.progress.unwrap() - 0.0014).abs() < 1e-12);
        assert_eq!(vdev(&p, "mirror/replacing/sda").checksum, Some(3));
        let p = status("zfs/openzfs-docs-ZFS-8000-8A-data-errors.txt");
        assert_eq!(p.data_errors, Some(1));
        assert_eq!(p.scan.clone().unwrap().state, ScanState::None);
        assert_eq!(vdev(&p, "sda").checksum, Some(2));
        for f in [
            "2Q-degraded-cannot-open",
            "3C-faulted-insufficient-replicas",
            "4J-degraded-corrupted-label",
            "5E-faulted-corrupted-data",
            "9P-cksum-errors",
            "HC-faulted-io-failures",
            "K4-faulted-intent-log",
        ] {
            let p = status(&format!("zfs/openzfs-docs-ZFS-8000-{f}.txt"));
            assert!(!p.vdevs.is_empty(), "{f}");
        }
    }

    #[test]
    fn draid() {
        let p = status("zfs/openzfs-docs-draid-resilver-in-progress-replacing.txt");
        assert_eq!(p.state, "DEGRADED");
        let scan = p.scan.clone().unwrap();
        assert!((scan.progress.unwrap() - 0.9944).abs() < 1e-12);
        assert_eq!(
            vdev(&p, "draid1:4d:11c:1s-0/spare-6/replacing-0/sdg").state,
            "UNAVAIL"
        );
        assert_eq!(
            vdev(&p, "draid1:4d:11c:1s-0/spare-6/draid1-0-0").state,
            "ONLINE"
        );
        assert_eq!(vdev(&p, "spares/draid1-0-0").state, "INUSE");
        for f in ["online-spare-avail", "sequential-resilver-in-progress"] {
            let p = status(&format!("zfs/openzfs-docs-draid-{f}.txt"));
            assert!(p.vdevs.len() > 5, "{f}");
        }
    }

    #[test]
    fn scan_forms() {
        // zpool-scrub.8 Example 1: only the scan lines, indented as in a full status.
        let text = fixture_text("zfs/zpool-status-scan-scrub-in-progress-manpage-snippet.txt");
        let scan_text: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("scan:"))
            .take(3)
            .collect();
        let joined = scan_text.join("\n");
        let scan = parse_scan(joined.trim_start().trim_start_matches("scan:").trim_start());
        assert_eq!(
            (scan.function, scan.state),
            (ScanFunction::Scrub, ScanState::InProgress)
        );
        assert!((scan.progress.unwrap() - 0.1691).abs() < 1e-12);

        let p = status("zfs/openzfs-docs-draid-sequential-resilver-in-progress.txt");
        let scan = p.scan.clone().unwrap();
        assert_eq!(
            (scan.function, scan.state),
            (ScanFunction::Resilver, ScanState::InProgress)
        );
        assert!((scan.progress.unwrap() - 0.5717).abs() < 1e-12);

        let p = status("zfs/jc-zpool-status-v4.txt");
        assert_eq!(
            (p.name.as_str(), p.vdevs.len(), p.data_errors),
            ("pool1", 7, Some(0))
        );
        assert_eq!(p.scan.clone().unwrap().end_time, at(2023, 2, 12, 11, 40, 4));

        let s =
            parse_scan("scrub paused since Mon Jan  1 00:00:00 2024\n\t1G scanned, 10.00% done");
        assert_eq!((s.state, s.progress), (ScanState::Paused, None));
    }

    #[test]
    fn json_manpage_example() {
        let pools =
            parse_status_json(&fixture_text("zfs/zpool-status-j-manpage-example.json")).unwrap();
        assert_eq!(pools.len(), 1);
        let p = &pools[0];
        assert_eq!((p.name.as_str(), p.state.as_str()), ("tank", "ONLINE"));
        assert_eq!(p.data_errors, Some(0));
        let paths: Vec<&str> = p.vdevs.iter().map(|v| v.path.as_str()).collect();
        assert!(
            paths.contains(&"raidz1-0/ca1eb824-c371-491d-ac13-37637e35c683"),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"dedup/mirror-2/db017360-d8e9-4163-961b-144ca75293a3"),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"special/25d418f8-92bd-4327-b59f-7ef5d5f50d81"),
            "{paths:?}"
        );
        assert!(paths.contains(&"tank"), "{paths:?}");
        assert_eq!(vdev(p, "tank").state, "ONLINE");
        assert_eq!(p.vdevs.len(), 9);
        assert!(parse_status_json("not json").is_err());
        assert!(parse_status_json("{}").is_err());
    }

    /// A vdev as both forms can say it: path, state, read/write/checksum errors.
    type VdevRow = (String, String, Option<u64>, Option<u64>, Option<u64>);

    /// The same pool as JSON (`zpool status -j`) and as text: the same
    /// vdev paths, error counts, pool state and data errors. The man page's
    /// JSON says `HEALTHY` where the text (and released OpenZFS) says
    /// `ONLINE`; that is the one difference allowed.
    #[test]
    fn json_and_text_forms_agree() {
        let json =
            parse_status_json(&fixture_text("zfs/zpool-status-j-manpage-example.json")).unwrap();
        let text = parse_status_text(&fixture_text(
            "zfs/zpool-status-text-of-manpage-json-example.txt",
        ));
        assert_eq!(json.len(), 1);
        assert_eq!(text.len(), 1);
        let (j, t) = (&json[0], &text[0]);
        assert_eq!((&j.name, &j.state), (&t.name, &t.state));
        assert_eq!(j.data_errors, t.data_errors);
        let rows = |p: &PoolStatus| -> Vec<VdevRow> {
            let mut v: Vec<_> = p
                .vdevs
                .iter()
                .map(|d| {
                    let state = if d.state == "HEALTHY" {
                        "ONLINE".to_string()
                    } else {
                        d.state.clone()
                    };
                    (d.path.clone(), state, d.read, d.write, d.checksum)
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(rows(j), rows(t));
    }

    #[test]
    fn json_scan_stats() {
        let text = r#"{"pools":{"p":{"name":"p","state":"ONLINE","scan_stats":{"function":"SCRUB","state":"FINISHED","end_time":"1700000000","errors":"2"}},
            "q":{"name":"q","state":"DEGRADED","scan_stats":{"function":"RESILVER","state":"SCANNING","issued":"50","to_examine":"200"}}}}"#;
        let pools = parse_status_json(text).unwrap();
        let s = pools[0].scan.as_ref().unwrap();
        assert_eq!(
            (s.state, s.end_epoch, s.errors),
            (ScanState::Finished, Some(1_700_000_000), Some(2))
        );
        let s = pools[1].scan.as_ref().unwrap();
        assert_eq!(
            (s.function, s.progress),
            (ScanFunction::Resilver, Some(0.25))
        );
    }

    #[test]
    fn zpool_list() {
        let rows = parse_list(&fixture_text("freebsd/zpool-list-Hp-freebsd14.txt"));
        assert_eq!(
            rows,
            vec![PoolList {
                name: "zroot".into(),
                health: "ONLINE".into(),
                size: Some(67_108_864_000.0),
                allocated: Some(11_959_578_624.0),
                free: Some(55_149_285_376.0),
                fragmentation: Some(0.04),
                dedup: Some(1.0),
            }]
        );
        let rows = parse_list(&fixture_text("freebsd/zpool-list-H-freenas-legacy.txt"));
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].fragmentation, None);
        assert_eq!(rows[1].fragmentation, Some(0.08));
        assert_eq!(rows[1].dedup, Some(1.83));
        let rows = parse_list(&fixture_text("freebsd/zpool-list-Hp-unavail.txt"));
        assert_eq!(
            (rows[0].health.as_str(), rows[0].size, rows[0].dedup),
            ("UNAVAIL", None, None)
        );
    }

    #[test]
    fn nicenum() {
        assert_eq!(parse_nicenum("0B"), Some(0.0));
        assert_eq!(parse_nicenum("1.5K"), Some(1536.0));
        assert_eq!(parse_count("2M"), Some(2 << 20));
        assert_eq!(parse_nicenum("x"), None);
        assert_eq!(parse_count("99999999999999999999999E"), None);
    }

    /// What the fake `zpool` prints for one argument list (`Err`: fails with that stderr).
    type FakeOutput = Result<Option<String>, String>;

    /// Fixture output keyed by the joined arguments; unknown arguments = no such program.
    #[derive(Clone, Default)]
    struct FakeRunner {
        outputs: Arc<Mutex<BTreeMap<String, FakeOutput>>>,
    }

    impl FakeRunner {
        fn set(&self, args: &[&str], out: FakeOutput) {
            self.outputs.lock().unwrap().insert(args.join(" "), out);
        }
    }

    impl CommandRunner for FakeRunner {
        fn run(&self, program: &str, args: &[&str]) -> Result<Option<String>, CommandError> {
            match self.outputs.lock().unwrap().get(&args.join(" ")) {
                Some(Ok(out)) => Ok(out.clone()),
                Some(Err(e)) => Err(CommandError::Failed {
                    program: program.into(),
                    args: args.join(" "),
                    status: "exit status: 2".into(),
                    stderr: e.clone(),
                }),
                None => Ok(None),
            }
        }
    }

    #[test]
    fn degraded_transition_emits_exactly_one_event() {
        let fake = FakeRunner::default();
        fake.set(STATUS_JSON_ARGS, Err("invalid option 'j'".into()));
        fake.set(
            STATUS_TEXT_ARGS,
            Ok(Some(fixture_text("zfs/zpool-status-zse-03-resilvered.txt"))),
        );
        let mut c = ZpoolCollector::new(Box::new(fake.clone()));

        let mut sink = Sink::new();
        c.collect(&mut sink).unwrap();
        assert!(sink.events.is_empty(), "first sight is not a transition");
        assert_eq!(
            value(
                &sink,
                "nodewatch_zpool_health",
                &[("zpool", "dummy"), ("state", "online")]
            ),
            Some(1.0)
        );

        fake.set(
            STATUS_TEXT_ARGS,
            Ok(Some(fixture_text("zfs/zpool-status-zse-01-corrupted.txt"))),
        );
        let mut sink = Sink::new();
        c.collect(&mut sink).unwrap();
        assert_eq!(
            sink.events,
            vec![event::Kind::ZpoolStateChange(ZpoolStateChange {
                zpool: "dummy".into(),
                from: "ONLINE".into(),
                to: "DEGRADED".into(),
            })]
        );
        assert_eq!(
            value(
                &sink,
                "nodewatch_zpool_health",
                &[("zpool", "dummy"), ("state", "degraded")]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &sink,
                "nodewatch_zpool_vdev_state",
                &[
                    ("zpool", "dummy"),
                    ("vdev", "mirror-1/loop3"),
                    ("state", "unavail")
                ]
            ),
            Some(1.0)
        );

        // Still degraded: no second event.
        let mut sink = Sink::new();
        c.collect(&mut sink).unwrap();
        assert!(sink.events.is_empty());
    }

    #[test]
    fn legacy_zpool_falls_back_and_remembers() {
        let fake = FakeRunner::default();
        fake.set(STATUS_JSON_ARGS, Err("invalid option 'j'".into()));
        fake.set(STATUS_TEXT_ARGS, Err("invalid option 'p'".into()));
        fake.set(
            STATUS_LEGACY_ARGS,
            Ok(Some(fixture_text("zfs/jc-zpool-status-v2.txt"))),
        );
        fake.set(LIST_ARGS, Err("invalid option 'p'".into()));
        fake.set(
            LIST_LEGACY_ARGS,
            Ok(Some(fixture_text(
                "freebsd/zpool-list-H-freenas-legacy.txt",
            ))),
        );
        let mut c = ZpoolCollector::new(Box::new(fake.clone()));
        let mut sink = Sink::new();
        c.collect(&mut sink).unwrap();
        assert_eq!(
            (c.status_form, c.list_form),
            (Form::Known(2), Form::Known(1))
        );
        assert_eq!(
            value(
                &sink,
                "nodewatch_zpool_health",
                &[("zpool", "tank"), ("state", "degraded")]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&sink, "nodewatch_zpool_dedup_ratio", &[("zpool", "red1")]),
            Some(1.83)
        );
        // Once known, a failure of that form is an error, not a new search.
        fake.set(
            STATUS_LEGACY_ARGS,
            Err("pool I/O is currently suspended".into()),
        );
        assert!(c.collect(&mut Sink::new()).is_err());
    }

    #[test]
    fn no_pools_json_sentence_uses_text() {
        let fake = FakeRunner::default();
        fake.set(STATUS_JSON_ARGS, Ok(Some("no pools available\n".into())));
        fake.set(STATUS_TEXT_ARGS, Ok(Some("no pools available\n".into())));
        let mut c = ZpoolCollector::new(Box::new(fake));
        let mut sink = Sink::new();
        c.collect(&mut sink).unwrap();
        assert!(sink.samples.is_empty());
        assert!(find_program("sh", &[]).is_some());
        assert!(find_program("no-such-program-here", &["/nonexistent"]).is_none());
    }

    #[test]
    fn collector_json_path_list_and_metrics() {
        let fake = FakeRunner::default();
        fake.set(
            STATUS_JSON_ARGS,
            Ok(Some(fixture_text(
                "zfs/zpool-status-j-manpage-example.json",
            ))),
        );
        fake.set(
            LIST_ARGS,
            Ok(Some("tank\tONLINE\t1000\t600\t400\t12\t60\t1.50\n".into())),
        );
        let mut c = ZpoolCollector::new(Box::new(fake));
        let mut sink = Sink::new();
        c.collect(&mut sink).unwrap();
        assert_eq!(
            (c.status_form, c.list_form),
            (Form::Known(0), Form::Known(0))
        );
        assert_eq!(
            value(&sink, "nodewatch_zpool_size_bytes", &[("zpool", "tank")]),
            Some(1000.0)
        );
        assert_eq!(
            value(
                &sink,
                "nodewatch_zpool_fragmentation_ratio",
                &[("zpool", "tank")]
            ),
            Some(0.12)
        );
        assert_eq!(
            value(&sink, "nodewatch_zpool_dedup_ratio", &[("zpool", "tank")]),
            Some(1.5)
        );
        assert_eq!(
            value(&sink, "nodewatch_zpool_data_errors", &[("zpool", "tank")]),
            Some(0.0)
        );
        assert_eq!(
            value(
                &sink,
                "nodewatch_zpool_vdev_errors_total",
                &[
                    ("zpool", "tank"),
                    ("vdev", "raidz1-0"),
                    ("kind", "checksum")
                ]
            ),
            Some(0.0)
        );
        // `HEALTHY` (man page example) is outside the known list: kept as its own series.
        assert_eq!(
            value(
                &sink,
                "nodewatch_zpool_vdev_state",
                &[
                    ("zpool", "tank"),
                    ("vdev", "raidz1-0"),
                    ("state", "healthy")
                ]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn scan_metrics_from_text() {
        let mut sink = Sink::new();
        write_status(
            &mut sink,
            &status("zfs/openzfs-docs-draid-resilver-in-progress-replacing.txt"),
        );
        assert_eq!(
            value(
                &sink,
                "nodewatch_zpool_scan_state",
                &[
                    ("zpool", "tank"),
                    ("function", "resilver"),
                    ("state", "in_progress")
                ]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &sink,
                "nodewatch_zpool_scan_progress_ratio",
                &[("zpool", "tank")]
            ),
            Some(0.9944)
        );
        let mut sink = Sink::new();
        write_status(&mut sink, &status("zfs/zpool-status-zse-03-resilvered.txt"));
        let ts = value(
            &sink,
            "nodewatch_zpool_scan_last_completion_timestamp_seconds",
            &[("zpool", "dummy"), ("function", "resilver")],
        )
        .unwrap();
        // 2024-02-10 20:30:44 in whatever zone the test runs: within a day of UTC.
        assert!((ts - 1_707_597_044.0).abs() <= 14.0 * 3600.0, "{ts}");
    }

    #[test]
    fn missing_binary_is_no_data() {
        let mut c = ZpoolCollector::new(Box::new(FakeRunner::default()));
        let mut sink = Sink::new();
        c.collect(&mut sink).unwrap();
        assert!(sink.samples.is_empty());

        let mut c = ZpoolCollector::new(Box::new(SystemRunner::default()));
        c.program = "/nonexistent/zpool".into();
        let mut sink = Sink::new();
        c.collect(&mut sink).unwrap();
        assert!(sink.samples.is_empty());
    }

    #[test]
    fn parsers_never_panic() {
        let seeds: Vec<String> = [
            "zfs/zpool-status-zse-01-corrupted.txt",
            "zfs/zpool-status-zse-04-scrub-progress.txt",
            "zfs/jc-zpool-status-v3.txt",
            "zfs/jc-zpool-status-spares.txt",
            "zfs/openzfs-docs-draid-resilver-in-progress-replacing.txt",
            "zfs/zpool-status-j-manpage-example.json",
            "freebsd/zpool-list-H-freenas-legacy.txt",
        ]
        .iter()
        .map(|f| fixture_text(f))
        .collect();
        for input in fuzz_inputs(&seeds, 0x5eed) {
            for p in parse_status_text(&input) {
                let mut sink = Sink::new();
                write_status(&mut sink, &p);
            }
            let _ = parse_status_json(&input);
            let _ = parse_list(&input);
            let _ = parse_scan(&input);
            let _ = parse_zpool_time(&input);
        }
    }
}
