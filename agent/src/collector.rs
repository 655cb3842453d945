//! The collector framework: one [`Collector`] trait, a [`Sink`] that collectors
//! write samples and events into, and the wrapper that times each collector
//! and keeps one failure from stopping the others.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nodewatch_proto::text;
use nodewatch_proto::v1::event;

/// The Prometheus type of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Gauge,
    Counter,
    Histogram,
    Untyped,
}

impl MetricKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Gauge => "gauge",
            MetricKind::Counter => "counter",
            MetricKind::Histogram => "histogram",
            MetricKind::Untyped => "untyped",
        }
    }

    #[must_use]
    pub fn to_proto(self) -> nodewatch_proto::v1::MetricType {
        use nodewatch_proto::v1::MetricType as T;
        match self {
            MetricKind::Gauge => T::Gauge,
            MetricKind::Counter => T::Counter,
            MetricKind::Histogram => T::Histogram,
            MetricKind::Untyped => T::Untyped,
        }
    }
}

/// Root paths of the host's pseudo file systems, injectable so tests run on
/// fixture trees (`--path.procfs`, `--path.sysfs`, `--path.rootfs`, as `node_exporter`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    pub procfs: PathBuf,
    pub sysfs: PathBuf,
    pub rootfs: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            procfs: "/proc".into(),
            sysfs: "/sys".into(),
            rootfs: "/".into(),
        }
    }
}

impl Paths {
    /// A path below the procfs root, e.g. `proc("net/dev")`.
    #[must_use]
    pub fn proc(&self, rel: &str) -> PathBuf {
        self.procfs.join(rel)
    }

    /// A path below the sysfs root, e.g. `sys("class/net")`.
    #[must_use]
    pub fn sys(&self, rel: &str) -> PathBuf {
        self.sysfs.join(rel)
    }

    /// A host path (as seen from the host's root) below the rootfs root.
    #[must_use]
    pub fn root(&self, host_path: &str) -> PathBuf {
        self.rootfs.join(host_path.trim_start_matches('/'))
    }
}

/// Why a collector failed this round.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    Parse {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{0}")]
    Other(String),
}

impl CollectError {
    #[must_use]
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A failed system call or command: `what` (the call, or the sysctl) and why.
    pub fn other(what: &str, why: impl std::fmt::Display) -> Self {
        Self::Other(format!("{what}: {why}"))
    }

    pub fn parse(path: &Path, line: usize, msg: impl Into<String>) -> Self {
        Self::Parse {
            path: path.to_path_buf(),
            line,
            msg: msg.into(),
        }
    }
}

pub use crate::sys::files::read_cached;

/// Reads a whole file, mapping the error to [`CollectError::Io`].
pub fn read_file(path: &Path) -> Result<String, CollectError> {
    read_cached(path).map_err(|e| CollectError::io(path, e))
}

/// A source of samples and events.
///
/// `collect` runs on a blocking thread once per collection interval. "No data
/// on this host" is not an error: return `Ok(())` having written nothing.
///
/// Its name (the `collector` label, the log's `collector` field) is the one
/// it is registered under: [`CollectorSpec::name`], given to [`Running::new`].
pub trait Collector: Send {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError>;
    /// Applies the configuration's options (called once, right after `build`);
    /// collectors without options keep the default, which accepts anything.
    ///
    /// # Errors
    /// An option this collector cannot use (validated already, so rare).
    fn configure(&mut self, _options: &CollectorOptions) -> Result<(), Unavailable> {
        Ok(())
    }
}

/// Per-collector options from the configuration (`collectors.<name>.<option>`),
/// validated there. `None` keeps the collector's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CollectorOptions {
    /// `collectors.filesystem.mount_points_exclude`: mount points (regex) not reported.
    pub filesystem_mount_points_exclude: Option<String>,
    /// `collectors.filesystem.fs_types_exclude`: filesystem types (regex) not reported.
    pub filesystem_fs_types_exclude: Option<String>,
    /// `collectors.textfile.directory`: where `*.prom` files are read from (a glob is allowed).
    pub textfile_directory: Option<PathBuf>,
}

