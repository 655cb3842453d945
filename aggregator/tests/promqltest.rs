//! Runs Prometheus' own `PromQL` test scripts (`promql/testdata/*.test` of
//! Prometheus v2.42.0, kept unchanged in `../shared/promql-testdata-v2.42.0/`
//! next to the repository) against our engine, reading the script format
//! itself and applying the rules of that release's `promql/test.go`:
//!
//! - lines are trimmed and `#` comments blanked, so a comment ends a block;
//! - `load <interval>` appends its series (a series listed twice in one
//!   block keeps its last definition), `clear` empties the store;
//! - `eval instant at <time> <expr>`, `eval_fail` (any error passes, no
//!   error fails) and `eval_ordered` (result positions are checked);
//! - each evaluation is also run with every selector outside subqueries
//!   pinned by `@ <time>` and evaluated at `-10t, 0, t/5, t, 10t` (test.go's
//!   `atModifierTestCases`, skipped where a function reads the time), and
//!   each of those once more as a range query over `[t-1m, t+1m]` step 1m,
//!   whose middle step must give the same answer (not for `eval_ordered`);
//! - values compare with `almostEqual` (relative 1e-6, NaN equals NaN);
//!   a result series not expected, or an expected one missing, fails.
//!
//! `PROMQL_TESTDATA` may name another directory of scripts in this format.
//! Under `CI=true` a missing directory fails the test.

// `almostEqual` tests exact equality first.
#![allow(clippy::float_cmp)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use nodewatch_aggregator::promql::{
    parse, Engine, EngineOptions, Expr, Labels, MemStorage, Semantics, Value,
};
use nodewatch_aggregator::rules::unittest::parse_series_description;
use nodewatch_proto::gocompat::{parse_duration, parse_float};
use promql_parser::parser::AtModifier;

/// The 11 scripts of Prometheus v2.42.0.
const FILES: &[&str] = &[
    "aggregators.test",
    "at_modifier.test",
    "collision.test",
    "functions.test",
    "histograms.test",
    "literals.test",
    "operators.test",
    "selectors.test",
    "staleness.test",
    "subquery.test",
    "trig_functions.test",
];

/// Functions whose result changes with the evaluation time even when their
/// arguments are pinned by `@` (`AtModifierUnsafeFunctions`).
const AT_UNSAFE: &[&str] = &[
    "days_in_month",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "hour",
    "minute",
    "month",
    "year",
    "predict_linear",
    "time",
    "timestamp",
];

fn testdata_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("PROMQL_TESTDATA").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/promql-testdata-v2.42.0"),
        PathBuf::from,
    );
    if dir.is_dir() {
        return Some(dir);
    }
    let msg = format!(
        "Prometheus' PromQL test scripts not found at {} (set PROMQL_TESTDATA)",
        dir.display()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
    eprintln!("{msg}; skipping");
    None
}

/// `almostEqual` of Prometheus 2.42's `promql/test.go`.
fn almost_equal(a: f64, b: f64) -> bool {
    const EPSILON: f64 = 0.000_001;
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || diff < f64::MIN_POSITIVE {
        return diff < EPSILON * f64::MIN_POSITIVE;
    }
    diff / (a.abs() + b.abs()) < EPSILON
}

/// Splits `metric{a="b"} 1 2` into the series and its values.
fn split_series(line: &str) -> (&str, &str) {
    let line = line.trim();
    let end = match (line.find('{'), line.find(char::is_whitespace)) {
        (Some(b), Some(ws)) if b < ws => line[b..].find('}').map_or(line.len(), |e| b + e + 1),
        (_, Some(ws)) => ws,
        (_, None) => line.len(),
    };
    (line[..end].trim(), line[end..].trim())
}

/// `getLines`: trimmed lines, comments blanked.
fn get_lines(text: &str) -> Vec<String> {
    text.split('\n')
        .map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                String::new()
            } else {
                l.to_string()
            }
        })
        .collect()
}

