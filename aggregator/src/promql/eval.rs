//! Selectors, operators and aggregations, after `prometheus/promql/engine.go`.

// PromQL compares sample values exactly (`==`, `!=`), as Prometheus does.
#![allow(clippy::float_cmp)]
// Operator code reads like engine.go, with its short names (`l`, `r`, `t`).
#![allow(clippy::many_single_char_names)]

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use promql_parser::label::{MatchOp, Matcher, Matchers};
use promql_parser::parser::token::{
    TokenId, T_ADD, T_ATAN2, T_AVG, T_BOTTOMK, T_COUNT, T_COUNT_VALUES, T_DIV, T_EQLC, T_GROUP,
    T_GTE, T_GTR, T_LAND, T_LOR, T_LSS, T_LTE, T_LUNLESS, T_MAX, T_MIN, T_MOD, T_MUL, T_NEQ, T_POW,
    T_QUANTILE, T_STDDEV, T_STDVAR, T_SUB, T_SUM, T_TOPK,
};
use promql_parser::parser::{
    AggregateExpr, AtModifier, BinaryExpr, Call, Expr, LabelModifier, MatrixSelector, Offset,
    SubqueryExpr, VectorMatchCardinality, VectorSelector,
};

use nodewatch_proto::gocompat::format_float;

use super::functions::{self, ArgEval, RangeArg};
use super::storage::{is_stale_nan, Storage};
use super::value::{check_unique, is_label_name, Labels, Sample, Series, Val, Value, METRIC_NAME};
use super::{EngineOptions, EvalError, Unsupported};

pub(crate) struct Evaluator<'a> {
    storage: &'a dyn Storage,
    opts: EngineOptions,
    /// The query's start and end, what `@ start()` and `@ end()` mean
    /// (both the evaluation time for an instant query).
    start: i64,
    end: i64,
}

/// Most evaluation steps one subquery may take (a bound on the work a
/// single query can cause; Prometheus bounds it through its sample limit).
pub const MAX_SUBQUERY_STEPS: i64 = 1_000_000;

/// Milliseconds since the epoch of a parsed `@` time.
fn system_time_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Milliseconds of an `offset` (negative for `offset -5m`).
pub(crate) fn offset_ms(offset: Option<&Offset>) -> i64 {
    match offset {
        Some(Offset::Pos(d)) => duration_ms(*d),
        Some(Offset::Neg(d)) => duration_ms(*d).saturating_neg(),
        None => 0,
    }
}

/// The selector's matchers with its metric name as a `__name__` matcher.
fn storage_matchers(vs: &VectorSelector) -> Matchers {
    let mut m = vs.matchers.clone();
    if let Some(name) = &vs.name {
        m.matchers
            .push(Matcher::new(MatchOp::Equal, METRIC_NAME, name));
    }
    m
}

fn is_comparison(op: TokenId) -> bool {
    matches!(op, T_EQLC | T_NEQ | T_GTR | T_LSS | T_GTE | T_LTE)
}

/// Arithmetic drops the metric name; comparisons keep it
/// (`shouldDropMetricName` in engine.go). 2.x kept it for `atan2`.
fn drops_name(op: TokenId, v3: bool) -> bool {
    matches!(op, T_ADD | T_SUB | T_MUL | T_DIV | T_MOD | T_POW) || (v3 && op == T_ATAN2)
}

/// `vectorElemBinop`: the result value and whether a comparison kept it.
fn elem_binop(op: TokenId, l: f64, r: f64) -> Result<(f64, bool), EvalError> {
    Ok(match op {
        T_ADD => (l + r, true),
        T_SUB => (l - r, true),
        T_MUL => (l * r, true),
        T_DIV => (l / r, true),
        // Go's math.Mod and Rust's `%` both take the sign of the dividend.
        T_MOD => (l % r, true),
        T_POW => (l.powf(r), true),
        T_ATAN2 => (super::gomath::atan2(l, r), true),
        T_EQLC => (l, l == r),
        T_NEQ => (l, l != r),
        T_GTR => (l, l > r),
        T_LSS => (l, l < r),
        T_GTE => (l, l >= r),
        T_LTE => (l, l <= r),
        _ => {
            return Err(EvalError::Type(format!(
                "operator \"{}\" not allowed between these operands",
                promql_parser::parser::token::TokenType::new(op)
            )))
        }
    })
}

