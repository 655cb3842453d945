//! Rule evaluation cost against Prometheus and VictoriaMetrics, on the same
//! data, in one run.
//!
//! A pack of node-mixin style expressions (rates, sums by, quantiles, joins,
//! `histogram_quantile`, filesystem predictions) over simulated nodes with
//! `node_exporter`'s names: [`NODES`] nodes × ~300 series each, a sample
//! every [`STEP_S`] s for the last ten minutes.
//!
//! - nodewatch: a real aggregator process; every node streams its history
//!   over its own mutual-TLS `Ingest.Stream` (one certificate per node, as
//!   real agents do); the expressions go through the gRPC `Query` API, which
//!   evaluates with the same engine and store the rule manager uses.
//! - Prometheus: the same samples written as `OpenMetrics`, turned into TSDB
//!   blocks with `promtool tsdb create-blocks-from openmetrics`, served by a
//!   real `prometheus`; the expressions go through `/api/v1/query`.
//! - VictoriaMetrics (single node): the same samples through its import API
//!   (`/api/v1/import/prometheus`, text exposition with millisecond
//!   timestamps), then `/internal/force_flush`; the expressions go through
//!   its Prometheus-compatible `/api/v1/query` (MetricsQL, which accepts
//!   every expression of the pack), with its response cache off.
//!
//! All answer instant queries at the same timestamp, one after the other,
//! so each side's time includes its API's encoding of the result; the
//! expressions aggregate (as recording and alerting rules do), keeping
//! results small. Every expression's result size is compared so both
//! evaluate the same thing.
//!
//! Apart from the pack, and after it (so the pack's figures compare with
//! earlier runs), [`QUERIES`] time what `nodewatch query` or a dashboard
//! asks: every selected series back, tens of thousands of them.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p nodewatch-tests --bench rules_vs_prometheus`
#![allow(clippy::unwrap_used, clippy::expect_used)]
// One quoting style for the whole pack, whether an expression has quotes or not.
#![allow(clippy::needless_raw_string_hashes)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use nodewatch_proto::v1::ingest_client::IngestClient;
use nodewatch_proto::v1::query_client::QueryClient;
use nodewatch_proto::v1::{
    agent_frame, aggregator_frame, AgentFrame, Batch, Hello, Label, QueryRequest, Sample, SeriesDef,
};
use nodewatch_tests::{
    channel, find_program, http_get, missing, peer_name, prometheus, victoria, wait_for,
    Aggregator, BenchResult, Better, Pki,
};

/// Simulated nodes.
const NODES: usize = 350;
/// Seconds between samples.
const STEP_S: i64 = 30;
/// Samples per series (ten minutes).
const POINTS: i64 = 21;
/// Full-pack evaluations timed per side (after one warm-up).
const ROUNDS: usize = 5;

/// Goal for the pack: half of Prometheus' time.
const GOAL_PACK_RATIO: f64 = 0.5;
/// Goal for the pack against VictoriaMetrics: no slower.
const GOAL_PACK_RATIO_VM: f64 = 1.0;

/// Queries with large, unaggregated results, timed apart from the pack:
/// (what it is, expression).
const QUERIES: &[(&str, &str)] = &[
    ("plain selector over all nodes", "node_cpu_seconds_total"),
    (
        "rate, not aggregated",
        "rate(node_network_receive_bytes_total[5m])",
    ),
];

