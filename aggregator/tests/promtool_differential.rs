//! Differential test against real Prometheus: random well-typed `PromQL`
//! expressions are evaluated by our engine, and the answers are written as
//! the expected samples of a `promtool test rules` file; `promtool` must
//! agree on every one, up to floating-point noise (see
//! `real_disagreements`). Expressions whose answer contains NaN (which
//! promtool 2.x never considers equal) or that fail here are left out.

// Exact equality first, then a relative tolerance.
#![allow(clippy::float_cmp)]

use std::fmt::Write as _;
use std::process::Command;

use crate::common;
use nodewatch_aggregator::promql::{Engine, Labels, MemStorage, Value};
use nodewatch_aggregator::rules::unittest::parse_series_description;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const INTERVAL_MS: i64 = 60_000;

/// The input series, in promtool's notation.
const SERIES: &[(&str, &str)] = &[
    (
        r#"requests_total{job="api", instance="1", code="200"}"#,
        "0+10x10 100+7x10",
    ),
    (
        r#"requests_total{job="api", instance="2", code="200"}"#,
        "5+20x20",
    ),
    (
        r#"requests_total{job="api", instance="2", code="500"}"#,
        "0 1 1 2 3 _ _ 5 8 13 21 34 0 1 2 3 4 5 6 7 8",
    ),
    (
        r#"requests_total{job="web", instance="3", code="200"}"#,
        "0+3x8 stale 10+3x11",
    ),
    (
        r#"temperature{job="api", instance="1", sensor="cpu"}"#,
        "40 42 41 45 50 48 47 46 60 55 52 51 50 49 48 47 46 45 44 43 42",
    ),
    (
        r#"temperature{job="web", instance="3", sensor="cpu"}"#,
        "30+0.5x20",
    ),
    (
        r#"free_bytes{job="api", instance="1", mount="/"}"#,
        "1000000-25000x20",
    ),
    (
        r#"free_bytes{job="api", instance="2", mount="/"}"#,
        "500000x20",
    ),
    (
        r#"up{job="api", instance="1"}"#,
        "1 1 1 0 0 1 1 1 1 1 1 1 0 1 1 1 1 1 1 1 1",
    ),
    (r#"up{job="api", instance="2"}"#, "1x20"),
    (
        r#"up{job="web", instance="3"}"#,
        "1 1 1 1 1 1 1 1 0 0 0 0 1 1 1 1 1 1 1 1 1",
    ),
    (r#"lat_bucket{job="api", le="0.1"}"#, "0+5x20"),
    (r#"lat_bucket{job="api", le="0.5"}"#, "0+8x20"),
    (r#"lat_bucket{job="api", le="1"}"#, "0+9x20"),
    (r#"lat_bucket{job="api", le="+Inf"}"#, "0+10x20"),
    (r#"info{instance="1", version="v1"}"#, "1x20"),
    (r#"info{instance="2", version="v2"}"#, "1x20"),
    (r#"info{instance="3", version="v1"}"#, "1x20"),
];

const VECTORS: &[&str] = &[
    "requests_total",
    r#"requests_total{code="200"}"#,
    r#"requests_total{job=~"a.*"}"#,
    "temperature",
    "free_bytes",
    "up",
    r#"up{job!="web"}"#,
    "lat_bucket",
    "info",
];
const RANGES: &[&str] = &["1m", "2m", "3m", "5m", "7m", "10m"];
const RANGE_FUNCS: &[&str] = &common::RANGE_FUNCS;
const FUNCS: &[&str] = &common::concat::<19>(&[
    &common::MATH_FUNCS,
    &[
        "timestamp",
        "sort",
        "sort_desc",
        "hour",
        "minute",
        "day_of_week",
        "month",
        "year",
        "days_in_month",
        "day_of_month",
    ],
]);
const AGGS: &[&str] = &[
    "sum", "avg", "min", "max", "count", "stddev", "stdvar", "group",
];
const ARITH: &[&str] = &["+", "-", "*", "/", "%", "^"];
const CMP: &[&str] = &["==", "!=", ">", "<", ">=", "<="];
const GROUPING: &[&str] = &["job", "instance", "code", "job, instance"];

fn pick<'a>(rng: &mut StdRng, xs: &[&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

fn scalar(rng: &mut StdRng) -> String {
    match rng.random_range(0..4) {
        0 => format!("{}", rng.random_range(0..20)),
        1 => format!("{:.2}", rng.random_range(0.0..3.0)),
        2 => "time()".into(),
        _ => format!("scalar(sum({}))", pick(rng, VECTORS)),
    }
}

/// A random instant-vector expression; the arguments of `topk`/`bottomk`
/// are collected in `ranked`, since Prometheus breaks ties among them in
/// an unspecified order.
#[allow(
    clippy::too_many_lines,
    reason = "one arm per expression form of the grammar"
)]
fn vector(rng: &mut StdRng, depth: u32, ranked: &mut Vec<String>) -> String {
    if depth == 0 {
        return match rng.random_range(0..3) {
            0 => pick(rng, VECTORS).to_string(),
            1 => format!("{} offset {}", pick(rng, VECTORS), pick(rng, RANGES)),
            _ => format!(
                "{}({}[{}])",
                pick(rng, RANGE_FUNCS),
                pick(rng, VECTORS),
                pick(rng, RANGES)
            ),
        };
    }
    let d = depth - 1;
    match rng.random_range(0..24) {
        14 => format!(
            "quantile({:.2}, {})",
            rng.random_range(-0.2..1.2),
            vector(rng, d, ranked)
        ),
        // Of plain series: a last-bit difference would change the label.
        15 => format!(
            "count_values(\"v\", {}({}[{}]))",
            pick(
                rng,
                &[
                    "max_over_time",
                    "last_over_time",
                    "changes",
                    "count_over_time"
                ]
            ),
            pick(rng, VECTORS),
            pick(rng, RANGES)
        ),
        16 => format!(
            "{}({}, {})",
            ["clamp_min", "clamp_max", "round"][rng.random_range(0..3)],
            vector(rng, d, ranked),
            scalar(rng)
        ),
        17 => format!(
            "absent({})",
            pick(rng, &["nope", r#"nope{a="b"}"#, "up", r#"up{job="x"}"#])
        ),
        18 => format!(
            "label_replace({}, \"dst\", \"$1-x\", \"instance\", \"(.)\")",
            vector(rng, d, ranked)
        ),
        19 => format!(
            "quantile_over_time({:.2}, {}[{}])",
            rng.random_range(0.0..1.0),
            pick(rng, VECTORS),
            pick(rng, RANGES)
        ),
        20 => format!("-({})", vector(rng, d, ranked)),
        21 => format!("{} @ {}", pick(rng, VECTORS), rng.random_range(0..1200)),
        22 => format!(
            "sum by (instance) ({}) {} bool ignoring(job) sum by (instance) ({})",
            vector(rng, d, ranked),
            pick(rng, CMP),
            vector(rng, d, ranked)
        ),
        23 => format!("clamp({}, 1, 50)", vector(rng, d, ranked)),
        0 => format!(
            "{}({}[{}])",
            pick(rng, RANGE_FUNCS),
            pick(rng, VECTORS),
            pick(rng, RANGES)
        ),
        1 => format!(
            "{}({}[{}] {})",
            pick(rng, RANGE_FUNCS),
            pick(rng, VECTORS),
            pick(rng, RANGES),
            [
                "offset 2m".to_string(),
                "offset -1m".to_string(),
                format!("@ {}", rng.random_range(0..1300)),
                format!("@ {} offset 3m", rng.random_range(0..1300)),
            ][rng.random_range(0..4)]
        ),
        2 => format!("{}({})", pick(rng, FUNCS), vector(rng, d, ranked)),
        3 => format!(
            "{} by ({}) ({})",
            pick(rng, AGGS),
            pick(rng, GROUPING),
            vector(rng, d, ranked)
        ),
        4 => format!(
            "{} without ({}) ({})",
            pick(rng, AGGS),
            pick(rng, GROUPING),
            vector(rng, d, ranked)
        ),
        5 => format!(
            "({}) {} {}",
            vector(rng, d, ranked),
            pick(rng, ARITH),
            scalar(rng)
        ),
        6 => format!(
            "{} {} ({})",
            scalar(rng),
            pick(rng, CMP),
            vector(rng, d, ranked)
        ),
        7 => format!(
            "({}) {} bool {}",
            vector(rng, d, ranked),
            pick(rng, CMP),
            scalar(rng)
        ),
        8 => format!(
            "sum by (instance) ({}) {} on(instance) sum by (instance) ({})",
            vector(rng, d, ranked),
            pick(rng, ARITH),
            vector(rng, d, ranked)
        ),
        9 => format!(
            "({}) {} ({})",
            vector(rng, d, ranked),
            ["and", "or", "unless"][rng.random_range(0..3)],
            vector(rng, d, ranked)
        ),
        10 => {
            let inner = vector(rng, d, ranked);
            ranked.push(inner.clone());
            format!(
                "{}({}, {})",
                ["topk", "bottomk"][rng.random_range(0..2)],
                rng.random_range(1..4),
                inner
            )
        }
        11 => format!(
            "histogram_quantile({:.2}, sum by (le) (rate(lat_bucket[{}])))",
            rng.random_range(0.0..1.0),
            pick(rng, RANGES)
        ),
        12 => format!(
            "predict_linear({}[{}], {})",
            pick(rng, VECTORS),
            pick(rng, RANGES),
            rng.random_range(0..7200)
        ),
        _ => format!(
            "sum by (instance) (rate(requests_total[5m])) * on(instance) group_left(version) ({})",
            "info"
        ),
    }
}

fn yaml_float(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { ".inf" } else { "-.inf" }.into()
    } else {
        format!("{v:?}")
    }
}

#[test]
fn random_expressions_agree_with_promtool() {
    let Some(pt) = common::promtool("the differential test") else {
        return;
    };
    let mut storage = MemStorage::new();
    for (series, values) in SERIES {
        let (labels, vals) = parse_series_description(series, values).unwrap();
        for (i, v) in vals.into_iter().enumerate() {
            if let Some(v) = v {
                storage.append(&labels, i as i64 * INTERVAL_MS, v);
            }
        }
    }
    let engine = Engine::default();
    // `PROMTOOL_DIFF_SEED` / `PROMTOOL_DIFF_CASES` widen the search locally.
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let mut rng = StdRng::seed_from_u64(env("PROMTOOL_DIFF_SEED", 42));
    let cases_wanted = env("PROMTOOL_DIFF_CASES", 400);
    // promtool only loads input samples up to its last evaluation step; a
    // late case makes all of them visible, as they are to our engine.
    let mut cases = String::from(
        "      - expr: vector(1)\n        eval_time: 25m\n        exp_samples:\n          - labels: '{}'\n            value: 1\n",
    );
    let mut n = 0;
    while n < cases_wanted {
        let depth = rng.random_range(0..3);
        let mut ranked = Vec::new();
        let expr = vector(&mut rng, depth, &mut ranked);
        // Off-grid times too, to exercise extrapolation and lookback.
        let t_ms =
            rng.random_range(0..21) * INTERVAL_MS + [0, 15_000, 30_000][rng.random_range(0..3)];
        let Ok(Value::Vector(v)) = engine.query(&storage, &expr, t_ms) else {
            continue;
        };
        if v.iter().any(|s| s.v.is_nan()) {
            continue;
        }
        let has_ties = |q: &str| match engine.query(&storage, q, t_ms) {
            Ok(Value::Vector(v)) => {
                let mut vals: Vec<u64> = v.iter().map(|s| s.v.to_bits()).collect();
                vals.sort_unstable();
                vals.windows(2).any(|w| w[0] == w[1])
            }
            _ => true,
        };
        if ranked.iter().any(|q| has_ties(q)) {
            continue;
        }
        n += 1;
        let _ = writeln!(
            cases,
            "      - expr: {}\n        eval_time: {}ms",
            common::yaml_quote(&expr),
            t_ms
        );
        if v.is_empty() {
            cases.push_str("        exp_samples: []\n");
        } else {
            cases.push_str("        exp_samples:\n");
            for s in &v {
                let l: &Labels = &s.labels;
                let _ = writeln!(
                    cases,
                    "          - labels: {}\n            value: {}",
                    common::yaml_quote(&l.to_string()),
                    yaml_float(s.v)
                );
            }
        }
    }
    let input = common::input_series(SERIES.iter().copied());
    let file = format!(
        "evaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{input}    promql_expr_test:\n{cases}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("differential_test.yml");
    std::fs::write(&path, &file).unwrap();
    let out = Command::new(pt)
        .args(["test", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        let real = real_disagreements(&report);
        if !real.is_empty() {
            let keep = std::env::temp_dir().join("nodewatch_differential_test.yml");
            let _ = std::fs::write(&keep, &file);
            panic!(
                "promtool disagrees (file kept at {}):\n{}",
                keep.display(),
                real.join("\n")
            );
        }
    }
}

/// Splits promtool's `{a="b"} 1E+00, {c="d"} 2E+00` into pairs.
fn parse_samples(s: &str) -> Option<Vec<(String, f64)>> {
    if s.trim() == "nil" {
        return Some(Vec::new());
    }
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        // The label set ends at the first `}` outside a quoted value.
        let mut in_quotes = false;
        let mut escaped = false;
        let mut end = None;
        for (i, c) in rest.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_quotes = !in_quotes,
                '}' if !in_quotes => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end?;
        let labels = rest[..=end].to_string();
        let after = rest[end + 1..].trim_start();
        let (num, next) = after.split_once(", ").unwrap_or((after, ""));
        let v = match num {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            n => n.parse().ok()?,
        };
        out.push((labels, v));
        rest = next.trim();
    }
    Some(out)
}

/// The failures in a promtool report that are more than floating-point
/// noise. promtool compares exactly, but its own results for order-sensitive
/// sums and averages vary in the last bits from run to run (2.x aggregates
/// nested results in Go map order), and Go's `math.Pow`/`Log10`/`Exp`
/// differ from the C library's by an ulp; such differences are accepted.
fn real_disagreements(report: &str) -> Vec<String> {
    let lines: Vec<&str> = report.lines().collect();
    let mut real = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if l.starts_with("    expr: ") && l.contains(", err: ") {
            real.push(l.to_string());
        } else if l.starts_with("    expr: ") && i + 2 < lines.len() {
            let exp = lines[i + 1]
                .trim_start()
                .strip_prefix("exp: ")
                .and_then(parse_samples);
            let got = lines[i + 2]
                .trim_start()
                .strip_prefix("got: ")
                .and_then(parse_samples);
            let close = match (exp, got) {
                (Some(mut e), Some(mut g)) => {
                    e.sort_by(|a, b| a.0.cmp(&b.0));
                    g.sort_by(|a, b| a.0.cmp(&b.0));
                    e.len() == g.len()
                        && e.iter().zip(&g).all(|(a, b)| {
                            a.0 == b.0
                                && (a.1 == b.1
                                    || (a.1 - b.1).abs() <= 1e-12 * a.1.abs().max(b.1.abs()))
                        })
                }
                _ => false,
            };
            if !close {
                real.push(format!("{l}\n{}\n{}", lines[i + 1], lines[i + 2]));
            }
            i += 2;
        } else if l.starts_with("    ") && !l.starts_with("        ") && !l.trim().is_empty() {
            real.push(l.to_string());
        }
        i += 1;
    }
    real
}

#[test]
fn promtool_sample_lists_parse() {
    let s = r#"{a="x, }"} 1.5E+00, {} +Inf"#;
    assert_eq!(
        parse_samples(s).unwrap(),
        vec![
            (r#"{a="x, }"}"#.to_string(), 1.5),
            ("{}".to_string(), f64::INFINITY)
        ]
    );
    let noise = "    expr: \"x\", time: 1m,\n        exp: {} 1E+00\n        got: {} 1.0000000000000002E+00\n";
    assert!(real_disagreements(noise).is_empty());
    let wrong = "    expr: \"x\", time: 1m,\n        exp: {} 1E+00\n        got: {} 2E+00\n";
    assert_eq!(real_disagreements(wrong).len(), 1);
}