/// An argument of function or operator `what` of the wrong type.
fn type_error(what: &str, want: &str, got: &Val) -> EvalError {
    EvalError::Type(format!("{what}: expected {want}, got {}", got.type_name()))
}

/// The matching key of `labels`: only the `on` labels, or all labels but
/// the `ignoring` ones and `__name__` (`signatureFunc` in engine.go).
fn signature(labels: &Labels, on: bool, names: &[String]) -> Labels {
    if on {
        labels.keep(names)
    } else {
        labels.remove_all(names).without_name()
    }
}

impl<'a> Evaluator<'a> {
    /// An evaluator for a query over `[start, end]` (equal for an instant query).
    pub(crate) fn new(storage: &'a dyn Storage, opts: EngineOptions, start: i64, end: i64) -> Self {
        Self {
            storage,
            opts,
            start,
            end,
        }
    }

    /// Fails once the evaluation's deadline has passed.
    pub(crate) fn check_deadline(&self) -> Result<(), EvalError> {
        match self.opts.deadline {
            Some(d) if std::time::Instant::now() >= d => Err(EvalError::Timeout),
            _ => Ok(()),
        }
    }

    /// The time a selector or subquery reads at: `@` replaces the
    /// evaluation time (`start()`/`end()` being the query's), `offset`
    /// shifts it back (`Timestamp` and `OriginalOffset` in Prometheus).
    pub(crate) fn at_time(&self, offset: Option<&Offset>, at: Option<&AtModifier>, t: i64) -> i64 {
        let base = match at {
            Some(AtModifier::At(st)) => system_time_ms(*st),
            Some(AtModifier::Start) => self.start,
            Some(AtModifier::End) => self.end,
            None => t,
        };
        base.saturating_sub(offset_ms(offset))
    }

    pub(crate) fn v3(&self) -> bool {
        self.opts.semantics == super::Semantics::Prometheus3
    }

    pub(crate) fn eval_top(&self, expr: &Expr, t: i64) -> Result<Value, EvalError> {
        match self.eval(expr, t)? {
            Val::Scalar(v) => Ok(Value::Scalar(v)),
            Val::Str(s) => Ok(Value::String(s)),
            Val::Vector(mut v) => {
                for s in &mut v {
                    s.t = t;
                }
                Ok(Value::Vector(v))
            }
            // A range selector or subquery as the whole query: its series,
            // as Prometheus answers an instant query for `x[5m]`.
            Val::Matrix => Ok(Value::Matrix(
                self.range_arg(expr, t)?
                    .series
                    .into_iter()
                    .map(|s| super::RangeSeries {
                        labels: s.labels,
                        points: s.points,
                    })
                    .collect(),
            )),
        }
    }

