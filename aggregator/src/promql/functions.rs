//! The function library, after `prometheus/promql/functions.go`: one
//! table, [`FUNCTIONS`], from a function's name to its implementation, from
//! which the supported-function list comes.

// Functions compare sample values exactly, as functions.go does.
#![allow(clippy::float_cmp)]
// Names follow functions.go (`sum_x`, `c_x`, `q`, `t`) so the port can be checked line by line.
#![allow(clippy::similar_names, clippy::many_single_char_names)]

use nodewatch_proto::gocompat::{civil_from_days, parse_float};
use promql_parser::label::MatchOp;
use promql_parser::parser::{Call, Expr};
use regex::Regex;

use super::gomath;
use super::value::{is_label_name, Labels, Sample, Series, Val, METRIC_NAME};
use super::EvalError;

fn arg(c: &Call, i: usize) -> Result<&Expr, EvalError> {
    c.args
        .args
        .get(i)
        .map(AsRef::as_ref)
        .ok_or_else(|| EvalError::BadArgument {
            func: c.func.name.to_string(),
            reason: format!("missing argument {}", i + 1),
        })
}

/// Applies `f` to every point list, dropping the metric name (range
/// functions other than `last_over_time` do, `rangeEval`).
fn over_time(
    m: Vec<Series>,
    t: i64,
    keep_name: bool,
    f: impl Fn(&[(i64, f64)]) -> Option<f64>,
) -> Vec<Sample> {
    m.into_iter()
        .filter_map(|s| {
            let v = f(&s.points)?;
            let labels = if keep_name {
                s.labels
            } else {
                s.labels.without_name()
            };
            Some(Sample { labels, t, v })
        })
        .collect()
}

/// Applies `f` to every element's value, dropping the metric name
/// (`simpleFunc`).
fn simple(v: Vec<Sample>, t: i64, f: impl Fn(f64) -> f64) -> Vec<Sample> {
    v.into_iter()
        .map(|s| Sample {
            labels: s.labels.without_name(),
            t,
            v: f(s.v),
        })
        .collect()
}

/// Go's `math.Max`/`math.Min`: NaN wins, unlike Rust's `f64::max`.
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

/// Neumaier-compensated summation step (`kahanSumInc`).
pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    // An infinite sum has no meaningful compensation (`kahansum.Inc`).
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// `quantile` in functions.go: linear interpolation between the closest
/// ranks; values are sorted with NaN first.
pub(crate) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        (false, false) => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// `extrapolatedRate`: the increase over the range, extrapolated towards
/// the range's edges when the first/last samples are close enough to them
/// (within 1.1 average sample intervals), never below a counter's zero
/// point; counter resets add the value before the reset.
fn extrapolated_rate(
    points: &[(i64, f64)],
    range_start: i64,
    range_end: i64,
    range_secs: f64,
    is_counter: bool,
    is_rate: bool,
    v3: bool,
) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let (first_t, first_v) = points[0];
    let (last_t, last_v) = points[points.len() - 1];
    let mut result = last_v - first_v;
    if is_counter {
        let mut prev = first_v;
        for &(_, v) in &points[1..] {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    let mut duration_to_start = first_t.saturating_sub(range_start) as f64 / 1000.0;
    let duration_to_end = range_end.saturating_sub(last_t) as f64 / 1000.0;
    let sampled_interval = last_t.saturating_sub(first_t) as f64 / 1000.0;
    let avg_between = sampled_interval / (points.len() - 1) as f64;
    let threshold = avg_between * 1.1;
    if v3 {
        // 3.x limits the start to half an interval first, then clamps at
        // the zero point (so a far-away zero point cannot widen it).
        if duration_to_start >= threshold {
            duration_to_start = avg_between / 2.0;
        }
        if is_counter && result > 0.0 && first_v >= 0.0 {
            duration_to_start = duration_to_start.min(sampled_interval * (first_v / result));
        }
        let duration_to_end = if duration_to_end >= threshold {
            avg_between / 2.0
        } else {
            duration_to_end
        };
        let mut factor =
            (sampled_interval + duration_to_start + duration_to_end) / sampled_interval;
        if is_rate {
            factor /= range_secs;
        }
        return Some(result * factor);
    }
    if is_counter && result > 0.0 && first_v >= 0.0 {
        let duration_to_zero = sampled_interval * (first_v / result);
        if duration_to_zero < duration_to_start {
            duration_to_start = duration_to_zero;
        }
    }
    let mut extrapolate_to = sampled_interval;
    extrapolate_to += if duration_to_start < threshold {
        duration_to_start
    } else {
        avg_between / 2.0
    };
    extrapolate_to += if duration_to_end < threshold {
        duration_to_end
    } else {
        avg_between / 2.0
    };
    let mut factor = extrapolate_to / sampled_interval;
    if is_rate {
        factor /= range_secs;
    }
    Some(result * factor)
}

/// `funcHoltWinters`: double exponential smoothing with smoothing factor
/// `sf` and trend factor `tf`; the last smoothed value.
fn holt_winters(points: &[(i64, f64)], sf: f64, tf: f64) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let (mut s0, mut s1) = (0.0_f64, points[0].1);
    let mut b = points[1].1 - points[0].1;
    for (i, &(_, v)) in points.iter().enumerate().skip(1) {
        let x = sf * v;
        // The trend before the first step is the first difference itself.
        if i > 1 {
            b = tf * (s1 - s0) + (1.0 - tf) * b;
        }
        let y = (1.0 - sf) * (s1 + b);
        s0 = s1;
        s1 = x + y;
    }
    Some(s1)
}

