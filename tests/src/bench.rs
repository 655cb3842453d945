//! Benchmark helpers: one result a line in the file `nodewatch-bench-report`
//! collects, and the peer's name with the version that ran.

use std::io::Write;
use std::path::Path;
use std::process::Command;

/// The file benchmarks append their results to, one JSON object a line
/// (`nodewatch-bench-report` sets it; unset, nothing is written).
pub const BENCH_RESULTS_ENV: &str = "NODEWATCH_BENCH_RESULTS";

/// Which way a measure improves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Lower,
    Higher,
}

impl Better {
    /// Whether `value` is on the good side of `bound` (ties count as met).
    #[must_use]
    pub fn meets(self, value: f64, bound: f64) -> bool {
        match self {
            Self::Lower => value <= bound,
            Self::Higher => value >= bound,
        }
    }
}

/// One measure of a benchmark, nodewatch's figure beside its peer's from the
/// same run, in the machine-readable form `nodewatch-bench-report` collects.
/// Figures that came out NaN or infinite are written as `null`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BenchResult {
    pub bench: String,
    pub measure: String,
    pub unit: String,
    pub nodewatch: Option<f64>,
    /// The peer as it ran (name and version); `None` where there is none.
    pub peer: Option<String>,
    pub peer_value: Option<f64>,
    pub better: Better,
    /// A goal for nodewatch's own figure, in `unit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<f64>,
    /// A goal for nodewatch / peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal_ratio: Option<f64>,
    /// Set when the benchmark could not run: the component it lacked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// The running benchmark's name: cargo names bench executables `<name>-<hash>`.
fn bench_name() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let stem = exe
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name.to_string()
        }
        _ => stem,
    }
}

impl BenchResult {
    /// nodewatch's figure for `measure`, in `unit`, with no peer or goal yet.
    #[must_use]
    pub fn new(measure: &str, unit: &str, nodewatch: f64, better: Better) -> Self {
        Self {
            bench: bench_name(),
            measure: measure.to_string(),
            unit: unit.to_string(),
            nodewatch: finite(nodewatch),
            peer: None,
            peer_value: None,
            better,
            goal: None,
            goal_ratio: None,
            missing: None,
        }
    }

    /// The record of a benchmark that could not run for lack of `what`.
    #[must_use]
    pub fn skipped(what: &str) -> Self {
        let mut r = Self::new("(not run)", "", f64::NAN, Better::Lower);
        r.missing = Some(what.to_string());
        r
    }

    /// The peer's figure for the same measure in the same run.
    #[must_use]
    pub fn peer(mut self, peer: &str, value: f64) -> Self {
        self.peer = Some(peer.to_string());
        self.peer_value = finite(value);
        self
    }

    /// A goal for nodewatch's figure itself.
    #[must_use]
    pub fn goal(mut self, goal: f64) -> Self {
        self.goal = Some(goal);
        self
    }

    /// A goal for nodewatch's figure over the peer's.
    #[must_use]
    pub fn goal_ratio(mut self, ratio: f64) -> Self {
        self.goal_ratio = Some(ratio);
        self
    }

    /// nodewatch / peer, where both were measured.
    #[must_use]
    pub fn ratio(&self) -> Option<f64> {
        finite(self.nodewatch? / self.peer_value?)
    }

    /// Whether the goal is met; `None` without a goal or a figure to judge.
    #[must_use]
    pub fn goal_met(&self) -> Option<bool> {
        let nw = self.nodewatch?;
        match (self.goal, self.goal_ratio) {
            (Some(g), _) => Some(self.better.meets(nw, g)),
            (None, Some(g)) => Some(self.better.meets(self.ratio()?, g)),
            (None, None) => None,
        }
    }

    /// Appends this result to the file named by [`BENCH_RESULTS_ENV`], if set.
    pub fn record(&self) {
        let Some(path) = std::env::var_os(BENCH_RESULTS_ENV) else {
            return;
        };
        // One write of a whole line to an O_APPEND file: lines never interleave.
        let mut line = serde_json::to_string(self).unwrap();
        line.push('\n');
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .unwrap_or_else(|e| panic!("{}: {e}", Path::new(&path).display()));
    }
}

/// A peer's name with the version its `--version` reports ("Prometheus
/// 2.42.0"), so results say what actually ran; the bare name if it says none.
#[must_use]
pub fn peer_name(name: &str, program: &Path) -> String {
    let version = Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let mut words = text.split_whitespace();
            words.find(|w| *w == "version")?;
            // Debian's builds say "2.42.0+ds"; the upstream version is what compares.
            let v = words.next()?;
            Some(v.split('+').next().unwrap_or(v).to_string())
        });
    match version {
        Some(v) => format!("{name} {v}"),
        None => name.to_string(),
    }
}