    pub(crate) fn eval(&self, expr: &Expr, t: i64) -> Result<Val, EvalError> {
        match expr {
            Expr::NumberLiteral(n) => Ok(Val::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Val::Str(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Val::Scalar(v) => Ok(Val::Scalar(-v)),
                Val::Vector(v) => {
                    let out: Vec<Sample> = v
                        .into_iter()
                        .map(|s| Sample {
                            labels: s.labels.without_name(),
                            t,
                            v: -s.v,
                        })
                        .collect();
                    check_unique(&out)?;
                    Ok(Val::Vector(out))
                }
                other => Err(EvalError::Type(format!(
                    "unary expression only allowed on expressions of type scalar or vector, got: {}",
                    other.type_name()
                ))),
            },
            Expr::VectorSelector(vs) => {
                self.check_deadline()?;
                Ok(Val::Vector(self.vector_selector(vs, t)))
            }
            Expr::MatrixSelector(_) | Expr::Subquery(_) => Ok(Val::Matrix),
            Expr::Call(c) => self.call(c, t),
            Expr::Aggregate(a) => self.aggregate(a, t),
            Expr::Binary(b) => self.binary(b, t),
            Expr::Extension(_) => Err(Unsupported::Extension.into()),
        }
    }

    pub(crate) fn eval_vector(
        &self,
        expr: &Expr,
        t: i64,
        what: &str,
    ) -> Result<Vec<Sample>, EvalError> {
        match self.eval(expr, t)? {
            Val::Vector(v) => Ok(v),
            other => Err(type_error(what, "vector", &other)),
        }
    }

    pub(crate) fn eval_scalar(&self, expr: &Expr, t: i64, what: &str) -> Result<f64, EvalError> {
        match self.eval(expr, t)? {
            Val::Scalar(v) => Ok(v),
            other => Err(type_error(what, "scalar", &other)),
        }
    }

    pub(crate) fn eval_string(&self, expr: &Expr, t: i64, what: &str) -> Result<String, EvalError> {
        match self.eval(expr, t)? {
            Val::Str(v) => Ok(v),
            other => Err(type_error(what, "string", &other)),
        }
    }

    /// The newest sample of each matching series within the lookback window,
    /// unless that sample is a staleness marker (`vectorSelectorSingle`).
    pub(crate) fn vector_selector(&self, vs: &VectorSelector, t: i64) -> Vec<Sample> {
        let ts = self.at_time(vs.offset.as_ref(), vs.at.as_ref(), t);
        let mut start = ts.saturating_sub(self.opts.lookback_ms);
        if self.opts.left_open() {
            start = start.saturating_add(1);
        }
        // Storage returns series in label order (its contract).
        self.storage
            .select_latest(&storage_matchers(vs), start, ts)
            .into_iter()
            .filter(|&(_, _, v)| !is_stale_nan(v))
            .map(|(labels, st, v)| Sample { labels, t: st, v })
            .collect()
    }

    /// All non-stale samples of each matching series in the range; series
    /// without any are left out.
    pub(crate) fn matrix_selector(&self, ms: &MatrixSelector, t: i64) -> Vec<Series> {
        let (start, end) = self.range_bounds(ms, t);
        let out: Vec<Series> = self
            .storage
            .select(&storage_matchers(&ms.vs), start, end)
            .into_iter()
            .filter_map(|s| {
                let points: Vec<(i64, f64)> = s
                    .samples
                    .into_iter()
                    .filter(|(st, v)| *st >= start && *st <= end && !is_stale_nan(*v))
                    .collect();
                (!points.is_empty()).then_some(Series {
                    labels: s.labels,
                    points,
                })
            })
            .collect();
        // Storage returns series in label order (its contract).
        out
    }

    /// The inclusive `[start, end]` a range selector reads, in milliseconds.
    pub(crate) fn range_bounds(&self, ms: &MatrixSelector, t: i64) -> (i64, i64) {
        let end = self.at_time(ms.vs.offset.as_ref(), ms.vs.at.as_ref(), t);
        let mut start = end.saturating_sub(duration_ms(ms.range));
        if self.opts.left_open() {
            start = start.saturating_add(1);
        }
        (start, end)
    }

    /// The value of a range function's argument at `t`: a range selector
    /// or a subquery, in parentheses or not.
    pub(crate) fn range_arg(&self, expr: &Expr, t: i64) -> Result<RangeArg, EvalError> {
        match expr {
            Expr::Paren(p) => self.range_arg(&p.expr, t),
            Expr::MatrixSelector(ms) => {
                self.check_deadline()?;
                let (_, end) = self.range_bounds(ms, t);
                let range_ms = duration_ms(ms.range);
                Ok(RangeArg {
                    series: self.matrix_selector(ms, t),
                    start: end.saturating_sub(range_ms),
                    end,
                    range_ms,
                })
            }
            Expr::Subquery(sq) => self.subquery(sq, t),
            other => Err(EvalError::Type(format!(
                "expected a range vector, got {}",
                self.eval(other, t)?.type_name()
            ))),
        }
    }

    /// `expr[range:step] offset o @ a` at `t`: `expr` evaluated at every
    /// multiple of the step (in absolute time) inside the window, each
    /// result becoming one point of its series (Prometheus' subquery
    /// evaluation, whose range evaluation of `expr` this repeats step by
    /// step; nested subqueries align to their own steps the same way).
    pub(crate) fn subquery(&self, sq: &SubqueryExpr, t: i64) -> Result<RangeArg, EvalError> {
        let end = self.at_time(sq.offset.as_ref(), sq.at.as_ref(), t);
        let range_ms = duration_ms(sq.range);
        let step = sq
            .step
            .map(duration_ms)
            .filter(|s| *s > 0)
            .unwrap_or(self.opts.subquery_step_ms)
            .max(1);
        let lo = end.saturating_sub(range_ms);
        // The first multiple of the step at or after the window's start
        // (after it when windows are left-open).
        let mut first = lo.div_euclid(step).saturating_mul(step);
        if first < lo || (first == lo && self.opts.left_open()) {
            first = first.saturating_add(step);
        }
        if first <= end && (end - first) / step >= MAX_SUBQUERY_STEPS {
            return Err(EvalError::TooManySteps {
                steps: (end - first) / step + 1,
                max: MAX_SUBQUERY_STEPS,
            });
        }
        let mut index: HashMap<Labels, usize> = HashMap::new();
        let mut series: Vec<Series> = Vec::new();
        let mut push = |labels: Labels, ts: i64, v: f64| {
            if let Some(&i) = index.get(&labels) {
                series[i].points.push((ts, v));
            } else {
                index.insert(labels.clone(), series.len());
                series.push(Series {
                    labels,
                    points: vec![(ts, v)],
                });
            }
        };
        let mut ts = first;
        while ts <= end {
            self.check_deadline()?;
            match self.eval(&sq.expr, ts)? {
                Val::Vector(v) => {
                    for s in v {
                        push(s.labels, ts, s.v);
                    }
                }
                Val::Scalar(v) => push(Labels::new(), ts, v),
                other => {
                    return Err(EvalError::Type(format!(
                        "subquery is only allowed on instant vector, got {}",
                        other.type_name()
                    )))
                }
            }
            ts = match ts.checked_add(step) {
                Some(n) => n,
                None => break,
            };
        }
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(RangeArg {
            series,
            start: lo,
            end,
            range_ms,
        })
    }

    fn binary(&self, b: &BinaryExpr, t: i64) -> Result<Val, EvalError> {
        let op = b.op.id();
        let lhs = self.eval(&b.lhs, t)?;
        let rhs = self.eval(&b.rhs, t)?;
        let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
        match (lhs, rhs) {
            (Val::Scalar(l), Val::Scalar(r)) => {
                let (v, keep) = elem_binop(op, l, r)?;
                if is_comparison(op) {
                    Ok(Val::Scalar(if keep { 1.0 } else { 0.0 }))
                } else {
                    Ok(Val::Scalar(v))
                }
            }
            (Val::Vector(l), Val::Scalar(r)) => {
                let out = vector_scalar(op, l, r, (false, return_bool, self.v3()), t)?;
                check_unique(&out)?;
                Ok(Val::Vector(out))
            }
            (Val::Scalar(l), Val::Vector(r)) => {
                let out = vector_scalar(op, r, l, (true, return_bool, self.v3()), t)?;
                check_unique(&out)?;
                Ok(Val::Vector(out))
            }
            (Val::Vector(l), Val::Vector(r)) => {
                let (on, names) = match b.modifier.as_ref().and_then(|m| m.matching.as_ref()) {
                    Some(LabelModifier::Include(ls)) => (true, ls.labels.clone()),
                    Some(LabelModifier::Exclude(ls)) => (false, ls.labels.clone()),
                    None => (false, Vec::new()),
                };
                match op {
                    T_LAND => Ok(Val::Vector(set_and(l, &r, on, &names, t))),
                    T_LOR => Ok(Val::Vector(set_or(l, r, on, &names, t))),
                    T_LUNLESS => Ok(Val::Vector(set_unless(l, &r, on, &names, t))),
                    _ => {
                        let card = b
                            .modifier
                            .as_ref()
                            .map_or(VectorMatchCardinality::OneToOne, |m| m.card.clone());
                        let out = vector_binop(
                            op,
                            l,
                            r,
                            &card,
                            (on, &names),
                            return_bool,
                            self.v3(),
                            t,
                        )?;
                        check_unique(&out)?;
                        Ok(Val::Vector(out))
                    }
                }
            }
            (l, r) => Err(EvalError::Type(format!(
                "binary expression must contain only scalar and instant vector types, got {} and {}",
                l.type_name(),
                r.type_name()
            ))),
        }
    }

    fn aggregate(&self, a: &AggregateExpr, t: i64) -> Result<Val, EvalError> {
        let op = a.op.id();
        let name = a.op.to_string();
        let vec = self.eval_vector(&a.expr, t, &name)?;
        let (without, grouping) = match &a.modifier {
            Some(LabelModifier::Include(l)) => (false, l.labels.clone()),
            Some(LabelModifier::Exclude(l)) => (true, l.labels.clone()),
            None => (false, Vec::new()),
        };
        let count_values_label = if op == T_COUNT_VALUES {
            Some(self.count_values_label(a, t, &name)?)
        } else {
            None
        };
        let groups = group_samples(vec, without, &grouping, count_values_label.as_deref());
        let param = self.aggregation_param(a, t, &name)?;
        let mut out = Vec::new();
        for (key, g) in groups {
            if op == T_TOPK || op == T_BOTTOMK {
                out.extend(top_k(g, param, op == T_TOPK).into_iter().map(|s| Sample {
                    labels: s.labels,
                    t,
                    v: s.v,
                }));
                continue;
            }
            let v = aggregate_group(op, &g, param, self.v3())
                .ok_or_else(|| Unsupported::Aggregation(name.clone()))?;
            out.push(Sample { labels: key, t, v });
        }
        Ok(Val::Vector(out))
    }

    /// `count_values`' label parameter, which must be a valid label name.
    fn count_values_label(
        &self,
        a: &AggregateExpr,
        t: i64,
        name: &str,
    ) -> Result<String, EvalError> {
        let p = a.param.as_ref().ok_or_else(|| EvalError::BadArgument {
            func: name.to_string(),
            reason: "missing label parameter".into(),
        })?;
        let l = self.eval_string(p, t, name)?;
        if !is_label_name(&l) {
            return Err(EvalError::BadArgument {
                func: name.to_string(),
                reason: format!("invalid label name {l:?}"),
            });
        }
        Ok(l)
    }

    /// The numeric parameter of `topk`, `bottomk` and `quantile` (0 for
    /// the other aggregations).
    fn aggregation_param(&self, a: &AggregateExpr, t: i64, name: &str) -> Result<f64, EvalError> {
        let op = a.op.id();
        if !matches!(op, T_TOPK | T_BOTTOMK | T_QUANTILE) {
            return Ok(0.0);
        }
        let p = a.param.as_ref().ok_or_else(|| EvalError::BadArgument {
            func: name.to_string(),
            reason: "missing parameter".into(),
        })?;
        let v = self.eval_scalar(p, t, name)?;
        // 3.x refuses a NaN k; 2.x returns nothing.
        if v.is_nan() && op != T_QUANTILE && self.v3() {
            return Err(EvalError::BadArgument {
                func: name.to_string(),
                reason: "Parameter value is NaN".into(),
            });
        }
        Ok(v)
    }
}

/// Splits `vec` into the aggregation's groups, in order of first
/// appearance as Prometheus' `orderedResult`. A sample's group is found by
/// hashing the labels its key would have, without building them: only a
/// new group's key is built. `count_values` (its label given) keys each
/// sample by its value too.
fn group_samples(
    vec: Vec<Sample>,
    without: bool,
    grouping: &[String],
    count_values_label: Option<&str>,
) -> Vec<(Labels, Vec<Sample>)> {
    let key_of = |l: &Labels| {
        if without {
            l.remove_all(grouping).without_name()
        } else {
            l.keep(grouping)
        }
    };
    let in_key = |k: &str| {
        if without {
            k != METRIC_NAME && !grouping.iter().any(|g| g == k)
        } else {
            grouping.iter().any(|g| g == k)
        }
    };
    let hash_pairs = |pairs: &mut dyn Iterator<Item = (&str, &str)>| {
        let mut h = std::hash::BuildHasher::build_hasher(&foldhash::fast::FixedState::default());
        for (k, v) in pairs {
            std::hash::Hash::hash(k, &mut h);
            std::hash::Hash::hash(v, &mut h);
        }
        std::hash::Hasher::finish(&h)
    };
    let mut groups: Vec<(Labels, Vec<Sample>)> = Vec::new();
    let mut index: foldhash::HashMap<u64, Vec<usize>> = foldhash::HashMap::default();
    for s in vec {
        // count_values' key carries the value as a label: built up front.
        let built = count_values_label.map(|l| {
            let mut key = key_of(&s.labels);
            key.set(l.to_string(), format_float(s.v));
            key
        });
        let h = match &built {
            Some(k) => hash_pairs(&mut k.iter()),
            None => hash_pairs(&mut s.labels.iter().filter(|(k, _)| in_key(k))),
        };
        let slot = index.entry(h).or_default();
        let found = slot.iter().copied().find(|&gi| match &built {
            Some(k) => groups[gi].0 == *k,
            None => groups[gi]
                .0
                .iter()
                .eq(s.labels.iter().filter(|(k, _)| in_key(k))),
        });
        if let Some(gi) = found {
            groups[gi].1.push(s);
        } else {
            let key = built.unwrap_or_else(|| key_of(&s.labels));
            slot.push(groups.len());
            groups.push((key, vec![s]));
        }
    }
    groups
}

/// The value of aggregation `op` over one group (`None`: not one the
/// evaluator has).
fn aggregate_group(op: TokenId, g: &[Sample], param: f64, v3: bool) -> Option<f64> {
    Some(match op {
        T_SUM if v3 => kahan_sum(g.iter().map(|s| s.v)),
        T_SUM => g.iter().fold(0.0, |acc, s| acc + s.v),
        T_AVG if v3 => functions::mean_v3(g.iter().map(|s| s.v)),
        T_AVG => avg(g),
        T_COUNT | T_COUNT_VALUES => g.len() as f64,
        T_GROUP => 1.0,
        T_MIN => g
            .iter()
            .skip(1)
            .fold(g[0].v, |m, s| if m > s.v || m.is_nan() { s.v } else { m }),
        T_MAX => g
            .iter()
            .skip(1)
            .fold(g[0].v, |m, s| if m < s.v || m.is_nan() { s.v } else { m }),
        // 3.x: a group of one NaN or infinity has no deviation.
        T_STDDEV | T_STDVAR if v3 && g.len() == 1 && !g[0].v.is_finite() => f64::NAN,
        T_STDDEV => stdvar(g).sqrt(),
        T_STDVAR => stdvar(g),
        T_QUANTILE => {
            let mut vals: Vec<f64> = g.iter().map(|s| s.v).collect();
            functions::quantile(param, &mut vals)
        }
        _ => return None,
    })
}

/// Prometheus 2.x `avg`: an incremental mean, which avoids overflow and
/// keeps an infinite mean infinite (engine.go, `case parser.AVG`).
fn avg(g: &[Sample]) -> f64 {
    let mut mean = g[0].v;
    let mut count = 1.0_f64;
    for s in &g[1..] {
        count += 1.0;
        if mean.is_infinite() {
            if s.v.is_infinite() && (mean > 0.0) == (s.v > 0.0) {
                continue;
            }
            if !s.v.is_infinite() && !s.v.is_nan() {
                continue;
            }
        }
        mean += s.v / count - mean / count;
    }
    mean
}

/// Compensated sum (3.x `sum`).
fn kahan_sum(vals: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut c) = (0.0, 0.0);
    for v in vals {
        (sum, c) = functions::kahan_inc(v, sum, c);
    }
    if sum.is_infinite() {
        sum
    } else {
        sum + c
    }
}