/// A collector that keeps nothing between collections: what one collection
/// does.
pub struct Stateless {
    pub collect: fn(&mut Sink) -> Result<(), CollectError>,
}

impl Collector for Stateless {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        (self.collect)(sink)
    }
}

/// What a [`FileCollector`] does with the text it read: parse it (errors
/// name the path) and write the families.
pub type WriteFile = fn(&Path, &str, &mut Sink) -> Result<(), CollectError>;

/// A collector that reads one procfs or sysfs file each collection and hands
/// its text to its module's writer.
pub struct FileCollector {
    path: PathBuf,
    /// An absent file is no data (a kernel feature not built or not loaded).
    optional: bool,
    write: WriteFile,
}

impl FileCollector {
    /// A file that must be there: its absence is an error.
    #[must_use]
    pub fn required(path: PathBuf, write: WriteFile) -> Box<dyn Collector> {
        Self::boxed(path, false, write)
    }

    /// A file whose absence means no data.
    #[must_use]
    pub fn optional(path: PathBuf, write: WriteFile) -> Box<dyn Collector> {
        Self::boxed(path, true, write)
    }

    fn boxed(path: PathBuf, optional: bool, write: WriteFile) -> Box<dyn Collector> {
        Box::new(Self {
            path,
            optional,
            write,
        })
    }
}

impl Collector for FileCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        let text = if self.optional {
            let Some(text) = crate::collectors::read_optional(&self.path)? else {
                return Ok(());
            };
            text
        } else {
            read_file(&self.path)?
        };
        (self.write)(&self.path, &text, sink)
    }
}

/// What a [`DirCollector`] does each collection with its directory.
pub type CollectDir = fn(&Path, &mut Sink) -> Result<(), CollectError>;

/// A collector that keeps nothing but the procfs or sysfs directory it reads.
pub struct DirCollector {
    dir: PathBuf,
    collect: CollectDir,
}

impl DirCollector {
    #[must_use]
    pub fn boxed(dir: PathBuf, collect: CollectDir) -> Box<dyn Collector> {
        Box::new(Self { dir, collect })
    }
}

impl Collector for DirCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        (self.collect)(&self.dir, sink)
    }
}

/// The [`CollectorSpec`] of a [`Stateless`] collector, enabled by default:
/// `stateless_spec!("name", collect_fn)`.
#[cfg_attr(
    not(target_os = "freebsd"),
    allow(unused_macros, reason = "used by the FreeBSD collectors")
)]
macro_rules! stateless_spec {
    ($name:literal, $collect:expr) => {
        $crate::collector::CollectorSpec::new($name, |_| {
            Ok(Box::new($crate::collector::Stateless { collect: $collect }))
        })
    };
}
#[cfg_attr(
    not(target_os = "freebsd"),
    allow(unused_imports, reason = "used by the FreeBSD collectors")
)]
pub(crate) use stateless_spec;

/// The [`CollectorSpec`] of a collector that keeps only a path below `/proc`
/// or `/sys`, enabled by default:
/// `path_spec!("arp", FileCollector::optional, proc, "net/arp", write)` (one
/// file), `path_spec!("nvme", DirCollector::boxed, sys, "class/nvme", collect)`
/// (a directory).
#[cfg_attr(
    target_os = "freebsd",
    allow(unused_macros, reason = "used by the Linux collectors")
)]
macro_rules! path_spec {
    ($name:literal, $make:expr, $root:ident, $rel:literal, $with:expr) => {
        $crate::collector::CollectorSpec::new($name, |paths| Ok($make(paths.$root($rel), $with)))
    };
}
#[cfg_attr(
    target_os = "freebsd",
    allow(unused_imports, reason = "used by the Linux collectors")
)]
pub(crate) use path_spec;