/// The pack: what node-mixin's recording and alerting rules compute.
const PACK: &[&str] = &[
    r#"count without (cpu, mode) (node_cpu_seconds_total{mode="idle"})"#,
    r#"1 - avg without (cpu) (sum without (mode) (rate(node_cpu_seconds_total{mode=~"idle|iowait|steal"}[5m])))"#,
    r#"sum by (node) (rate(node_cpu_seconds_total{mode!="idle"}[5m]))"#,
    r#"avg by (node, mode) (rate(node_cpu_seconds_total[5m]))"#,
    r#"sum by (mode) (irate(node_cpu_seconds_total[5m]))"#,
    r#"node_load1 / on(node) count by (node) (node_cpu_seconds_total{mode="idle"})"#,
    r#"node_load5 / on(node) count by (node) (node_cpu_seconds_total{mode="idle"}) > 2"#,
    r#"node_load15 > on(node) count by (node) (node_cpu_seconds_total{mode="idle"})"#,
    r#"1 - (node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes)"#,
    r#"node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes * 100 < 10"#,
    r#"sum(node_memory_MemTotal_bytes - node_memory_MemAvailable_bytes)"#,
    r#"(node_memory_MemTotal_bytes - node_memory_MemFree_bytes - node_memory_Cached_bytes - node_memory_Buffers_bytes) / node_memory_MemTotal_bytes"#,
    r#"rate(node_vmstat_pgmajfault[5m]) > 50"#,
    r#"increase(node_vmstat_oom_kill[5m]) > 0"#,
    r#"1 - node_memory_SwapFree_bytes / node_memory_SwapTotal_bytes"#,
    r#"rate(node_disk_io_time_seconds_total[5m])"#,
    r#"sum by (node) (rate(node_disk_read_bytes_total[5m]) + rate(node_disk_written_bytes_total[5m]))"#,
    r#"rate(node_disk_io_time_weighted_seconds_total[5m])"#,
    r#"rate(node_disk_io_time_seconds_total[5m]) > 0.9"#,
    r#"sum by (node) (rate(node_disk_reads_completed_total[5m]) + rate(node_disk_writes_completed_total[5m]))"#,
    r#"topk(10, sum by (node) (rate(node_disk_written_bytes_total[5m])))"#,
    r#"max by (node) (rate(node_disk_io_time_seconds_total[1m]))"#,
    r#"1 - node_filesystem_avail_bytes{fstype!="tmpfs"} / node_filesystem_size_bytes{fstype!="tmpfs"}"#,
    r#"(node_filesystem_avail_bytes{fstype!=""} / node_filesystem_size_bytes{fstype!=""} * 100 < 15 and node_filesystem_readonly{fstype!=""} == 0)"#,
    r#"(node_filesystem_avail_bytes / node_filesystem_size_bytes * 100 < 40 and predict_linear(node_filesystem_avail_bytes[5m], 24 * 60 * 60) < 0 and node_filesystem_readonly == 0)"#,
    r#"node_filesystem_files_free / node_filesystem_files * 100 < 5 and node_filesystem_readonly == 0"#,
    r#"max by (node) (1 - node_filesystem_avail_bytes / node_filesystem_size_bytes)"#,
    r#"deriv(node_filesystem_avail_bytes[5m])"#,
    r#"sum by (node) (rate(node_network_receive_bytes_total{device!="lo"}[5m]))"#,
    r#"sum by (node) (rate(node_network_transmit_bytes_total{device!="lo"}[5m]))"#,
    r#"rate(node_network_receive_errs_total[2m]) / rate(node_network_receive_bytes_total[2m]) > 0.0001"#,
    r#"rate(node_network_transmit_errs_total[2m]) / rate(node_network_transmit_bytes_total[2m]) > 0.0001"#,
    r#"sum by (node) (rate(node_network_receive_drop_total[5m]) + rate(node_network_transmit_drop_total[5m]))"#,
    r#"changes(node_network_up[5m]) > 2"#,
    r#"count by (node) (node_network_up == 1)"#,
    r#"histogram_quantile(0.99, sum by (node, le) (rate(http_request_duration_seconds_bucket[5m])))"#,
    r#"histogram_quantile(0.9, sum by (handler, le) (rate(http_request_duration_seconds_bucket[5m])))"#,
    r#"histogram_quantile(0.5, rate(http_request_duration_seconds_bucket{handler="/api"}[5m]))"#,
    r#"sum by (node) (rate(http_request_duration_seconds_sum[5m])) / sum by (node) (rate(http_request_duration_seconds_count[5m]))"#,
    r#"quantile(0.95, sum by (node) (rate(node_cpu_seconds_total{mode!="idle"}[5m])))"#,
    r#"quantile by (mode) (0.5, rate(node_cpu_seconds_total[5m]))"#,
    r#"bottomk(5, node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes)"#,
    r#"abs(node_timex_offset_seconds) > 0.05 and deriv(node_timex_offset_seconds[5m]) >= 0"#,
    r#"time() - node_boot_time_seconds < 600"#,
    r#"rate(node_context_switches_total[5m]) / on(node) group_left count by (node) (node_cpu_seconds_total{mode="idle"})"#,
    r#"rate(node_intr_total[5m])"#,
    r#"avg_over_time(node_load1[5m])"#,
    r#"max_over_time(node_load5[10m])"#,
    r#"sum by (node) (node_memory_Cached_bytes + node_memory_Buffers_bytes)"#,
    r#"count(count by (node) (node_cpu_seconds_total))"#,
    r#"node_memory_MemAvailable_bytes and on(node) node_load1 > 1"#,
    r#"sum without (device) (rate(node_disk_read_bytes_total[5m]))"#,
    r#"delta(node_load1[5m])"#,
    r#"resets(node_cpu_seconds_total{mode="user"}[5m])"#,
    r#"absent(node_load1{node="nope"})"#,
    r#"sum by (node, device) (rate(node_network_receive_bytes_total[1m])) * 8"#,
    r#"min by (node) (node_filesystem_avail_bytes)"#,
    r#"sum by (node) (increase(http_request_duration_seconds_count[5m]))"#,
    r#"count_over_time(node_load1[5m])"#,
];

