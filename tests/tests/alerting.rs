//! Alert rules in Prometheus' format evaluated by the real aggregator, alerts
//! delivered to a real Alertmanager, which calls a webhook in the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nodewatch_tests::{
    bin, http_get, start_agent, start_alertmanager, wait_for, Aggregator, Pki, Webhook,
};

#[test]
fn alerts_reach_a_real_alertmanager_with_labels_and_annotations() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    let hook = Webhook::start();
    let Some((_am, am_addr)) = start_alertmanager(dir, &hook) else {
        return;
    };
    let rules = dir.join("rules.yml");
    std::fs::write(
        &rules,
        r#"groups:
  - name: test
    interval: 1s
    rules:
      - alert: NodeMemorySeen
        expr: node_memory_MemAvailable_bytes{node="n1"} > 0
        labels:
          severity: info
        annotations:
          summary: "{{ $labels.node }} has {{ $value | humanize1024 }}B available"
      - record: node:memory_available:ratio
        expr: node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes
"#,
    )
    .unwrap();
    let agg = Aggregator::start(
        &pki,
        "agg",
        &format!(
            "rule_files: ['{}']\nexternal_labels: {{cluster: lab}}\nalerting:\n  alertmanagers: ['http://{am_addr}']\n  resend_delay: 1s\n",
            rules.display()
        ),
    );
    let _agent = start_agent(&pki, "n1", &[&agg], "");
    let (_, body) = wait_for(Duration::from_mins(1), "the alert at the webhook", || {
        hook.find("NodeMemorySeen")
    });
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let alert = &v["alerts"][0];
    assert_eq!(alert["status"], "firing");
    assert_eq!(alert["labels"]["alertname"], "NodeMemorySeen");
    assert_eq!(alert["labels"]["node"], "n1");
    assert_eq!(alert["labels"]["severity"], "info");
    assert_eq!(
        alert["labels"]["cluster"], "lab",
        "external labels are added"
    );
    let summary = alert["annotations"]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("n1 has ") && summary.ends_with("iB available"),
        "{summary}"
    );
    assert!(alert["generatorURL"]
        .as_str()
        .unwrap()
        .contains("node_memory_MemAvailable_bytes"));

    // Alertmanager's own API holds it too.
    let (_, api) = http_get(am_addr, "/api/v2/alerts").unwrap();
    assert!(api.contains("NodeMemorySeen"), "{api}");

    // The CLI shows it firing, and the recording rule's series is queryable.
    let ops = pki.operator("ops");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(bin("nodewatch"))
            .args([
                "--aggregator",
                &agg.grpc.to_string(),
                "--server-name",
                "localhost",
            ])
            .args([
                "--ca",
                ops.ca.to_str().unwrap(),
                "--cert",
                ops.cert.to_str().unwrap(),
                "--key",
                ops.key.to_str().unwrap(),
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let alerts: serde_json::Value = serde_json::from_str(&cli(&["alerts", "-o", "json"])).unwrap();
    assert_eq!(alerts[0]["state"], "firing");
    assert_eq!(alerts[0]["labels"]["alertname"], "NodeMemorySeen");
    let table = cli(&["alerts"]);
    assert!(
        table.contains("NodeMemorySeen") && table.contains("firing"),
        "{table}"
    );
    let q = cli(&["query", "node:memory_available:ratio{node=\"n1\"}"]);
    let ratio: f64 = q
        .split("=> ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(ratio > 0.0 && ratio <= 1.0, "{q}");
}

#[test]
fn check_rules_and_test_rules_work_like_promtool() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    let good = dir.join("good.yml");
    std::fs::write(&good, "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n        for: 1m\n").unwrap();
    let bad = dir.join("bad.yml");
    std::fs::write(
        &bad,
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: rat(up[5m])\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(bin("nodewatch-aggregator"))
            .args(args)
            .output()
            .unwrap()
    };
    let ok = run(&["check-rules", good.to_str().unwrap()]);
    assert_eq!(ok.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("SUCCESS: 1 rules found"));
    let fail = run(&["check-rules", bad.to_str().unwrap()]);
    assert_eq!(fail.status.code(), Some(1));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&fail.stdout),
        String::from_utf8_lossy(&fail.stderr)
    );
    assert!(text.contains("bad.yml") && text.contains("rat"), "{text}");
    // The default rule pack's unit tests pass, as they do with promtool.
    let pack = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/rules/nodewatch.rules.test.yml"
    );
    let t = run(&["test-rules", pack]);
    assert_eq!(
        t.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&t.stdout)
    );
    // A bad rule file keeps a running aggregator from starting with it: exit code and message name the rule.
    let agg_cfg = dir.join("agg-bad.yaml");
    let d = dir.display();
    std::fs::write(
        &agg_cfg,
        format!("listen: {{grpc: 127.0.0.1:0, http: 127.0.0.1:0}}\ntls: {{ca: {d}/ca.crt, cert: {d}/aggregator.crt, key: {d}/aggregator.key}}\nrule_files: ['{}']\n", bad.display()),
    )
    .unwrap();
    let out = run(&["--config", agg_cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yml") && err.contains("rat"), "{err}");
}

#[test]
fn a_bad_rule_file_on_reload_keeps_the_old_rules() {
    let pki = Pki::new();
    let rules = pki.path("rules.yml");
    std::fs::write(&rules, "groups:\n  - name: g\n    interval: 1s\n    rules:\n      - record: seen:load1\n        expr: node_load1\n").unwrap();
    let agg = Aggregator::start(
        &pki,
        "agg",
        &format!("rule_files: ['{}']\n", rules.display()),
    );
    let _agent = start_agent(&pki, "n1", &[&agg], "");
    wait_for(Duration::from_secs(30), "recording rule output", || {
        agg.metrics()
            .contains("seen:load1{node=\"n1\"}")
            .then_some(())
    });
    std::fs::write(&rules, "groups:\n  - name: g\n    rules:\n      - record: seen:load1\n        expr: sum(rate(node_load1[5m])\n").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(agg.proc.child.id()).unwrap()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for(
        Duration::from_secs(10),
        "reload error in the metrics",
        || {
            agg.metrics()
                .lines()
                .any(|l| {
                    l.starts_with("nodewatch_aggregator_rule_load_errors_total")
                        && !l.ends_with(" 0")
                })
                .then_some(())
        },
    );
    assert!(
        agg.proc.log_text().contains("rules.yml"),
        "the log names the file"
    );
    // Old rules still run.
    std::thread::sleep(Duration::from_secs(2));
    assert!(agg.metrics().contains("seen:load1{node=\"n1\"}"));
}
