//! Agent cost per collection against `node_exporter`'s cost per scrape of the
//! same collectors, in one run on the same machine.
//!
//! Both run as real processes at the same rate for the same window: the agent
//! collecting every 100 ms and streaming over mutual TLS to a real aggregator;
//! `node_exporter` (`--collector.disable-defaults` plus the matching collectors)
//! scraped every 100 ms over HTTP. CPU is utime+stime from /proc/<pid>/stat
//! (dead threads included), divided by the collections/scrapes done in the
//! window; memory is `VmRSS` and `VmHWM` at the end.
//!
//! Two agents run side by side in the same window: one with eBPF off and one
//! with eBPF on, as it runs by default on every Talos node (its programs
//! attached to the real kernel; needs root, kernel BTF and tracefs).
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p nodewatch-tests --bench agent_vs_node_exporter`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use nodewatch_agent::collectors::NODE_EXPORTER_1_5_DEFAULTS as NODE_EXPORTER_COLLECTORS;
use nodewatch_tests::{
    find_program, free_port, http_get, missing, peer_name, process_cpu_ticks, spawn, start_agent,
    wait_for, Aggregator, BenchResult, Better, Pki,
};

const WINDOW: Duration = Duration::from_secs(30);
const WARMUP: Duration = Duration::from_secs(5);
const RATE: Duration = Duration::from_millis(100);
/// Goal: at most half of node_exporter's CPU for the same collection.
const GOAL_CPU_RATIO: f64 = 0.5;
/// Goal: no more memory than node_exporter.
const GOAL_MEMORY_RATIO: f64 = 1.0;

fn status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap())
        })
        .unwrap()
}

fn batches(agg: &Aggregator, node: &str) -> f64 {
    let prefix = format!("nodewatch_aggregator_batches_total{{node=\"{node}\"}}");
    agg.metrics()
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// eBPF programs the agent of `node` reports attached.
fn ebpf_attached(agg: &Aggregator, node: &str) -> usize {
    let node = format!("node=\"{node}\"");
    agg.metrics()
        .lines()
        .filter(|l| {
            l.starts_with("nodewatch_agent_ebpf_programs{")
                && l.contains(&node)
                && l.contains("state=\"attached\"")
                && l.ends_with(" 1")
        })
        .count()
}

#[allow(
    clippy::too_many_lines,
    reason = "one benchmark run: peers, load, measure, record"
)]
fn main() {
    let Some(ne) =
        find_program("prometheus-node-exporter").or_else(|| find_program("node_exporter"))
    else {
        return missing("prometheus-node-exporter");
    };
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    let agent = start_agent(&pki, "bench", &[&agg], "interval: 100ms\n");
    let ebpf_agent = start_agent(
        &pki,
        "bench-ebpf",
        &[&agg],
        "interval: 100ms\ncollectors: {ebpf: true}\n",
    );
    wait_for(Duration::from_secs(60), "agents streaming", || {
        (batches(&agg, "bench") > 0.0 && batches(&agg, "bench-ebpf") > 0.0).then_some(())
    });
    let attached = ebpf_attached(&agg, "bench-ebpf");
    if attached == 0 {
        // Without its programs the eBPF-on row would be a second eBPF-off row.
        return missing("eBPF (root, kernel BTF, tracefs): no program attached");
    }

    let port = free_port();
    let mut args = vec![
        "--collector.disable-defaults".to_string(),
        format!("--web.listen-address=127.0.0.1:{port}"),
    ];
    args.extend(
        NODE_EXPORTER_COLLECTORS
            .iter()
            .map(|c| format!("--collector.{c}")),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node_exporter = spawn(&ne, &args, pki.dir.path(), "node_exporter");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for(Duration::from_secs(10), "node_exporter", || {
        http_get(addr, "/metrics").ok().filter(|(s, _)| *s == 200)
    });
    let scrape = || {
        let (_, body) = http_get(addr, "/metrics").unwrap();
        body.lines().filter(|l| !l.starts_with('#')).count()
    };

    // Warm up both (allocators, caches), then measure the same window.
    let warm = Instant::now();
    while warm.elapsed() < WARMUP {
        scrape();
        std::thread::sleep(RATE);
    }
    let (a0, e0, n0, b0, eb0) = (
        process_cpu_ticks(agent.child.id()),
        process_cpu_ticks(ebpf_agent.child.id()),
        process_cpu_ticks(node_exporter.child.id()),
        batches(&agg, "bench"),
        batches(&agg, "bench-ebpf"),
    );
    let start = Instant::now();
    let mut scrapes = 0u32;
    let mut ne_series = 0;
    while start.elapsed() < WINDOW {
        let t = Instant::now();
        ne_series = scrape();
        scrapes += 1;
        std::thread::sleep(RATE.saturating_sub(t.elapsed()));
    }
    let (a1, e1, n1, b1, eb1) = (
        process_cpu_ticks(agent.child.id()),
        process_cpu_ticks(ebpf_agent.child.id()),
        process_cpu_ticks(node_exporter.child.id()),
        batches(&agg, "bench"),
        batches(&agg, "bench-ebpf"),
    );
    let collections = b1 - b0;
    let ebpf_collections = eb1 - eb0;
    let agent_cpu_ms = (a1 - a0) as f64 / ticks_per_sec * 1000.0 / collections;
    let ebpf_cpu_ms = (e1 - e0) as f64 / ticks_per_sec * 1000.0 / ebpf_collections;
    let ne_cpu_ms = (n1 - n0) as f64 / ticks_per_sec * 1000.0 / f64::from(scrapes);
    let (agent_rss, agent_hwm) = (
        status_kib(agent.child.id(), "VmRSS:"),
        status_kib(agent.child.id(), "VmHWM:"),
    );
    let (ebpf_rss, ebpf_hwm) = (
        status_kib(ebpf_agent.child.id(), "VmRSS:"),
        status_kib(ebpf_agent.child.id(), "VmHWM:"),
    );
    let (ne_rss, ne_hwm) = (
        status_kib(node_exporter.child.id(), "VmRSS:"),
        status_kib(node_exporter.child.id(), "VmHWM:"),
    );
    let agent_series = agg
        .metrics()
        .lines()
        .filter(|l| l.contains("node=\"bench\"") && !l.starts_with('#'))
        .count();
    let ebpf_series = agg
        .metrics()
        .lines()
        .filter(|l| l.contains("node=\"bench-ebpf\"") && !l.starts_with('#'))
        .count();

    println!(
        "## Agent vs node_exporter ({} s window, one collection / scrape every {} ms)\n",
        WINDOW.as_secs(),
        RATE.as_millis()
    );
    println!("| measure | nodewatch-agent, eBPF off | nodewatch-agent, eBPF on ({attached} programs) | node_exporter | ratio off / on (agent / node_exporter) |");
    println!("|---|---|---|---|---|");
    println!("| runs in window | {collections} collections | {ebpf_collections} collections | {scrapes} scrapes | |");
    println!("| series per run | {agent_series} | {ebpf_series} | {ne_series} | |");
    println!(
        "| CPU per run | {agent_cpu_ms:.3} ms | {ebpf_cpu_ms:.3} ms | {ne_cpu_ms:.3} ms | {:.2}× / {:.2}× |",
        agent_cpu_ms / ne_cpu_ms,
        ebpf_cpu_ms / ne_cpu_ms
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    for (what, off, on, ne) in [
        ("RSS at end", agent_rss, ebpf_rss, ne_rss),
        ("peak RSS (VmHWM)", agent_hwm, ebpf_hwm, ne_hwm),
    ] {
        println!(
            "| {what} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.2}× / {:.2}× |",
            mib(off),
            mib(on),
            mib(ne),
            off as f64 / ne as f64,
            on as f64 / ne as f64
        );
    }
    let peer = peer_name("node_exporter", &ne);
    BenchResult::new(
        "CPU per collection / scrape",
        "ms",
        agent_cpu_ms,
        Better::Lower,
    )
    .peer(&peer, ne_cpu_ms)
    .goal_ratio(GOAL_CPU_RATIO)
    .record();
    BenchResult::new(
        "CPU per collection / scrape, eBPF on",
        "ms",
        ebpf_cpu_ms,
        Better::Lower,
    )
    .peer(&peer, ne_cpu_ms)
    .goal_ratio(GOAL_CPU_RATIO)
    .record();
    BenchResult::new("RSS at end", "MiB", mib(agent_rss), Better::Lower)
        .peer(&peer, mib(ne_rss))
        .goal_ratio(GOAL_MEMORY_RATIO)
        .record();
    BenchResult::new("peak RSS (VmHWM)", "MiB", mib(agent_hwm), Better::Lower)
        .peer(&peer, mib(ne_hwm))
        .goal_ratio(GOAL_MEMORY_RATIO)
        .record();
    BenchResult::new("RSS at end, eBPF on", "MiB", mib(ebpf_rss), Better::Lower)
        .peer(&peer, mib(ne_rss))
        .goal_ratio(GOAL_MEMORY_RATIO)
        .record();
    BenchResult::new(
        "peak RSS (VmHWM), eBPF on",
        "MiB",
        mib(ebpf_hwm),
        Better::Lower,
    )
    .peer(&peer, mib(ne_hwm))
    .goal_ratio(GOAL_MEMORY_RATIO)
    .record();
    println!("\nAgent CPU includes encoding and streaming each collection over mutual TLS; node_exporter's includes serving the scrape over HTTP.");
}
