//! `promtool test rules` and `promtool check rules`, same file format,
//! output shape and exit codes (after `cmd/promtool/unittest.go` and
//! `cmd/promtool/main.go` of Prometheus 2.x).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::rulefmt::held::unheld_selectors;
use super::rulefmt::load_file;
use super::{ActiveAlert, AlertState, ExternalContext, Group, GroupOptions};
use crate::promql::{
    parse, stale_nan, Engine, EngineOptions, Expr, Labels, MemStorage, Value, METRIC_NAME,
};
use nodewatch_proto::gocompat::{format_float_e, parse_duration, parse_float, quote};

/// Exit code when every test passed / every file is valid.
pub const EXIT_SUCCESS: i32 = 0;
/// Exit code when a test failed or a file is invalid (promtool's
/// `failureExitCode`).
pub const EXIT_FAILURE: i32 = 1;

/// Prometheus' default `evaluation_interval`.
const DEFAULT_TEST_INTERVAL_MS: i64 = 60_000;

/// A duration in a test file (`model.Duration`, e.g. `1m30s`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Dur(i64);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A plain `0` is a YAML integer, which Go's decoder still hands to
        // `model.Duration` as text.
        let s = match serde_yaml_ng::Value::deserialize(d)? {
            serde_yaml_ng::Value::String(s) => s,
            serde_yaml_ng::Value::Number(n) => n.to_string(),
            _ => return Err(serde::de::Error::custom("expected a duration")),
        };
        parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

/// `model.Duration.String()`: `1h30m`, `90d`, `0s`.
fn model_duration(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let mut ms = ms;
    let mut r = String::new();
    if ms < 0 {
        r.push('-');
        ms = ms.saturating_neg();
    }
    for (unit, mult, exact) in [
        ("y", 31_536_000_000_i64, true),
        ("w", 604_800_000, true),
        ("d", 86_400_000, false),
        ("h", 3_600_000, false),
        ("m", 60_000, false),
        ("s", 1000, false),
        ("ms", 1, false),
    ] {
        if exact && ms % mult != 0 {
            continue;
        }
        let v = ms / mult;
        if v > 0 {
            let _ = write!(r, "{v}{unit}");
            ms -= v * mult;
        }
    }
    r
}