/// A collector that cannot run on this host, and why (said once at start-up).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// One registered collector.
pub struct CollectorSpec {
    pub name: &'static str,
    /// Enabled unless the configuration says otherwise.
    pub default_enabled: bool,
    pub build: fn(&Paths) -> Result<Box<dyn Collector>, Unavailable>,
}

impl CollectorSpec {
    /// A collector enabled by default, named `name` and made by `build`.
    #[must_use]
    pub const fn new(
        name: &'static str,
        build: fn(&Paths) -> Result<Box<dyn Collector>, Unavailable>,
    ) -> Self {
        Self {
            name,
            default_enabled: true,
            build,
        }
    }
}

/// One sample as a collector wrote it.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Full series name (histograms: `x_bucket`, `x_sum`, `x_count`).
    pub name: String,
    /// Labels sorted by name.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Metadata of one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Family {
    pub kind: MetricKind,
    pub help: String,
}

/// Where collectors write. Labels are sorted here, so collectors may pass them in any order.
#[derive(Debug, Default)]
pub struct Sink {
    pub families: BTreeMap<String, Family>,
    pub samples: Vec<Sample>,
    pub events: Vec<event::Kind>,
}

impl Sink {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn family(&mut self, name: &str, kind: MetricKind, help: &str) {
        if !self.families.contains_key(name) {
            self.families.insert(
                name.to_string(),
                Family {
                    kind,
                    help: help.to_string(),
                },
            );
        }
    }

    fn push(&mut self, name: String, labels: &[(&str, &str)], value: f64) {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        labels.sort_unstable();
        self.samples.push(Sample {
            name,
            labels,
            value,
        });
    }

    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.family(name, MetricKind::Gauge, help);
        self.push(name.to_string(), labels, value);
    }

    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.family(name, MetricKind::Counter, help);
        self.push(name.to_string(), labels, value);
    }

    pub fn untyped(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.family(name, MetricKind::Untyped, help);
        self.push(name.to_string(), labels, value);
    }

    /// One sample of a family whose series were written elsewhere (the
    /// textfile collector's files): `series` is the family's name, or for a
    /// histogram `<family>_bucket`, `_sum` or `_count`.
    pub fn sample(
        &mut self,
        family: &str,
        kind: MetricKind,
        help: &str,
        series: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        self.family(family, kind, help);
        self.push(series.to_string(), labels, value);
    }

    /// A histogram: `buckets` are `(upper bound, cumulative count)` in
    /// increasing order, without `+Inf` (added here from `count`).
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) {
        self.family(name, MetricKind::Histogram, help);
        let bucket = format!("{name}_bucket");
        for (le, n) in buckets {
            let le = text::fmt_value(*le);
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.push(bucket.clone(), &l, *n as f64);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.push(bucket, &l, count as f64);
        self.push(format!("{name}_sum"), labels, sum);
        self.push(format!("{name}_count"), labels, count as f64);
    }

    /// An event (OOM kill, pool state change, …). Events are never dropped by sampling.
    pub fn event(&mut self, kind: event::Kind) {
        self.events.push(kind);
    }

    /// The family a series name belongs to (strips histogram suffixes when the base is a histogram).
    #[must_use]
    pub fn family_of<'a>(&self, series: &'a str) -> &'a str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = series.strip_suffix(suffix) {
                if self
                    .families
                    .get(base)
                    .is_some_and(|f| f.kind == MetricKind::Histogram)
                {
                    return base;
                }
            }
        }
        series
    }

    /// Renders everything in Prometheus text format, families sorted by name,
    /// series in the order written. Used by `nodewatch-agent --once` and tests.
    #[must_use]
    pub fn render_text(&self) -> String {
        let mut by_family: BTreeMap<&str, Vec<&Sample>> = BTreeMap::new();
        for s in &self.samples {
            by_family
                .entry(self.family_of(&s.name))
                .or_default()
                .push(s);
        }
        let mut out = String::new();
        for (name, samples) in by_family {
            if let Some(f) = self.families.get(name) {
                let _ = write!(
                    out,
                    "# HELP {name} {}\n# TYPE {name} {}\n",
                    text::escape_help(&f.help),
                    f.kind.as_str()
                );
            }
            for s in samples {
                text::write_sample(
                    &mut out,
                    &s.name,
                    s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    s.value,
                );
            }
        }
        out
    }
}

