//! Per-node liveness in the aggregator's own store, as Prometheus writes
//! `up` for each scrape target:
//!
//! - `up{job="nodewatch-agent",node}`: 1 while the node has a stream to this
//!   aggregator and its batches arrive within [`LIVE_INTERVALS`] of its
//!   collection intervals, else 0;
//! - `nodewatch_aggregator_batches_total{node}`: batches received from the
//!   node since this aggregator started.
//!
//! Both are written every [`WRITE_EVERY`] for every known node, so rules
//! evaluated here and in Prometheus (which scrapes them from `/metrics`
//! with `honor_labels`) read the same series. They are written by the
//! aggregator, never through a node's stream.
//!
//! # Nodes that never come back
//! A node that stops reporting keeps its `up` 0 until it has been unseen
//! for `liveness.forget_after` (24 h by default), so a node-down rule fires
//! and stays firing. To survive an aggregator restart, the names of known
//! nodes and when each was last seen are kept in `liveness.state_file`
//! (one `name last_seen_ms` line per node, rewritten atomically every
//! [`SAVE_EVERY`] and at shutdown); on start the file's nodes come back
//! with `up` 0 until their agents reconnect, which they do within seconds.
//! Without the file a restarted aggregator only knows the nodes that
//! reconnect; the peer replica and Prometheus' history still hold the rest.
//!
//! [`LIVE_INTERVALS`]: crate::nodes::LIVE_INTERVALS

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nodewatch_proto::lifecycle::Shutdown;
use nodewatch_proto::NodeName;
use tracing::{info, warn};

use crate::nodes::{Liveness, Nodes};
use crate::store::{now_ms, FamilyMeta, FamilyType, Store};

/// The `job` label of the nodes' `up` series (Prometheus' name for the
/// scrape job of a target; here the agents).
pub const JOB: &str = "nodewatch-agent";

/// Prometheus' name for a target's liveness.
pub const UP: &str = "up";

/// Batches received per node.
pub const BATCHES: &str = "nodewatch_aggregator_batches_total";

/// Every series name this module writes: the rules' load check knows the
/// aggregator holds them.
pub const WRITTEN: &[&str] = &[UP, BATCHES];

/// How often liveness is written: once a second, the rules' default
/// evaluation interval, so a node-down alert is late by at most one.
pub const WRITE_EVERY: Duration = Duration::from_secs(1);

/// How often the known-nodes file is rewritten when it changed.
pub const SAVE_EVERY: Duration = Duration::from_secs(30);

/// How long a node that stopped reporting is remembered by default: a day
/// of a firing node-down alert is enough to notice; a decommissioned node
/// stops alerting after it.
pub const DEFAULT_FORGET_AFTER: Duration = Duration::from_hours(24);

/// Known-node file lines read at most (a file is never longer than the
/// cluster; this bounds a corrupt one).
pub const MAX_KNOWN_NODES: usize = 100_000;

/// Settings (config `liveness:`).
#[derive(Debug, Clone)]
pub struct Options {
    /// Where known nodes are kept across restarts; `None`: in memory only.
    pub state_file: Option<PathBuf>,
    /// How long a node without a stream is remembered.
    pub forget_after: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            state_file: None,
            forget_after: DEFAULT_FORGET_AFTER,
        }
    }
}

/// Why a known-nodes file line was skipped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{path}:{line}: {problem}")]
pub struct KnownNodeError {
    pub path: PathBuf,
    pub line: usize,
    pub problem: String,
}