/// Go's `time.Duration.String()` for whole milliseconds: `1m0s`, `1h2m3s`,
/// `500ms`.
fn go_duration(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let neg = ms < 0;
    let ms = ms.unsigned_abs();
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    if ms < 1000 {
        let _ = write!(s, "{ms}ms");
        return s;
    }
    let (h, m) = (ms / 3_600_000, (ms / 60_000) % 60);
    let (sec, frac) = ((ms / 1000) % 60, ms % 1000);
    if h > 0 {
        let _ = write!(s, "{h}h");
    }
    if h > 0 || m > 0 {
        let _ = write!(s, "{m}m");
    }
    if frac == 0 {
        let _ = write!(s, "{sec}s");
    } else {
        let f = format!("{frac:03}");
        let _ = write!(s, "{sec}.{}s", f.trim_end_matches('0'));
    }
    s
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    rule_files: Vec<String>,
    #[serde(default)]
    evaluation_interval: Option<Dur>,
    #[serde(default)]
    group_eval_order: Vec<String>,
    /// Prometheus 3.x: compare values with a relative tolerance of 1e-6.
    #[serde(default)]
    fuzzy_compare: bool,
    #[serde(default)]
    tests: Vec<TestGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestGroup {
    #[serde(default)]
    interval: Option<Dur>,
    #[serde(default)]
    input_series: Vec<InputSeries>,
    #[serde(default)]
    alert_rule_test: Vec<AlertTest>,
    #[serde(default)]
    promql_expr_test: Vec<ExprTest>,
    #[serde(default)]
    external_labels: BTreeMap<String, String>,
    #[serde(default)]
    external_url: String,
    #[serde(default)]
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSeries {
    series: String,
    #[serde(default)]
    values: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertTest {
    #[serde(default)]
    eval_time: Dur,
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<ExpAlert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpAlert {
    #[serde(default)]
    exp_labels: BTreeMap<String, String>,
    #[serde(default)]
    exp_annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExprTest {
    expr: String,
    #[serde(default)]
    eval_time: Dur,
    #[serde(default)]
    exp_samples: Vec<ExpSample>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpSample {
    #[serde(default)]
    labels: String,
    value: f64,
}

/// Longest expansion of one `…xN` term and of a whole series: far beyond
/// any test, small enough that a typo cannot exhaust memory.
const MAX_REPETITIONS: u64 = 1_000_000;

/// One expanded input value: a number, a staleness marker, or nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SeqValue {
    Omitted,
    Value(f64),
}

/// Parses a plain or signed number as the series notation allows it.
fn parse_number(s: &str) -> Option<f64> {
    match s {
        "stale" => Some(stale_nan()),
        _ => parse_float(s.trim()),
    }
}

/// Expands `promql/parser`'s series notation: `1 2 3`, `_`, `_x3` (three
/// omitted), `stale`, `1x3` (four 1s), `1+2x3` / `-2-1x3` (start, step,
/// count: count+1 values, each the previous plus the step).
fn expand_values(s: &str) -> Result<Vec<SeqValue>, String> {
    let mut out = Vec::new();
    for tok in s.split_whitespace() {
        if tok == "_" {
            out.push(SeqValue::Omitted);
            continue;
        }
        if let Some(n) = tok.strip_prefix("_x") {
            let n: u64 = n
                .parse()
                .ok()
                .filter(|n| *n <= MAX_REPETITIONS)
                .ok_or_else(|| format!("invalid repetition in {tok:?}"))?;
            out.extend(std::iter::repeat_n(SeqValue::Omitted, n as usize));
            continue;
        }
        if tok.starts_with("{{") {
            return Err("native histogram samples are not supported".into());
        }
        let Some(xpos) = tok.rfind('x') else {
            let v = parse_number(tok).ok_or_else(|| format!("invalid value {tok:?}"))?;
            out.push(SeqValue::Value(v));
            continue;
        };
        let times: u64 = tok[xpos + 1..]
            .parse()
            .map_err(|_| format!("invalid repetition in {tok:?}"))?;
        if times > MAX_REPETITIONS || out.len() as u64 > MAX_REPETITIONS {
            return Err(format!("too many repetitions in {tok:?}"));
        }
        let head = &tok[..xpos];
        // The step's sign splits start and step; a sign right after `e`
        // belongs to an exponent.
        let split = head
            .char_indices()
            .skip(1)
            .filter(|&(i, c)| {
                (c == '+' || c == '-') && !matches!(head.as_bytes().get(i - 1), Some(b'e' | b'E'))
            })
            .map(|(i, _)| i)
            .last();
        let (start, step) = match split {
            Some(i) => (
                parse_number(&head[..i]).ok_or_else(|| format!("invalid value {tok:?}"))?,
                parse_number(&head[i..]).ok_or_else(|| format!("invalid value {tok:?}"))?,
            ),
            None => (
                parse_number(head).ok_or_else(|| format!("invalid value {tok:?}"))?,
                0.0,
            ),
        };
        let mut cur = start;
        for _ in 0..=times {
            out.push(SeqValue::Value(cur));
            cur += step;
        }
    }
    Ok(out)
}

/// Parses `name{a="b"}` / `{a="b"}` (`parser.ParseMetric`).
fn parse_metric(s: &str) -> Result<Labels, String> {
    if s.trim().is_empty() || s.trim() == "{}" {
        return Ok(Labels::new());
    }
    let expr = parse(s).map_err(|e| e.to_string())?;
    let Expr::VectorSelector(vs) = expr else {
        return Err(format!("{s:?} is not a series description"));
    };
    if vs.offset.is_some() || vs.at.is_some() || !vs.matchers.or_matchers.is_empty() {
        return Err(format!("{s:?} is not a series description"));
    }
    let mut l = Labels::new();
    if let Some(n) = vs.name {
        l.set(METRIC_NAME.into(), n);
    }
    for m in vs.matchers.matchers {
        if !matches!(m.op, promql_parser::label::MatchOp::Equal) {
            return Err(format!("{s:?}: only equality matchers describe a series"));
        }
        l.set(m.name, m.value);
    }
    Ok(l)
}

/// Parses an input series as written in test files: the series
/// (`name{a="b"}`) and its values in expanding notation. Omitted values
/// (`_`) are `None`; `stale` is Prometheus' staleness marker.
pub fn parse_series_description(
    series: &str,
    values: &str,
) -> Result<(Labels, Vec<Option<f64>>), String> {
    let labels = parse_metric(series)?;
    let values = expand_values(values)?
        .into_iter()
        .map(|v| match v {
            SeqValue::Omitted => None,
            SeqValue::Value(v) => Some(v),
        })
        .collect();
    Ok((labels, values))
}

/// Resolves `rule_files` entries relative to the test file; a `*` in the
/// last path component matches like a shell glob. As promtool's
/// `resolveAndGlobFilepaths`, an entry matching nothing is a warning, not
/// an error.
fn resolve_rule_files(base: &Path, files: &[String], warnings: &mut Vec<String>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for f in files {
        let p = if Path::new(f).is_absolute() {
            PathBuf::from(f)
        } else {
            base.join(f)
        };
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let hits: Vec<PathBuf> = if name.contains('*') {
            let dir = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            let mut hits: Vec<PathBuf> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|e| {
                    e.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| glob_match(name, n))
                })
                .collect();
            hits.sort();
            hits
        } else if p.symlink_metadata().is_ok() {
            vec![p.clone()]
        } else {
            Vec::new()
        };
        if hits.is_empty() {
            warnings.push(format!("  WARNING: no file match pattern {}", p.display()));
        }
        out.extend(hits);
    }
    out
}

fn glob_match(pat: &str, s: &str) -> bool {
    match pat.split_once('*') {
        None => pat == s,
        Some((pre, rest)) => {
            let Some(tail) = s.strip_prefix(pre) else {
                return false;
            };
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| glob_match(rest, &tail[i..]))
        }
    }
}

/// `labelsAndAnnotations.String()`.
fn alerts_string(la: &[(Labels, Labels)]) -> String {
    if la.is_empty() {
        return "[]".into();
    }
    let item = |(l, a): &(Labels, Labels)| format!("\nLabels:{l}\nAnnotations:{a}");
    let mut s = format!("[\n0:{}", indent_lines(&item(&la[0]), "  "));
    for (i, x) in la[1..].iter().enumerate() {
        let _ = write!(s, ",\n{}:{}", i + 1, indent_lines(&item(x), "  "));
    }
    s.push_str("\n]");
    s
}

fn indent_lines(s: &str, indent: &str) -> String {
    let parts: Vec<&str> = s.split('\n').collect();
    let mut out = String::new();
    for (i, l) in parts.iter().enumerate() {
        if i > 0 {
            out.push_str(indent);
        }
        out.push_str(l);
        if i != parts.len() - 1 {
            out.push('\n');
        }
    }
    out
}

fn samples_string(s: &[(Labels, f64)]) -> String {
    if s.is_empty() {
        return "nil".into();
    }
    s.iter()
        .map(|(l, v)| format!("{l} {}", format_float_e(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn annotations_labels(a: &BTreeMap<String, String>) -> Labels {
    Labels::from_pairs(a.iter().map(|(k, v)| (k.clone(), v.clone())))
}

/// Runs one test file; returns its failures (empty: passed).
fn run_file(path: &Path, engine: EngineOptions, warnings: &mut Vec<String>) -> Vec<String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return vec![format!("{}: {e}", path.display())],
    };
    let tf: TestFile = match serde_yaml_ng::from_str(&text) {
        Ok(t) => t,
        Err(e) => return vec![e.to_string()],
    };
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    let rule_files = resolve_rule_files(base, &tf.rule_files, warnings);
    let mut order: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, g) in tf.group_eval_order.iter().enumerate() {
        if order.insert(g, i).is_some() {
            return vec![format!("group name repeated in evaluation order: {g}")];
        }
    }
    let eval_interval = tf
        .evaluation_interval
        .map_or(DEFAULT_TEST_INTERVAL_MS, |d| d.0);
    if eval_interval <= 0 {
        return vec!["evaluation_interval must be greater than 0".into()];
    }
    let mut errs = Vec::new();
    for tg in &tf.tests {
        errs.extend(run_group(
            tg,
            &rule_files,
            &order,
            (eval_interval, tf.fuzzy_compare),
            engine,
        ));
    }
    errs
}

fn run_group(
    tg: &TestGroup,
    rule_files: &[PathBuf],
    order: &BTreeMap<&str, usize>,
    (eval_interval, fuzzy): (i64, bool),
    engine_opts: EngineOptions,
) -> Vec<String> {
    let interval = tg.interval.map_or(eval_interval, |d| d.0);
    // promtool steps subqueries without a step by the file's
    // `evaluation_interval`.
    let engine_opts = EngineOptions {
        subquery_step_ms: eval_interval,
        ..engine_opts
    };
    let nan_equal = engine_opts.semantics == crate::promql::Semantics::Prometheus3;
    let opts = GroupOptions {
        default_interval_ms: interval,
        external: ExternalContext {
            labels: tg.external_labels.clone(),
            url: tg.external_url.clone(),
        },
        engine: engine_opts,
    };
    // Load rules.
    let mut groups: Vec<Group> = Vec::new();
    let mut load_errs = Vec::new();
    for f in rule_files {
        match load_file(f) {
            Ok(specs) => groups.extend(specs.into_iter().map(|s| Group::new(s, &opts))),
            Err(e) => load_errs.extend(e.0.iter().map(ToString::to_string)),
        }
    }
    if !load_errs.is_empty() {
        return load_errs;
    }
    groups.sort_by_key(|g| order.get(g.name()).copied().unwrap_or(0));

    // Expand the input series. Like promtool's lazy loader, samples enter
    // the store only when the evaluation loop reaches their time, so rules
    // cannot see the future (`@`, negative `offset`) and expression tests
    // see nothing after the last evaluation step.
    let mut storage = MemStorage::new();
    let (input, input_labels) = match input_samples(tg, interval) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let mut input = input.into_iter().peekable();

    let test_name = if tg.name.is_empty() {
        String::new()
    } else {
        format!("    name: {},\n", tg.name)
    };
    let mut alert_times: Vec<i64> = tg.alert_rule_test.iter().map(|a| a.eval_time.0).collect();
    alert_times.sort_unstable();
    alert_times.dedup();
    let max_t = tg
        .alert_rule_test
        .iter()
        .map(|a| a.eval_time.0)
        .chain(tg.promql_expr_test.iter().map(|e| e.eval_time.0))
        .max()
        .unwrap_or(0);

    let mut errs = Vec::new();
    let mut curr = 0;
    let mut ts = 0;
    'eval: while ts <= max_t {
        while let Some((t, series, v)) = input.next_if(|&(t, _, _)| t <= ts) {
            storage.append(&input_labels[series], t, v);
        }
        let mut eval_errs = Vec::new();
        for g in &groups {
            let res = g.eval_detailed(&storage, ts);
            for s in &res.recorded {
                storage.append(&s.labels, s.t, s.v);
            }
            for (rule, e) in res.errors {
                eval_errs.push(format!(
                    "    rule: {rule}, time: {}, err: {e}",
                    go_duration(ts)
                ));
            }
        }
        if !eval_errs.is_empty() {
            errs.extend(eval_errs);
            break 'eval;
        }
        // Alerts are checked at the evaluation `ts` with
        // `ts <= eval_time < ts + evaluation_interval`.
        while curr < alert_times.len()
            && ts <= alert_times[curr]
            && alert_times[curr] < ts + eval_interval
        {
            let t = alert_times[curr];
            check_alerts(tg, &groups, t, &test_name, &mut errs);
            curr += 1;
        }
        ts += eval_interval;
    }

    errs.extend(check_exprs(
        tg,
        &Engine::new(engine_opts),
        &storage,
        fuzzy,
        nan_equal,
    ));
    errs
}

/// Input samples as (time, index of their labels, value), and the labels.
type InputSamples = (Vec<(i64, usize, f64)>, Vec<Labels>);

/// The group's input series, expanded: each sample as (time, index of its
/// labels, value) in time order, and the labels.
fn input_samples(tg: &TestGroup, interval: i64) -> Result<InputSamples, Vec<String>> {
    let mut input: Vec<(i64, usize, f64)> = Vec::new();
    let mut input_labels: Vec<Labels> = Vec::new();
    // A series defined twice keeps only its last definition, as promtool's
    // loader keys definitions by label set.
    let mut last_def: std::collections::HashMap<Labels, usize> = std::collections::HashMap::new();
    let mut parsed = Vec::with_capacity(tg.input_series.len());
    for (i, s) in tg.input_series.iter().enumerate() {
        let labels = match parse_metric(&s.series) {
            Ok(l) => l,
            Err(e) => return Err(vec![format!("    series {:?}: {e}", s.series)]),
        };
        last_def.insert(labels.clone(), i);
        parsed.push(labels);
    }
    for (i, s) in tg.input_series.iter().enumerate() {
        if last_def.get(&parsed[i]) != Some(&i) {
            continue;
        }
        let labels = parsed[i].clone();
        let values = match expand_values(&s.values) {
            Ok(v) => v,
            Err(e) => return Err(vec![format!("    series {:?}: values: {e}", s.series)]),
        };
        for (i, v) in values.into_iter().enumerate() {
            if let SeqValue::Value(v) = v {
                input.push(((i as i64).saturating_mul(interval), input_labels.len(), v));
            }
        }
        input_labels.push(labels);
    }
    input.sort_by_key(|&(t, _, _)| t);
    Ok((input, input_labels))
}

/// Compares the firing alerts of `groups` with what the alert tests of
/// `tg` at `t` expect.
fn check_alerts(tg: &TestGroup, groups: &[Group], t: i64, test_name: &str, errs: &mut Vec<String>) {
    for tc in tg.alert_rule_test.iter().filter(|a| a.eval_time.0 == t) {
        let mut got: Vec<(Labels, Labels)> = groups
            .iter()
            .flat_map(Group::alerts)
            .filter(|a: &ActiveAlert| a.rule == tc.alertname && a.state == AlertState::Firing)
            .map(|a| (a.labels, annotations_labels(&a.annotations)))
            .collect();
        let mut exp: Vec<(Labels, Labels)> = tc
            .exp_alerts
            .iter()
            .map(|a| {
                let mut l =
                    Labels::from_pairs(a.exp_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
                l.set("alertname".into(), tc.alertname.clone());
                (l, annotations_labels(&a.exp_annotations))
            })
            .collect();
        got.sort();
        exp.sort();
        if got != exp {
            errs.push(format!(
                "{test_name}    alertname: {}, time: {}, \n        exp:{}, \n        got:{}",
                tc.alertname,
                model_duration(t),
                indent_lines(&alerts_string(&exp), "            "),
                indent_lines(&alerts_string(&got), "            "),
            ));
        }
    }
}

/// Runs the expression tests of `tg` over what the evaluation stored.
fn check_exprs(
    tg: &TestGroup,
    engine: &Engine,
    storage: &MemStorage,
    fuzzy: bool,
    nan_equal: bool,
) -> Vec<String> {
    let mut errs = Vec::new();
    'outer: for tc in &tg.promql_expr_test {
        let t = tc.eval_time.0;
        let got = match engine.query(storage, &tc.expr, t) {
            Ok(Value::Vector(v)) => v.into_iter().map(|s| (s.labels, s.v)).collect::<Vec<_>>(),
            Ok(Value::Scalar(v)) => vec![(Labels::new(), v)],
            Ok(Value::String(_) | Value::Matrix(_)) => {
                errs.push(format!(
                    "    expr: {}, time: {}, err: rule result is not a vector or scalar",
                    quote(&tc.expr),
                    model_duration(t)
                ));
                continue;
            }
            Err(e) => {
                errs.push(format!(
                    "    expr: {}, time: {}, err: {e}",
                    quote(&tc.expr),
                    model_duration(t)
                ));
                continue;
            }
        };
        let mut exp = Vec::new();
        for s in &tc.exp_samples {
            match parse_metric(&s.labels) {
                Ok(l) => exp.push((l, s.value)),
                Err(e) => {
                    errs.push(format!(
                        "    expr: {}, time: {}, err: labels {}: {e}",
                        quote(&tc.expr),
                        model_duration(t),
                        quote(&s.labels)
                    ));
                    continue 'outer;
                }
            }
        }
        let mut got = got;
        let by_labels = |a: &(Labels, f64), b: &(Labels, f64)| a.0.cmp(&b.0);
        got.sort_by(by_labels);
        exp.sort_by(by_labels);
        let same = got.len() == exp.len()
            && got
                .iter()
                .zip(&exp)
                .all(|(g, e)| g.0 == e.0 && same_value(g.1, e.1, fuzzy, nan_equal));
        if !same {
            errs.push(format!(
                "    expr: {}, time: {},\n        exp: {}\n        got: {}",
                quote(&tc.expr),
                model_duration(t),
                samples_string(&exp),
                samples_string(&got)
            ));
        }
    }
    errs
}

/// promtool's value comparison: exact, or with `fuzzy_compare` Prometheus'
/// `almost.Equal` at epsilon 1e-6. promtool 2.x compares with Go's
/// `reflect.DeepEqual`, under which NaN equals nothing, not even NaN (a test
/// expecting NaN always fails); 3.x takes two NaNs as equal (`nan_equal`).
#[allow(clippy::float_cmp)] // Exactness is the point.
fn same_value(a: f64, b: f64, fuzzy: bool, nan_equal: bool) -> bool {
    const EPS: f64 = 1e-6;
    if a == b {
        return true;
    }
    if a.is_nan() && b.is_nan() {
        return nan_equal;
    }
    if !fuzzy {
        return false;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < f64::MIN_POSITIVE {
        return diff < EPS * f64::MIN_POSITIVE;
    }
    diff / abs_sum.min(f64::MAX) < EPS
}

/// Runs `promtool test rules` on each file, writing promtool's report to
/// `out`; returns the exit code (0: all passed, 1: any failure).
pub fn run_test_files(paths: &[PathBuf], out: &mut impl Write) -> i32 {
    run_test_files_with(paths, EngineOptions::default(), out)
}

/// [`run_test_files`] with chosen evaluation semantics, e.g.
/// [`crate::promql::Semantics::Prometheus3`] to match a 3.x `promtool`.
pub fn run_test_files_with(paths: &[PathBuf], engine: EngineOptions, out: &mut impl Write) -> i32 {
    let mut failed = false;
    for p in paths {
        // Output errors (a closed pipe) must not change the verdict.
        let _ = writeln!(out, "Unit Testing:  {}", p.display());
        let mut warnings = Vec::new();
        let errs = run_file(p, engine, &mut warnings);
        for w in warnings {
            let _ = writeln!(out, "{w}");
        }
        if errs.is_empty() {
            let _ = writeln!(out, "  SUCCESS");
        } else {
            failed = true;
            let _ = writeln!(out, "  FAILED:");
            for e in errs {
                let _ = writeln!(out, "{e}");
                let _ = writeln!(out);
            }
        }
        let _ = writeln!(out);
    }
    if failed {
        EXIT_FAILURE
    } else {
        EXIT_SUCCESS
    }
}

/// Like `promtool check rules`: validates each file, printing
/// `SUCCESS: N rules found` or every problem; returns the exit code.
pub fn check_rule_files(paths: &[PathBuf], out: &mut impl Write) -> i32 {
    let mut failed = false;
    for p in paths {
        let _ = writeln!(out, "Checking {}", p.display());
        match load_file(p) {
            Ok(groups) => {
                let n: usize = groups.iter().map(|g| g.rules.len()).sum();
                let _ = writeln!(out, "  SUCCESS: {n} rules found");
                for w in unheld_selectors(&groups) {
                    let _ = writeln!(out, "  WARNING: {w}");
                }
            }
            Err(e) => {
                failed = true;
                let _ = writeln!(out, "  FAILED:");
                for err in e.0 {
                    let _ = writeln!(out, "{err}");
                }
            }
        }
        let _ = writeln!(out);
    }
    if failed {
        EXIT_FAILURE
    } else {
        EXIT_SUCCESS
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn vals(s: &str) -> Vec<Option<f64>> {
        expand_values(s)
            .unwrap()
            .into_iter()
            .map(|v| match v {
                SeqValue::Omitted => None,
                SeqValue::Value(v) => Some(v),
            })
            .collect()
    }

    #[test]
    fn series_notation() {
        assert_eq!(
            vals("-2+4x3"),
            [Some(-2.0), Some(2.0), Some(6.0), Some(10.0)]
        );
        assert_eq!(
            vals("1-2x4"),
            [Some(1.0), Some(-1.0), Some(-3.0), Some(-5.0), Some(-7.0)]
        );
        assert_eq!(vals("1x4"), [Some(1.0); 5]);
        assert_eq!(vals("1 _x3 2"), [Some(1.0), None, None, None, Some(2.0)]);
        assert_eq!(vals("1e3+1e-3x1"), [Some(1000.0), Some(1000.001)]);
        let s = expand_values("stale").unwrap();
        assert!(matches!(s[0], SeqValue::Value(v) if crate::promql::is_stale_nan(v)));
        assert!(expand_values("1+x").is_err());
        assert!(expand_values("abc").is_err());
        assert!(expand_values("_x99999999999").is_err());
        assert!(expand_values("1x99999999999").is_err());
    }

    #[test]
    fn value_comparison() {
        // promtool 2.x: NaN equals nothing; 3.x: NaN equals NaN.
        assert!(!same_value(f64::NAN, f64::NAN, false, false));
        assert!(same_value(f64::NAN, f64::NAN, false, true));
        assert!(!same_value(1.0, 1.000_000_1, false, false));
        assert!(same_value(1.0, 1.000_000_1, true, false));
        assert!(!same_value(1.0, 1.001, true, false));
    }

    #[test]
    fn durations_in_test_files() {
        #[derive(Deserialize)]
        struct D {
            d: Dur,
        }
        let d: D = serde_yaml_ng::from_str("d: 0").unwrap();
        assert_eq!(d.d, Dur(0));
        let d: D = serde_yaml_ng::from_str("d: 1m30s").unwrap();
        assert_eq!(d.d, Dur(90_000));
        assert!(serde_yaml_ng::from_str::<D>("d: 5").is_err());
    }

    #[test]
    fn duration_strings() {
        assert_eq!(model_duration(90_000), "1m30s");
        assert_eq!(model_duration(0), "0s");
        assert_eq!(model_duration(86_400_000 * 14), "2w");
        assert_eq!(go_duration(60_000), "1m0s");
        assert_eq!(go_duration(3_723_000), "1h2m3s");
        assert_eq!(go_duration(500), "500ms");
    }

    #[test]
    fn metric_descriptions() {
        let l = parse_metric(r#"up{job="a", instance="x"}"#).unwrap();
        assert_eq!(l.to_string(), r#"{__name__="up", instance="x", job="a"}"#);
        assert!(parse_metric(r#"up{job=~"a"}"#).is_err());
        assert!(parse_metric("").unwrap().is_empty());
    }
}
