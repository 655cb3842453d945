//! Differential test against a real Prometheus server: one fixed set of
//! series is written as `OpenMetrics`, turned into TSDB blocks by
//! `promtool tsdb create-blocks-from openmetrics` and served by a real
//! `prometheus`; the same samples go into our engine's store. Several
//! hundred generated expressions — every function, aggregation and binary
//! operator of `PromQL` 2.42 (native-histogram functions aside), subqueries
//! (nested, with `offset` and `@`), `offset` and `@` — are evaluated by both
//! at the same instants, Prometheus through `/api/v1/query`. Answers must
//! have the same label sets and values equal to the bit; only answers built
//! on Go's `exp` (whose last bit depends on the CPU Prometheus runs on) may
//! differ, within 1e-12 relative.
//!
//! Under `CI=true` a missing `prometheus` or `promtool` fails the test.

// Values are compared exactly first.
#![allow(clippy::float_cmp)]

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use nodewatch_aggregator::promql::{Engine, Labels, MemStorage, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Start of the data, seconds since the epoch (an hour boundary).
const T0: i64 = 1_700_000_000 - 1_700_000_000 % 7200;
/// Samples per series, 15 s apart: one hour.
const POINTS: i64 = 241;
const STEP_S: i64 = 15;

/// What a missing program makes this module skip.
const SKIPPING: &str = "the differential test against Prometheus";

/// One series: labels and `(t_ms, value)` samples.
struct Def {
    name: &'static str,
    labels: Vec<(&'static str, String)>,
    samples: Vec<(i64, f64)>,
}

/// A deterministic pseudo-random value stream per series.
fn noise(seed: u64, i: i64) -> f64 {
    let mut x = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    x ^= x >> 31;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 29;
    (x % 10_000) as f64 / 10_000.0
}

#[allow(clippy::too_many_lines)]
fn data() -> Vec<Def> {
    let mut out = Vec::new();
    let t = |i: i64, jitter_ms: i64| (T0 + i * STEP_S) * 1000 + jitter_ms;
    // Counters, one with resets, one with jittered timestamps and a gap.
    for (k, (job, inst, code)) in [
        ("api", "1", "200"),
        ("api", "1", "500"),
        ("api", "2", "200"),
        ("web", "3", "200"),
        ("web", "4", "404"),
    ]
    .iter()
    .enumerate()
    {
        let mut v = 0.0;
        let mut samples = Vec::new();
        for i in 0..POINTS {
            v += (noise(k as u64, i) * 20.0).floor() + k as f64;
            if k == 1 && i % 70 == 69 {
                v = (noise(99, i) * 5.0).floor();
            }
            if k == 3 && (100..112).contains(&i) {
                continue;
            }
            let jitter = if k == 2 {
                (noise(7, i) * 3000.0) as i64
            } else {
                0
            };
            samples.push((t(i, jitter), v));
        }
        out.push(Def {
            name: "http_requests_total",
            labels: vec![
                ("job", (*job).into()),
                ("instance", (*inst).into()),
                ("code", (*code).into()),
            ],
            samples,
        });
    }
    // Gauges: fractional, negative, small (for trigonometry), large.
    for (k, (inst, scale, shift)) in [
        ("1", 100.0, -30.0),
        ("2", 1.0, -0.5),
        ("3", 1e6, 0.0),
        ("4", 0.01, 0.001),
    ]
    .iter()
    .enumerate()
    {
        let samples = (0..POINTS)
            .map(|i| (t(i, 0), noise(20 + k as u64, i) * scale + shift))
            .collect();
        out.push(Def {
            name: "temperature",
            labels: vec![("instance", (*inst).into()), ("job", "node".into())],
            samples,
        });
    }
    // A gauge that ends early: stale after five minutes without samples.
    out.push(Def {
        name: "temperature",
        labels: vec![("instance", "5".into()), ("job", "node".into())],
        samples: (0..150)
            .map(|i| (t(i, 0), 20.0 + i as f64 * 0.25))
            .collect(),
    });
    // A histogram.
    let bounds = ["0.05", "0.1", "0.25", "0.5", "1", "+Inf"];
    for job in ["api", "web"] {
        let mut counts = [0.0_f64; 6];
        let mut series: Vec<Vec<(i64, f64)>> = vec![Vec::new(); 6];
        for i in 0..POINTS {
            let mut acc = 0.0;
            for (b, c) in counts.iter_mut().enumerate() {
                acc += (noise(40 + b as u64 + u64::from(job == "web") * 10, i) * 4.0).floor();
                *c += acc;
                series[b].push((t(i, 0), *c));
            }
        }
        for (b, samples) in series.into_iter().enumerate() {
            out.push(Def {
                name: "latency_seconds_bucket",
                labels: vec![("job", job.into()), ("le", bounds[b].into())],
                samples,
            });
        }
    }
    // Info-style series for many-to-one matching, with a version label.
    for (inst, version) in [("1", "v1"), ("2", "v2"), ("3", "v1"), ("4", "v3")] {
        out.push(Def {
            name: "build_info",
            labels: vec![("instance", inst.into()), ("version", version.into())],
            samples: (0..POINTS).map(|i| (t(i, 0), 1.0)).collect(),
        });
    }
    // Up, with flaps.
    for (k, inst) in ["1", "2", "3", "4"].iter().enumerate() {
        out.push(Def {
            name: "up",
            labels: vec![("instance", (*inst).into()), ("job", "node".into())],
            samples: (0..POINTS)
                .map(|i| {
                    (
                        t(i, 0),
                        if noise(60 + k as u64, i) < 0.1 {
                            0.0
                        } else {
                            1.0
                        },
                    )
                })
                .collect(),
        });
    }
    // Unix timestamps, for the date functions.
    out.push(Def {
        name: "boot_time_seconds",
        labels: vec![("instance", "1".into())],
        samples: (0..POINTS)
            .map(|i| (t(i, 0), 951_782_400.0 + i as f64 * 86_400.0 * 13.7))
            .collect(),
    });
    out
}

fn labels_of(d: &Def) -> Labels {
    let mut pairs: Vec<(String, String)> = d
        .labels
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect();
    pairs.push(("__name__".into(), d.name.into()));
    Labels::from_pairs(pairs)
}

fn openmetrics(defs: &[Def]) -> String {
    let mut out = String::new();
    for d in defs {
        let labels = d
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect::<Vec<_>>()
            .join(",");
        for &(t, v) in &d.samples {
            let _ = writeln!(
                out,
                "{}{{{labels}}} {v:?} {}.{:03}",
                d.name,
                t.div_euclid(1000),
                t.rem_euclid(1000)
            );
        }
    }
    out.push_str("# EOF\n");
    out
}

const VECTORS: &[&str] = &[
    "http_requests_total",
    r#"http_requests_total{job="api"}"#,
    r#"http_requests_total{code!="200"}"#,
    "temperature",
    r#"temperature{instance=~"[12]"}"#,
    "up",
    "build_info",
];
const COUNTERS: &[&str] = &[
    "http_requests_total",
    r#"http_requests_total{instance="2"}"#,
    r#"http_requests_total{code="500"}"#,
    "latency_seconds_bucket",
];
const GAUGES: &[&str] = &["temperature", r#"temperature{instance="2"}"#, "up"];
const RANGES: &[&str] = &["1m", "2m", "5m", "10m", "90s"];
const RANGE_FUNCS: &[&str] = &common::concat::<18>(&[&common::RANGE_FUNCS, &["absent_over_time"]]);
const SIMPLE_FUNCS: &[&str] = &common::concat::<26>(&[
    &common::MATH_FUNCS,
    &[
        "sin",
        "cos",
        "tan",
        "asin",
        "acos",
        "atan",
        "sinh",
        "cosh",
        "tanh",
        "asinh",
        "acosh",
        "atanh",
        "deg",
        "rad",
        "timestamp",
        "sort",
        "sort_desc",
    ],
]);
const DATE_FUNCS: &[&str] = &[
    "minute",
    "hour",
    "day_of_week",
    "day_of_month",
    "day_of_year",
    "days_in_month",
    "month",
    "year",
];
const AGGS: &[&str] = &[
    "sum", "avg", "min", "max", "count", "stddev", "stdvar", "group",
];
const ARITH: &[&str] = &["+", "-", "*", "/", "%", "^", "atan2"];
const CMP: &[&str] = &["==", "!=", ">", "<", ">=", "<="];

/// Expressions written out: every function, aggregation and operator at
/// least once, and subqueries in their forms.
#[allow(clippy::too_many_lines, reason = "a list of expressions, one per line")]
fn fixed() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in RANGE_FUNCS {
        for (i, v) in COUNTERS.iter().chain(GAUGES).enumerate() {
            let r = RANGES[i % RANGES.len()];
            out.push(format!("{f}({v}[{r}])"));
        }
    }
    for f in SIMPLE_FUNCS {
        out.push(format!("{f}(temperature)"));
        out.push(format!("{f}(rate(http_requests_total[5m]))"));
    }
    for f in DATE_FUNCS {
        out.push(format!("{f}(boot_time_seconds)"));
        out.push(format!("{f}()"));
    }
    out.extend(
        [
            "time()",
            "pi()",
            "vector(time())",
            "scalar(up{instance=\"1\"})",
            "scalar(up)",
            "absent(nonexistent{job=\"x\", a=~\"b\"})",
            "absent(up)",
            "clamp(temperature, -10, 50)",
            "clamp(temperature, 50, -10)",
            "clamp_min(temperature, 0.3)",
            "clamp_max(temperature, 0.3)",
            "round(temperature)",
            "round(temperature, 0.25)",
            "round(temperature, 3)",
            "histogram_quantile(0.9, rate(latency_seconds_bucket[5m]))",
            "histogram_quantile(0.5, sum by (le) (rate(latency_seconds_bucket[10m])))",
            "histogram_quantile(0.99, latency_seconds_bucket)",
            "histogram_quantile(1.5, latency_seconds_bucket)",
            "holt_winters(temperature[10m], 0.3, 0.6)",
            "holt_winters(http_requests_total[5m], 0.1, 0.9)",
            "predict_linear(temperature[10m], 3600)",
            "predict_linear(http_requests_total[5m], 600)",
            "quantile_over_time(0.9, temperature[10m])",
            "quantile_over_time(0.25, http_requests_total[5m])",
            "label_replace(up, \"host\", \"node-$1\", \"instance\", \"(.*)\")",
            "label_replace(up, \"instance\", \"\", \"instance\", \"1\")",
            "label_join(up, \"id\", \"/\", \"job\", \"instance\")",
            "count_values(\"value\", up)",
            "count_values by (job) (\"v\", changes(http_requests_total[5m]))",
            "topk(2, temperature)",
            "bottomk by (job) (1, rate(http_requests_total[5m]))",
            "quantile(0.75, temperature)",
            "quantile by (job) (0.3, rate(http_requests_total[5m]))",
            "sum(http_requests_total) by (job)",
            "avg without (instance) (temperature)",
            "stddev by (job) (rate(http_requests_total[5m]))",
            "http_requests_total * on(instance) group_left(version) build_info",
            "build_info * on(instance) group_right(version) rate(http_requests_total[5m])",
            "sum by (instance) (rate(http_requests_total[5m])) / ignoring(version) group_left build_info",
            "rate(http_requests_total[5m]) > bool 0.5",
            "temperature > 0",
            "up == 1",
            "up and on(instance) temperature > 0",
            "temperature or up",
            "up unless on(instance) temperature > 10",
            "-temperature",
            "2 ^ 3 ^ 2",
            "1 / 0",
            "-1 / 0",
            "0 / 0 > bool 1",
            "temperature % 7",
            "http_requests_total offset 10m",
            "http_requests_total offset -5m",
            "rate(http_requests_total[5m] offset 7m)",
            "temperature @ 1700001000",
            "rate(http_requests_total[5m] @ 1700001234.567)",
            "temperature @ start()",
            "rate(http_requests_total[2m] @ end() offset 1m)",
            "timestamp(temperature offset 3m)",
            "timestamp(temperature @ 1700001000)",
            // Subqueries.
            "max_over_time(rate(http_requests_total[1m])[10m:])",
            "max_over_time(rate(http_requests_total[1m])[10m:30s])",
            "avg_over_time(temperature[10m:1m])",
            "sum_over_time(temperature[7m:45s] offset 3m)",
            "min_over_time(temperature[5m:20s] @ 1700001500)",
            "rate(http_requests_total[5m:15s])",
            "rate(sum(http_requests_total)[10m:1m])",
            "deriv(avg(temperature)[10m:1m])",
            "max_over_time(sum by (job) (rate(http_requests_total[2m]))[15m:1m])",
            "avg_over_time(max_over_time(temperature[2m:10s])[10m:1m])",
            "rate(sum_over_time(http_requests_total[1m:15s])[5m:1m])",
            "sum(max_over_time(rate(http_requests_total[1m])[5m:30s]))",
            "count_over_time((up == 0)[30m:1m])",
            "last_over_time(temperature[5m:1m] offset -2m)",
            "stddev_over_time(rate(http_requests_total[1m])[20m:2m])",
            "quantile_over_time(0.5, temperature[10m:30s])",
            "holt_winters(avg(temperature)[20m:1m], 0.5, 0.5)",
            "predict_linear(sum(http_requests_total)[15m:1m], 300)",
            "changes(max(up)[30m:1m])",
            "absent_over_time(nonexistent[5m:1m])",
            "present_over_time(temperature{instance=\"5\"}[10m:1m])",
            "timestamp(temperature)",
            "sum_over_time(temperature[10m:1m] @ start())",
            "max_over_time(temperature[3m:1m] @ end() offset 2m)",
        ]
        .iter()
        .map(ToString::to_string),
    );
    for a in AGGS {
        out.push(format!("{a}(temperature)"));
        out.push(format!("{a} by (job) (rate(http_requests_total[5m]))"));
        out.push(format!("{a} without (code) (http_requests_total)"));
    }
    for op in ARITH {
        out.push(format!("temperature {op} 3"));
        out.push(format!("2 {op} temperature"));
        out.push(format!(
            "rate(http_requests_total[5m]) {op} on(instance, job, code) irate(http_requests_total[2m])"
        ));
        out.push(format!("sum by (instance) (http_requests_total) {op} ignoring(job) sum by (instance, job) (up)"));
    }
    for op in CMP {
        out.push(format!("temperature {op} 0.2"));
        out.push(format!("temperature {op} bool 0.2"));
        out.push(format!("1 {op} bool 2"));
        out.push(format!("up {op} on(instance) group_left temperature"));
    }
    out
}

fn pick<'a>(rng: &mut StdRng, xs: &[&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

/// A random instant-vector expression.
fn random_vector(rng: &mut StdRng, depth: u32) -> String {
    if depth == 0 {
        return match rng.random_range(0..4) {
            0 => pick(rng, VECTORS).to_string(),
            1 => format!("{} offset {}", pick(rng, VECTORS), pick(rng, RANGES)),
            2 => format!(
                "{}({}[{}])",
                pick(rng, RANGE_FUNCS),
                pick(rng, COUNTERS),
                pick(rng, RANGES)
            ),
            _ => format!(
                "{}({}[{}:{}])",
                pick(rng, RANGE_FUNCS),
                pick(rng, GAUGES),
                pick(rng, &["5m", "10m", "3m"]),
                pick(rng, &["", "1m", "20s", "45s"])
            ),
        };
    }
    let d = depth - 1;
    match rng.random_range(0..8) {
        0 => format!(
            "{}(({})[{}:{}])",
            pick(
                rng,
                &[
                    "max_over_time",
                    "min_over_time",
                    "avg_over_time",
                    "sum_over_time",
                    "rate",
                    "deriv",
                    "last_over_time",
                    "count_over_time"
                ]
            ),
            random_vector(rng, d),
            pick(rng, &["5m", "10m", "4m"]),
            pick(rng, &["", "1m", "30s"])
        ),
        1 => format!("{}({})", pick(rng, SIMPLE_FUNCS), random_vector(rng, d)),
        2 => format!(
            "{} by ({}) ({})",
            pick(rng, AGGS),
            pick(rng, &["job", "instance", "job, instance"]),
            random_vector(rng, d)
        ),
        3 => format!(
            "({}) {} {}",
            random_vector(rng, d),
            pick(rng, ARITH),
            rng.random_range(1..5)
        ),
        4 => format!(
            "({}) {} bool {}",
            random_vector(rng, d),
            pick(rng, CMP),
            rng.random_range(0..3)
        ),
        5 => format!(
            "sum by (instance) ({}) {} on(instance) sum by (instance) ({})",
            random_vector(rng, d),
            pick(rng, ARITH),
            random_vector(rng, d)
        ),
        6 => format!(
            "({}) {} on(instance) ({})",
            random_vector(rng, d),
            pick(rng, &["and", "or", "unless"]),
            random_vector(rng, d)
        ),
        _ => format!(
            "{}(({})[{}:{}] offset {})",
            pick(rng, &["max_over_time", "avg_over_time", "rate"]),
            random_vector(rng, d),
            pick(rng, &["5m", "10m"]),
            pick(rng, &["1m", "30s"]),
            pick(rng, &["1m", "2m30s", "-1m"])
        ),
    }
}

struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.0 GET: status and body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// `url.QueryEscape`.
fn escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn start_prometheus(defs: &[Def], dir: &std::path::Path) -> Option<Prometheus> {
    let prometheus = common::find("prometheus", SKIPPING)?;
    let promtool = common::find("promtool", SKIPPING)?;
    let om = dir.join("data.om");
    std::fs::write(&om, openmetrics(defs)).unwrap();
    let data = dir.join("prom-data");
    let out = Command::new(&promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&om)
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool tsdb create-blocks-from: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = dir.join("prometheus.yml");
    std::fs::write(&cfg, "global: {}\n").unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new(&prometheus)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg("--storage.tsdb.retention.time=100y")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let p = Prometheus {
        child,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if matches!(http_get(p.addr, "/-/ready"), Ok((200, _))) {
            return Some(p);
        }
        assert!(
            Instant::now() < deadline,
            "prometheus not ready: {}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An answer reduced to comparable parts: label sets (sorted) and values.
#[derive(Debug)]
enum Answer {
    Vector(Vec<(Vec<(String, String)>, f64)>),
    Scalar(f64),
    Error(String),
}

fn parse_value(s: &str) -> f64 {
    match s {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        n => n.parse().unwrap(),
    }
}

fn prom_answer(p: &Prometheus, expr: &str, t_ms: i64) -> Answer {
    let (_, body) = http_get(
        p.addr,
        &format!(
            "/api/v1/query?query={}&time={}.{:03}",
            escape(expr),
            t_ms.div_euclid(1000),
            t_ms.rem_euclid(1000)
        ),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    if v["status"] != "success" {
        return Answer::Error(v["error"].as_str().unwrap_or("").to_string());
    }
    let result = &v["data"]["result"];
    match v["data"]["resultType"].as_str() {
        Some("vector") => {
            let mut out: Vec<(Vec<(String, String)>, f64)> = result
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let mut l: Vec<(String, String)> = s["metric"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect();
                    l.sort();
                    (l, parse_value(s["value"][1].as_str().unwrap()))
                })
                .collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            Answer::Vector(out)
        }
        Some("scalar") => Answer::Scalar(parse_value(result[1].as_str().unwrap())),
        other => Answer::Error(format!("unexpected result type {other:?}")),
    }
}

fn our_answer(engine: &Engine, storage: &MemStorage, expr: &str, t_ms: i64) -> Answer {
    match engine.query(storage, expr, t_ms) {
        Ok(Value::Vector(v)) => {
            let mut out: Vec<(Vec<(String, String)>, f64)> = v
                .into_iter()
                .map(|s| {
                    (
                        s.labels
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        s.v,
                    )
                })
                .collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            Answer::Vector(out)
        }
        Ok(Value::Scalar(v)) => Answer::Scalar(v),
        Ok(Value::String(s)) => Answer::Error(format!("string {s}")),
        Ok(Value::Matrix(_)) => Answer::Error("matrix".into()),
        Err(e) => Answer::Error(e.to_string()),
    }
}

/// Functions computed with Go's `exp`, whose last bit depends on the CPU.
const EXP_BASED: &[&str] = &["exp(", "sinh(", "cosh(", "tanh(", "^"];

/// Bit-equal, or (for sums whose order Prometheus leaves to Go's map
/// iteration) within 1e-12 relative. Returns whether it was bit-equal.
fn same(a: f64, b: f64) -> Option<bool> {
    if a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()) || a == b {
        return Some(true);
    }
    let tol = 1e-12 * a.abs().max(b.abs());
    ((a - b).abs() <= tol).then_some(false)
}

/// Compares; `Ok(bit_exact)` or the difference.
fn compare(ours: &Answer, theirs: &Answer) -> Result<bool, String> {
    match (ours, theirs) {
        (Answer::Error(_), Answer::Error(_)) => Ok(true),
        (Answer::Scalar(a), Answer::Scalar(b)) => {
            same(*a, *b).ok_or_else(|| format!("scalar {a:?} vs {b:?}"))
        }
        (Answer::Vector(a), Answer::Vector(b)) => {
            if a.len() != b.len() || a.iter().zip(b).any(|(x, y)| x.0 != y.0) {
                return Err(format!("series differ:\n  ours:   {a:?}\n  theirs: {b:?}"));
            }
            let mut exact = true;
            for (x, y) in a.iter().zip(b) {
                match same(x.1, y.1) {
                    Some(e) => exact &= e,
                    None => return Err(format!("{:?}: {:?} vs {:?} (Prometheus)", x.0, x.1, y.1)),
                }
            }
            Ok(exact)
        }
        _ => Err(format!("ours {ours:?}, Prometheus {theirs:?}")),
    }
}

#[test]
fn expressions_agree_with_a_real_prometheus() {
    let defs = data();
    let dir = tempfile::tempdir().unwrap();
    let Some(prom) = start_prometheus(&defs, dir.path()) else {
        return;
    };
    let mut storage = MemStorage::new();
    for d in &defs {
        let l = labels_of(d);
        for &(t, v) in &d.samples {
            storage.append(&l, t, v);
        }
    }
    // Prometheus' defaults: 5m lookback, 1m subquery step, 2.x rules.
    let engine = Engine::default();
    let mut exprs = fixed();
    let mut rng = StdRng::seed_from_u64(
        std::env::var("PROMQL_DIFF_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(18),
    );
    let fixed_n = exprs.len();
    while exprs.len() < fixed_n + 150 {
        let depth = rng.random_range(1..3);
        exprs.push(random_vector(&mut rng, depth));
    }
    // On the grid, off it, near the data's end and after it (staleness).
    let instants_ms = [
        (T0 + 30 * 60) * 1000,
        (T0 + 47 * 60 + 7) * 1000 + 250,
        (T0 + 60 * 60) * 1000,
        (T0 + 63 * 60 + 30) * 1000,
    ];
    let (mut compared, mut exact, mut both_errors, mut non_empty) = (0, 0, 0, 0);
    let mut inexact = Vec::new();
    let mut failures = Vec::new();
    for (i, expr) in exprs.iter().enumerate() {
        // Each expression at two of the instants, rotating.
        for t in [instants_ms[i % 4], instants_ms[(i + 1) % 4]] {
            let ours = our_answer(&engine, &storage, expr, t);
            let theirs = prom_answer(&prom, expr, t);
            if let (Answer::Error(a), Answer::Error(b)) = (&ours, &theirs) {
                both_errors += 1;
                if std::env::var_os("PROMQL_DIFF_VERBOSE").is_some() {
                    eprintln!("both fail `{expr}`: ours: {a}; Prometheus: {b}");
                }
            }
            match &theirs {
                Answer::Vector(v) if !v.is_empty() => non_empty += 1,
                Answer::Scalar(_) => non_empty += 1,
                _ => {}
            }
            match compare(&ours, &theirs) {
                Ok(e) => {
                    compared += 1;
                    exact += usize::from(e);
                    if !e && !EXP_BASED.iter().any(|f| expr.contains(f)) {
                        inexact.push(format!("`{expr}` at {t} ms"));
                    }
                    if !e && std::env::var_os("PROMQL_DIFF_VERBOSE").is_some() {
                        eprintln!("not bit-equal `{expr}` at {t}: {ours:?} vs {theirs:?}");
                    }
                }
                Err(d) => failures.push(format!("`{expr}` at {t} ms: {d}")),
            }
        }
    }
    eprintln!(
        "{} expressions, {compared} evaluations agree with Prometheus ({exact} bit-equal, {non_empty} with a non-empty answer, {both_errors} errors on both sides), {} disagree",
        exprs.len(),
        failures.len()
    );
    for f in &failures {
        eprintln!("DIFF {f}");
    }
    assert!(exprs.len() >= 200);
    assert!(
        non_empty * 10 > compared * 8,
        "too few non-empty answers: is Prometheus reading the blocks?"
    );
    assert!(
        both_errors * 10 < compared,
        "too many expressions fail on both sides to be a useful comparison"
    );
    assert!(failures.is_empty(), "{} disagreements", failures.len());
    // Only Go's `exp` (amd64 assembly, FMA or not by CPU) may differ in the
    // last bits; everything else is bit-equal.
    assert!(
        inexact.is_empty(),
        "not bit-equal with Prometheus:\n{}",
        inexact.join("\n")
    );
}