/// How a series moves.
#[derive(Clone, Copy)]
enum Kind {
    /// Grows by this much per second.
    Counter(f64),
    /// Stays near this value (a small wobble so `deriv`/`delta` see motion).
    Gauge(f64),
}

struct SeriesSpec {
    name: &'static str,
    labels: Vec<(&'static str, String)>,
    kind: Kind,
}

/// A small deterministic hash for per-series variety.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

fn frac(seed: u64) -> f64 {
    (mix(seed) % 10_000) as f64 / 10_000.0
}

/// The ~300 series of one node.
#[allow(
    clippy::too_many_lines,
    reason = "the table of series one simulated node exports, an entry each"
)]
fn node_series(node: usize) -> Vec<SeriesSpec> {
    let mut out = Vec::new();
    let n = node as u64;
    let mut seed = n * 1_000_003;
    let mut next = || {
        seed += 1;
        frac(seed)
    };
    let mut push = |name, labels: Vec<(&'static str, String)>, kind| {
        out.push(SeriesSpec { name, labels, kind });
    };
    for cpu in 0..16 {
        for (mode, share) in [
            ("idle", 0.6),
            ("user", 0.2),
            ("system", 0.1),
            ("iowait", 0.04),
            ("irq", 0.01),
            ("softirq", 0.02),
            ("steal", 0.01),
            ("nice", 0.02),
        ] {
            push(
                "node_cpu_seconds_total",
                vec![("cpu", cpu.to_string()), ("mode", mode.into())],
                Kind::Counter(share * (0.5 + next())),
            );
        }
    }
    let total = 16.0 * 1024.0 * 1024.0 * 1024.0;
    let avail = total * (0.05 + 0.9 * next());
    for (name, v) in [
        ("node_memory_MemTotal_bytes", total),
        ("node_memory_MemAvailable_bytes", avail),
        ("node_memory_MemFree_bytes", avail * 0.3),
        ("node_memory_Cached_bytes", avail * 0.5),
        ("node_memory_Buffers_bytes", avail * 0.1),
        ("node_memory_SwapTotal_bytes", total / 4.0),
        ("node_memory_SwapFree_bytes", total / 4.0 * next()),
    ] {
        push(name, vec![], Kind::Gauge(v));
    }
    for (dev, mnt, fstype) in [
        ("/dev/sda1", "/", "ext4"),
        ("/dev/sda2", "/var", "xfs"),
        ("tmpfs", "/run", "tmpfs"),
        ("/dev/sdb1", "/data", "ext4"),
    ] {
        let l = vec![
            ("device", dev.to_string()),
            ("mountpoint", mnt.to_string()),
            ("fstype", fstype.to_string()),
        ];
        let size = 1e11 * (1.0 + next());
        push("node_filesystem_size_bytes", l.clone(), Kind::Gauge(size));
        push(
            "node_filesystem_avail_bytes",
            l.clone(),
            Kind::Gauge(size * next()),
        );
        push("node_filesystem_files", l.clone(), Kind::Gauge(6e6));
        push(
            "node_filesystem_files_free",
            l.clone(),
            Kind::Gauge(6e6 * next()),
        );
        push("node_filesystem_readonly", l, Kind::Gauge(0.0));
    }
    for dev in ["sda", "sdb", "nvme0n1", "nvme1n1"] {
        let l = vec![("device", dev.to_string())];
        for (name, rate) in [
            ("node_disk_read_bytes_total", 5e6),
            ("node_disk_written_bytes_total", 8e6),
            ("node_disk_io_time_seconds_total", 1.0),
            ("node_disk_io_time_weighted_seconds_total", 2.0),
            ("node_disk_reads_completed_total", 300.0),
            ("node_disk_writes_completed_total", 500.0),
        ] {
            push(name, l.clone(), Kind::Counter(rate * next()));
        }
    }
    for dev in [
        "lo", "eth0", "eth1", "bond0", "vlan10", "vlan20", "cni0", "wg0",
    ] {
        let l = vec![("device", dev.to_string())];
        for (name, rate) in [
            ("node_network_receive_bytes_total", 1e7),
            ("node_network_transmit_bytes_total", 1e7),
            ("node_network_receive_errs_total", 2.0),
            ("node_network_transmit_errs_total", 2.0),
            ("node_network_receive_drop_total", 5.0),
            ("node_network_transmit_drop_total", 5.0),
        ] {
            push(name, l.clone(), Kind::Counter(rate * next()));
        }
        push("node_network_up", l, Kind::Gauge(1.0));
    }
    for name in ["node_load1", "node_load5", "node_load15"] {
        push(name, vec![], Kind::Gauge(20.0 * next()));
    }
    push(
        "node_context_switches_total",
        vec![],
        Kind::Counter(2e4 * next()),
    );
    push("node_intr_total", vec![], Kind::Counter(1e4 * next()));
    push(
        "node_vmstat_pgmajfault",
        vec![],
        Kind::Counter(100.0 * next()),
    );
    push(
        "node_vmstat_oom_kill",
        vec![],
        Kind::Counter(0.001 * next()),
    );
    push(
        "node_timex_offset_seconds",
        vec![],
        Kind::Gauge(0.1 * next()),
    );
    push(
        "node_boot_time_seconds",
        vec![],
        Kind::Gauge(1.7e9 + 1e6 * next()),
    );
    let les = [
        "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
    ];
    for handler in ["/api", "/metrics", "/healthz", "/query"] {
        let rps = 100.0 * next();
        let scale = 0.05 + next();
        for le in les {
            let bound: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            // An exponential latency distribution with mean `scale` seconds.
            let share = 1.0 - (-bound / scale).exp();
            push(
                "http_request_duration_seconds_bucket",
                vec![("handler", handler.into()), ("le", le.into())],
                Kind::Counter(rps * share),
            );
        }
        push(
            "http_request_duration_seconds_sum",
            vec![("handler", handler.into())],
            Kind::Counter(rps * scale),
        );
        push(
            "http_request_duration_seconds_count",
            vec![("handler", handler.into())],
            Kind::Counter(rps),
        );
    }
    out
}