/// What an `eval` expects.
#[derive(Default)]
struct Expected {
    /// A bare number line (`expect(0, …)`).
    scalar: Option<f64>,
    /// Series lines: labels → (position from 1, value).
    series: HashMap<Labels, (usize, f64)>,
}

struct EvalCmd {
    expr: String,
    t_ms: i64,
    fail: bool,
    ordered: bool,
    expected: Expected,
}

/// A result reduced to what `compareResult` looks at.
enum Got {
    Vector(Vec<(Labels, f64)>),
    Scalar(f64),
}

/// `compareResult`.
fn compare(cmd: &EvalCmd, got: &Got) -> Result<(), String> {
    match got {
        Got::Vector(v) => {
            let mut seen = std::collections::HashSet::new();
            for (pos, (labels, value)) in v.iter().enumerate() {
                let Some(&(exp_pos, exp)) = cmd.expected.series.get(labels) else {
                    return Err(format!("unexpected metric {labels} in result"));
                };
                if cmd.ordered && exp_pos != pos + 1 {
                    return Err(format!(
                        "expected metric {labels} with {exp} at position {exp_pos} but was at {}",
                        pos + 1
                    ));
                }
                if !almost_equal(exp, *value) {
                    return Err(format!("expected {exp} for {labels} but got {value}"));
                }
                seen.insert(labels.clone());
            }
            for (labels, (_, exp)) in &cmd.expected.series {
                if !seen.contains(labels) {
                    return Err(format!("expected metric {labels} with {exp} not found"));
                }
            }
            if let Some(s) = cmd.expected.scalar {
                // `expected[0]` has no metric: never seen in a vector.
                return Err(format!("expected scalar {s} not found in a vector result"));
            }
            Ok(())
        }
        Got::Scalar(v) => match cmd.expected.scalar {
            Some(exp) if almost_equal(exp, *v) => Ok(()),
            Some(exp) => Err(format!("expected Scalar {exp} but got {v}")),
            None => Err(format!("got scalar {v}, expected a vector")),
        },
    }
}

/// Pins every selector and subquery outside subqueries at `at_ms`, unless
/// pinned already; `false` if the expression calls a function whose
/// result depends on the evaluation time (then no variant is run).
fn pin_at(e: &mut Expr, at: &AtModifier) -> bool {
    match e {
        Expr::VectorSelector(vs) => {
            vs.at.get_or_insert_with(|| at.clone());
            true
        }
        Expr::MatrixSelector(ms) => {
            ms.vs.at.get_or_insert_with(|| at.clone());
            true
        }
        Expr::Subquery(sq) => {
            // Nothing inside a subquery is touched, not even a call.
            sq.at.get_or_insert_with(|| at.clone());
            true
        }
        Expr::Paren(p) => pin_at(&mut p.expr, at),
        Expr::Unary(u) => pin_at(&mut u.expr, at),
        Expr::Binary(b) => pin_at(&mut b.lhs, at) & pin_at(&mut b.rhs, at),
        Expr::Aggregate(a) => {
            let mut safe = pin_at(&mut a.expr, at);
            if let Some(p) = a.param.as_mut() {
                safe &= pin_at(p, at);
            }
            safe
        }
        Expr::Call(c) => {
            let mut safe = !AT_UNSAFE.contains(&c.func.name);
            for a in &mut c.args.args {
                safe &= pin_at(a, at);
            }
            safe
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => true,
    }
}

fn at_modifier(ms: i64) -> AtModifier {
    let t = if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    };
    AtModifier::At(t)
}

/// The queries one `eval` runs: the expression itself, then its pinned
/// variants (`atModifierTestCases`).
fn queries(expr: &Expr, t_ms: i64) -> Vec<(Expr, i64)> {
    let mut out = vec![(expr.clone(), t_ms)];
    let mut pinned = expr.clone();
    if !pin_at(&mut pinned, &at_modifier(t_ms)) {
        return out;
    }
    let times: Vec<i64> = if t_ms == 0 {
        vec![-1000, 0, 1000]
    } else {
        vec![-10 * t_ms, 0, t_ms / 5, t_ms, 10 * t_ms]
    };
    out.extend(times.into_iter().map(|t| (pinned.clone(), t)));
    out
}