/// `instantValue` behind `irate` and `idelta`: the last two samples.
fn instant_value(points: &[(i64, f64)], is_rate: bool) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let (lt, lv) = points[points.len() - 1];
    let (pt, pv) = points[points.len() - 2];
    let mut result = if is_rate && lv < pv { lv } else { lv - pv };
    let dt = lt.saturating_sub(pt);
    if dt == 0 {
        return None;
    }
    if is_rate {
        result /= dt as f64 / 1000.0;
    }
    Some(result)
}

/// Least-squares fit (`linearRegression`), x in seconds relative to
/// `intercept_t`; a constant series has slope 0 exactly.
fn linear_regression(points: &[(i64, f64)], intercept_t: i64) -> (f64, f64) {
    let (mut n, mut sum_x, mut c_x, mut sum_y, mut c_y) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sum_xy, mut c_xy, mut sum_x2, mut c_x2) = (0.0, 0.0, 0.0, 0.0);
    let init_y = points[0].1;
    let mut const_y = true;
    for (i, &(t, v)) in points.iter().enumerate() {
        #[allow(clippy::float_cmp)] // Exact equality is what Prometheus tests.
        if const_y && i > 0 && v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = t.saturating_sub(intercept_t) as f64 / 1e3;
        (sum_x, c_x) = kahan_inc(x, sum_x, c_x);
        (sum_y, c_y) = kahan_inc(v, sum_y, c_y);
        (sum_xy, c_xy) = kahan_inc(x * v, sum_xy, c_xy);
        (sum_x2, c_x2) = kahan_inc(x * x, sum_x2, c_x2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    let (sum_x, sum_y, sum_xy, sum_x2) = (sum_x + c_x, sum_y + c_y, sum_xy + c_xy, sum_x2 + c_x2);
    let cov_xy = sum_xy - sum_x * sum_y / n;
    let var_x = sum_x2 - sum_x * sum_x / n;
    let slope = cov_xy / var_x;
    let intercept = sum_y / n - slope * sum_x / n;
    (slope, intercept)
}

fn mean_kahan(points: &[(i64, f64)]) -> f64 {
    let (mut mean, mut count, mut c) = (0.0_f64, 0.0_f64, 0.0_f64);
    for &(_, v) in points {
        count += 1.0;
        if mean.is_infinite() {
            if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        (mean, c) = kahan_inc(v / count - mean / count, mean, c);
    }
    if mean.is_infinite() {
        mean
    } else {
        mean + c
    }
}

/// 3.x mean (`funcAvgOverTime`, `AVG`): a compensated sum divided by the
/// count, switching to an incremental mean only if the sum overflows.
pub(crate) fn mean_v3(mut vals: impl Iterator<Item = f64>) -> f64 {
    let Some(first) = vals.next() else {
        return f64::NAN;
    };
    let (mut sum, mut count, mut mean, mut c) = (first, 1.0_f64, 0.0_f64, 0.0_f64);
    let mut incremental = false;
    for v in vals {
        count += 1.0;
        if !incremental {
            let (ns, nc) = kahan_inc(v, sum, c);
            if !ns.is_infinite() {
                (sum, c) = (ns, nc);
                continue;
            }
            incremental = true;
            mean = sum / (count - 1.0);
            c /= count - 1.0;
        }
        let q = (count - 1.0) / count;
        (mean, c) = kahan_inc(v / count, q * mean, q * c);
    }
    if incremental {
        mean + c
    } else {
        sum / count + c / count
    }
}

fn stdvar_over(points: &[(i64, f64)]) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(_, v) in points {
        count += 1.0;
        let delta = v - (mean + c_mean);
        (mean, c_mean) = kahan_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_inc(delta * (v - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

/// Go's `math.Frexp`: `x = frac × 2^exp` with `frac` in `[0.5, 1)`.
fn frexp(x: f64) -> (f64, i32) {
    if x == 0.0 || x.is_nan() || x.is_infinite() {
        return (x, 0);
    }
    let (mut x, mut exp) = (x, 0);
    if x.abs() < f64::MIN_POSITIVE {
        // Normalise a subnormal first.
        x *= (1_u64 << 52) as f64;
        exp = -52;
    }
    let bits = x.to_bits();
    exp += ((bits >> 52) & 0x7ff) as i32 - 1022;
    let frac = f64::from_bits((bits & !(0x7ff << 52)) | (1022 << 52));
    (frac, exp)
}

/// Go's `math.Log` (FreeBSD's `e_log.c`), so `ln`, `log2` and `log10`
/// give promtool's answers to the last bit rather than the C library's.
#[allow(clippy::excessive_precision, clippy::unreadable_literal)]
fn go_log(x: f64) -> f64 {
    const LN2_HI: f64 = 6.93147180369123816490e-01;
    const LN2_LO: f64 = 1.90821492927058770002e-10;
    const L1: f64 = 6.666666666666735130e-01;
    const L2: f64 = 3.999999999940941908e-01;
    const L3: f64 = 2.857142874366239149e-01;
    const L4: f64 = 2.222219843214978396e-01;
    const L5: f64 = 1.818357216161805012e-01;
    const L6: f64 = 1.531383769920937332e-01;
    const L7: f64 = 1.479819860511658591e-01;
    if x.is_nan() || (x.is_infinite() && x > 0.0) {
        return x;
    }
    if x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return f64::NEG_INFINITY;
    }
    let (mut f1, mut ki) = frexp(x);
    if f1 < std::f64::consts::SQRT_2 / 2.0 {
        f1 *= 2.0;
        ki -= 1;
    }
    let f = f1 - 1.0;
    let k = f64::from(ki);
    let s = f / (2.0 + f);
    let s2 = s * s;
    let s4 = s2 * s2;
    let t1 = s2 * (L1 + s4 * (L3 + s4 * (L5 + s4 * L7)));
    let t2 = s4 * (L2 + s4 * (L4 + s4 * L6));
    let r = t1 + t2;
    let hfsq = 0.5 * f * f;
    k * LN2_HI - ((hfsq - (s * (hfsq + r) + k * LN2_LO)) - f)
}

/// Go's `math.Log2`: exact for powers of two.
fn go_log2(x: f64) -> f64 {
    let (frac, exp) = frexp(x);
    if frac == 0.5 {
        return f64::from(exp - 1);
    }
    // Go's `1/Ln2` is an exact constant, i.e. `LOG2_E`.
    go_log(frac) * std::f64::consts::LOG2_E + f64::from(exp)
}

/// Go's `math.Log10`: `Log(x) * (1/Ln10)`, which rounds differently from
/// C's `log10` (Go's `20` gives `1.301029995663981`, C's
/// `1.3010299956639813`).
fn go_log10(x: f64) -> f64 {
    // Go's `1/Ln10` is an exact constant, i.e. `LOG10_E`.
    go_log(x) * std::f64::consts::LOG10_E
}

/// Labels for `absent`/`absent_over_time`: the selector's equality
/// matchers, except names matched more than once or otherwise
/// (`createLabelsForAbsentFunction`).
fn absent_labels(e: &Expr) -> Labels {
    let m = match e {
        Expr::VectorSelector(vs) => &vs.matchers,
        Expr::MatrixSelector(ms) => &ms.vs.matchers,
        _ => return Labels::new(),
    };
    let mut out = Labels::new();
    let mut empty = Vec::new();
    for ma in &m.matchers {
        if ma.name == METRIC_NAME {
            continue;
        }
        if matches!(ma.op, MatchOp::Equal) && out.get(&ma.name).is_none() {
            out.set(ma.name.clone(), ma.value.clone());
        } else {
            empty.push(ma.name.clone());
        }
    }
    for n in empty {
        out.remove(&n);
    }
    out
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 31,
    }
}

/// The date functions read a value as Unix seconds (`time.Unix(int64(v), 0)`).
fn date_part(v: f64, part: &str) -> f64 {
    if v.is_nan() || v.is_infinite() {
        return f64::NAN;
    }
    let secs = v as i64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    match part {
        "minute" => ((sod % 3600) / 60) as f64,
        "hour" => (sod / 3600) as f64,
        "day_of_week" => (days + 4).rem_euclid(7) as f64,
        "day_of_month" => f64::from(d),
        "day_of_year" => {
            let before: u32 = (1..m).map(|mm| days_in_month(y, mm)).sum();
            f64::from(before + d)
        }
        "days_in_month" => f64::from(days_in_month(y, m)),
        "month" => f64::from(m),
        _ => y as f64,
    }
}

/// `histogram_quantile` over classic buckets (`bucketQuantile`).
fn bucket_quantile(q: f64, buckets: &mut [(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    match buckets.last() {
        Some(&(ub, _)) if ub.is_infinite() && ub > 0.0 => {}
        _ => return f64::NAN,
    }
    // coalesceBuckets: equal upper bounds are summed.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for &(ub, c) in buckets.iter() {
        match merged.last_mut() {
            #[allow(clippy::float_cmp)]
            Some(last) if last.0 == ub => last.1 += c,
            _ => merged.push((ub, c)),
        }
    }
    // ensureMonotonic: a count below an earlier one is raised to it.
    let mut max = f64::NEG_INFINITY;
    for b in &mut merged {
        if b.1 > max {
            max = b.1;
        } else if b.1 < max {
            b.1 = max;
        }
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged[merged.len() - 1].1;
    if observations == 0.0 || observations.is_nan() {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = merged[..merged.len() - 1].partition_point(|x| x.1 < rank);
    if b == merged.len() - 1 {
        return merged[merged.len() - 2].0;
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let mut start = 0.0;
    let end = merged[b].0;
    let mut count = merged[b].1;
    if b > 0 {
        start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

fn bad(c: &Call, reason: impl Into<String>) -> EvalError {
    EvalError::BadArgument {
        func: c.func.name.to_string(),
        reason: reason.into(),
    }
}

/// What a function needs of the evaluator: its arguments, evaluated as the
/// kind the function takes.
pub(crate) trait ArgEval {
    /// A range selector or subquery argument.
    fn range_arg(&self, e: &Expr, t: i64) -> Result<RangeArg, EvalError>;
    /// An instant-vector argument of function `what`.
    fn eval_vector(&self, e: &Expr, t: i64, what: &str) -> Result<Vec<Sample>, EvalError>;
    /// A scalar argument of function `what`.
    fn eval_scalar(&self, e: &Expr, t: i64, what: &str) -> Result<f64, EvalError>;
    /// A string argument of function `what`.
    fn eval_string(&self, e: &Expr, t: i64, what: &str) -> Result<String, EvalError>;
    /// Whether Prometheus 3 semantics apply.
    fn v3(&self) -> bool;
}

/// A range function's argument: the series of a range selector or of a
/// subquery, with the window they were read for (`[start, end]`, `start`
/// being `end` minus the range even where the window is left-open).
pub(crate) struct RangeArg {
    pub(crate) series: Vec<Series>,
    pub(crate) start: i64,
    pub(crate) end: i64,
    pub(crate) range_ms: i64,
}

/// A function's implementation: its call, evaluated at `t`.
pub(crate) type FunctionCall = fn(&dyn ArgEval, &Call, i64) -> Result<Val, EvalError>;

/// Every function the evaluator implements, by name, in name order
/// (`FunctionCalls` in functions.go). The supported-function list is this
/// table's names.
const FUNCTIONS: &[(&str, FunctionCall)] = &[
    ("abs", |ev, c, t| math(ev, c, t, f64::abs)),
    ("absent", absent),
    ("absent_over_time", absent_over_time),
    ("acos", |ev, c, t| math(ev, c, t, gomath::acos)),
    ("acosh", |ev, c, t| math(ev, c, t, f64::acosh)),
    ("asin", |ev, c, t| math(ev, c, t, gomath::asin)),
    ("asinh", |ev, c, t| math(ev, c, t, f64::asinh)),
    ("atan", |ev, c, t| math(ev, c, t, gomath::atan)),
    ("atanh", |ev, c, t| math(ev, c, t, gomath::atanh)),
    ("avg_over_time", avg_over_time),
    ("ceil", |ev, c, t| math(ev, c, t, f64::ceil)),
    ("changes", |ev, c, t| changes(ev, c, t, false)),
    ("clamp", clamp),
    ("clamp_max", clamp_max),
    ("clamp_min", clamp_min),
    ("cos", |ev, c, t| math(ev, c, t, gomath::cos)),
    ("cosh", |ev, c, t| math(ev, c, t, f64::cosh)),
    ("count_over_time", |ev, c, t| {
        range_fn(ev, c, t, |p| Some(p.len() as f64))
    }),
    ("day_of_month", |ev, c, t| date(ev, c, t, "day_of_month")),
    ("day_of_week", |ev, c, t| date(ev, c, t, "day_of_week")),
    ("day_of_year", |ev, c, t| date(ev, c, t, "day_of_year")),
    ("days_in_month", |ev, c, t| date(ev, c, t, "days_in_month")),
    ("deg", |ev, c, t| {
        math(ev, c, t, |x| x * 180.0 / std::f64::consts::PI)
    }),
    ("delta", |ev, c, t| extrapolated(ev, c, t, false, false)),
    ("deriv", |ev, c, t| {
        range_fn(ev, c, t, |p| {
            (p.len() >= 2).then(|| linear_regression(p, p[0].0).0)
        })
    }),
    ("double_exponential_smoothing", double_exponential_smoothing),
    ("exp", |ev, c, t| math(ev, c, t, f64::exp)),
    ("floor", |ev, c, t| math(ev, c, t, f64::floor)),
    ("histogram_quantile", histogram_quantile),
    ("holt_winters", double_exponential_smoothing),
    ("hour", |ev, c, t| date(ev, c, t, "hour")),
    ("idelta", |ev, c, t| {
        range_fn(ev, c, t, |p| instant_value(p, false))
    }),
    ("increase", |ev, c, t| extrapolated(ev, c, t, true, false)),
    ("irate", |ev, c, t| {
        range_fn(ev, c, t, |p| instant_value(p, true))
    }),
    ("label_join", label_join),
    ("label_replace", label_replace),
    ("last_over_time", last_over_time),
    ("ln", |ev, c, t| math(ev, c, t, go_log)),
    ("log10", |ev, c, t| math(ev, c, t, go_log10)),
    ("log2", |ev, c, t| math(ev, c, t, go_log2)),
    ("max_over_time", |ev, c, t| {
        range_fn(ev, c, t, |p| Some(fold_nan_first(p, |v, m| v > m)))
    }),
    ("min_over_time", |ev, c, t| {
        range_fn(ev, c, t, |p| Some(fold_nan_first(p, |v, m| v < m)))
    }),
    ("minute", |ev, c, t| date(ev, c, t, "minute")),
    ("month", |ev, c, t| date(ev, c, t, "month")),
    ("pi", |_, _, _| Ok(Val::Scalar(std::f64::consts::PI))),
    ("predict_linear", predict_linear),
    ("present_over_time", |ev, c, t| {
        range_fn(ev, c, t, |_| Some(1.0))
    }),
    ("quantile_over_time", quantile_over_time),
    ("rad", |ev, c, t| {
        math(ev, c, t, |x| x * std::f64::consts::PI / 180.0)
    }),
    ("rate", |ev, c, t| extrapolated(ev, c, t, true, true)),
    ("resets", |ev, c, t| changes(ev, c, t, true)),
    ("round", round),
    ("scalar", scalar),
    ("sgn", |ev, c, t| math(ev, c, t, sgn)),
    ("sin", |ev, c, t| math(ev, c, t, gomath::sin)),
    ("sinh", |ev, c, t| math(ev, c, t, f64::sinh)),
    ("sort", |ev, c, t| sort(ev, c, t, false)),
    ("sort_desc", |ev, c, t| sort(ev, c, t, true)),
    ("sqrt", |ev, c, t| math(ev, c, t, f64::sqrt)),
    ("stddev_over_time", |ev, c, t| {
        range_fn(ev, c, t, |p| Some(stdvar_over(p).sqrt()))
    }),
    ("stdvar_over_time", |ev, c, t| {
        range_fn(ev, c, t, |p| Some(stdvar_over(p)))
    }),
    ("sum_over_time", |ev, c, t| {
        range_fn(ev, c, t, |p| Some(sum_kahan(p)))
    }),
    ("tan", |ev, c, t| math(ev, c, t, gomath::tan)),
    ("tanh", |ev, c, t| math(ev, c, t, f64::tanh)),
    ("time", |_, _, t| Ok(Val::Scalar(t as f64 / 1000.0))),
    ("timestamp", timestamp),
    ("vector", vector),
    ("year", |ev, c, t| date(ev, c, t, "year")),
];

/// The implementation of function `name`, if the evaluator has one.
pub(crate) fn lookup(name: &str) -> Option<FunctionCall> {
    FUNCTIONS
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| FUNCTIONS[i].1)
}

/// The functions the evaluator implements, in name order.
pub fn supported_functions() -> impl Iterator<Item = &'static str> {
    FUNCTIONS.iter().map(|(n, _)| *n)
}

/// A range function that maps each series' points to a value, dropping
/// the metric name.
fn range_fn(
    ev: &dyn ArgEval,
    c: &Call,
    t: i64,
    f: impl Fn(&[(i64, f64)]) -> Option<f64>,
) -> Result<Val, EvalError> {
    let series = ev.range_arg(arg(c, 0)?, t)?.series;
    Ok(Val::Vector(over_time(series, t, false, f)))
}

/// A function of each element's value (`simpleFunc`).
fn math(ev: &dyn ArgEval, c: &Call, t: i64, f: fn(f64) -> f64) -> Result<Val, EvalError> {
    let v = ev.eval_vector(arg(c, 0)?, t, c.func.name)?;
    Ok(Val::Vector(simple(v, t, f)))
}

/// `funcSgn`.
fn sgn(x: f64) -> f64 {
    if x < 0.0 {
        -1.0
    } else if x > 0.0 {
        1.0
    } else {
        x
    }
}

/// The first value, replaced by each later one that `better` prefers or
/// when it is NaN (`funcMinOverTime`, `funcMaxOverTime`).
fn fold_nan_first(p: &[(i64, f64)], better: fn(f64, f64) -> bool) -> f64 {
    p.iter().skip(1).fold(
        p[0].1,
        |m, &(_, v)| if better(v, m) || m.is_nan() { v } else { m },
    )
}

/// Kahan-compensated sum of the points' values (`funcSumOverTime`).
fn sum_kahan(p: &[(i64, f64)]) -> f64 {
    let (mut sum, mut comp) = (0.0, 0.0);
    for &(_, v) in p {
        (sum, comp) = kahan_inc(v, sum, comp);
    }
    if f64::is_infinite(sum) {
        sum
    } else {
        sum + comp
    }
}

/// `rate`, `increase` and `delta` (`extrapolatedRate`).
fn extrapolated(
    ev: &dyn ArgEval,
    c: &Call,
    t: i64,
    is_counter: bool,
    is_rate: bool,
) -> Result<Val, EvalError> {
    let ra = ev.range_arg(arg(c, 0)?, t)?;
    let range_secs = ra.range_ms as f64 / 1000.0;
    let v3 = ev.v3();
    // Extrapolation measures from the nominal range `[t - range, t]`,
    // whichever boundary convention selects the samples.
    let (range_start, end) = (ra.start, ra.end);
    Ok(Val::Vector(over_time(ra.series, t, false, |p| {
        extrapolated_rate(p, range_start, end, range_secs, is_counter, is_rate, v3)
    })))
}

/// `double_exponential_smoothing`, formerly `holt_winters`.
fn double_exponential_smoothing(ev: &dyn ArgEval, c: &Call, t: i64) -> Result<Val, EvalError> {
    let name = c.func.name;
    let ra = ev.range_arg(arg(c, 0)?, t)?;
    let sf = ev.eval_scalar(arg(c, 1)?, t, name)?;
    let tf = ev.eval_scalar(arg(c, 2)?, t, name)?;
    // Checked per series, as functions.go does: no series, no error.
    if !ra.series.is_empty() {
        if sf <= 0.0 || sf >= 1.0 || sf.is_nan() {
            return Err(bad(
                c,
                format!("invalid smoothing factor. Expected: 0 < sf < 1, got: {sf:.6}"),
            ));
        }
        if tf <= 0.0 || tf >= 1.0 || tf.is_nan() {
            return Err(bad(
                c,
                format!("invalid trend factor. Expected: 0 < tf < 1, got: {tf:.6}"),
            ));
        }
    }
    Ok(Val::Vector(over_time(ra.series, t, false, |p| {
        holt_winters(p, sf, tf)
    })))
}

fn predict_linear(ev: &dyn ArgEval, c: &Call, t: i64) -> Result<Val, EvalError> {
    let series = ev.range_arg(arg(c, 0)?, t)?.series;
    let dur = ev.eval_scalar(arg(c, 1)?, t, c.func.name)?;
    // The intercept is at the evaluation time even under `@`
    // (`linearRegression(samples, enh.Ts)`).
    Ok(Val::Vector(over_time(series, t, false, |p| {
        (p.len() >= 2).then(|| {
            let (slope, intercept) = linear_regression(p, t);
            slope * dur + intercept
        })
    })))
}

/// `changes`, or `resets` with `resets`.
fn changes(ev: &dyn ArgEval, c: &Call, t: i64, resets: bool) -> Result<Val, EvalError> {
    range_fn(ev, c, t, |p| {
        let mut n = 0_u32;
        for w in p.windows(2) {
            let (prev, cur) = (w[0].1, w[1].1);
            let hit = if resets {
                cur < prev
            } else {
                !(cur == prev || (cur.is_nan() && prev.is_nan()))
            };
            if hit {
                n += 1;
            }
        }
        Some(f64::from(n))
    })
}

fn avg_over_time(ev: &dyn ArgEval, c: &Call, t: i64) -> Result<Val, EvalError> {
    let v3 = ev.v3();
    range_fn(ev, c, t, |p| {
        Some(if v3 {
            mean_v3(p.iter().map(|x| x.1))
        } else {
            mean_kahan(p)
        })
    })
}

/// Keeps the metric name, unlike the other range functions.
fn last_over_time(ev: &dyn ArgEval, c: &Call, t: i64) -> Result<Val, EvalError> {
    let series = ev.range_arg(arg(c, 0)?, t)?.series;
    Ok(Val::Vector(over_time(series, t, true, |p| {
        p.last().map(|x| x.1)
    })))
}

fn quantile_over_time(ev: &dyn ArgEval, c: &Call, t: i64) -> Result<Val, EvalError> {
    let q = ev.eval_scalar(arg(c, 0)?, t, c.func.name)?;
    let series = ev.range_arg(arg(c, 1)?, t)?.series;
    Ok(Val::Vector(over_time(series, t, false, |p| {
        let mut vals: Vec<f64> = p.iter().map(|x| x.1).collect();
        Some(quantile(q, &mut vals))
    })))
}

/// One sample with the labels of `absent_labels(e)` when `empty`.
fn absent_sample(empty: bool, e: &Expr, t: i64) -> Val {
    Val::Vector(if empty {
        vec![Sample {
            labels: absent_labels(e),
            t,
            v: 1.0,
        }]
    } else {
        Vec::new()
    })
}

fn absent(ev: &dyn ArgEval, c: &Call, t: i64) -> Result<Val, EvalError> {
    let e = arg(c, 0)?;
    let empty = ev.eval_vector(e, t, c.func.name)?.is_empty();
    Ok(absent_sample(empty, e, t))
}

fn absent_over_time(ev: &dyn ArgEval, c: &Call, t: i64) -> Result<Val, EvalError> {
    let e = arg(c, 0)?;
    let empty = ev.range_arg(e, t)?.series.is_empty();
    Ok(absent_sample(empty, e, t))
}

fn round(ev: &dyn ArgEval, c: &Call, t: i64) -> Result<Val, EvalError> {
    let name = c.func.name;
    let v = ev.eval_vector(arg(c, 0)?, t, name)?;
    let to_nearest = match c.args.args.get(1) {
        Some(e) => ev.eval_scalar(e, t, name)?,
        None => 1.0,
    };
    // Rounds half up, not to even (`funcRound`).
    let inv = 1.0 / to_nearest;
    Ok(Val::Vector(simple(v, t, |x| (x * inv + 0.5).floor() / inv)))
}

fn clamp(ev: &dyn ArgEval, c: &Call, t: i64) -> Result<Val, EvalError> {
    let name = c.func.name;
    let v = ev.eval_vector(arg(c, 0)?, t, name)?;
    let min = ev.eval_scalar(arg(c, 1)?, t, name)?;
    let max = ev.eval_scalar(arg(c, 2)?, t, name)?;
    Ok(Val::Vector(if max < min {
        Vec::new()
    } else {
        simple(v, t, |x| go_max(min, go_min(max, x)))
    }))
}

fn clamp_min(ev: &dyn ArgEval, c: &Call, t: i64) -> Result<Val, EvalError> {
    let v = ev.eval_vector(arg(c, 0)?, t, c.func.name)?;
    let min = ev.eval_scalar(arg(c, 1)?, t, c.func.name)?;
    Ok(Val::Vector(simple(v, t, |x| go_max(min, x))))
}

fn clamp_max(ev: &dyn ArgEval, c: &Call, t: i64) -> Result<Val, EvalError> {
    let v = ev.eval_vector(arg(c, 0)?, t, c.func.name)?;
    let max = ev.eval_scalar(arg(c, 1)?, t, c.func.name)?;
    Ok(Val::Vector(simple(v, t, |x| go_min(max, x))))
}

fn scalar(ev: &dyn ArgEval, c: &Call, t: i64) -> Result<Val, EvalError> {
    let v = ev.eval_vector(arg(c, 0)?, t, c.func.name)?;
    Ok(Val::Scalar(if v.len() == 1 { v[0].v } else { f64::NAN }))
}

fn vector(ev: &dyn ArgEval, c: &Call, t: i64) -> Result<Val, EvalError> {
    let v = ev.eval_scalar(arg(c, 0)?, t, c.func.name)?;
    Ok(Val::Vector(vec![Sample {
        labels: Labels::new(),
        t,
        v,
    }]))
}

fn timestamp(ev: &dyn ArgEval, c: &Call, t: i64) -> Result<Val, EvalError> {
    let v = ev.eval_vector(arg(c, 0)?, t, c.func.name)?;
    Ok(Val::Vector(
        v.into_iter()
            .map(|s| Sample {
                labels: s.labels.without_name(),
                t,
                v: s.t as f64 / 1000.0,
            })
            .collect(),
    ))
}

/// `minute`, `hour`, … of their argument, or of the evaluation time.
fn date(ev: &dyn ArgEval, c: &Call, t: i64, part: &str) -> Result<Val, EvalError> {
    let v = match c.args.args.first() {
        Some(e) => ev.eval_vector(e, t, c.func.name)?,
        None => vec![Sample {
            labels: Labels::new(),
            t,
            v: t as f64 / 1000.0,
        }],
    };
    Ok(Val::Vector(simple(v, t, |x| date_part(x, part))))
}

fn histogram_quantile(ev: &dyn ArgEval, c: &Call, t: i64) -> Result<Val, EvalError> {
    let name = c.func.name;
    let q = ev.eval_scalar(arg(c, 0)?, t, name)?;
    let v = ev.eval_vector(arg(c, 1)?, t, name)?;
    // Buckets group by all labels but `le`, the metric name
    // included; the name is dropped afterwards, so two histograms
    // differing only in name collide (an error, as in Prometheus).
    let le = ["le".to_string()];
    let mut order: Vec<Labels> = Vec::new();
    let mut groups: std::collections::HashMap<Labels, Vec<(f64, f64)>> =
        std::collections::HashMap::new();
    for s in v {
        // Series without a parsable `le` are ignored.
        let Some(ub) = s.labels.get("le").and_then(parse_float) else {
            continue;
        };
        let key = s.labels.remove_all(&le);
        groups
            .entry(key.clone())
            .or_insert_with(|| {
                order.push(key);
                Vec::new()
            })
            .push((ub, s.v));
    }
    Ok(Val::Vector(
        order
            .into_iter()
            .filter_map(|k| {
                let mut b = groups.remove(&k)?;
                Some(Sample {
                    v: bucket_quantile(q, &mut b),
                    labels: k.without_name(),
                    t,
                })
            })
            .collect(),
    ))
}

/// Refuses a `which` (source, destination) label of `label_replace` or
/// `label_join` that is not a valid label name.
fn check_label_name(c: &Call, which: &str, l: &str) -> Result<(), EvalError> {
    if is_label_name(l) {
        Ok(())
    } else {
        let func = c.func.name;
        Err(bad(
            c,
            format!("invalid {which} label name in {func}(): {l}"),
        ))
    }
}

fn label_replace(ev: &dyn ArgEval, c: &Call, t: i64) -> Result<Val, EvalError> {
    let name = c.func.name;
    let v = ev.eval_vector(arg(c, 0)?, t, name)?;
    let dst = ev.eval_string(arg(c, 1)?, t, name)?;
    let repl = ev.eval_string(arg(c, 2)?, t, name)?;
    let src = ev.eval_string(arg(c, 3)?, t, name)?;
    let re_s = ev.eval_string(arg(c, 4)?, t, name)?;
    let re = Regex::new(&format!("^(?:{re_s})$")).map_err(|_| {
        bad(
            c,
            format!("invalid regular expression in label_replace(): {re_s}"),
        )
    })?;
    check_label_name(c, "destination", &dst)?;
    Ok(Val::Vector(
        v.into_iter()
            .map(|s| {
                let src_val = s.labels.get(&src).unwrap_or("");
                let labels = match re.captures(src_val) {
                    Some(caps) => {
                        let mut replaced = String::new();
                        caps.expand(&repl, &mut replaced);
                        let mut l = s.labels.clone();
                        l.set(dst.clone(), replaced);
                        l
                    }
                    None => s.labels.clone(),
                };
                Sample { labels, t, v: s.v }
            })
            .collect(),
    ))
}

fn label_join(ev: &dyn ArgEval, c: &Call, t: i64) -> Result<Val, EvalError> {
    let name = c.func.name;
    let v = ev.eval_vector(arg(c, 0)?, t, name)?;
    let dst = ev.eval_string(arg(c, 1)?, t, name)?;
    let sep = ev.eval_string(arg(c, 2)?, t, name)?;
    let mut srcs = Vec::new();
    for e in c.args.args.iter().skip(3) {
        let s = ev.eval_string(e, t, name)?;
        check_label_name(c, "source", &s)?;
        srcs.push(s);
    }
    check_label_name(c, "destination", &dst)?;
    Ok(Val::Vector(
        v.into_iter()
            .map(|s| {
                let joined = srcs
                    .iter()
                    .map(|n| s.labels.get(n).unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join(&sep);
                let mut labels = s.labels;
                labels.set(dst.clone(), joined);
                Sample { labels, t, v: s.v }
            })
            .collect(),
    ))
}

/// `sort`, or `sort_desc` with `desc`: NaN last either way.
fn sort(ev: &dyn ArgEval, c: &Call, t: i64, desc: bool) -> Result<Val, EvalError> {
    use std::cmp::Ordering;
    let mut v = ev.eval_vector(arg(c, 0)?, t, c.func.name)?;
    v.sort_by(|a, b| match (a.v.is_nan(), b.v.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) if desc => b.v.partial_cmp(&a.v).unwrap_or(Ordering::Equal),
        (false, false) => a.v.partial_cmp(&b.v).unwrap_or(Ordering::Equal),
    });
    Ok(Val::Vector(
        v.into_iter().map(|s| Sample { t, ..s }).collect(),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn go_logs() {
        assert_eq!(frexp(8.0), (0.5, 4));
        assert_eq!(frexp(f64::MIN_POSITIVE / 4.0), (0.5, -1023));
        assert_eq!(go_log2(8.0), 3.0);
        assert_eq!(go_log10(100.0), 2.0);
        assert_eq!(go_log10(20.0), 1.301_029_995_663_981);
        assert_eq!(go_log10(3.0), 0.477_121_254_719_662_4);
        assert_eq!(go_log(1.0), 0.0);
        assert!((go_log(10.0) - 10f64.ln()).abs() < 1e-15);
        assert_eq!(go_log(0.0), f64::NEG_INFINITY);
        assert!(go_log(-1.0).is_nan());
    }

    /// `lookup` searches the table by halves: it must be in name order,
    /// each name once.
    #[test]
    fn table_is_in_name_order() {
        assert!(FUNCTIONS.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(supported_functions().all(|n| lookup(n).is_some()));
        assert!(lookup("rat").is_none());
    }

    #[test]
    fn bucket_quantile_interpolates() {
        let mut b = vec![(0.1, 10.0), (0.5, 20.0), (f64::INFINITY, 20.0)];
        // rank 10 falls at the top of the first bucket.
        assert!((bucket_quantile(0.5, &mut b) - 0.1).abs() < 1e-12);
        let mut b = vec![(1.0, 0.0), (2.0, 10.0), (f64::INFINITY, 10.0)];
        assert!((bucket_quantile(0.5, &mut b) - 1.5).abs() < 1e-12);
        let mut b = vec![(1.0, 5.0)];
        assert!(bucket_quantile(0.5, &mut b).is_nan());
    }

    #[test]
    fn quantile_edges() {
        assert_eq!(quantile(-1.0, &mut [1.0]), f64::NEG_INFINITY);
        assert_eq!(quantile(2.0, &mut [1.0]), f64::INFINITY);
        assert!((quantile(0.5, &mut [1.0, 2.0, 3.0, 4.0]) - 2.5).abs() < 1e-12);
    }
}
