//! End to end with a real Prometheus: it scrapes the aggregator's /metrics
//! (`honor_labels: true`) and its HTTP API returns the nodes' series.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nodewatch_tests::{
    find_program, free_port, http_get, missing, spawn, start_agent, wait_for, Aggregator, Pki,
};

#[test]
fn prometheus_scrapes_node_series_from_the_aggregator() {
    let Some(prometheus) = find_program("prometheus") else {
        return missing("prometheus (Debian package `prometheus`)");
    };
    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    let _agent = start_agent(&pki, "n1", &[&agg], "");
    wait_for(Duration::from_secs(30), "agent series", || {
        agg.metrics().contains("node=\"n1\"").then_some(())
    });

    let port = free_port();
    let dir = pki.dir.path();
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: nodewatch\n    honor_labels: true\n    static_configs:\n      - targets: ['{}']\n",
            agg.http
        ),
    )
    .unwrap();
    let _prom = spawn(
        &prometheus,
        &[
            &format!("--config.file={}", cfg.display()),
            &format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
        ],
        dir,
        "prometheus",
    );
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
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
