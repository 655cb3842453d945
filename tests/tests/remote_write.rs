//! `remote_write` end to end: a real agent streams to a real aggregator that
//! remote-writes to a real Prometheus (`--web.enable-remote-write-receiver`);
//! Prometheus' API then returns the node's series. Prometheus starts only
//! after the aggregator has been queueing for a while: the queue retries and
//! every sample the aggregator stored arrives, none dropped.
// Sample counts are whole numbers carried as f64: exact comparison is the check.
#![allow(clippy::float_cmp)]

use std::net::SocketAddr;
use std::time::Duration;

use nodewatch_tests::{
    cli_query, free_port, http_get, prometheus, scalar_of, start_agent, wait_for, Aggregator, Pki,
};

/// Sum of a counter or gauge family over all its label sets in a `/metrics` body.
fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn prom_scalar(addr: SocketAddr, expr_urlencoded: &str) -> Option<f64> {
    let (status, body) = http_get(addr, &format!("/api/v1/query?query={expr_urlencoded}")).ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn every_stored_sample_reaches_prometheus_even_when_it_starts_late() {
    let _host = nodewatch_tests::host_shared();
    let Some(prometheus) = prometheus::program() else {
        return;
    };
    let pki = Pki::new();
    let port = free_port();
    let agg = Aggregator::start(
        &pki,
        "agg",
        &format!(
            "remote_write:\n  - url: http://127.0.0.1:{port}/api/v1/write\n    queue: {{capacity: 100000, max_samples_per_send: 2000, batch_send_deadline: 200ms}}\n"
        ),
    );
    let mut agent = start_agent(&pki, "n1", &[&agg], "");
    wait_for(Duration::from_secs(30), "agent series", || {
        agg.metrics().contains("node=\"n1\"").then_some(())
    });
    // Prometheus is down: the aggregator keeps the samples queued and retries.
    std::thread::sleep(Duration::from_secs(3));
    let m = agg.metrics();
    assert_eq!(
        metric_sum(&m, "nodewatch_aggregator_remote_write_samples_total"),
        0.0
    );
    assert!(
        metric_sum(&m, "nodewatch_aggregator_remote_write_queue_length") > 0.0,
        "{m}"
    );

    let dir = pki.dir.path();
    let (_prom, addr) = prometheus::start(
        &prometheus,
        dir,
        &prometheus::Options {
            name: "prometheus",
            config: "global:\n  evaluation_interval: 1s\n",
            port: Some(port),
            args: &["--web.enable-remote-write-receiver"],
            ..Default::default()
        },
    );
    let q = "node_memory_MemAvailable_bytes%7Bnode%3D%22n1%22%7D";
    let body = wait_for(
        Duration::from_mins(1),
        "Prometheus to return the node's series",
        || {
            let (status, body) = http_get(addr, &format!("/api/v1/query?query={q}")).ok()?;
            (status == 200 && body.contains("\"node\":\"n1\"")).then_some(body)
        },
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let value: f64 = v["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(value > 0.0, "MemAvailable {value}");

    // Stop the source, let the queue drain, then both sides hold the same samples.
    let _ = agent.terminate(Duration::from_secs(5));
    let sent = wait_for(
        Duration::from_secs(30),
        "remote-write queue to drain",
        || {
            let m = agg.metrics();
            (metric_sum(&m, "nodewatch_aggregator_remote_write_queue_length") == 0.0)
                .then(|| metric_sum(&m, "nodewatch_aggregator_remote_write_samples_total"))
                .filter(|s| *s > 0.0)
        },
    );
    std::thread::sleep(Duration::from_secs(6));
    let m = agg.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "nodewatch_aggregator_remote_write_dropped_samples_total"
        ),
        0.0
    );
    assert_eq!(
        metric_sum(&m, "nodewatch_aggregator_remote_write_failed_samples_total"),
        0.0
    );
    assert!(metric_sum(&m, "nodewatch_aggregator_remote_write_samples_total") >= sent);

    let ours = scalar_of(&cli_query(
        &pki,
        &agg,
        "sum(count_over_time(node_cpu_seconds_total{node=\"n1\"}[10m]))",
    ))
    .expect("aggregator count");
    let theirs = prom_scalar(
        addr,
        "sum(count_over_time(node_cpu_seconds_total%7Bnode%3D%22n1%22%7D%5B10m%5D))",
    )
    .expect("prometheus count");
    assert!(ours >= 30.0, "only {ours} samples stored");
    assert_eq!(
        ours, theirs,
        "the aggregator stored {ours} samples of n1, Prometheus has {theirs}"
    );
    let series = prom_scalar(addr, "count(%7Bnode%3D%22n1%22%7D)").expect("series count");
    let ours_series = scalar_of(&cli_query(&pki, &agg, "count({node=\"n1\"})")).expect("ours");
    assert_eq!(series, ours_series, "series count");
}
