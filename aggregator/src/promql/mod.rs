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
//! (the release `promtool` ships in Debian stable), or 3.x where
//! [`Semantics::Prometheus3`] is chosen; the differences are listed there.
//!
//! # What is evaluated
//! Instant and range queries: number and string literals; instant
//! selectors with all matcher kinds, 5-minute lookback and staleness
//! markers; `offset` and `@` (`start()`/`end()` being the query's range);
//! range selectors and subqueries (`expr[range:step]`, `expr[range:]` with
//! [`EngineOptions::subquery_step_ms`], steps aligned to multiples of the
//! step in absolute time, nested, with `offset` and `@`) as arguments of
//! range functions; unary minus; arithmetic, comparison (with and without
//! `bool`), `and`/`or`/`unless`, with `on`/`ignoring` and
//! `group_left`/`group_right`; the aggregations `sum avg min max count
//! count_values stddev stdvar topk bottomk quantile group` with
//! `by`/`without`; and the functions in [`supported_functions`]
//! (`holt_winters` included). Where Go's math library rounds differently
//! from Rust's, Go's formulas are used (`gomath`), and the sums Prometheus
//! 2.42 compensates (`sum_over_time`, `avg_over_time`,
//! `stddev/stdvar_over_time`, `deriv`/`predict_linear`) are compensated the
//! same way; the `sum`/`avg` aggregations are plain in 2.42, compensated
//! under [`Semantics::Prometheus3`].
//!
//! # What is refused
//! By [`check_supported`], with the construct named:
//! `limitk`/`limit_ratio`, `fill*` binary modifiers, `or` inside braces,
//! and every other function (native-histogram functions, experimental
//! functions such as `info`, …). Native histogram samples do not exist in
//! this store.

mod eval;
mod functions;
mod gomath;
pub mod storage;
mod support;
pub mod value;

pub use functions::supported_functions;
pub use promql_parser::parser::Expr;
pub use storage::{is_stale_nan, stale_nan, MemStorage, SeriesData, Storage, STALE_NAN_BITS};
pub use support::{check_supported, history_needed_ms, selectors, Unsupported};
pub use value::{Labels, RangeSeries, Sample, Value, METRIC_NAME};

/// How far back an instant selector looks for a sample (Prometheus'
/// `--query.lookback-delta` default, 5 minutes).
pub const DEFAULT_LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// Step of subqueries without one unless configured: Prometheus' default
/// evaluation interval, 1 minute.
pub const DEFAULT_SUBQUERY_STEP_MS: i64 = 60 * 1000;

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
    /// Step of a subquery written without one (`expr[1h:]`), in
    /// milliseconds: Prometheus takes its global evaluation interval,
    /// `promtool test rules` the test file's.
    pub subquery_step_ms: i64,
    /// When evaluation must give up with [`EvalError::Timeout`] (checked at
    /// every selector and every subquery or range step).
    pub deadline: Option<std::time::Instant>,
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
            subquery_step_ms: DEFAULT_SUBQUERY_STEP_MS,
            deadline: None,
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
    /// The evaluation ran past its deadline.
    #[error("query timed out in expression evaluation")]
    Timeout,
    /// A subquery whose window holds more steps than allowed.
    #[error(
        "subquery would take {steps} evaluation steps, more than the {max} allowed; widen its step"
    )]
    TooManySteps {
        /// Steps the subquery needs.
        steps: i64,
        /// The limit.
        max: i64,
    },
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

/// Deepest expression tree accepted. Evaluation recurses once per level;
/// this bound keeps it well inside a 2 MiB thread stack (tokio's default)
/// even in debug builds, and is far beyond any real rule.
pub const MAX_EXPR_DEPTH: usize = 128;

/// Most brackets open at once and operators in one query accepted before
/// parsing: the generated parser recurses on both and would overflow the
/// stack (an abort, not an error) on pathological input.
const MAX_LEXICAL_NESTING: usize = 256;
const MAX_LEXICAL_OPERATORS: usize = 1000;

/// Follows a scan of query text through its string literals.
#[derive(Default)]
struct Literals {
    /// The quote of the literal the scan is in.
    quote: Option<char>,
    /// Whether the previous character was a backslash inside a literal.
    escaped: bool,
}

impl Literals {
    /// Takes the next character; true when it belongs to a string literal
    /// (its quotes included). Backquoted literals have no escapes.
    fn inside(&mut self, c: char) -> bool {
        if let Some(q) = self.quote {
            if self.escaped {
                self.escaped = false;
            } else if c == '\\' && q != '`' {
                self.escaped = true;
            } else if c == q {
                self.quote = None;
            }
            return true;
        }
        if matches!(c, '"' | '\'' | '`') {
            self.quote = Some(c);
            return true;
        }
        false
    }
}

/// Refuses texts that would make the parser recurse too deeply; string
/// literals are skipped.
fn check_lexical_depth(query: &str) -> Result<(), ParseError> {
    let (mut depth, mut max_depth, mut operators) = (0_usize, 0_usize, 0_usize);
    let mut literals = Literals::default();
    for c in query.chars() {
        if literals.inside(c) {
            continue;
        }
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                max_depth = max_depth.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            '+' | '-' | '*' | '/' | '%' | '^' | '=' | '<' | '>' | '!' => operators += 1,
            _ => {}
        }
    }
    if max_depth > MAX_LEXICAL_NESTING || operators > MAX_LEXICAL_OPERATORS {
        return Err(ParseError(format!(
            "query too deeply nested or too long (at most {MAX_LEXICAL_NESTING} open brackets and {MAX_LEXICAL_OPERATORS} operators)"
        )));
    }
    Ok(())
}

