//! `PromQL` instant-query evaluation with Prometheus' semantics.
//!
//! # Layout
//! - `storage`: the [`Storage`] trait the evaluator reads and [`MemStorage`].
//! - `value`: [`Labels`], [`Sample`] and the query result [`Value`].
//! - `eval`: selectors, operators and aggregations.
//! - `functions`: the function library (`rate`, `histogram_quantile`, …).
//! - `support`: [`check_supported`], which refuses what `eval` cannot do
//!   before a rule file is accepted.
//!
//! Parsing is done by the `promql-parser` crate; the evaluator follows
//! `prometheus/promql/engine.go` and `functions.go` of Prometheus 2.x
//! (the release `promtool` ships in Debian stable), noted where 3.x differs.

mod eval;
mod functions;
pub mod storage;
mod support;
pub mod value;

pub(crate) use functions::civil_from_days;
pub use promql_parser::parser::Expr;
pub use storage::{is_stale_nan, stale_nan, MemStorage, SeriesData, Storage, STALE_NAN_BITS};
pub use support::{check_supported, selectors, Unsupported, SUPPORTED_FUNCTIONS};
pub use value::{Labels, Sample, Value, METRIC_NAME};

/// How far back an instant selector looks for a sample (Prometheus'
/// `--query.lookback-delta` default, 5 minutes).
pub const DEFAULT_LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// Which Prometheus release's answers to reproduce where they differ.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Semantics {
    /// Prometheus 2.x, as the `promtool` of Debian stable (2.42), which the
    /// rule unit tests are compared against.
    #[default]
    Prometheus2,
    /// Prometheus 3.x: range and lookback windows are left-open
    /// (`(t - range, t]`); `rate` clamps extrapolation at the counter's zero
    /// point after limiting it to half a sample interval; `sum`, `avg` and
    /// `avg_over_time` use compensated sums; `stddev`/`stdvar` of a lone NaN
    /// or infinity is NaN.
    Prometheus3,
}

/// Evaluation settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Lookback of instant selectors, in milliseconds.
    pub lookback_ms: i64,
    /// Which release's semantics to follow.
    pub semantics: Semantics,
}

impl EngineOptions {
    /// Whether windows exclude their start (`Prometheus3`).
    #[must_use]
    pub fn left_open(&self) -> bool {
        self.semantics == Semantics::Prometheus3
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            lookback_ms: DEFAULT_LOOKBACK_MS,
            semantics: Semantics::default(),
        }
    }
}

/// A `PromQL` text that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// Why an expression could not be evaluated. The messages follow
/// Prometheus' own where it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// A construct the evaluator does not implement.
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    /// Several series on the "one" side share a match group.
    #[error("found duplicate series for the match group {group} on the {side} hand-side of the operation: [{first}, {second}];many-to-many matching not allowed: matching labels must be unique on one side")]
    ManyToMany {
        /// The matching labels.
        group: String,
        /// `left` or `right`.
        side: &'static str,
        /// One duplicate series.
        first: String,
        /// The other.
        second: String,
    },
    /// One-to-one matching found several pairs for one group.
    #[error("multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)")]
    OneToOneMultipleMatches,
    /// `group_left`/`group_right` produced the same output series twice.
    #[error("multiple matches for labels: grouping labels must ensure unique matches")]
    GroupingNotUnique,
    /// A function or operator produced two samples with one label set.
    #[error("vector cannot contain metrics with the same labelset")]
    DuplicateLabelset,
    /// An argument of the wrong kind or value.
    #[error("{func}(): {reason}")]
    BadArgument {
        /// The function or operator.
        func: String,
        /// What is wrong.
        reason: String,
    },
    /// Operands whose types do not fit the operation.
    #[error("{0}")]
    Type(String),
}

/// Why a query text failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// It did not parse.
    #[error("parse error: {0}")]
    Parse(#[from] ParseError),
    /// It parsed but could not be evaluated.
    #[error(transparent)]
    Eval(#[from] EvalError),
}

/// Parses `query` into an expression.
pub fn parse(query: &str) -> Result<Expr, ParseError> {
    // The parser is third-party and generated; a panic in it must not take
    // down rule loading or a query, so it becomes a parse error.
    std::panic::catch_unwind(|| promql_parser::parser::parse(query))
        .map_err(|_| ParseError(format!("cannot parse {query:?}")))?
        .map_err(ParseError)
}

/// Evaluates instant queries against a [`Storage`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Engine {
    opts: EngineOptions,
}

impl Engine {
    /// An engine with the given options.
    #[must_use]
    pub fn new(opts: EngineOptions) -> Self {
        Self { opts }
    }

    /// The engine's options.
    #[must_use]
    pub fn options(&self) -> EngineOptions {
        self.opts
    }

    /// Evaluates `expr` at `t_ms` (milliseconds since the epoch).
    pub fn eval(&self, storage: &dyn Storage, expr: &Expr, t_ms: i64) -> Result<Value, EvalError> {
        support::check_supported(expr)?;
        eval::Evaluator::new(storage, self.opts).eval_top(expr, t_ms)
    }

    /// Parses and evaluates `query` at `t_ms`.
    pub fn query(
        &self,
        storage: &dyn Storage,
        query: &str,
        t_ms: i64,
    ) -> Result<Value, QueryError> {
        let expr = parse(query)?;
        Ok(self.eval(storage, &expr, t_ms)?)
    }
}

/// Parses a float the way Go's `strconv.ParseFloat` does for the forms
/// Prometheus meets (`+Inf`, `-Inf`, `NaN`, decimal, exponent).
#[must_use]
pub fn value_parse_float(s: &str) -> Option<f64> {
    functions::parse_go_float(s.trim())
}