/// Welford's online variance, as engine.go's `STDVAR`/`STDDEV`.
fn stdvar(g: &[Sample]) -> f64 {
    let mut count = 1.0_f64;
    let mut mean = g[0].v;
    let mut value = 0.0;
    for s in &g[1..] {
        count += 1.0;
        let delta = s.v - mean;
        mean += delta / count;
        value += delta * (s.v - mean);
    }
    value / count
}

/// The `k` largest (or smallest) samples; NaN sorts below every number
/// for `topk` and above for `bottomk`, as Prometheus' value heaps do.
fn top_k(mut g: Vec<Sample>, k: f64, largest: bool) -> Vec<Sample> {
    if k.is_nan() || k < 1.0 {
        return Vec::new();
    }
    let k = if k >= g.len() as f64 {
        g.len()
    } else {
        k as usize
    };
    g.sort_by(|a, b| {
        use std::cmp::Ordering;
        match (a.v.is_nan(), b.v.is_nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => {
                if largest {
                    b.v.partial_cmp(&a.v).unwrap_or(Ordering::Equal)
                } else {
                    a.v.partial_cmp(&b.v).unwrap_or(Ordering::Equal)
                }
            }
        }
    });
    g.truncate(k);
    g
}

/// `VectorscalarBinop`: the scalar applies to every element; a comparison
/// keeps the vector's value even when the scalar is on the left.
fn vector_scalar(
    op: TokenId,
    v: Vec<Sample>,
    scalar: f64,
    (scalar_left, return_bool, v3): (bool, bool, bool),
    t: i64,
) -> Result<Vec<Sample>, EvalError> {
    let mut out = Vec::with_capacity(v.len());
    for s in v {
        let (l, r) = if scalar_left {
            (scalar, s.v)
        } else {
            (s.v, scalar)
        };
        let (mut value, mut keep) = elem_binop(op, l, r)?;
        if is_comparison(op) && scalar_left {
            value = r;
        }
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
            keep = true;
        }
        if keep {
            let labels = if drops_name(op, v3) || return_bool {
                s.labels.without_name()
            } else {
                s.labels
            };
            out.push(Sample {
                labels,
                t,
                v: value,
            });
        }
    }
    Ok(out)
}

