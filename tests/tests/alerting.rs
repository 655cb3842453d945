//! Alert rules in Prometheus' format evaluated by the real aggregator, alerts
//! delivered to a real Alertmanager, which calls a webhook in the test.

use std::net::SocketAddr;
use std::time::Duration;

use nodewatch_tests::{
    bin, free_port, http_get, start_agent, start_alertmanager, start_alertmanager_with, wait_for,
    Aggregator, AlertmanagerOptions, Pki, Proc, Webhook,
};

/// Writes a one-group rule file (1 s interval) with `rules` (YAML list items).
fn rule_file(pki: &Pki, name: &str, rules: &str) -> std::path::PathBuf {
    let path = pki.path(name);
    std::fs::write(
        &path,
        format!("groups:\n  - name: {name}\n    interval: 1s\n    rules:\n{rules}"),
    )
    .unwrap();
    path
}

/// The aggregator's config for `rules` sending to `alertmanagers` every second.
fn alerting_config(rules: &std::path::Path, alertmanagers: &str) -> String {
    format!(
        "rule_files: ['{}']\nalerting:\n  alertmanagers: [{alertmanagers}]\n  resend_delay: 1s\n",
        rules.display()
    )
}

/// A webhook, a real Alertmanager notifying it, and the configuration of an
/// aggregator evaluating `rules` (a one-group file `name`) and sending to
/// that Alertmanager, with Alertmanager's address. `None` where Alertmanager is missing.
fn to_alertmanager(
    pki: &Pki,
    name: &str,
    rules: &str,
) -> Option<(Webhook, Proc, SocketAddr, String)> {
    let hook = Webhook::start();
    let (am, am_addr) = start_alertmanager(pki.dir.path(), &hook)?;
    let rules = rule_file(pki, name, rules);
    let cfg = alerting_config(&rules, &format!("'http://{am_addr}'"));
    Some((hook, am, am_addr, cfg))
}

/// The alerts of one webhook body: (alertname, status).
fn alerts_in(body: &str) -> Vec<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["labels"]["alertname"].as_str().unwrap().to_string(),
                a["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Webhook bodies carrying `alertname` with status `status`.
fn notifications(hook: &Webhook, alertname: &str, status: &str) -> usize {
    hook.find_all(alertname)
        .iter()
        .filter(|(_, b)| {
            alerts_in(b)
                .iter()
                .any(|(n, s)| n == alertname && s == status)
        })
        .count()
}

#[test]
fn alerts_reach_a_real_alertmanager_with_labels_and_annotations() {
    let _host = nodewatch_tests::host_shared();
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
        let out = nodewatch_tests::cli_output(
            nodewatch_tests::operator_cli(&ops, &agg).args(args),
            "nodewatch",
        );
        String::from_utf8(out).unwrap()
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
    let _host = nodewatch_tests::host_shared();
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
    let _host = nodewatch_tests::host_shared();
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

#[test]
fn a_cleared_condition_reaches_the_webhook_as_resolved() {
    let _host = nodewatch_tests::host_shared();
    let pki = Pki::new();
    // True for the first 5 s of every 10 s: it fires, then clears on its own,
    // with no data to feed and no wall-clock race (both halves come round).
    let Some((hook, _am, _, cfg)) = to_alertmanager(
        &pki,
        "toggle.yml",
        "      - alert: Toggle\n        expr: vector(1) and on() (vector(time()) % 10 < 5)\n",
    ) else {
        return;
    };
    let _agg = Aggregator::start(&pki, "agg", &cfg);
    let (fired, _) = wait_for(Duration::from_secs(30), "the firing alert", || {
        hook.find_all("Toggle")
            .into_iter()
            .find(|(_, b)| alerts_in(b).iter().any(|(_, s)| s == "firing"))
    });
    let (resolved, body) = wait_for(Duration::from_secs(30), "the resolved alert", || {
        hook.find_all("Toggle")
            .into_iter()
            .find(|(t, b)| *t > fired && alerts_in(b).iter().any(|(_, s)| s == "resolved"))
    });
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "resolved", "{body}");
    let ends = v["alerts"][0]["endsAt"].as_str().unwrap();
    assert!(
        !ends.starts_with("0001"),
        "a resolved alert has its end time: {ends}"
    );
    // A clear takes at most 5 s to come, plus an evaluation and a group interval.
    assert!(
        resolved.duration_since(fired) < Duration::from_secs(9),
        "resolved {:?} after firing",
        resolved.duration_since(fired)
    );
}

#[test]
fn two_aggregators_with_the_same_rule_give_one_notification() {
    let _host = nodewatch_tests::host_shared();
    let pki = Pki::new();
    let Some((hook, _am, am_addr, cfg)) = to_alertmanager(
        &pki,
        "always.yml",
        "      - alert: BothReplicas\n        expr: vector(1)\n        labels: {severity: info}\n",
    ) else {
        return;
    };
    let a = Aggregator::start(&pki, "agg-a", &cfg);
    let b = Aggregator::start(&pki, "agg-b", &cfg);
    // Both replicas send, each every second.
    let sent = |agg: &Aggregator| {
        agg.metrics().lines().find_map(|l| {
            l.strip_prefix("nodewatch_aggregator_notifications_sent_total")
                .and_then(|v| v.split_whitespace().last())
                .and_then(|v| v.parse::<f64>().ok())
        })
    };
    wait_for(Duration::from_secs(30), "both replicas sending", || {
        (sent(&a).unwrap_or(0.0) >= 2.0 && sent(&b).unwrap_or(0.0) >= 2.0).then_some(())
    });
    wait_for(Duration::from_secs(30), "the notification", || {
        hook.find("BothReplicas")
    });
    // Several group intervals later, still one: Alertmanager merged them.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        notifications(&hook, "BothReplicas", "firing"),
        1,
        "{:?}",
        hook.find_all("BothReplicas")
    );
    let (_, api) = http_get(am_addr, "/api/v2/alerts").unwrap();
    let list: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{api}");
}

