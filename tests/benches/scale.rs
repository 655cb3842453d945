//! Scale against Prometheus 2.42 and VictoriaMetrics 1.79 (single node), one
//! run on one machine:
//!
//! - ingest: `nodewatch-loadgen` simulates N agents (1,500 series each, 10 s
//!   interval) over mutual TLS; N rises until the ack p99 passes 1 s (or
//!   acks go missing). The same load goes to Prometheus' remote-write
//!   receiver and to VictoriaMetrics' (`/api/v1/write`), one request per
//!   node per interval, its response the ack.
//! - memory: bytes per active series after a fixed number of samples per
//!   series. 15 minutes of 1 s samples (900) would take 15 minutes per side;
//!   this sends [`MEM_SAMPLES`] samples per series at [`MEM_INTERVAL`]
//!   instead, which exercises the same chunk encoding at the same shape
//!   (regular interval, ms jitter) in a fraction of the time. nodewatch:
//!   RSS growth of the aggregator divided by its series; Prometheus: its
//!   `process_resident_memory_bytes` / `prometheus_tsdb_head_series` as it
//!   reports them, and its RSS growth per series measured as for nodewatch;
//!   VictoriaMetrics: its RSS growth per series, likewise.
//! - wire: bytes the load generator wrote to its sockets (TLS records
//!   included, `wchar` of `/proc/self/io`) per sample in steady state
//!   ([`WIRE_NODES`] nodes at the agent's 10 s interval for [`WIRE_WINDOW`],
//!   after a warm-up that carries the series definitions), in sample blocks
//!   as the agent sends them and in plain samples as older agents do,
//!   against Prometheus text exposition of an agent's series (bytes of
//!   `nodewatch-agent --once` per sample line, uncompressed).
//!
//! Values are a real agent's: [`COLLECTIONS`] runs of `nodewatch-agent
//! --once` on this machine, 10 s apart, whose changes the load generator
//! replays (counters rise by the real differences, gauges take the real
//! values).
//!
//! The load generator runs on the same 2 cores as the system under test, for
//! both sides alike.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p nodewatch-tests --bench scale`
//! (`NODEWATCH_BENCH_SCALE=wire`: the wire measurement alone, about 3 minutes).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nodewatch_tests::{
    bin, find_program, http_get, missing, peer_name, prometheus, victoria, Aggregator, BenchResult,
    Better, Pki, Proc,
};

const SERIES_PER_NODE: usize = 1500;
const INGEST_INTERVAL: &str = "10s";
/// Not measured: every node connecting and sending its series definitions
/// (the first interval), and the aggregator working through them. Two and a
/// half intervals, so the window holds steady-state batches only; the first
/// batches' own ack times are reported beside it.
const INGEST_WARMUP: &str = "25s";
const INGEST_WINDOW: &str = "15s";
/// Node counts tried in turn until a side stops holding (past 1,000 to find
/// where each one fails on this machine).
const STEPS: &[usize] = &[50, 200, 500, 1000, 1500, 2000];
const MEM_NODES: usize = 10;
const MEM_SERIES: usize = 1000;
const MEM_INTERVAL: &str = "200ms";
const MEM_SAMPLES: u32 = 300;
const COLLECTIONS: usize = 4;
const COLLECTION_INTERVAL: Duration = Duration::from_secs(10);
const WIRE_NODES: usize = 10;
const WIRE_WINDOW: &str = "60s";
/// Goal for the stream in sample blocks: bytes on the wire per sample, TLS included.
const GOAL_WIRE_BYTES_PER_SAMPLE: f64 = 2.0;
/// What the wire figures are compared with: a format, not a process.
const TEXT_PEER: &str = "Prometheus text exposition (uncompressed)";

fn loadgen(args: &[String]) -> serde_json::Value {
    let out = std::process::Command::new(bin("nodewatch-loadgen"))
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprint!("{text}");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("JSON "))
        .unwrap_or_else(|| panic!("loadgen failed: {}", String::from_utf8_lossy(&out.stderr)));
    serde_json::from_str(line).unwrap()
}