fn set_and(l: Vec<Sample>, r: &[Sample], on: bool, names: &[String], t: i64) -> Vec<Sample> {
    let right: std::collections::HashSet<Labels> =
        r.iter().map(|s| signature(&s.labels, on, names)).collect();
    l.into_iter()
        .filter(|s| right.contains(&signature(&s.labels, on, names)))
        .map(|s| Sample { t, ..s })
        .collect()
}

fn set_or(l: Vec<Sample>, r: Vec<Sample>, on: bool, names: &[String], t: i64) -> Vec<Sample> {
    let left: std::collections::HashSet<Labels> =
        l.iter().map(|s| signature(&s.labels, on, names)).collect();
    let mut out: Vec<Sample> = l.into_iter().map(|s| Sample { t, ..s }).collect();
    out.extend(
        r.into_iter()
            .filter(|s| !left.contains(&signature(&s.labels, on, names)))
            .map(|s| Sample { t, ..s }),
    );
    out
}

fn set_unless(l: Vec<Sample>, r: &[Sample], on: bool, names: &[String], t: i64) -> Vec<Sample> {
    let right: std::collections::HashSet<Labels> =
        r.iter().map(|s| signature(&s.labels, on, names)).collect();
    l.into_iter()
        .filter(|s| !right.contains(&signature(&s.labels, on, names)))
        .map(|s| Sample { t, ..s })
        .collect()
}

