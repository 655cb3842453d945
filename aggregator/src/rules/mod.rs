//! Prometheus rules, laid out as Prometheus lays out `rules/` and
//! `model/rulefmt`.
//!
//! # Layout
//! - [`rulefmt`]: the rule file format and its validation ([`load_file`]),
//!   and the load-time warning for selectors the aggregator never holds.
//! - [`group`]: [`Group`] evaluates a group's rules in order, keeping alert
//!   state and writing staleness markers for series a rule stops producing.
//! - [`recording`]: recording rules.
//! - [`alerting`]: the alert state machine and `ALERTS` series.
//! - [`manager`]: runs the groups on their intervals and at once on events,
//!   reloads rule files, and hands alerts to the [`notifier`](crate::notifier).
//! - [`unittest`]: `promtool test rules` / `promtool check rules`.
//!
//! Templates of labels and annotations are in [`crate::template`].
//!
//! # Wiring
//! ```
//! use nodewatch_aggregator::notifier::{Notifier, NotifierConfig};
//! use nodewatch_aggregator::promql::MemStorage;
//! use nodewatch_aggregator::rules::{load_groups, send_alerts, GroupOptions};
//!
//! # let dir = std::env::temp_dir().join("nodewatch-rules-doc");
//! # std::fs::create_dir_all(&dir).unwrap();
//! # let path = dir.join("node.yml");
//! # std::fs::write(&path, "groups:\n  - name: node\n    rules:\n      - alert: Down\n        expr: up == 0\n").unwrap();
//! // Load every file; all problems come back at once.
//! let groups = load_groups(&[path], &GroupOptions::default()).expect("valid rules");
//! let (notifier, task) = Notifier::new(NotifierConfig::default());
//! // tokio::spawn(task.run(shutdown)) in the real server.
//! # drop(task);
//! let mut store = MemStorage::new(); // the aggregator's store in production
//! let now_ms = 1_700_000_000_000;
//! for g in &groups {
//!     // On g.interval_ms(), or at once when g.reads(labels) for a new sample.
//!     let (recorded, _alerts) = g.eval(&store, now_ms);
//!     for s in recorded {
//!         store.append(&s.labels, s.t, s.v); // ALERTS, recording rules, staleness markers
//!     }
//!     send_alerts(&notifier, g, now_ms);
//! }
//! ```

pub mod alerting;
pub mod group;
pub mod manager;
pub mod recording;
pub mod rulefmt;
pub mod unittest;

pub use alerting::{ActiveAlert, AlertState, ExternalContext};
pub use group::{load_groups, Group, GroupEval, GroupOptions, DEFAULT_EVAL_INTERVAL_MS};
pub use manager::{
    send_alerts, RuleManager, DEFAULT_FOR_GRACE_PERIOD_MS, DEFAULT_FOR_OUTAGE_TOLERANCE_MS,
};
pub use rulefmt::{load_file, GroupSpec, RuleFileError, RuleFileErrors, RuleSpec};

use crate::promql::EvalError;

/// Why one rule failed one evaluation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The expression could not be evaluated.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// The rule's labels made two outputs identical.
    #[error("{0}")]
    DuplicateLabelset(&'static str),
    /// More outputs than the group's `limit` (Prometheus' wording).
    #[error("exceeded limit of {limit} with {got} {what}")]
    Limit {
        /// The group's limit.
        limit: u64,
        /// How many there were.
        got: u64,
        /// `alerts` or `series`.
        what: &'static str,
    },
    /// A string result, which no rule can use.
    #[error("rule result is not a vector or scalar")]
    NotAVector,
}