fn rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .map(|v| {
            v.trim()
                .trim_end_matches(" kB")
                .trim()
                .parse::<u64>()
                .unwrap()
                * 1024
        })
        .unwrap()
}

fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(' ')))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A Prometheus receiving remote write, its files named after `tag`.
fn start_prometheus(bin: &std::path::Path, dir: &std::path::Path, tag: &str) -> (Proc, SocketAddr) {
    prometheus::start(
        bin,
        dir,
        &prometheus::Options {
            name: &format!("prometheus-{tag}"),
            config: "global:\n  evaluation_interval: 1m\n",
            args: &["--web.enable-remote-write-receiver"],
            ..Default::default()
        },
    )
}

fn held(r: &serde_json::Value) -> bool {
    r["p99_ms"].as_f64().is_some_and(|p| p <= 1000.0)
        && r["errors"].as_u64() == Some(0)
        && r["acked_batches"].as_u64().unwrap_or(0) as f64
            >= 0.99 * r["batches"].as_u64().unwrap_or(0) as f64
}

struct Step {
    nodes: usize,
    sps: f64,
    p50: f64,
    p99: f64,
    /// Ack of each node's first batch (series definitions, every node connecting): p99 and max, ms.
    first_p99: f64,
    first_max: f64,
    held: bool,
}

fn ingest_steps(target: &dyn Fn(&str, usize) -> Vec<String>) -> Vec<Step> {
    let mut steps = Vec::new();
    for (i, &n) in STEPS.iter().enumerate() {
        let mut args = target(&format!("s{i}"), n);
        args.extend(
            [
                "--nodes",
                &n.to_string(),
                "--series",
                &SERIES_PER_NODE.to_string(),
                "--interval",
                INGEST_INTERVAL,
                "--warmup",
                INGEST_WARMUP,
                "--duration",
                INGEST_WINDOW,
                "--prefix",
                &format!("s{i}"),
            ]
            .map(String::from),
        );
        let r = loadgen(&args);
        let ok = held(&r);
        steps.push(Step {
            nodes: n,
            sps: r["acked_samples_per_s"].as_f64().unwrap_or(0.0),
            p50: r["p50_ms"].as_f64().unwrap_or(f64::NAN),
            p99: r["p99_ms"].as_f64().unwrap_or(f64::NAN),
            first_p99: r["first_p99_ms"].as_f64().unwrap_or(f64::NAN),
            first_max: r["first_max_ms"].as_f64().unwrap_or(f64::NAN),
            held: ok,
        });
        if !ok {
            break;
        }
    }
    steps
}

fn best(steps: &[Step]) -> (usize, f64) {
    steps
        .iter()
        .filter(|s| s.held)
        .map(|s| (s.nodes, s.sps))
        .next_back()
        .unwrap_or((0, 0.0))
}

