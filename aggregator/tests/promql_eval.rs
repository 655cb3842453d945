//! Evaluator behaviour that promtool files cannot show: errors, refusals,
//! staleness and window boundaries under both semantics, and a fuzz test
//! that no input makes parsing or evaluation panic.

// Expected values are exact.
#![allow(clippy::float_cmp)]

use crate::common;
use nodewatch_aggregator::promql::{
    check_supported, parse, stale_nan, Engine, EngineOptions, EvalError, Labels, MemStorage,
    QueryError, Semantics, Unsupported, Value,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn labels(name: &str, pairs: &[(&str, &str)]) -> Labels {
    let mut l = Labels::from_pairs(pairs.iter().copied());
    l.set("__name__".into(), name.into());
    l
}

/// `name{pairs}` with one sample per minute from t=0.
fn load(s: &mut MemStorage, name: &str, pairs: &[(&str, &str)], values: &[f64]) {
    let l = labels(name, pairs);
    for (i, v) in values.iter().enumerate() {
        s.append(&l, i as i64 * 60_000, *v);
    }
}

fn v2() -> Engine {
    Engine::default()
}

fn v3() -> Engine {
    Engine::new(EngineOptions {
        semantics: Semantics::Prometheus3,
        ..EngineOptions::default()
    })
}

fn vector(e: &Engine, s: &MemStorage, q: &str, t_ms: i64) -> Vec<(String, f64)> {
    match e.query(s, q, t_ms).unwrap() {
        Value::Vector(v) => {
            let mut out: Vec<(String, f64)> =
                v.into_iter().map(|s| (s.labels.to_string(), s.v)).collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        }
        other => panic!("{q}: expected a vector, got {other:?}"),
    }
}

fn err(e: &Engine, s: &MemStorage, q: &str) -> String {
    match e.query(s, q, 0) {
        Err(e) => e.to_string(),
        Ok(v) => panic!("{q}: expected an error, got {v:?}"),
    }
}

fn storage() -> MemStorage {
    let mut s = MemStorage::new();
    load(&mut s, "a", &[("x", "1"), ("y", "1")], &[1.0, 2.0, 3.0]);
    load(&mut s, "a", &[("x", "1"), ("y", "2")], &[4.0, 5.0, 6.0]);
    load(&mut s, "b", &[("x", "1"), ("y", "3")], &[1.0, 1.0, 1.0]);
    load(&mut s, "b", &[("x", "1"), ("y", "4")], &[2.0, 2.0, 2.0]);
    load(&mut s, "one", &[("x", "1")], &[10.0, 10.0, 10.0]);
    s
}

#[test]
fn matching_errors_are_prometheus_messages() {
    let s = storage();
    assert_eq!(
        err(&v2(), &s, "a * on(x) b"),
        r#"found duplicate series for the match group {x="1"} on the right hand-side of the operation: [{__name__="b", x="1", y="4"}, {__name__="b", x="1", y="3"}];many-to-many matching not allowed: matching labels must be unique on one side"#
    );
    assert_eq!(
        err(&v2(), &s, "one * on(x) group_right a * on(x) group_left b"),
        r#"found duplicate series for the match group {x="1"} on the right hand-side of the operation: [{__name__="b", x="1", y="4"}, {__name__="b", x="1", y="3"}];many-to-many matching not allowed: matching labels must be unique on one side"#
    );
    assert_eq!(
        err(&v2(), &s, "a + on(x) one"),
        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
    );
    assert_eq!(
        err(
            &v2(),
            &s,
            "a * on(x) group_left() (one + ignoring(y) a * 0)"
        ),
        r#"found duplicate series for the match group {x="1"} on the right hand-side of the operation: [{x="1", y="2"}, {x="1", y="1"}];many-to-many matching not allowed: matching labels must be unique on one side"#
    );
    assert_eq!(
        err(&v2(), &s, r#"label_replace(a, "y", "same", "y", ".*")"#),
        "vector cannot contain metrics with the same labelset"
    );
}

#[test]
fn group_left_copies_labels_from_the_one_side() {
    let mut s = storage();
    load(&mut s, "info", &[("x", "1"), ("owner", "db")], &[1.0]);
    assert_eq!(
        vector(&v2(), &s, "a * on(x) group_left(owner) info", 0),
        vec![
            (r#"{owner="db", x="1", y="1"}"#.to_string(), 1.0),
            (r#"{owner="db", x="1", y="2"}"#.to_string(), 4.0),
        ]
    );
    assert_eq!(
        vector(&v2(), &s, "info * on(x) group_right(owner) a", 0),
        vec![
            (r#"{owner="db", x="1", y="1"}"#.to_string(), 1.0),
            (r#"{owner="db", x="1", y="2"}"#.to_string(), 4.0),
        ]
    );
}

/// Subqueries step through absolute multiples of their step, and an
/// omitted step is the configured default interval.
#[test]
fn subqueries_align_to_their_step() {
    let mut s = MemStorage::new();
    let l = Labels::from_pairs([("__name__", "m")]);
    for i in 0..100 {
        s.append(&l, i * 10_000, i as f64);
    }
    // Steps at 970s, 980s, 990s (not 963s, 973s…): 97+98+99.
    assert_eq!(
        vector(&v2(), &s, "sum_over_time(m[30s:10s])", 993_000),
        vec![("{}".to_string(), 294.0)]
    );
    // `offset` moves the window to [960s, 990s], whose ends are steps.
    assert_eq!(
        vector(&v2(), &s, "sum_over_time(m[30s:10s] offset 3s)", 993_000),
        vec![("{}".to_string(), 96.0 + 97.0 + 98.0 + 99.0)]
    );
    assert_eq!(
        vector(&v2(), &s, "count_over_time(m[5m:])", 990_000),
        vec![("{}".to_string(), 5.0)]
    );
    let e = Engine::new(EngineOptions {
        subquery_step_ms: 30_000,
        ..EngineOptions::default()
    });
    assert_eq!(
        vector(&e, &s, "count_over_time(m[5m:])", 990_000),
        vec![("{}".to_string(), 11.0)]
    );
    // `@` pins the subquery; nested subqueries and aggregations inside work.
    assert_eq!(
        vector(&v2(), &s, "max_over_time(m[1m:10s] @ 500)", 990_000),
        vec![("{}".to_string(), 50.0)]
    );
    // Steps at 870s, 930s, 990s, each the maximum of its own minute.
    assert_eq!(
        vector(
            &v2(),
            &s,
            "avg_over_time(max by () (max_over_time(m[1m:10s]))[2m:1m])",
            990_000
        ),
        vec![("{}".to_string(), 93.0)]
    );
}

/// An instant query that is a range selector or subquery answers with its
/// series (metric name kept), as Prometheus does; a range query refuses it.
#[test]
fn range_vectors_answer_instant_queries() {
    let mut s = MemStorage::new();
    let l = Labels::from_pairs([("__name__", "m"), ("a", "1")]);
    for i in 0..10 {
        s.append(&l, i * 10_000, i as f64);
    }
    let Value::Matrix(m) = v2().query(&s, "m[25s]", 90_000).unwrap() else {
        panic!("not a matrix");
    };
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].labels, l);
    assert_eq!(
        m[0].points,
        vec![(70_000, 7.0), (80_000, 8.0), (90_000, 9.0)]
    );
    let Value::Matrix(m) = v2().query(&s, "(m * 2)[30s:20s]", 95_000).unwrap() else {
        panic!("not a matrix");
    };
    assert_eq!(m[0].points, vec![(80_000, 16.0)]);
    let e = parse("m[1m]").unwrap();
    assert!(v2().eval_range(&s, &e, 0, 60_000, 10_000).is_err());
}

/// The history a rule needs covers its subqueries' windows and what their
/// expressions read back from the first step.
#[test]
fn history_needed_covers_subqueries() {
    use nodewatch_aggregator::promql::history_needed_ms;
    let e = parse("max_over_time(rate(x[5m])[1h:1m] offset 10m)").unwrap();
    assert_eq!(history_needed_ms(&e, 300_000), Some(75 * 60_000));
    let e = parse("max_over_time(x[1h:] @ 100)").unwrap();
    assert_eq!(history_needed_ms(&e, 300_000), None);
}

#[test]
fn evaluation_stops_at_its_deadline() {
    let s = MemStorage::new();
    let e = Engine::new(EngineOptions {
        deadline: Some(std::time::Instant::now()),
        ..EngineOptions::default()
    });
    assert_eq!(
        err(&e, &s, "count_over_time(vector(1)[1h:1s])"),
        "query timed out in expression evaluation"
    );
}

#[test]
fn holt_winters_smooths() {
    let mut s = MemStorage::new();
    let l = Labels::from_pairs([("__name__", "m")]);
    for (i, v) in [1.0, 3.0, 5.0, 7.0].iter().enumerate() {
        s.append(&l, i as i64 * 60_000, *v);
    }
    // A straight line is reproduced exactly.
    assert_eq!(
        vector(&v2(), &s, "holt_winters(m[5m], 0.5, 0.5)", 180_000),
        vec![("{}".to_string(), 7.0)]
    );
    assert!(err(&v2(), &s, "holt_winters(m[5m], 1, 0.5)").contains("invalid smoothing factor"));
}

#[test]
fn unsupported_constructs_are_named() {
    let s = storage();
    assert_eq!(
        err(&v2(), &s, "histogram_count(a)"),
        "unsupported function \"histogram_count\""
    );
    assert_eq!(
        err(&v2(), &s, "limitk(1, a)"),
        "unsupported aggregation \"limitk\""
    );
    let e = parse("sum(rate(x[5m])) / histogram_sum(y)").unwrap();
    assert_eq!(
        check_supported(&e),
        Err(Unsupported::Function("histogram_sum".into()))
    );
    assert!(matches!(
        v2().query(&s, "rat(a[5m])", 0),
        Err(QueryError::Parse(_))
    ));
    assert!(matches!(
        v2().query(&s, "-a[5m]", 0),
        Err(QueryError::Eval(EvalError::Type(_)) | QueryError::Parse(_))
    ));
}

#[test]
fn literals_and_scalars() {
    let s = MemStorage::new();
    assert_eq!(v2().query(&s, "1 + 2 * 3", 0).unwrap(), Value::Scalar(7.0));
    assert_eq!(v2().query(&s, "2 > bool 1", 0).unwrap(), Value::Scalar(1.0));
    assert_eq!(
        v2().query(&s, "-(2 ^ 3) % 5", 0).unwrap(),
        Value::Scalar(-3.0)
    );
    assert_eq!(
        v2().query(&s, "\"hi\"", 0).unwrap(),
        Value::String("hi".into())
    );
    assert_eq!(
        v2().query(&s, "time()", 90_000).unwrap(),
        Value::Scalar(90.0)
    );
    assert_eq!(
        v2().query(&s, "scalar(vector(3))", 0).unwrap(),
        Value::Scalar(3.0)
    );
    assert!(
        matches!(v2().query(&s, "scalar(nothing)", 0).unwrap(), Value::Scalar(v) if v.is_nan())
    );
}

#[test]
fn staleness_and_lookback() {
    let mut s = MemStorage::new();
    let l = labels("g", &[]);
    s.append(&l, 0, 1.0);
    s.append(&l, 60_000, stale_nan());
    s.append(&l, 600_000, 2.0);
    // The marker ends the series at once, not 5 minutes later.
    assert_eq!(
        vector(&v2(), &s, "g", 30_000),
        vec![(r#"{__name__="g"}"#.into(), 1.0)]
    );
    assert!(vector(&v2(), &s, "g", 60_000).is_empty());
    // Markers are not samples for range functions.
    assert_eq!(
        vector(&v2(), &s, "count_over_time(g[20m])", 600_000),
        vec![("{}".into(), 2.0)]
    );
    // 2.x looks back 5 minutes inclusive, 3.x exclusive of the start.
    assert_eq!(
        vector(&v2(), &s, "g", 900_000),
        vec![(r#"{__name__="g"}"#.into(), 2.0)]
    );
    assert!(vector(&v3(), &s, "g", 900_000).is_empty());
    assert_eq!(
        vector(&v2(), &s, "count_over_time(g[9m])", 600_000),
        vec![("{}".into(), 1.0)]
    );
    assert_eq!(
        vector(&v2(), &s, "count_over_time(g[10m])", 600_000),
        vec![("{}".into(), 2.0)]
    );
    assert_eq!(
        vector(&v3(), &s, "count_over_time(g[10m])", 600_000),
        vec![("{}".into(), 1.0)]
    );
}

#[test]
fn offset_and_at() {
    let mut s = MemStorage::new();
    load(&mut s, "c", &[], &[0.0, 10.0, 20.0, 30.0, 40.0]);
    let one = |q: &str, t: i64| vector(&v2(), &s, q, t)[0].1;
    assert_eq!(one("c offset 2m", 240_000), 20.0);
    assert_eq!(one("c @ 60", 240_000), 10.0);
    assert_eq!(one("c @ 120 offset 1m", 0), 10.0);
    assert_eq!(one("c offset -1m", 60_000), 20.0);
    assert_eq!(one("timestamp(c offset 1m)", 150_000), 60.0);
    assert_eq!(one("increase(c[2m] @ 240)", 0), 20.0);
    assert_eq!(one("c @ end()", 180_000), 30.0);
}

#[test]
fn rate_handles_resets_and_extrapolates() {
    let mut s = MemStorage::new();
    // A counter with a reset between 2m and 3m, sampled every minute.
    load(&mut s, "ctr", &[], &[10.0, 20.0, 30.0, 5.0, 15.0]);
    let one = |e: &Engine, q: &str, t: i64| vector(e, &s, q, t)[0].1;
    // 15 - 10 + 30 (the value before the reset) = 35 over exactly 4 minutes.
    assert_eq!(one(&v2(), "increase(ctr[4m])", 240_000), 35.0);
    assert!((one(&v2(), "rate(ctr[4m])", 240_000) - 35.0 / 240.0).abs() < 1e-12);
    // irate: the last two samples; a reset counts from zero.
    assert_eq!(one(&v2(), "irate(ctr[5m])", 240_000), 10.0 / 60.0);
    assert_eq!(one(&v2(), "irate(ctr[5m])", 180_000), 5.0 / 60.0);
    assert_eq!(one(&v2(), "resets(ctr[5m])", 240_000), 1.0);
    // Window [30s, 4m30s]: samples 1m..4m, extrapolated by 30s on each
    // side (within 1.1 average intervals): (15 - 20 + 30) * 240/180.
    assert!((one(&v2(), "increase(ctr[4m])", 270_000) - 25.0 * 240.0 / 180.0).abs() < 1e-9);
    // delta does not treat drops as resets.
    assert_eq!(one(&v2(), "delta(ctr[4m])", 240_000), 5.0);
    assert_eq!(one(&v2(), "idelta(ctr[4m])", 240_000), 10.0);
}

#[test]
fn aggregations_by_and_without() {
    let s = storage();
    let e = v2();
    assert_eq!(
        vector(&e, &s, "sum by (y) (a)", 0),
        vec![(r#"{y="1"}"#.into(), 1.0), (r#"{y="2"}"#.into(), 4.0)]
    );
    assert_eq!(
        vector(&e, &s, "sum without (y) (a)", 0),
        vec![(r#"{x="1"}"#.into(), 5.0)]
    );
    assert_eq!(vector(&e, &s, "avg(a)", 0), vec![("{}".into(), 2.5)]);
    assert_eq!(vector(&e, &s, "stdvar(a)", 0), vec![("{}".into(), 2.25)]);
    assert_eq!(
        vector(&e, &s, "quantile(0.5, a)", 0),
        vec![("{}".into(), 2.5)]
    );
    assert_eq!(
        vector(&e, &s, "topk(1, a)", 0),
        vec![(r#"{__name__="a", x="1", y="2"}"#.into(), 4.0)]
    );
    assert!(vector(&e, &s, "topk(0, a)", 0).is_empty());
    assert_eq!(
        vector(&e, &s, "count_values(\"v\", b)", 0),
        vec![(r#"{v="1"}"#.into(), 1.0), (r#"{v="2"}"#.into(), 1.0)]
    );
    assert_eq!(
        vector(&e, &s, "sum by (__name__) (a)", 0),
        vec![(r#"{__name__="a"}"#.into(), 5.0)]
    );
}

#[test]
fn histogram_quantile_classic_buckets() {
    let mut s = MemStorage::new();
    for (le, v) in [("0.1", 10.0), ("0.5", 30.0), ("1", 40.0), ("+Inf", 40.0)] {
        load(&mut s, "h_bucket", &[("le", le), ("job", "j")], &[v]);
    }
    let q = |p: &str| vector(&v2(), &s, &format!("histogram_quantile({p}, h_bucket)"), 0);
    assert_eq!(q("0.25"), vec![(r#"{job="j"}"#.into(), 0.1)]);
    assert!((q("0.5")[0].1 - 0.3).abs() < 1e-12);
    assert_eq!(q("1"), vec![(r#"{job="j"}"#.into(), 1.0)]);
    assert_eq!(q("2"), vec![(r#"{job="j"}"#.into(), f64::INFINITY)]);
    assert_eq!(q("-1"), vec![(r#"{job="j"}"#.into(), f64::NEG_INFINITY)]);
}

#[test]
fn absent_labels_come_from_equality_matchers() {
    let s = storage();
    assert_eq!(
        vector(
            &v2(),
            &s,
            r#"absent(nope{job="x", env=~"p.*", job="y", z="1"})"#,
            0
        ),
        vec![(r#"{z="1"}"#.into(), 1.0)]
    );
    assert!(vector(&v2(), &s, "absent(a)", 0).is_empty());
    assert_eq!(
        vector(&v2(), &s, r#"absent_over_time(nope{k="v"}[5m])"#, 0),
        vec![(r#"{k="v"}"#.into(), 1.0)]
    );
}

const SEEDS: &[&str] = &[
    "rate(a[5m])",
    "sum by (x) (rate(a[5m])) / on(x) group_left sum by (x) (b)",
    "histogram_quantile(0.9, sum by (le) (rate(h_bucket[5m])))",
    "predict_linear(a[10m], 3600) < 0",
    "absent(a{x=\"1\"}) or vector(1)",
    "label_replace(a, \"z\", \"$1\", \"y\", \"(.*)\")",
    "topk(2, a) unless on(y) b",
    "clamp(a, 1, 2) + round(b, 0.5) - -a",
    "a > bool on(x, y) a offset 1m",
    "quantile_over_time(0.5, a[3m] @ 120)",
    "count_values(\"v\", b) * scalar(one)",
    "day_of_week(timestamp(a)) + days_in_month()",
];

const PIECES: &[&str] = &[
    "a",
    "b",
    "one",
    "h_bucket",
    "nope",
    "a{x=\"1\"}",
    "b{y!=\"3\"}",
    "a{y=~\"1|2\"}",
    "1",
    "0",
    "-1",
    "NaN",
    "Inf",
    "1e308",
    "0.5",
    "\"s\"",
    "a[5m]",
    "b[1m]",
    "a[1s]",
    "one[10m]",
];
const FUNCS1: &[&str] = &common::concat::<42>(&[
    &common::RANGE_FUNCS,
    &[
        "absent_over_time",
        "abs",
        "ceil",
        "floor",
        "exp",
        "ln",
        "log2",
        "log10",
        "sqrt",
        "sgn",
        "absent",
        "scalar",
        "vector",
        "timestamp",
        "sort",
        "sort_desc",
        "hour",
        "month",
        "year",
        "minute",
        "day_of_month",
        "day_of_week",
        "days_in_month",
        "sin",
        "acosh",
    ],
]);
const OPS: &[&str] = &[
    "+",
    "-",
    "*",
    "/",
    "%",
    "^",
    "==",
    "!=",
    ">",
    "<",
    ">=",
    "<=",
    "and",
    "or",
    "unless",
    "atan2",
    "> bool",
    "+ on(x)",
    "* ignoring(y)",
    "* on(x) group_left",
    "/ on(x) group_right(y)",
];
const AGGS: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "stddev",
    "stdvar",
    "group",
    "sum by (x)",
    "max without (y)",
];

fn gen(rng: &mut StdRng, depth: u32) -> String {
    if depth == 0 || rng.random_range(0..4) == 0 {
        return PIECES[rng.random_range(0..PIECES.len())].to_string();
    }
    match rng.random_range(0..8) {
        0 | 1 => format!(
            "{}({})",
            FUNCS1[rng.random_range(0..FUNCS1.len())],
            gen(rng, depth - 1)
        ),
        2 | 3 => format!(
            "({}) {} ({})",
            gen(rng, depth - 1),
            OPS[rng.random_range(0..OPS.len())],
            gen(rng, depth - 1)
        ),
        4 => format!(
            "{}({})",
            AGGS[rng.random_range(0..AGGS.len())],
            gen(rng, depth - 1)
        ),
        5 => format!(
            "{}({}, {})",
            [
                "topk",
                "bottomk",
                "quantile",
                "count_values",
                "predict_linear",
                "quantile_over_time",
                "histogram_quantile",
                "clamp_min",
                "round"
            ][rng.random_range(0..9)],
            gen(rng, depth - 1),
            gen(rng, depth - 1)
        ),
        6 => format!(
            "label_replace({}, \"{}\", \"$1\", \"y\", \"{}\")",
            gen(rng, depth - 1),
            ["z", "__name__", "y", "", "1bad"][rng.random_range(0..5)],
            ["(.*)", "(", ".+", ""][rng.random_range(0..4)]
        ),
        _ => format!("-{}", gen(rng, depth - 1)),
    }
}

fn mutate(rng: &mut StdRng, s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    for _ in 0..rng.random_range(1..4) {
        let pos = rng.random_range(0..=chars.len());
        match rng.random_range(0..3) {
            0 if pos < chars.len() => {
                chars.remove(pos);
            }
            1 => chars.insert(
                pos,
                "()[]{}\",=~!@:+-*/^%0123456789 aezx"
                    .chars()
                    .nth(rng.random_range(0..34))
                    .unwrap_or('x'),
            ),
            _ if pos < chars.len() => {
                let other = rng.random_range(0..chars.len());
                chars.swap(pos, other);
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

#[test]
fn fuzz_parse_and_eval_never_panic() {
    let mut s = storage();
    for (le, v) in [("0.1", 1.0), ("1", 3.0), ("+Inf", 4.0), ("bad", 5.0)] {
        load(&mut s, "h_bucket", &[("le", le)], &[v, v * 2.0, f64::NAN]);
    }
    load(
        &mut s,
        "a",
        &[("x", "2")],
        &[f64::INFINITY, stale_nan(), -0.0, 1e308],
    );
    let engines = [v2(), v3()];
    let mut rng = StdRng::seed_from_u64(0x6e6f_6465);
    let mut queries: Vec<String> = SEEDS.iter().map(ToString::to_string).collect();
    for _ in 0..1500 {
        queries.push(gen(&mut rng, 4));
    }
    for i in 0..1500 {
        let base = queries[i % queries.len()].clone();
        queries.push(mutate(&mut rng, &base));
    }
    let mut evaluated = 0;
    for q in &queries {
        for (i, e) in engines.iter().enumerate() {
            let t = [0, 59_999, 120_000, 86_400_000][(q.len() + i) % 4];
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| e.query(&s, q, t)));
            assert!(r.is_ok(), "panicked on {q:?} at {t}");
            if matches!(r, Ok(Ok(_))) {
                evaluated += 1;
            }
        }
    }
    // The generator must reach evaluation, not only parse errors.
    assert!(evaluated > 1000, "only {evaluated} queries evaluated");
}

#[test]
fn at_modifier_reads_beyond_the_evaluation_time() {
    let mut s = MemStorage::new();
    load(&mut s, "c", &[], &[0.0, 10.0, 20.0, 163.0, 170.0]);
    // `@ 268` is after the evaluation time: the window is [148s, 268s].
    let v = vector(&v2(), &s, "stddev_over_time(c[2m] @ 268)", 75_000);
    assert_eq!(v, vec![("{}".into(), 3.5)]);
    let v = vector(&v2(), &s, "count_over_time(c[2m] @ 268)", 75_000);
    assert_eq!(v, vec![("{}".into(), 2.0)]);
}

#[test]
fn deeply_nested_queries_are_refused_not_overflowing() {
    let s = MemStorage::new();
    // Within the limit, evaluation works on a test thread's 2 MiB stack.
    let ok = [
        format!("{}1{}", "(".repeat(120), ")".repeat(120)),
        format!("1{}", "+1".repeat(120)),
        format!("{}x{}", "sum(".repeat(120), ")".repeat(120)),
        format!("{}1", "-".repeat(120)),
    ];
    for q in &ok {
        assert!(v2().query(&s, q, 0).is_ok(), "{}", &q[..20]);
    }
    for depth in [200, 3000, 30_000] {
        let bad = [
            format!("{}1{}", "(".repeat(depth), ")".repeat(depth)),
            format!("1{}", "+1".repeat(depth)),
            format!("{}x{}", "sum(".repeat(depth), ")".repeat(depth)),
            format!("{}x{}", "-(".repeat(depth), ")".repeat(depth)),
        ];
        for q in &bad {
            let r = v2().query(&s, q, 0);
            assert!(
                matches!(r, Err(QueryError::Parse(_))),
                "{}: {r:?}",
                &q[..20]
            );
        }
    }
}

#[test]
fn history_needed_covers_ranges_offsets_and_lookback() {
    use nodewatch_aggregator::promql::{history_needed_ms, DEFAULT_LOOKBACK_MS};
    let need = |q: &str| history_needed_ms(&parse(q).unwrap(), DEFAULT_LOOKBACK_MS);
    assert_eq!(need("up"), Some(300_000));
    assert_eq!(need("rate(x[10m]) > up offset 1h"), Some(3_900_000));
    assert_eq!(need("sum(rate(x[1h] offset 30m))"), Some(5_400_000));
    assert_eq!(need("x offset -10m"), Some(0));
    assert_eq!(need("x @ 100"), None);
    assert_eq!(need("vector(1)"), Some(0));
}
