//! Runs Prometheus' own `PromQL` conformance files
//! (`promql/promqltest/testdata/*.test` in prometheus/prometheus) against
//! our evaluator, when `PROMQL_TESTDATA` names a directory holding them.
//!
//! Only instant evaluations are run; cases that need what the evaluator
//! refuses (subqueries, native histograms, experimental functions, …) or
//! checks we do not model (`expect info`/`warn` annotations) are counted as
//! skipped. The current files follow Prometheus 3.x semantics; set
//! `PROMQL_SEMANTICS=2` to run those of a 2.x tag with 2.x semantics.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// Exact equality first, as `almost.Equal` does.
#![allow(clippy::float_cmp)]

use std::collections::HashSet;
use std::path::Path;

use nodewatch_aggregator::promql::{
    check_supported, parse, Engine, EngineOptions, Labels, MemStorage, Semantics, Value,
};
use nodewatch_aggregator::rules::parse_duration;
use nodewatch_aggregator::rules::unittest::parse_series_description;

/// Whether `expr` names `metric` as a whole identifier (`foo` in
/// `rate(foo[5m])`, not in `foo_bucket`).
fn names_metric(expr: &str, metric: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    expr.match_indices(metric).any(|(i, _)| {
        let before = expr[..i].chars().next_back();
        let after = expr[i + metric.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

#[derive(Default, Debug)]
struct Tally {
    passed: usize,
    skipped: usize,
    skip_reasons: std::collections::BTreeMap<String, usize>,
    failed: Vec<String>,
}

impl Tally {
    fn skip(&mut self, why: &str) {
        self.skipped += 1;
        *self.skip_reasons.entry(why.to_string()).or_default() += 1;
    }
}

/// `almost.Equal` with promqltest's default epsilon.
fn almost_equal(a: f64, b: f64) -> bool {
    const EPS: f64 = 1e-6;
    if (a.is_nan() && b.is_nan()) || a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < f64::MIN_POSITIVE {
        return diff < EPS * f64::MIN_POSITIVE;
    }
    diff / abs_sum.min(f64::MAX) < EPS
}

/// Splits `metric{a="b"} 1 2` into the series and the rest.
fn split_series(line: &str) -> (&str, &str) {
    let line = line.trim();
    let end = match (line.find('{'), line.find(char::is_whitespace)) {
        (Some(b), Some(ws)) if b < ws => line[b..].find('}').map_or(line.len(), |e| b + e + 1),
        (_, Some(ws)) => ws,
        (_, None) => line.len(),
    };
    (line[..end].trim(), line[end..].trim())
}

struct Case {
    line: usize,
    t_ms: i64,
    expr: String,
    expect_fail: bool,
    skip: bool,
    scalar: Option<f64>,
    samples: Vec<(Labels, f64)>,
}

fn run_case(engine: &Engine, storage: &MemStorage, c: &Case, tally: &mut Tally, file: &str) {
    let place = format!("{file}:{} `{}`", c.line, c.expr);
    let Ok(expr) = parse(&c.expr) else {
        tally.skip("unparsable by promql-parser");
        return;
    };
    if c.skip {
        tally.skip("needs native histograms, strings or ranges");
        return;
    }
    if let Err(u) = check_supported(&expr) {
        tally.skip(&u.to_string());
        return;
    }
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        engine.eval(storage, &expr, c.t_ms)
    }));
    let Ok(res) = res else {
        tally.failed.push(format!("{place}: PANIC"));
        return;
    };
    match (res, c.expect_fail) {
        (Err(_), true) => tally.passed += 1,
        (Ok(v), true) => tally
            .failed
            .push(format!("{place}: expected failure, got {v:?}")),
        (Err(e), false) => tally.failed.push(format!("{place}: error {e}")),
        (Ok(Value::Scalar(v)), false) => match c.scalar {
            Some(exp) if almost_equal(exp, v) => tally.passed += 1,
            _ => tally.failed.push(format!(
                "{place}: got scalar {v}, expected {:?} / {:?}",
                c.scalar, c.samples
            )),
        },
        (Ok(Value::String(_)), false) => tally.skipped += 1,
        (Ok(Value::Vector(v)), false) => {
            let mut got: Vec<(Labels, f64)> = v.into_iter().map(|s| (s.labels, s.v)).collect();
            let mut exp = c.samples.clone();
            got.sort_by(|a, b| a.0.cmp(&b.0));
            exp.sort_by(|a, b| a.0.cmp(&b.0));
            let same = c.scalar.is_none()
                && got.len() == exp.len()
                && got
                    .iter()
                    .zip(&exp)
                    .all(|(g, e)| g.0 == e.0 && almost_equal(g.1, e.1));
            if same {
                tally.passed += 1;
            } else {
                let fmt = |v: &[(Labels, f64)]| {
                    v.iter()
                        .map(|(l, x)| format!("{l} {x}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                tally.failed.push(format!(
                    "{place}:\n    exp: {}\n    got: {}",
                    fmt(&exp),
                    fmt(&got)
                ));
            }
        }
    }
}

#[allow(clippy::too_many_lines)]
fn run_file(path: &Path, tally: &mut Tally) {
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // `PROMQL_SEMANTICS=2` runs the files of a Prometheus 2.x tag
    // (`promql/testdata/` there) with 2.x semantics.
    let semantics = if std::env::var("PROMQL_SEMANTICS").as_deref() == Ok("2") {
        Semantics::Prometheus2
    } else {
        Semantics::Prometheus3
    };
    let engine = Engine::new(EngineOptions {
        semantics,
        ..EngineOptions::default()
    });
    let mut storage = MemStorage::new();
    // Metrics we could not load (native histograms): cases naming them are skipped.
    let mut unloaded: HashSet<String> = HashSet::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_end();
        i += 1;
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let cmd = words.next().unwrap_or("");
        let body_end = |from: usize| {
            let mut j = from;
            while j < lines.len()
                && (lines[j].starts_with([' ', '\t']))
                && !lines[j].trim().is_empty()
            {
                j += 1;
            }
            j
        };
        match cmd {
            "clear" => {
                storage = MemStorage::new();
                unloaded.clear();
            }
            "load" | "load_with_nhcb" => {
                let interval = parse_duration(words.next().unwrap_or("1m")).unwrap_or(60_000);
                let end = body_end(i);
                for l in &lines[i..end] {
                    let (series, values) = split_series(l);
                    let name = series.split('{').next().unwrap_or("").to_string();
                    if values.contains("{{") {
                        unloaded.insert(name);
                        continue;
                    }
                    if cmd == "load_with_nhcb" {
                        // The same data also becomes native histograms under
                        // the base name; only the classic series are ours.
                        let base = name
                            .trim_end_matches("_bucket")
                            .trim_end_matches("_sum")
                            .trim_end_matches("_count");
                        unloaded.insert(base.to_string());
                    }
                    match parse_series_description(series, values) {
                        Ok((labels, vals)) => {
                            for (k, v) in vals.into_iter().enumerate() {
                                if let Some(v) = v {
                                    storage.append(&labels, k as i64 * interval, v);
                                }
                            }
                        }
                        Err(_) => {
                            unloaded.insert(name);
                        }
                    }
                }
                i = end;
            }
            _ if cmd.starts_with("eval") => {
                let end = body_end(i);
                let body = &lines[i..end];
                let start_line = i;
                i = end;
                let rest: Vec<&str> = words.collect();
                if rest.first() != Some(&"instant") || rest.get(1) != Some(&"at") {
                    tally.skipped += 1;
                    continue;
                }
                let Ok(t_ms) = parse_duration(rest.get(2).copied().unwrap_or("")) else {
                    tally.skipped += 1;
                    continue;
                };
                let expr = rest[3..].join(" ");
                let mut case = Case {
                    line: start_line,
                    t_ms,
                    expr: expr.clone(),
                    expect_fail: cmd == "eval_fail",
                    skip: cmd != "eval" && cmd != "eval_fail" && cmd != "eval_ordered",
                    scalar: None,
                    samples: Vec::new(),
                };
                if expr.contains("__name__=~")
                    || unloaded
                        .iter()
                        .any(|m| !m.is_empty() && names_metric(&expr, m))
                {
                    case.skip = true;
                }
                for b in body {
                    let b = b.trim();
                    if let Some(e) = b.strip_prefix("expect ") {
                        if e.starts_with("fail") {
                            case.expect_fail = true;
                        } else if e.starts_with("string") || e.starts_with("range") {
                            case.skip = true;
                        }
                        // `info`/`warn` annotations are not modelled; the
                        // values are still compared.
                        continue;
                    }
                    if b.contains("{{") {
                        case.skip = true;
                        continue;
                    }
                    let (series, value) = split_series(b);
                    if value.is_empty() {
                        match nodewatch_aggregator::promql::value_parse_float(series) {
                            Some(v) => case.scalar = Some(v),
                            None => case.skip = true,
                        }
                        continue;
                    }
                    match (
                        parse_series_description(series, "0"),
                        nodewatch_aggregator::promql::value_parse_float(value),
                    ) {
                        (Ok((l, _)), Some(v)) => case.samples.push((l, v)),
                        _ => case.skip = true,
                    }
                }
                run_case(&engine, &storage, &case, tally, &file);
            }
            _ => {}
        }
    }
}

#[test]
fn prometheus_conformance_files() {
    let Some(dir) = std::env::var_os("PROMQL_TESTDATA") else {
        eprintln!("PROMQL_TESTDATA not set; skipping Prometheus' promqltest files");
        return;
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    let mut tally = Tally::default();
    for p in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "test"))
    {
        run_file(p, &mut tally);
    }
    eprintln!(
        "promqltest: {} passed, {} skipped, {} failed",
        tally.passed,
        tally.skipped,
        tally.failed.len()
    );
    for (why, n) in &tally.skip_reasons {
        eprintln!("  skipped {n}: {why}");
    }
    for f in &tally.failed {
        eprintln!("FAIL {f}");
    }
    let allowed: usize = std::env::var("PROMQL_TESTDATA_ALLOWED_FAILURES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        tally.failed.len() <= allowed,
        "{} failures",
        tally.failed.len()
    );
}