/// Depth of `expr`'s tree, computed without recursion.
fn expr_depth(expr: &Expr) -> usize {
    let mut max = 0;
    let mut stack = vec![(expr, 1_usize)];
    while let Some((e, d)) = stack.pop() {
        max = max.max(d);
        match e {
            Expr::Paren(p) => stack.push((&p.expr, d + 1)),
            Expr::Unary(u) => stack.push((&u.expr, d + 1)),
            Expr::Subquery(q) => stack.push((&q.expr, d + 1)),
            Expr::Aggregate(a) => {
                stack.push((&a.expr, d + 1));
                if let Some(p) = &a.param {
                    stack.push((p, d + 1));
                }
            }
            Expr::Binary(b) => {
                stack.push((&b.lhs, d + 1));
                stack.push((&b.rhs, d + 1));
            }
            Expr::Call(c) => stack.extend(c.args.args.iter().map(|a| (a.as_ref(), d + 1))),
            _ => {}
        }
    }
    max
}

/// `query` with every call of `holt_winters` renamed to
/// `double_exponential_smoothing`, the name Prometheus 3 gave the same
/// function and the only one the parser knows; string literals are left
/// alone. The evaluator answers to both names.
fn rename_holt_winters(query: &str) -> std::borrow::Cow<'_, str> {
    const OLD: &str = "holt_winters";
    if !query.contains(OLD) {
        return std::borrow::Cow::Borrowed(query);
    }
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = String::with_capacity(query.len() + 16);
    let mut literals = Literals::default();
    let mut i = 0;
    while i < query.len() {
        let Some(c) = query[i..].chars().next() else {
            break;
        };
        if !literals.inside(c)
            && query[i..].starts_with(OLD)
            && !query[..i].chars().next_back().is_some_and(ident)
            && !query[i + OLD.len()..].chars().next().is_some_and(ident)
            && query[i + OLD.len()..].trim_start().starts_with('(')
        {
            out.push_str("double_exponential_smoothing");
            i += OLD.len();
            continue;
        }
        out.push(c);
        i += c.len_utf8();
    }
    std::borrow::Cow::Owned(out)
}

/// Parses `query` into an expression.
pub fn parse(query: &str) -> Result<Expr, ParseError> {
    check_lexical_depth(query)?;
    let query = &*rename_holt_winters(query);
    // The parser is third-party and generated; a panic in it must not take
    // down rule loading or a query, so it becomes a parse error.
    std::panic::catch_unwind(|| promql_parser::parser::parse(query))
        .map_err(|_| ParseError(format!("cannot parse {query:?}")))?
        .map_err(ParseError)
        .and_then(|e| {
            if expr_depth(&e) > MAX_EXPR_DEPTH {
                Err(ParseError(format!(
                    "expression nested deeper than {MAX_EXPR_DEPTH} levels"
                )))
            } else {
                Ok(e)
            }
        })
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
        eval::Evaluator::new(storage, self.opts, t_ms, t_ms).eval_top(expr, t_ms)
    }

    /// Evaluates `expr` as a range query: at `start_ms`, then every
    /// `step_ms` up to `end_ms`, with `@ start()`/`@ end()` meaning the
    /// range's ends. Series come in label order, a scalar result as the
    /// series without labels, as Prometheus' range query answers.
    pub fn eval_range(
        &self,
        storage: &dyn Storage,
        expr: &Expr,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<RangeSeries>, EvalError> {
        support::check_supported(expr)?;
        let ev = eval::Evaluator::new(storage, self.opts, start_ms, end_ms);
        let step = step_ms.max(1);
        let mut index: std::collections::HashMap<Labels, usize> = std::collections::HashMap::new();
        let mut out: Vec<RangeSeries> = Vec::new();
        let mut t = start_ms;
        while t <= end_ms {
            ev.check_deadline()?;
            let samples = match ev.eval_top(expr, t)? {
                Value::Vector(v) => v.into_iter().map(|s| (s.labels, s.v)).collect(),
                Value::Scalar(v) => vec![(Labels::new(), v)],
                Value::String(_) => {
                    return Err(EvalError::Type(
                        "invalid expression type \"string\" for range query, must be Scalar or instant Vector".into(),
                    ))
                }
                Value::Matrix(_) => {
                    return Err(EvalError::Type(
                        "invalid expression type \"range vector\" for range query, must be Scalar or instant Vector".into(),
                    ))
                }
            };
            for (labels, v) in samples {
                if let Some(&i) = index.get(&labels) {
                    out[i].points.push((t, v));
                } else {
                    index.insert(labels.clone(), out.len());
                    out.push(RangeSeries {
                        labels,
                        points: vec![(t, v)],
                    });
                }
            }
            t = match t.checked_add(step) {
                Some(n) => n,
                None => break,
            };
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
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
