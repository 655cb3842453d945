//! End to end with a real Prometheus: it scrapes the aggregator's /metrics
//! (`honor_labels: true`) and its HTTP API returns the nodes' series.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use nodewatch_tests::{http_get, prometheus, start_agent, wait_for, Aggregator, Pki, Proc};

/// A Prometheus with `config` (scraping the aggregator), ready.
fn start_scraping(program: &Path, dir: &Path, config: &str) -> (Proc, SocketAddr) {
    prometheus::start(
        program,
        dir,
        &prometheus::Options {
            name: "prometheus",
            config,
            ..Default::default()
        },
    )
}

#[test]
fn prometheus_scrapes_node_series_from_the_aggregator() {
    let _host = nodewatch_tests::host_shared();
    let Some(prometheus) = prometheus::program() else {
        return;
    };
    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    let _agent = start_agent(&pki, "n1", &[&agg], "");
    wait_for(Duration::from_secs(30), "agent series", || {
        agg.metrics().contains("node=\"n1\"").then_some(())
    });

    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: nodewatch\n    honor_labels: true\n    static_configs:\n      - targets: ['{}']\n",
        agg.http
    );
    let (_prom, addr) = start_scraping(&prometheus, pki.dir.path(), &config);
    let query = "/api/v1/query?query=node_memory_MemAvailable_bytes%7Bnode%3D%22n1%22%7D";
    let body = wait_for(
        Duration::from_mins(1),
        "Prometheus to return the node's series",
        || {
            let (status, body) = http_get(addr, query).ok()?;
            (status == 200 && body.contains("\"node\":\"n1\"")).then_some(body)
        },
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let result = &v["data"]["result"][0];
    assert_eq!(
        result["metric"]["__name__"],
        "node_memory_MemAvailable_bytes"
    );
    assert_eq!(result["metric"]["job"], "nodewatch");
    let value: f64 = result["value"][1].as_str().unwrap().parse().unwrap();
    assert!(value > 0.0, "MemAvailable {value}");
    // The scrape itself is healthy: no target errors.
    let (_, targets) = http_get(addr, "/api/v1/targets").unwrap();
    assert!(targets.contains("\"health\":\"up\""), "{targets}");
}

/// With `metrics: {bearer_token_file}` set, `/metrics` answers 401 without
/// the token (and counts it), `/healthz` stays open for probes, and a real
/// Prometheus configured with `authorization: {credentials_file}` scrapes it.
#[test]
fn metrics_behind_a_bearer_token_are_scraped_by_prometheus_with_it() {
    let _host = nodewatch_tests::host_shared();
    let Some(prometheus) = prometheus::program() else {
        return;
    };
    let pki = Pki::new();
    let dir = pki.dir.path();
    let token = dir.join("scrape-token");
    std::fs::write(&token, "s3cret-scrape-token\n").unwrap();
    let agg = Aggregator::start(
        &pki,
        "agg",
        &format!("metrics:\n  bearer_token_file: {}\n", token.display()),
    );
    let _agent = start_agent(&pki, "n1", &[&agg], "");

    let (status, body) = http_get(agg.http, "/metrics").unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("node=\"n1\""), "{body}");
    let (status, _) = http_get(agg.http, "/healthz").unwrap();
    assert_eq!(status, 200, "/healthz stays open for the kubelet's probes");
    let with = |t: &str| {
        let mut s = std::net::TcpStream::connect(agg.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        raw
    };
    assert!(with("wrong-token-of-same-len").starts_with("HTTP/1.0 401"));
    let raw = wait_for(
        Duration::from_secs(30),
        "agent series behind the token",
        || {
            let raw = with("s3cret-scrape-token");
            raw.contains("node=\"n1\"").then_some(raw)
        },
    );
    assert!(
        raw.starts_with("HTTP/1.0 200"),
        "{}",
        &raw[..raw.len().min(200)]
    );
    assert!(
        raw.contains("nodewatch_aggregator_auth_failures_total{reason=\"metrics_token\"}"),
        "refusals are counted"
    );

    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: nodewatch\n    honor_labels: true\n    authorization:\n      credentials_file: {}\n    static_configs:\n      - targets: ['{}']\n",
        token.display(),
        agg.http
    );
    let (_prom, addr) = start_scraping(&prometheus, dir, &config);
    let query = "/api/v1/query?query=node_memory_MemAvailable_bytes%7Bnode%3D%22n1%22%7D";
    wait_for(
        Duration::from_mins(1),
        "Prometheus to scrape the node's series with the token",
        || {
            let (status, body) = http_get(addr, query).ok()?;
            (status == 200 && body.contains("\"node\":\"n1\"")).then_some(())
        },
    );
}