/// A built collector with its bookkeeping.
pub struct Running {
    /// The name it is registered under: the `collector` label of its metrics.
    pub name: &'static str,
    pub collector: Box<dyn Collector>,
    /// Set after the first failure is logged, so a persistent failure is said once per change.
    last_error: Option<String>,
}

impl Running {
    #[must_use]
    pub fn new(name: &'static str, collector: Box<dyn Collector>) -> Self {
        Self {
            name,
            collector,
            last_error: None,
        }
    }

    /// Runs the collector, recording `nodewatch_agent_collector_duration_seconds`
    /// and `nodewatch_agent_collector_success`. A failure writes no partial
    /// samples for that collector: what it wrote before failing is discarded,
    /// so a half-parsed file never produces wrong values.
    pub fn run(&mut self, sink: &mut Sink) {
        let name = self.name;
        let mark = sink.samples.len();
        let start = Instant::now();
        let result = self.collector.collect(sink);
        let elapsed = start.elapsed().as_secs_f64();
        let ok = match result {
            Ok(()) => {
                if self.last_error.take().is_some() {
                    tracing::info!(collector = name, "Collector recovered.");
                }
                true
            }
            Err(error) => {
                sink.samples.truncate(mark);
                let msg = error.to_string();
                if self.last_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(collector = name, %error, "Collector failed.");
                    self.last_error = Some(msg);
                }
                false
            }
        };
        sink.gauge(
            "nodewatch_agent_collector_duration_seconds",
            "How long a collector took in its last run.",
            &[("collector", name)],
            elapsed,
        );
        sink.gauge(
            "nodewatch_agent_collector_success",
            "Whether a collector succeeded in its last run (1) or failed (0).",
            &[("collector", name)],
            if ok { 1.0 } else { 0.0 },
        );
    }
}

/// Where event sources that fire between collections (eBPF, kernel log)
/// push their events; the streamer sends a batch at once when one arrives,
/// so an OOM kill reaches the aggregator in milliseconds, not an interval later.
/// Bounded: a source that cannot send drops nothing silently, it counts the drop.
pub type EventSender = tokio::sync::mpsc::Sender<nodewatch_proto::v1::Event>;

/// Milliseconds since the Unix epoch, for event and sample timestamps.
#[must_use]
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failing;
    impl Collector for Failing {
        fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
            sink.gauge("half_written", "x", &[], 1.0);
            Err(CollectError::Other("boom".into()))
        }
    }

    #[test]
    fn failure_discards_partial_samples_and_is_reported() {
        let mut sink = Sink::new();
        let mut r = Running::new("failing", Box::new(Failing));
        r.run(&mut sink);
        assert!(sink.samples.iter().all(|s| s.name != "half_written"));
        let success = sink
            .samples
            .iter()
            .find(|s| s.name == "nodewatch_agent_collector_success")
            .unwrap();
        assert!(success.value.abs() < f64::EPSILON);
    }

    #[test]
    fn histogram_and_text() {
        let mut sink = Sink::new();
        sink.histogram(
            "lat_seconds",
            "Latency.",
            &[("device", "sda")],
            &[(0.001, 2), (0.002, 5)],
            0.01,
            7,
        );
        let text = sink.render_text();
        assert!(text.contains("# TYPE lat_seconds histogram\n"), "{text}");
        assert!(
            text.contains("lat_seconds_bucket{device=\"sda\",le=\"+Inf\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_count{device=\"sda\"} 7\n"),
            "{text}"
        );
    }
}