fn value(kind: Kind, i: i64, seed: u64) -> f64 {
    match kind {
        Kind::Counter(rate) => 1e6 * frac(seed) + rate * (i * STEP_S) as f64,
        Kind::Gauge(v) => v * (1.0 + 0.01 * ((i as f64) * 0.7 + seed as f64).sin()),
    }
}

fn node_name(n: usize) -> String {
    format!("node-{n:04}")
}

/// One node's whole history over its own stream; returns when all is acked.
async fn ingest_node(agg: &Aggregator, pki: &Pki, n: usize, end_s: i64) {
    let files = pki.node(&node_name(n));
    let mut client =
        IngestClient::new(channel(agg, &files)).max_encoding_message_size(64 * 1024 * 1024);
    let specs = node_series(n);
    let mut frames = vec![AgentFrame {
        frame: Some(agent_frame::Frame::Hello(Hello {
            agent_version: "bench".into(),
            node: node_name(n),
            os: "linux".into(),
            boot_id: "b".into(),
            instance_id: format!("bench-{n}"),
            ..Hello::default()
        })),
    }];
    for i in 0..POINTS {
        let t_ms = (end_s - (POINTS - 1 - i) * STEP_S) * 1000;
        let series_defs = if i == 0 {
            specs
                .iter()
                .enumerate()
                .map(|(r, s)| SeriesDef {
                    r#ref: r as u64,
                    name: s.name.into(),
                    labels: s
                        .labels
                        .iter()
                        .map(|(k, v)| Label {
                            name: (*k).into(),
                            value: v.clone(),
                        })
                        .collect(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let samples = specs
            .iter()
            .enumerate()
            .map(|(r, s)| Sample {
                r#ref: r as u64,
                t_ms,
                value: value(s.kind, i, (n * 100_000 + r) as u64),
            })
            .collect();
        frames.push(AgentFrame {
            frame: Some(agent_frame::Frame::Batch(Batch {
                seq: (i + 1) as u64,
                series_defs,
                samples,
                ..Batch::default()
            })),
        });
    }
    let mut rx = client
        .stream(tokio_stream::StreamExt::chain(
            tokio_stream::iter(frames),
            tokio_stream::pending(),
        ))
        .await
        .unwrap()
        .into_inner();
    while let Some(f) = rx.next().await {
        match f.unwrap().frame {
            Some(aggregator_frame::Frame::Ack(a)) if a.seq == POINTS as u64 => return,
            Some(aggregator_frame::Frame::Error(e)) => panic!("node {n}: {e:?}"),
            _ => {}
        }
    }
    panic!("node {n}: stream ended before the last ack");
}

/// The same history as `OpenMetrics` text, for `promtool`.
fn openmetrics(end_s: i64) -> String {
    let mut out = String::with_capacity(NODES * 300 * POINTS as usize * 90);
    for n in 0..NODES {
        for (r, s) in node_series(n).iter().enumerate() {
            let mut labels = format!("node=\"{}\"", node_name(n));
            for (k, v) in &s.labels {
                let _ = write!(labels, ",{k}=\"{v}\"");
            }
            for i in 0..POINTS {
                let t = end_s - (POINTS - 1 - i) * STEP_S;
                let v = value(s.kind, i, (n * 100_000 + r) as u64);
                let _ = writeln!(out, "{}{{{labels}}} {v:?} {t}", s.name);
            }
        }
    }
    out.push_str("# EOF\n");
    out
}

/// One node's history as Prometheus text exposition with millisecond
/// timestamps, for VictoriaMetrics' import API.
fn exposition(n: usize, end_s: i64) -> String {
    let mut out = String::with_capacity(300 * POINTS as usize * 90);
    for (r, s) in node_series(n).iter().enumerate() {
        let mut labels = format!("node=\"{}\"", node_name(n));
        for (k, v) in &s.labels {
            let _ = write!(labels, ",{k}=\"{v}\"");
        }
        for i in 0..POINTS {
            let t = end_s - (POINTS - 1 - i) * STEP_S;
            let v = value(s.kind, i, (n * 100_000 + r) as u64);
            let _ = writeln!(out, "{}{{{labels}}} {v:?} {}", s.name, t * 1000);
        }
    }
    out
}

/// `url.QueryEscape` for the query string.
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

fn prom_query(addr: std::net::SocketAddr, expr: &str, t_s: i64) -> usize {
    let (status, body) = http_get(
        addr,
        &format!("/api/v1/query?query={}&time={t_s}", escape(expr)),
    )
    .unwrap();
    assert_eq!(status, 200, "{expr}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    match v["data"]["resultType"].as_str() {
        Some("vector") => v["data"]["result"].as_array().unwrap().len(),
        _ => 1,
    }
}

/// Prometheus' raw answer and the number of series in it. Only the HTTP
/// exchange is timed: parsing the JSON here is the client's cost, and the
/// large answers of [`QUERIES`] would make it a noticeable part of the figure.
fn prom_fetch(addr: std::net::SocketAddr, expr: &str, t_s: i64) -> (Duration, usize) {
    let start = Instant::now();
    let (status, body) = http_get(
        addr,
        &format!("/api/v1/query?query={}&time={t_s}", escape(expr)),
    )
    .unwrap();
    let took = start.elapsed();
    assert_eq!(status, 200, "{expr}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    (took, v["data"]["result"].as_array().map_or(1, Vec::len))
}

#[allow(
    clippy::too_many_lines,
    reason = "one benchmark run: peers, load, measure, record"
)]
fn main() {
    let Some(prometheus) = nodewatch_tests::prometheus::program() else {
        return;
    };
    let Some(promtool) = find_program("promtool") else {
        return missing("promtool (Debian package `prometheus`)");
    };
    let Some(vm_bin) = find_program(victoria::PROGRAM) else {
        return missing("victoria-metrics (Debian package `victoria-metrics`)");
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pki = Pki::new();
    let dir = pki.dir.path().to_path_buf();
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let end_s = now_s / STEP_S * STEP_S - STEP_S;
    let series_per_node = node_series(0).len();
    let total_series = series_per_node * NODES;
    eprintln!(
        "{NODES} nodes × {series_per_node} series = {total_series} series, {POINTS} samples each"
    );

    // nodewatch: a real aggregator, every node on its own mTLS stream.
    let agg = Aggregator::start(&pki, "agg", "store: {retention: 20m}\n");
    let t0 = Instant::now();
    rt.block_on(
        futures::stream::iter(0..NODES)
            .map(|n| ingest_node(&agg, &pki, n, end_s))
            .buffer_unordered(32)
            .collect::<Vec<()>>(),
    );
    eprintln!("nodewatch ingest: {:?}", t0.elapsed());

    // Prometheus: the same samples as TSDB blocks.
    let t0 = Instant::now();
    let om = dir.join("data.om");
    std::fs::File::create(&om)
        .unwrap()
        .write_all(openmetrics(end_s).as_bytes())
        .unwrap();
    let data = dir.join("prom-data");
    let out = std::process::Command::new(&promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&om)
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&om).unwrap();
    eprintln!("promtool blocks: {:?}", t0.elapsed());
    let (_prom, paddr) = prometheus::start(
        &prometheus,
        &dir,
        &prometheus::Options {
            name: "prometheus",
            config: "global: {}\n",
            data: Some(&data),
            args: &["--storage.tsdb.retention.time=1d"],
            ..Default::default()
        },
    );

    // VictoriaMetrics: the same samples through its import API.
    let t0 = Instant::now();
    let (_vm, vaddr) = victoria::start(&vm_bin, &dir, "rules");
    for n in 0..NODES {
        let (status, body) = victoria::post(
            vaddr,
            "/api/v1/import/prometheus",
            exposition(n, end_s).as_bytes(),
        )
        .unwrap();
        assert!(
            (200..300).contains(&status),
            "import node {n}: {status} {body}"
        );
    }
    victoria::flush(vaddr);
    let want = total_series;
    wait_for(
        Duration::from_mins(2),
        "victoria-metrics holding every series",
        || {
            let (_, body) = http_get(
                vaddr,
                &format!(
                    "/api/v1/query?query={}&time={end_s}",
                    escape("count({__name__=~\".+\"})")
                ),
            )
            .ok()?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let n: usize = v["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
            (n == want).then_some(())
        },
    );
    eprintln!("victoria-metrics import: {:?}", t0.elapsed());

    let ops = pki.operator("bench");
    // The channel is made lazily on the runtime.
    let _enter = rt.enter();
    let mut q = QueryClient::new(channel(&agg, &ops)).max_decoding_message_size(256 * 1024 * 1024);
    let mut nw_query = |expr: &str| -> usize {
        rt.block_on(async {
            let r = q
                .query(QueryRequest {
                    expr: expr.into(),
                    time_ms: end_s * 1000,
                })
                .await
                .unwrap_or_else(|e| panic!("{expr}: {e}"))
                .into_inner();
            if r.result_type == "vector" {
                r.vector.len()
            } else {
                1
            }
        })
    };

    // Warm-up, and the same answers on both sides.
    let mut mismatches = Vec::new();
    for expr in PACK {
        let a = nw_query(expr);
        let b = prom_query(paddr, expr, end_s);
        let c = prom_query(vaddr, expr, end_s);
        if a != b || a != c {
            mismatches.push(format!(
                "{expr}: nodewatch {a} series, Prometheus {b}, VictoriaMetrics {c}"
            ));
        }
    }
    let mut nw = Vec::new();
    let mut prom = Vec::new();
    let mut vm = Vec::new();
    // Per expression, summed over rounds: where each side spends its time.
    let mut per_expr = vec![(Duration::ZERO, Duration::ZERO, Duration::ZERO); PACK.len()];
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for (i, expr) in PACK.iter().enumerate() {
            let e = Instant::now();
            nw_query(expr);
            per_expr[i].0 += e.elapsed();
        }
        nw.push(t.elapsed());
        let t = Instant::now();
        for (i, expr) in PACK.iter().enumerate() {
            let e = Instant::now();
            prom_query(paddr, expr, end_s);
            per_expr[i].1 += e.elapsed();
        }
        prom.push(t.elapsed());
        let t = Instant::now();
        for (i, expr) in PACK.iter().enumerate() {
            let e = Instant::now();
            prom_query(vaddr, expr, end_s);
            per_expr[i].2 += e.elapsed();
        }
        vm.push(t.elapsed());
    }
    nw.sort();
    prom.sort();
    vm.sort();

    // The large queries, each side back to back per round, after one warm-up.
    let mut query_times = Vec::new();
    for (what, expr) in QUERIES {
        let a = nw_query(expr);
        let (_, in_prom) = prom_fetch(paddr, expr, end_s);
        let (_, in_vm) = prom_fetch(vaddr, expr, end_s);
        if a != in_prom || a != in_vm {
            mismatches.push(format!(
                "{expr}: nodewatch {a} series, Prometheus {in_prom}, VictoriaMetrics {in_vm}"
            ));
        }
        let (mut ours, mut theirs, mut vms) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let t = Instant::now();
            nw_query(expr);
            ours.push(t.elapsed());
            theirs.push(prom_fetch(paddr, expr, end_s).0);
            vms.push(prom_fetch(vaddr, expr, end_s).0);
        }
        ours.sort();
        theirs.sort();
        vms.sort();
        query_times.push((
            *what,
            *expr,
            a,
            ours[ROUNDS / 2],
            theirs[ROUNDS / 2],
            vms[ROUNDS / 2],
        ));
    }

    let (a, b, c) = (nw[ROUNDS / 2], prom[ROUNDS / 2], vm[ROUNDS / 2]);
    let vm_peer = victoria::peer_name();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "\n{} expressions over {total_series} series ({NODES} nodes, {POINTS} samples per series, {STEP_S} s apart), median of {ROUNDS} full-pack evaluations:\n",
        PACK.len()
    );
    println!("| measure | nodewatch | Prometheus | {vm_peer} | nodewatch / Prometheus | nodewatch / VictoriaMetrics |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| full pack (median) | {:.1} ms | {:.1} ms | {:.1} ms | {:.2}× | {:.2}× |",
        ms(a),
        ms(b),
        ms(c),
        ms(a) / ms(b),
        ms(a) / ms(c)
    );
    println!(
        "| full pack (best) | {:.1} ms | {:.1} ms | {:.1} ms | {:.2}× | {:.2}× |",
        ms(nw[0]),
        ms(prom[0]),
        ms(vm[0]),
        ms(nw[0]) / ms(prom[0]),
        ms(nw[0]) / ms(vm[0])
    );
    println!(
        "| per expression (median pack / {}) | {:.2} ms | {:.2} ms | {:.2} ms | | |",
        PACK.len(),
        ms(a) / PACK.len() as f64,
        ms(b) / PACK.len() as f64,
        ms(c) / PACK.len() as f64
    );
    let mut slowest: Vec<(usize, (Duration, Duration, Duration))> =
        per_expr.iter().copied().enumerate().collect();
    slowest.sort_by_key(|(_, (a, _, _))| std::cmp::Reverse(*a));
    println!("\nThe five expressions nodewatch spends most on (mean per evaluation):\n");
    println!("| expression | nodewatch | Prometheus | VictoriaMetrics |");
    println!("|---|---|---|---|");
    for (i, (a, b, c)) in slowest.iter().take(5) {
        println!(
            "| `{}` | {:.1} ms | {:.1} ms | {:.1} ms |",
            PACK[*i].replace('|', "\\|"),
            ms(*a) / ROUNDS as f64,
            ms(*b) / ROUNDS as f64,
            ms(*c) / ROUNDS as f64
        );
    }
    let mut behind: Vec<&(usize, (Duration, Duration, Duration))> =
        slowest.iter().filter(|(_, (a, _, c))| a > c).collect();
    behind.sort_by_key(|(_, (a, _, c))| std::cmp::Reverse(a.saturating_sub(*c)));
    println!(
        "\nExpressions where VictoriaMetrics is faster ({} of {}; most behind first, mean per evaluation):\n",
        behind.len(),
        PACK.len()
    );
    println!("| expression | nodewatch | VictoriaMetrics |");
    println!("|---|---|---|");
    for (i, (a, _, c)) in behind.iter().take(10) {
        println!(
            "| `{}` | {:.1} ms | {:.1} ms |",
            PACK[*i].replace('|', "\\|"),
            ms(*a) / ROUNDS as f64,
            ms(*c) / ROUNDS as f64
        );
    }
    println!(
        "\nLarge results, apart from the pack (median of {ROUNDS}; nodewatch's time includes decoding the protobuf answer, the others' only receiving their JSON):\n"
    );
    println!("| query | series | nodewatch | Prometheus | VictoriaMetrics | nodewatch / Prometheus | nodewatch / VictoriaMetrics |");
    println!("|---|---:|---|---|---|---|---|");
    for (what, expr, series, ours, theirs, vms) in &query_times {
        println!(
            "| {what}: `{expr}` | {series} | {:.1} ms | {:.1} ms | {:.1} ms | {:.2}× | {:.2}× |",
            ms(*ours),
            ms(*theirs),
            ms(*vms),
            ms(*ours) / ms(*theirs),
            ms(*ours) / ms(*vms)
        );
    }

    let peer = peer_name("Prometheus", &prometheus);
    BenchResult::new(
        &format!("full pack of {} expressions (median)", PACK.len()),
        "ms",
        ms(a),
        Better::Lower,
    )
    .peer(&peer, ms(b))
    .goal_ratio(GOAL_PACK_RATIO)
    .record();
    BenchResult::new(
        &format!("full pack of {} expressions (best)", PACK.len()),
        "ms",
        ms(nw[0]),
        Better::Lower,
    )
    .peer(&peer, ms(prom[0]))
    .record();
    BenchResult::new(
        &format!("full pack of {} expressions (median)", PACK.len()),
        "ms",
        ms(a),
        Better::Lower,
    )
    .peer(&vm_peer, ms(c))
    .goal_ratio(GOAL_PACK_RATIO_VM)
    .record();
    for (_, expr, series, ours, theirs, vms) in &query_times {
        BenchResult::new(
            &format!("query `{expr}`, {series} series (median)"),
            "ms",
            ms(*ours),
            Better::Lower,
        )
        .peer(&peer, ms(*theirs))
        .record();
        BenchResult::new(
            &format!("query `{expr}`, {series} series (median)"),
            "ms",
            ms(*ours),
            Better::Lower,
        )
        .peer(&vm_peer, ms(*vms))
        .record();
    }

    if mismatches.is_empty() {
        println!("\nEvery expression returned the same number of series on every side.");
    } else {
        println!("\nResult sizes differ for:");
        for m in mismatches {
            println!("- {m}");
        }
    }
}
