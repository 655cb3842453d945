//! A network partition between an agent and its aggregator: the agent runs
//! in its own network namespace joined to the host's by a veth pair, the
//! link is cut with a firewall rule that silently drops every packet (no
//! reset, as a real partition looks) for ~10 s, then restored. Nothing the
//! agent collected meanwhile may be lost or stored twice.
//!
//! Needs root (network namespaces, iptables): under `CI=true` its absence
//! fails the test, elsewhere the test is skipped with a message.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nodewatch_tests::{
    bin, cli_events, find_program, free_port, query_scalar, spawn, wait_for, write_agent_config,
    Aggregator, Netns, Pki, Proc,
};

#[test]
fn a_ten_second_partition_loses_nothing() {
    let _host = nodewatch_tests::host_exclusive();
    let tag = std::process::id() % 10_000;
    let Some(ns) = Netns::for_test(
        &format!("nwpart{tag}"),
        &format!("nwh{tag}"),
        &format!("nwa{tag}"),
        &format!("10.213.{}", tag % 250),
    ) else {
        return;
    };
    let host_ip = &ns.host_ip;

    // The aggregator on the host side of the veth; its HTTP port on loopback for the test.
    let pki = Pki::new();
    let grpc: SocketAddr = format!("{host_ip}:{}", free_port()).parse().unwrap();
    let agg = Aggregator::start_at(&pki, "agg", grpc, grpc, "");

    let files = pki.node("part");
    let agent_cfg = write_agent_config(
        &pki,
        "part",
        &files,
        &[grpc.to_string()],
        "interval: 200ms\ncollectors: {ebpf: false, testseq: true}\n",
    );
    let agent_bin = bin("nodewatch-agent");
    let _agent: Proc = spawn(
        &find_program("ip").unwrap(),
        &[
            "netns",
            "exec",
            &ns.name,
            agent_bin.to_str().unwrap(),
            "--config",
            agent_cfg.to_str().unwrap(),
        ],
        pki.dir.path(),
        "agent-part",
    );
    let series = "nodewatch_testseq_total{node=\"part\"}";
    let max = |sel: &str| query_scalar(&pki, &agg, &format!("max_over_time({sel}[15m])"));
    wait_for(Duration::from_secs(30), "samples through the veth", || {
        max(series).filter(|v| *v >= 3.0)
    });

    // Cut: every packet in and out of the agent's namespace silently dropped.
    ns.exec(&["iptables", "-A", "INPUT", "-j", "DROP"]).unwrap();
    ns.exec(&["iptables", "-A", "OUTPUT", "-j", "DROP"])
        .unwrap();
    let before = max(series).unwrap();
    std::thread::sleep(Duration::from_secs(10));
    let during = max(series).unwrap();
    assert!(
        during - before < 2.0,
        "samples arrived through the cut: {before} → {during}"
    );
    ns.exec(&["iptables", "-F"]).unwrap();
    let cut_at = Instant::now();

    // Restored: the agent resumes (same TCP connection or a new one) and
    // sends what it spooled during the cut.
    let (count, min, max_v) = wait_for(Duration::from_secs(60), "catch-up after the cut", || {
        let sel = format!("{series}[15m]");
        let count = query_scalar(&pki, &agg, &format!("count_over_time({sel})"))?;
        let min = query_scalar(&pki, &agg, &format!("min_over_time({sel})"))?;
        let max_v = query_scalar(&pki, &agg, &format!("max_over_time({sel})"))?;
        (max_v >= during + 50.0 && (count - (max_v - min + 1.0)).abs() < 0.5)
            .then_some((count, min, max_v))
    });
    println!(
        "caught up {:?} after the cut ended: {count} samples, values {min}..={max_v}",
        cut_at.elapsed()
    );
    assert!((min - 1.0).abs() < 0.5, "the first value is missing: {min}");
    let events = cli_events(&pki, &agg)
        .iter()
        .filter(|e| e["node"] == "part" && e["linkStateChange"]["device"] == "testseq")
        .count();
    assert!(
        events as f64 >= (max_v / 10.0).floor() - 0.5,
        "{events} test events for {max_v} collections"
    );
}