#[test]
fn alerts_reach_an_alertmanager_that_comes_up_late() {
    let _host = nodewatch_tests::host_shared();
    let pki = Pki::new();
    let hook = Webhook::start();
    let port = free_port();
    let rules = rule_file(
        &pki,
        "late.yml",
        "      - alert: LateAlertmanager\n        expr: vector(1)\n",
    );
    let agg = Aggregator::start(
        &pki,
        "agg",
        &alerting_config(&rules, &format!("'http://127.0.0.1:{port}'")),
    );
    // Nothing listens yet: sends fail and are counted, nothing is lost for good.
    wait_for(Duration::from_secs(30), "failed sends", || {
        agg.proc
            .log_text()
            .contains("Alertmanager send failed")
            .then_some(())
    });
    let Some((_am, _)) = start_alertmanager_with(
        pki.dir.path(),
        &hook,
        &AlertmanagerOptions {
            port: Some(port),
            ..AlertmanagerOptions::default()
        },
    ) else {
        return;
    };
    let up = std::time::Instant::now();
    let (at, body) = wait_for(
        Duration::from_secs(30),
        "the alert once Alertmanager is up",
        || hook.find("LateAlertmanager"),
    );
    assert_eq!(
        alerts_in(&body),
        vec![("LateAlertmanager".into(), "firing".into())]
    );
    // The next retry or re-send (each within a few seconds) delivers it.
    assert!(
        at.duration_since(up) < Duration::from_secs(10),
        "{:?}",
        at.duration_since(up)
    );
}

#[test]
fn alerts_reach_an_alertmanager_behind_basic_auth() {
    let _host = nodewatch_tests::host_shared();
    let pki = Pki::new();
    let hook = Webhook::start();
    // bcrypt (cost 4, to start fast) of "nodewatch-test", as Alertmanager's
    // `--web.config.file` wants it.
    let hash = "$2b$04$gImHz4RDuBDy1psIk8y.3OiRT3.4Q7aDOxZkdyNxJkTkAf27Svvem";
    let Some((_am, am_addr)) = start_alertmanager_with(
        pki.dir.path(),
        &hook,
        &AlertmanagerOptions {
            web_config: Some(format!("basic_auth_users:\n  nodewatch: '{hash}'\n")),
            ..AlertmanagerOptions::default()
        },
    ) else {
        return;
    };
    // Without credentials Alertmanager refuses.
    let (status, _) = http_get(am_addr, "/api/v2/alerts").unwrap();
    assert_eq!(status, 401);
    let password = pki.path("am-password");
    std::fs::write(&password, "nodewatch-test\n").unwrap();
    let rules = rule_file(
        &pki,
        "auth.yml",
        "      - alert: BehindBasicAuth\n        expr: vector(1)\n",
    );
    let agg = Aggregator::start(
        &pki,
        "agg",
        &alerting_config(
            &rules,
            &format!(
                "{{url: 'http://{am_addr}', basic_auth: {{username: nodewatch, password_file: '{}'}}}}",
                password.display()
            ),
        ),
    );
    wait_for(
        Duration::from_secs(30),
        "the alert through basic auth",
        || hook.find("BehindBasicAuth"),
    );
    // A refused send is logged as "<url> answered 401 Unauthorized".
    assert!(
        !agg.proc.log_text().contains("answered 401"),
        "{}",
        agg.proc.log_text()
    );
}

#[test]
fn alerts_reach_an_alertmanager_over_https_with_a_bearer_token_file_configured() {
    let _host = nodewatch_tests::host_shared();
    let pki = Pki::new();
    let hook = Webhook::start();
    let d = pki.dir.path().display();
    // Alertmanager serves TLS with the test CA's server certificate (issued
    // for localhost and 127.0.0.1).
    let Some((_am, am_addr)) = start_alertmanager_with(
        pki.dir.path(),
        &hook,
        &AlertmanagerOptions {
            web_config: Some(format!(
                "tls_server_config:\n  cert_file: {d}/aggregator.crt\n  key_file: {d}/aggregator.key\n"
            )),
            ..AlertmanagerOptions::default()
        },
    ) else {
        return;
    };
    let token = pki.path("am-token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let rules = rule_file(
        &pki,
        "tls.yml",
        "      - alert: OverHttps\n        expr: vector(1)\n",
    );
    let _agg = Aggregator::start(
        &pki,
        "agg",
        &alerting_config(
            &rules,
            &format!(
                "{{url: 'https://127.0.0.1:{}', bearer_token_file: '{}', tls: {{ca: '{d}/ca.crt', server_name: localhost}}}}",
                am_addr.port(),
                token.display()
            ),
        ),
    );
    wait_for(Duration::from_secs(30), "the alert over https", || {
        hook.find("OverHttps")
    });
}