/// Parses a known-nodes file: `name last_seen_ms` per line, `#` comments.
/// Bad lines are returned as errors and skipped; the good ones are kept.
#[must_use]
pub fn parse_known(path: &Path, text: &str) -> (Vec<(NodeName, i64)>, Vec<KnownNodeError>) {
    let mut nodes = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if nodes.len() >= MAX_KNOWN_NODES {
            errors.push(KnownNodeError {
                path: path.to_path_buf(),
                line: line_no,
                problem: format!("more than {MAX_KNOWN_NODES} nodes; the rest is ignored"),
            });
            break;
        }
        let mut parts = line.split_whitespace();
        let (Some(name), Some(seen), None) = (parts.next(), parts.next(), parts.next()) else {
            errors.push(KnownNodeError {
                path: path.to_path_buf(),
                line: line_no,
                problem: format!("expected `<node> <last_seen_ms>`, got {line:?}"),
            });
            continue;
        };
        let node = match NodeName::new(name) {
            Ok(n) => n,
            Err(e) => {
                errors.push(KnownNodeError {
                    path: path.to_path_buf(),
                    line: line_no,
                    problem: format!("node {name:?}: {e}"),
                });
                continue;
            }
        };
        match seen.parse::<i64>() {
            Ok(ms) if ms >= 0 => nodes.push((node, ms)),
            _ => errors.push(KnownNodeError {
                path: path.to_path_buf(),
                line: line_no,
                problem: format!("last_seen_ms {seen:?} is not a non-negative integer"),
            }),
        }
    }
    (nodes, errors)
}

/// The file's text for `nodes`.
#[must_use]
pub fn render_known(nodes: &[Liveness]) -> String {
    let mut out = String::from(
        "# nodewatch aggregator: known nodes (name, last seen in ms since the epoch)\n",
    );
    for n in nodes {
        out.push_str(n.node.as_str());
        out.push(' ');
        out.push_str(&n.last_seen_ms.to_string());
        out.push('\n');
    }
    out
}

/// Restores the nodes of `path` into `nodes`; a missing file is a first start.
pub fn restore(path: &Path, nodes: &Nodes) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(error) => {
            warn!(path = %path.display(), %error, "Known-nodes file unreadable; starting without it.");
            return;
        }
    };
    let (known, errors) = parse_known(path, &text);
    for e in &errors {
        warn!(error = %e, "Known-nodes file line skipped.");
    }
    let n = known.len();
    for (node, seen) in known {
        nodes.restore(node, seen);
    }
    info!(path = %path.display(), nodes = n, "Known nodes restored; they count as down until they reconnect.");
}