/// Runs one query of an `eval` as `Test.exec` does: instant, then range.
fn run_query(
    engine: &Engine,
    storage: &MemStorage,
    cmd: &EvalCmd,
    expr: &Expr,
    t: i64,
) -> Result<(), String> {
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        engine.eval(storage, expr, t)
    }))
    .map_err(|_| "panic".to_string())?;
    let res = match res {
        Err(_) if cmd.fail => return Ok(()),
        Err(e) => return Err(format!("error evaluating at {t}ms: {e}")),
        Ok(_) if cmd.fail => return Err(format!("expected an error at {t}ms but got none")),
        Ok(v) => v,
    };
    let got = match res {
        Value::Vector(v) => Got::Vector(v.into_iter().map(|s| (s.labels, s.v)).collect()),
        Value::Scalar(v) => Got::Scalar(v),
        Value::String(s) => return Err(format!("unexpected string result {s:?}")),
        Value::Matrix(_) => return Err("received range result on instant evaluation".into()),
    };
    compare(cmd, &got).map_err(|e| format!("at {t}ms: {e}"))?;
    // Range mode: the middle step of [t-1m, t+1m] must agree.
    let range = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        engine.eval_range(storage, expr, t - 60_000, t + 60_000, 60_000)
    }))
    .map_err(|_| "panic in range mode".to_string())?
    .map_err(|e| format!("error at {t}ms in range mode: {e}"))?;
    if cmd.ordered {
        return Ok(());
    }
    let mid: Vec<(Labels, f64)> = range
        .into_iter()
        .filter_map(|s| {
            let v = s.points.iter().find(|p| p.0 == t)?.1;
            Some((s.labels, v))
        })
        .collect();
    let got = match got {
        Got::Scalar(_) => Got::Scalar(
            mid.first()
                .map(|x| x.1)
                .ok_or("range mode has no point at the evaluation time")?,
        ),
        Got::Vector(_) => Got::Vector(mid),
    };
    compare(cmd, &got).map_err(|e| format!("at {t}ms, range mode: {e}"))
}

#[derive(Default)]
struct FileResult {
    passed: usize,
    queries: usize,
    failed: Vec<String>,
}

#[allow(clippy::too_many_lines)]
fn run_file(path: &Path) -> FileResult {
    let mut res = FileResult::default();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(path).unwrap();
    let lines = get_lines(&text);
    // `newTestEngine`: 5m lookback, 1m default subquery step, 2.x rules.
    let engine = Engine::new(EngineOptions {
        semantics: Semantics::Prometheus2,
        subquery_step_ms: 60_000,
        ..EngineOptions::default()
    });
    let mut storage = MemStorage::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].as_str();
        if l.is_empty() {
            i += 1;
            continue;
        }
        let cmd = l.split([' ', '\t']).next().unwrap_or("").to_lowercase();
        if cmd == "clear" {
            storage = MemStorage::new();
            i += 1;
        } else if cmd == "load" {
            let gap = l["load".len()..].trim();
            let Ok(gap) = parse_duration(gap) else {
                res.failed
                    .push(format!("{name}:{}: invalid load step {gap:?}", i + 1));
                return res;
            };
            // Series keyed by labels: a later line replaces an earlier one.
            let mut defs: Vec<(Labels, Vec<Option<f64>>)> = Vec::new();
            i += 1;
            while i < lines.len() && !lines[i].is_empty() {
                let (series, values) = split_series(&lines[i]);
                match parse_series_description(series, values) {
                    Ok((labels, vals)) => {
                        if let Some(d) = defs.iter_mut().find(|d| d.0 == labels) {
                            d.1 = vals;
                        } else {
                            defs.push((labels, vals));
                        }
                    }
                    Err(e) => {
                        res.failed
                            .push(format!("{name}:{}: cannot load series: {e}", i + 1));
                        return res;
                    }
                }
                i += 1;
            }
            for (labels, vals) in defs {
                for (k, v) in vals.into_iter().enumerate() {
                    if let Some(v) = v {
                        storage.append(&labels, k as i64 * gap, v);
                    }
                }
            }
        } else if cmd.starts_with("eval") {
            let line_no = i + 1;
            let Some(cmd) = parse_eval(&lines, &mut i) else {
                res.failed.push(format!(
                    "{name}:{line_no}: invalid evaluation command {l:?}"
                ));
                return res;
            };
            let expr = match parse(&cmd.expr) {
                Ok(e) => e,
                Err(e) => {
                    // Go's parser accepted every expression of these
                    // scripts (test.go parses them when loading).
                    res.failed
                        .push(format!("{name}:{line_no}: `{}`: {e}", cmd.expr));
                    continue;
                }
            };
            let mut problems = Vec::new();
            for (q, t) in queries(&expr, cmd.t_ms) {
                res.queries += 1;
                if let Err(e) = run_query(&engine, &storage, &cmd, &q, t) {
                    problems.push(e);
                }
            }
            if problems.is_empty() {
                res.passed += 1;
            } else {
                res.failed.push(format!(
                    "{name}:{line_no}: `{}`: {}",
                    cmd.expr,
                    problems.join("; ")
                ));
            }
        } else {
            res.failed
                .push(format!("{name}:{}: invalid command {l:?}", i + 1));
            return res;
        }
    }
    res
}