/// `VectorBinop` for arithmetic and comparison between two vectors.
#[allow(clippy::too_many_arguments)]
fn vector_binop(
    op: TokenId,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    card: &VectorMatchCardinality,
    (on, names): (bool, &[String]),
    return_bool: bool,
    v3: bool,
    t: i64,
) -> Result<Vec<Sample>, EvalError> {
    let (include, one_to_many) = match card {
        VectorMatchCardinality::ManyToOne(l) => (l.labels.clone(), false),
        VectorMatchCardinality::OneToMany(l) => (l.labels.clone(), true),
        _ => (Vec::new(), false),
    };
    let one_to_one = matches!(
        card,
        VectorMatchCardinality::OneToOne | VectorMatchCardinality::ManyToMany
    );
    // The "many" side is always iterated; swap so it is `lhs`.
    let (lhs, rhs) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };
    let mut right: HashMap<Labels, Sample> = HashMap::new();
    for rs in rhs {
        let sig = signature(&rs.labels, on, names);
        if let Some(dup) = right.get(&sig) {
            return Err(EvalError::ManyToMany {
                group: sig.to_string(),
                side: if one_to_many { "left" } else { "right" },
                first: rs.labels.to_string(),
                second: dup.labels.to_string(),
            });
        }
        right.insert(sig, rs);
    }
    let mut matched: HashMap<Labels, Vec<Labels>> = HashMap::new();
    let mut out = Vec::new();
    for ls in lhs {
        let sig = signature(&ls.labels, on, names);
        let Some(rs) = right.get(&sig) else {
            continue;
        };
        // 3.x detects ambiguous one-to-one matches even among pairs a
        // comparison then filters out; 2.x only among the kept ones.
        if v3 && one_to_one {
            let inserted = matched.entry(sig.clone()).or_default();
            if !inserted.is_empty() {
                return Err(EvalError::OneToOneMultipleMatches);
            }
            inserted.push(Labels::new());
        }
        let (vl, vr) = if one_to_many {
            (rs.v, ls.v)
        } else {
            (ls.v, rs.v)
        };
        let (mut value, keep) = elem_binop(op, vl, vr)?;
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
        } else if !keep {
            continue;
        }
        // `resultMetric`.
        let mut metric = ls.labels.clone();
        if drops_name(op, v3) || return_bool {
            metric.remove(METRIC_NAME);
        }
        if one_to_one {
            metric = if on {
                metric.keep(names)
            } else {
                metric.remove_all(names)
            };
        }
        for ln in &include {
            match rs.labels.get(ln) {
                Some(v) => metric.set(ln.clone(), v.to_string()),
                None => metric.remove(ln),
            }
        }
        let inserted = matched.entry(sig).or_default();
        if one_to_one && v3 {
            // Already recorded above.
        } else if one_to_one {
            if !inserted.is_empty() {
                return Err(EvalError::OneToOneMultipleMatches);
            }
            inserted.push(Labels::new());
        } else {
            if inserted.contains(&metric) {
                return Err(EvalError::GroupingNotUnique);
            }
            inserted.push(metric.clone());
        }
        out.push(Sample {
            labels: metric,
            t,
            v: value,
        });
    }
    Ok(out)
}