/// Writes `text` to `path` through a temporary file and a rename, so a
/// crash leaves the old file or the new one, never half of one.
fn save(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Writes one round of liveness samples at `t_ms` into `store`.
pub fn write(store: &Store, live: &[Liveness], t_ms: i64) {
    let mut batch = Vec::with_capacity(live.len() * 2);
    for l in live {
        let node = l.node.as_str().to_string();
        let up: Vec<(String, String)> = vec![
            ("__name__".into(), UP.into()),
            ("job".into(), JOB.into()),
            ("node".into(), node.clone()),
        ];
        let batches: Vec<(String, String)> =
            vec![("__name__".into(), BATCHES.into()), ("node".into(), node)];
        batch.push((
            store.series_id(up.into()),
            t_ms,
            if l.up { 1.0 } else { 0.0 },
        ));
        batch.push((store.series_id(batches.into()), t_ms, l.batches as f64));
    }
    store.append(&batch);
}

/// Declares the families' types and help (for `/metrics`).
pub fn declare(store: &Store) {
    store.set_family(
        UP,
        FamilyMeta {
            kind: FamilyType::Gauge,
            help: format!("1 while the node (job {JOB}) streams to this aggregator and its batches arrive on time, else 0."),
        },
    );
    store.set_family(
        BATCHES,
        FamilyMeta {
            kind: FamilyType::Counter,
            help: "Batches received from the node since this aggregator started.".into(),
        },
    );
}

/// Writes liveness every [`WRITE_EVERY`] and keeps the known-nodes file,
/// until `shutdown` is requested.
pub async fn run(store: Arc<Store>, nodes: Arc<Nodes>, opts: Options, shutdown: Shutdown) {
    declare(&store);
    let forget_ms = i64::try_from(opts.forget_after.as_millis()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(WRITE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut saved = String::new();
    let mut last_save = std::time::Instant::now();
    let save_if_changed = |live: &[Liveness], saved: &mut String| {
        let Some(path) = &opts.state_file else { return };
        let text = render_known(live);
        if text != *saved {
            match save(path, &text) {
                Ok(()) => *saved = text,
                Err(error) => {
                    warn!(path = %path.display(), %error, "Known-nodes file not written.");
                }
            }
        }
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.requested() => {
                save_if_changed(&nodes.liveness(now_ms(), forget_ms), &mut saved);
                return;
            }
        }
        let now = now_ms();
        let live = nodes.liveness(now, forget_ms);
        write(&store, &live, now);
        // A new node is saved at once; last-seen times every SAVE_EVERY.
        let names_changed = live.len() != saved.lines().count().saturating_sub(1);
        if names_changed || last_save.elapsed() >= SAVE_EVERY {
            save_if_changed(&live, &mut saved);
            last_save = std::time::Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodewatch_proto::v1::Hello;

    #[test]
    fn known_nodes_round_trip_and_bad_lines_are_named() {
        let p = Path::new("/x/known");
        let (ok, errs) = parse_known(p, "# c\nn1 1000\n\nbad line here\nn2 -5\nN/A 3\nn3 20\n");
        assert_eq!(
            ok,
            [
                (NodeName::new("n1").unwrap(), 1000),
                (NodeName::new("n3").unwrap(), 20)
            ]
        );
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, [4, 5, 6]);
        assert!(
            errs[0].to_string().starts_with("/x/known:4: expected"),
            "{}",
            errs[0]
        );
        let live: Vec<Liveness> = ok
            .iter()
            .map(|(n, t)| Liveness {
                node: n.clone(),
                up: false,
                batches: 0,
                last_seen_ms: *t,
            })
            .collect();
        let (again, errs) = parse_known(p, &render_known(&live));
        assert!(errs.is_empty());
        assert_eq!(again, ok);
    }

    #[test]
    fn up_follows_stream_and_batches_and_restored_nodes_are_down() {
        let nodes = Nodes::default();
        let a = NodeName::new("a").unwrap();
        let hello = Hello {
            interval_ms: 1000,
            ..Hello::default()
        };
        nodes.connect(&a, &hello, "p".into(), 10_000);
        nodes.restore(NodeName::new("gone").unwrap(), 5_000);
        // Connected, no batch yet: up within two intervals of connecting.
        let l = nodes.liveness(11_000, 60_000);
        assert_eq!(
            l.iter()
                .map(|l| (l.node.as_str(), l.up))
                .collect::<Vec<_>>(),
            [("a", true), ("gone", false)]
        );
        assert!(!nodes.liveness(12_500, 60_000)[0].up);
        nodes.received(&a, 12_600);
        let l = nodes.liveness(13_000, 60_000);
        assert!(l[0].up);
        assert_eq!(l[0].batches, 1);
        nodes.disconnect(&a);
        assert!(!nodes.liveness(13_000, 60_000)[0].up);
        // Forgotten once unseen for longer than forget_after.
        let l = nodes.liveness(66_000, 60_000);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].node.as_str(), "a");
        assert!(nodes.liveness(80_000, 60_000).is_empty());
    }

    #[test]
    fn written_series_are_queryable() {
        let store = Store::new(60_000);
        declare(&store);
        let nodes = Nodes::default();
        nodes.restore(NodeName::new("n1").unwrap(), 1);
        write(&store, &nodes.liveness(2, 60_000), 2);
        let inner = store.read();
        let names: Vec<String> = inner
            .all()
            .map(|s| format!("{:?}={:?}", s.labels, s.last()))
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.iter().any(|n| n.contains("\"job\", \"nodewatch-agent\"") && n.contains("Some((2, 0.0))")), "{names:?}");
    }
}