/// `parseEval`: the command line at `lines[*i]` and its expectations;
/// leaves `*i` after the block.
fn parse_eval(lines: &[String], i: &mut usize) -> Option<EvalCmd> {
    let l = lines[*i].as_str();
    let rest = l.strip_prefix("eval")?;
    let (modifier, rest) = match rest.strip_prefix('_') {
        Some(r) => {
            let m = r.split_whitespace().next()?;
            (m, &r[m.len()..])
        }
        None => ("", rest),
    };
    let rest = rest.trim_start().strip_prefix("instant")?.trim_start();
    let rest = rest.strip_prefix("at")?.trim_start();
    let (at, expr) = rest.split_once(char::is_whitespace)?;
    let t_ms = parse_duration(at).ok()?;
    let mut cmd = EvalCmd {
        expr: expr.trim().to_string(),
        t_ms,
        fail: modifier == "fail",
        ordered: modifier == "ordered",
        expected: Expected::default(),
    };
    if !matches!(modifier, "" | "fail" | "ordered") {
        return None;
    }
    *i += 1;
    let mut pos = 0;
    while *i < lines.len() && !lines[*i].is_empty() {
        pos += 1;
        let def = lines[*i].as_str();
        *i += 1;
        if let Some(v) = parse_float(def.trim()) {
            cmd.expected.scalar = Some(v);
            break;
        }
        let (series, value) = split_series(def);
        let (labels, vals) = parse_series_description(series, value).ok()?;
        if vals.len() > 1 {
            return None;
        }
        let v = vals.first().copied().flatten().unwrap_or(f64::NAN);
        cmd.expected.series.insert(labels, (pos, v));
    }
    Some(cmd)
}

#[test]
fn prometheus_2_42_test_scripts() {
    let Some(dir) = testdata_dir() else { return };
    let mut report = Vec::new();
    let mut failures = Vec::new();
    let (mut total, mut passed) = (0, 0);
    for f in FILES {
        let path = dir.join(f);
        assert!(path.is_file(), "{} missing", path.display());
        let r = run_file(&path);
        let n = r.passed + r.failed.len();
        total += n;
        passed += r.passed;
        report.push(format!(
            "  {f:<22} {:>4}/{:<4} evaluations passed ({} queries incl. @ and range variants)",
            r.passed, n, r.queries
        ));
        failures.extend(r.failed);
    }
    eprintln!("Prometheus v2.42.0 PromQL test scripts: {passed}/{total} evaluations passed");
    for l in &report {
        eprintln!("{l}");
    }
    for f in &failures {
        eprintln!("FAIL {f}");
    }
    assert!(failures.is_empty(), "{} evaluations failed", failures.len());
}