impl Evaluator<'_> {
    /// A function call, through the function table; its vector result
    /// must have distinct label sets.
    fn call(&self, c: &Call, t: i64) -> Result<Val, EvalError> {
        let f = functions::lookup(c.func.name)
            .ok_or_else(|| Unsupported::Function(c.func.name.to_string()))?;
        let out = f(self, c, t)?;
        if let Val::Vector(v) = &out {
            check_unique(v)?;
        }
        Ok(out)
    }
}

impl ArgEval for Evaluator<'_> {
    fn range_arg(&self, e: &Expr, t: i64) -> Result<RangeArg, EvalError> {
        Evaluator::range_arg(self, e, t)
    }

    fn eval_vector(&self, e: &Expr, t: i64, what: &str) -> Result<Vec<Sample>, EvalError> {
        Evaluator::eval_vector(self, e, t, what)
    }

    fn eval_scalar(&self, e: &Expr, t: i64, what: &str) -> Result<f64, EvalError> {
        Evaluator::eval_scalar(self, e, t, what)
    }

    fn eval_string(&self, e: &Expr, t: i64, what: &str) -> Result<String, EvalError> {
        Evaluator::eval_string(self, e, t, what)
    }

    fn v3(&self) -> bool {
        Evaluator::v3(self)
    }
}