#[allow(
    clippy::too_many_lines,
    reason = "one benchmark run: peers, load, measure, record"
)]
fn main() {
    let Some(prometheus) = nodewatch_tests::prometheus::program() else {
        return;
    };
    let Some(vm_bin) = find_program(victoria::PROGRAM) else {
        return missing("victoria-metrics (Debian package `victoria-metrics`)");
    };
    let started = Instant::now();
    let pki = Pki::new();
    let dir = pki.dir.path().to_path_buf();
    let mut templates = Vec::new();
    let mut agent_text = Vec::new();
    for i in 0..COLLECTIONS {
        let at = started + COLLECTION_INTERVAL * i as u32;
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let text = std::process::Command::new(bin("nodewatch-agent"))
            .arg("--once")
            .output()
            .unwrap()
            .stdout;
        let path = dir.join(format!("collection-{i}.prom"));
        std::fs::write(&path, &text).unwrap();
        templates.push(path);
        if i == 0 {
            agent_text = text;
        }
    }
    let common = |extra: Vec<String>| -> Vec<String> {
        let mut v = Vec::new();
        for t in &templates {
            v.extend(["--template".to_string(), t.display().to_string()]);
        }
        v.extend(extra);
        v
    };
    let text = String::from_utf8_lossy(&agent_text);
    let lines = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    let text_bps = agent_text.len() as f64 / lines.max(1) as f64;

    // (c) wire, in blocks and in plain samples.
    let wire = |tag: &str, extra: &[&str]| -> f64 {
        let agg = Aggregator::start(&pki, &format!("agg-wire-{tag}"), "");
        let mut args = common(vec![
            "--aggregator".into(),
            agg.grpc.to_string(),
            "--ca".into(),
            dir.display().to_string(),
        ]);
        args.extend(
            [
                "--nodes",
                &WIRE_NODES.to_string(),
                "--series",
                &SERIES_PER_NODE.to_string(),
                "--interval",
                INGEST_INTERVAL,
                "--warmup",
                INGEST_WARMUP,
                "--duration",
                WIRE_WINDOW,
                "--prefix",
                &format!("wire-{tag}"),
            ]
            .map(String::from),
        );
        args.extend(extra.iter().map(|s| (*s).to_string()));
        let r = loadgen(&args);
        assert_eq!(r["errors"].as_u64(), Some(0), "wire run had errors");
        r["bytes_per_sample"].as_f64().unwrap_or(f64::NAN)
    };
    let wire_bps = wire("blocks", &[]);
    let wire_plain_bps = wire("plain", &["--plain"]);
    let wire_rows = || {
        println!(
            "| wire: bytes per sample (nodewatch stream in sample blocks, TLS included / text exposition) | {wire_bps:.2} | {text_bps:.2} | {:.3}× |",
            wire_bps / text_bps
        );
        println!(
            "| wire: bytes per sample, plain samples (older agents) | {wire_plain_bps:.2} | {text_bps:.2} | {:.2}× |",
            wire_plain_bps / text_bps
        );
        BenchResult::new(
            "wire: bytes per sample, sample blocks (TLS included)",
            "B",
            wire_bps,
            Better::Lower,
        )
        .peer(TEXT_PEER, text_bps)
        .goal(GOAL_WIRE_BYTES_PER_SAMPLE)
        .record();
        BenchResult::new(
            "wire: bytes per sample, plain samples (older agents)",
            "B",
            wire_plain_bps,
            Better::Lower,
        )
        .peer(TEXT_PEER, text_bps)
        .record();
    };
    if std::env::var("NODEWATCH_BENCH_SCALE").as_deref() == Ok("wire") {
        println!("\n| measure | nodewatch | Prometheus text | ratio |");
        println!("|---|---|---|---|");
        wire_rows();
        println!("\n({} s in all)", started.elapsed().as_secs());
        return;
    }

    // (a) ingest, nodewatch: a fresh aggregator per step.
    let agg_cell = std::cell::RefCell::new(Vec::<Aggregator>::new());
    let ours = ingest_steps(&|tag, _| {
        let mut aggs = agg_cell.borrow_mut();
        aggs.clear();
        let agg = Aggregator::start(&pki, &format!("agg-{tag}"), "");
        let a = agg.grpc.to_string();
        aggs.push(agg);
        common(vec![
            "--aggregator".into(),
            a,
            "--ca".into(),
            dir.display().to_string(),
        ])
    });
    agg_cell.borrow_mut().clear();

    // (a) ingest, Prometheus remote-write receiver: a fresh Prometheus per step.
    let prom_cell = std::cell::RefCell::new(Vec::<Proc>::new());
    let theirs = ingest_steps(&|tag, _| {
        let mut ps = prom_cell.borrow_mut();
        ps.clear();
        let (p, addr) = start_prometheus(&prometheus, &dir, tag);
        ps.push(p);
        common(vec![
            "--remote-write".into(),
            format!("http://{addr}/api/v1/write"),
        ])
    });
    prom_cell.borrow_mut().clear();

    // (a) ingest, VictoriaMetrics' remote-write receiver: a fresh one per step.
    let vm_cell = std::cell::RefCell::new(Vec::<Proc>::new());
    let vms = ingest_steps(&|tag, _| {
        let mut ps = vm_cell.borrow_mut();
        ps.clear();
        let (p, addr) = victoria::start(&vm_bin, &dir, tag);
        ps.push(p);
        common(vec![
            "--remote-write".into(),
            format!("http://{addr}/api/v1/write"),
        ])
    });
    vm_cell.borrow_mut().clear();

    // (b) memory.
    let mem_window = humantime::parse_duration(MEM_INTERVAL).unwrap() * MEM_SAMPLES;
    let mem_args = |target: Vec<String>| -> Vec<String> {
        let mut v = common(target);
        v.extend(
            [
                "--nodes",
                &MEM_NODES.to_string(),
                "--series",
                &MEM_SERIES.to_string(),
                "--interval",
                MEM_INTERVAL,
                "--warmup",
                "2s",
                "--duration",
                &format!("{}ms", mem_window.as_millis()),
                "--prefix",
                "mem",
            ]
            .map(String::from),
        );
        v
    };
    let series = (MEM_NODES * MEM_SERIES) as f64;
    // The 2 s warm-up (definitions, first acks) adds its samples too.
    let per_series =
        f64::from(MEM_SAMPLES) + 2.0 / mem_window.as_secs_f64() * f64::from(MEM_SAMPLES);
    let agg = Aggregator::start(&pki, "agg-mem", "");
    let agg_pid = agg.proc.child.id();
    let before = rss_bytes(agg_pid);
    let _ = loadgen(&mem_args(vec![
        "--aggregator".into(),
        agg.grpc.to_string(),
        "--ca".into(),
        dir.display().to_string(),
    ]));
    let ours_mem = (rss_bytes(agg_pid).saturating_sub(before)) as f64 / series;
    drop(agg);

    let (prom, addr) = start_prometheus(&prometheus, &dir, "mem");
    let prom_pid = prom.child.id();
    let prom_before = rss_bytes(prom_pid);
    let _ = loadgen(&mem_args(vec![
        "--remote-write".into(),
        format!("http://{addr}/api/v1/write"),
    ]));
    let (_, pm) = http_get(addr, "/metrics").unwrap();
    let prss = metric(&pm, "process_resident_memory_bytes").unwrap_or(f64::NAN);
    let phead = metric(&pm, "prometheus_tsdb_head_series").unwrap_or(f64::NAN);
    let theirs_mem_reported = prss / phead;
    let theirs_mem_delta = (rss_bytes(prom_pid).saturating_sub(prom_before)) as f64 / series;
    drop(prom);

    let (vm, addr) = victoria::start(&vm_bin, &dir, "mem");
    let vm_pid = vm.child.id();
    let vm_before = rss_bytes(vm_pid);
    let _ = loadgen(&mem_args(vec![
        "--remote-write".into(),
        format!("http://{addr}/api/v1/write"),
    ]));
    let vm_mem_delta = (rss_bytes(vm_pid).saturating_sub(vm_before)) as f64 / series;
    drop(vm);

    let (on, osps) = best(&ours);
    let (tn, tsps) = best(&theirs);
    let (vn, vsps) = best(&vms);
    let vm_peer = victoria::peer_name();
    println!("\n### Scale against Prometheus 2.42 and {vm_peer}\n");
    println!("Ingest steps ({SERIES_PER_NODE} series per node, {INGEST_INTERVAL} interval, {INGEST_WINDOW} measured):\n");
    println!("| nodes | nodewatch samples/s | ack p50 / p99 | first batches p99 / max | Prometheus RW samples/s | response p50 / p99 | first requests p99 / max | VictoriaMetrics RW samples/s | response p50 / p99 | first requests p99 / max |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (i, &n) in STEPS.iter().enumerate() {
        let f = |s: Option<&Step>| {
            s.map_or(
                ("–".to_string(), "–".to_string(), "–".to_string()),
                |s| {
                    (
                        format!("{:.0}{}", s.sps, if s.held { "" } else { " (not held)" }),
                        format!("{:.0} / {:.0} ms", s.p50, s.p99),
                        format!("{:.0} / {:.0} ms", s.first_p99, s.first_max),
                    )
                },
            )
        };
        let (our_sps, our_lat, our_first) = f(ours.get(i));
        let (their_sps, their_lat, their_first) = f(theirs.get(i));
        let (vm_sps, vm_lat, vm_first) = f(vms.get(i));
        println!("| {n} | {our_sps} | {our_lat} | {our_first} | {their_sps} | {their_lat} | {their_first} | {vm_sps} | {vm_lat} | {vm_first} |");
    }
    println!("\n| measure | nodewatch | Prometheus 2.42 | {vm_peer} | nodewatch / Prometheus | nodewatch / VictoriaMetrics |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| ingest: samples/s held (ack p99 ≤ 1 s) | {osps:.0} ({on} nodes) | {tsps:.0} ({tn} nodes) | {vsps:.0} ({vn} nodes) | {:.2}× | {:.2}× |",
        osps / tsps,
        osps / vsps
    );
    println!(
        "| memory: bytes per series, {MEM_SAMPLES} samples each, RSS growth | {ours_mem:.0} | {theirs_mem_delta:.0} | {vm_mem_delta:.0} | {:.2}× | {:.2}× |",
        ours_mem / theirs_mem_delta,
        ours_mem / vm_mem_delta
    );
    println!(
        "| memory: Prometheus' own `process_resident_memory_bytes / prometheus_tsdb_head_series` | {ours_mem:.0} | {theirs_mem_reported:.0} | | {:.2}× | |",
        ours_mem / theirs_mem_reported
    );
    println!(
        "| memory: bytes per sample (RSS growth / samples) | {:.2} | {:.2} | {:.2} | | |",
        ours_mem / per_series,
        theirs_mem_delta / per_series,
        vm_mem_delta / per_series
    );
    wire_rows();
    println!("\n({} s in all)", started.elapsed().as_secs());
    let peer = peer_name("Prometheus", &prometheus);
    BenchResult::new(
        &format!("ingest: samples/s held, ack p99 ≤ 1 s ({on} nodes / Prometheus {tn})"),
        "samples/s",
        osps,
        Better::Higher,
    )
    .peer(&format!("{peer} remote-write receiver"), tsps)
    .record();
    BenchResult::new(
        "memory: bytes per active series (RSS growth)",
        "B",
        ours_mem,
        Better::Lower,
    )
    .peer(&peer, theirs_mem_delta)
    .record();
    BenchResult::new(
        "memory: bytes per sample (RSS growth)",
        "B",
        ours_mem / per_series,
        Better::Lower,
    )
    .peer(&peer, theirs_mem_delta / per_series)
    .record();
    BenchResult::new(
        &format!("ingest: samples/s held, ack p99 ≤ 1 s ({on} nodes / VictoriaMetrics {vn})"),
        "samples/s",
        osps,
        Better::Higher,
    )
    .peer(&format!("{vm_peer} remote-write receiver"), vsps)
    .goal_ratio(1.0)
    .record();
    BenchResult::new(
        "memory: bytes per active series (RSS growth)",
        "B",
        ours_mem,
        Better::Lower,
    )
    .peer(&vm_peer, vm_mem_delta)
    .goal_ratio(1.0)
    .record();
    BenchResult::new(
        "memory: bytes per sample (RSS growth)",
        "B",
        ours_mem / per_series,
        Better::Lower,
    )
    .peer(&vm_peer, vm_mem_delta / per_series)
    .record();
}
