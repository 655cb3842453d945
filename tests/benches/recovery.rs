//! Recovery after an aggregator outage, and what the spool costs per batch.
//!
//! 1. Spool write cost: real collections (every default collector on this
//!    host) appended to an on-disk spool, timed per append (encode, checksum,
//!    `write(2)`, the periodic `fdatasync`).
//! 2. Recovery: N agents stream to a real aggregator, which is `kill -9`ed for
//!    the outage and restarted empty; timed until every agent has nothing
//!    pending, with the samples it took in per second meanwhile (backfill
//!    included: a restarted aggregator gets the spool's retained past).
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p nodewatch-tests --bench recovery`
//! Environment: `NODEWATCH_BENCH_OUTAGE_SECS` (default 300),
//! `NODEWATCH_BENCH_AGENTS` (default 10), `NODEWATCH_BENCH_INTERVAL_MS` (default 1000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodewatch_agent::batch::Collection;
use nodewatch_agent::collector::Paths;
use nodewatch_agent::collectors::registry;
use nodewatch_agent::runtime::{build_collectors, collect_once};
use nodewatch_agent::spool::Spool;
use nodewatch_tests::{
    query_scalar, start_agent, wait_for, Aggregator, BenchResult, Better, Pki, Proc,
};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn spool_write_cost() {
    let mut collectors = build_collectors(
        &registry(),
        &BTreeMap::new(),
        &Paths::default(),
        &nodewatch_agent::collector::CollectorOptions::default(),
    );
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) =
        Spool::open(Some(dir.path()), 256 << 20, Duration::from_secs(900), 1).unwrap();
    let rounds = 300;
    let mut times = Vec::with_capacity(rounds);
    let mut samples = 0;
    for _ in 0..rounds {
        let sink = collect_once(&mut collectors);
        samples = sink.samples.len();
        let families = Arc::new(sink.families);
        let start = Instant::now();
        spool
            .append(|seq| Collection {
                seq,
                t_ms: 0,
                families,
                samples: sink.samples,
                events: Vec::new(),
            })
            .unwrap();
        times.push(start.elapsed());
    }
    times.sort();
    let mean = times.iter().sum::<Duration>() / rounds as u32;
    println!(
        "spool write: {samples} samples per collection, {:.1} KiB per record; mean {mean:?}, p50 {:?}, p99 {:?}, max {:?} per append ({rounds} appends)",
        spool.bytes() as f64 / rounds as f64 / 1024.0,
        times[rounds / 2],
        times[rounds * 99 / 100],
        times[rounds - 1],
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    BenchResult::new("spool append, mean", "ms", ms(mean), Better::Lower).record();
    BenchResult::new(
        "spool append, p99 (periodic fdatasync)",
        "ms",
        ms(times[rounds * 99 / 100]),
        Better::Lower,
    )
    .record();
}

fn recovery() {
    let outage = Duration::from_secs(env_u64("NODEWATCH_BENCH_OUTAGE_SECS", 300));
    let agents = env_u64("NODEWATCH_BENCH_AGENTS", 10);
    let interval = env_u64("NODEWATCH_BENCH_INTERVAL_MS", 1000);
    let pki = Pki::new();
    let mut agg = Aggregator::start(
        &pki,
        "agg",
        "limits: {max_samples_per_second_per_node: 100000000}\n",
    );
    let procs: Vec<Proc> = (0..agents)
        .map(|i| {
            start_agent(
                &pki,
                &format!("b{i}"),
                &[&agg],
                &format!("interval: {interval}ms\n"),
            )
        })
        .collect();
    wait_for(Duration::from_secs(60), "every agent streaming", || {
        query_scalar(&pki, &agg, "count(nodewatch_agent_collections_total)")
            .filter(|n| *n >= agents as f64)
    });
    agg.kill9();
    println!("aggregator down for {outage:?} with {agents} agents collecting every {interval} ms");
    std::thread::sleep(outage);
    let restarted = Instant::now();
    agg.restart(&pki, "agg-2");
    let up = restarted.elapsed();
    let caught_up = wait_for(
        outage * 2 + Duration::from_secs(120),
        "every agent caught up",
        || {
            let pending = query_scalar(&pki, &agg, "max(nodewatch_agent_pending_batches)")?;
            let nodes = query_scalar(&pki, &agg, "count(nodewatch_agent_pending_batches)")?;
            (nodes >= agents as f64 && pending <= 1.0).then(|| restarted.elapsed())
        },
    );
    let samples: f64 = agg
        .metrics()
        .lines()
        .filter(|l| l.starts_with("nodewatch_aggregator_samples_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    println!(
        "recovery: aggregator healthy {up:?} after restart; all {agents} agents caught up {caught_up:?} after restart; {samples} samples taken in, {:.0} samples/s",
        samples / caught_up.as_secs_f64()
    );
    let setting = format!("{} s outage, {agents} agents", outage.as_secs());
    BenchResult::new(
        &format!("aggregator healthy after restart ({setting})"),
        "ms",
        up.as_secs_f64() * 1000.0,
        Better::Lower,
    )
    .record();
    BenchResult::new(
        &format!("every agent caught up after restart ({setting})"),
        "s",
        caught_up.as_secs_f64(),
        Better::Lower,
    )
    .record();
    BenchResult::new(
        &format!("samples taken in while catching up ({setting})"),
        "samples/s",
        samples / caught_up.as_secs_f64(),
        Better::Higher,
    )
    .record();
    drop(procs);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    spool_write_cost();
    recovery();
}
