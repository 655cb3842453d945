//! Differential test of the alert state machine and templates against real
//! Prometheus: random alerting rules (`for`, `keep_firing_for`, templated
//! labels and annotations) over random series are evaluated by our
//! [`Group`], the firing alerts at every minute become the expectations of
//! a `promtool test rules` file, and both promtool and `run_test_files`
//! must pass it.

use std::fmt::Write as _;
use std::process::Command;

use crate::common;
use nodewatch_aggregator::promql::MemStorage;
use nodewatch_aggregator::rules::unittest::{parse_series_description, run_test_files};
use nodewatch_aggregator::rules::{load_groups, AlertState, GroupOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const STEP_MS: i64 = 60_000;
const STEPS: i64 = 20;

fn random_values(rng: &mut StdRng, counter: bool) -> String {
    let mut out = Vec::new();
    let mut c = 0;
    for _ in 0..=STEPS {
        match rng.random_range(0..12) {
            0 => out.push("_".to_string()),
            1 if !counter => out.push("stale".to_string()),
            _ if counter => {
                if rng.random_range(0..15) == 0 {
                    c = 0;
                }
                c += rng.random_range(0..30);
                out.push(c.to_string());
            }
            _ => out.push(rng.random_range(0..10).to_string()),
        }
    }
    out.join(" ")
}

const EXPRS: &[&str] = &[
    "m > 5",
    "m >= 3 and m < 8",
    "avg_over_time(m[3m]) > 4",
    "max_over_time(m[2m]) == 9",
    "changes(m[5m]) > 3",
    "rate(c[3m]) > 0.2",
    "increase(c[5m]) > 60",
    "sum by (job) (m) > 12",
    "count(m > 4) >= 2",
    "absent(m{instance=\"i2\"})",
    "absent_over_time(m{instance=\"i1\"}[2m])",
    "m * on(instance) group_left(team) owner > 6",
];
const DURS: &[&str] = &["0s", "1m", "2m", "3m"];
const ANNOTATIONS: &[&str] = &[
    "{{ $labels.instance }} at {{ $value }}",
    "{{ humanize $value }} / {{ humanizePercentage $value }}",
    "{{ printf \"%.2f\" $value }} {{ .Labels.job }}",
    "{{ if gt $value 7.0 }}high{{ else }}elevated{{ end }} ({{ $externalLabels.dc }})",
    "{{ $value | humanizeDuration }}",
    "{{ with query \"sum(m)\" }}{{ . | first | value | humanize }}{{ else }}none{{ end }} {{ $labels.job }}",
    "{{ range query \"m > 2\" | sortByLabel \"instance\" }}{{ .Labels.instance }}={{ printf \"%.1f\" .Value }} {{ end }}",
];

#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
#[test]
fn random_alert_rules_agree_with_promtool() {
    let Some(pt) = common::promtool("the alert differential test") else {
        return;
    };
    let seed: u64 = std::env::var("PROMTOOL_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let rounds: u64 = std::env::var("PROMTOOL_DIFF_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut fired = 0;
    for round in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        // Rules.
        let mut rules = String::from("groups:\n  - name: random\n    rules:\n");
        let mut names = Vec::new();
        for i in 0..5 {
            let name = format!("A{i}");
            let _ = write!(
                rules,
                "      - alert: {name}\n        expr: {}\n        for: {}\n        keep_firing_for: {}\n        labels:\n          severity: page\n          where: {}\n        annotations:\n          summary: {}\n",
                common::yaml_quote(EXPRS[rng.random_range(0..EXPRS.len())]),
                DURS[rng.random_range(0..DURS.len())],
                DURS[rng.random_range(0..DURS.len())],
                common::yaml_quote("{{ $labels.instance }}-x"),
                common::yaml_quote(ANNOTATIONS[rng.random_range(0..ANNOTATIONS.len())]),
            );
            names.push(name);
        }
        let rules_path = dir.path().join("random.rules.yml");
        std::fs::write(&rules_path, &rules).unwrap();

        // Series.
        let mut series: Vec<(String, String)> = Vec::new();
        for inst in ["i1", "i2", "i3"] {
            let job = if inst == "i3" { "b" } else { "a" };
            series.push((
                format!(r#"m{{instance="{inst}", job="{job}"}}"#),
                random_values(&mut rng, false),
            ));
            series.push((
                format!(r#"c{{instance="{inst}", job="{job}"}}"#),
                random_values(&mut rng, true),
            ));
            series.push((
                format!(r#"owner{{instance="{inst}", team="t{inst}"}}"#),
                format!("1x{STEPS}"),
            ));
        }
        let mut storage = MemStorage::new();
        for (s, v) in &series {
            let (labels, vals) = parse_series_description(s, v).unwrap();
            for (i, v) in vals.into_iter().enumerate() {
                if let Some(v) = v {
                    storage.append(&labels, i as i64 * STEP_MS, v);
                }
            }
        }

        // Our evaluation, as promtool drives it: every minute, in order.
        let opts = GroupOptions {
            default_interval_ms: STEP_MS,
            external: nodewatch_aggregator::rules::ExternalContext {
                labels: [("dc".to_string(), "eu1".to_string())].into(),
                url: String::new(),
            },
            ..GroupOptions::default()
        };
        let groups = load_groups(std::slice::from_ref(&rules_path), &opts).unwrap();
        let mut tests = String::new();
        for step in 0..=STEPS {
            let t = step * STEP_MS;
            let mut firing = Vec::new();
            for g in &groups {
                let (recorded, alerts) = g.eval(&storage, t);
                for r in recorded {
                    storage.append(&r.labels, r.t, r.v);
                }
                firing.extend(alerts.into_iter().filter(|a| a.state == AlertState::Firing));
            }
            // Check half the minutes on the minute, the others 30s later.
            let eval_time = if step % 2 == 0 {
                format!("{step}m")
            } else {
                format!("{step}m30s")
            };
            for name in &names {
                let _ = writeln!(
                    tests,
                    "      - eval_time: {eval_time}\n        alertname: {name}"
                );
                let mine: Vec<_> = firing.iter().filter(|a| &a.rule == name).collect();
                if mine.is_empty() {
                    tests.push_str("        exp_alerts: []\n");
                    continue;
                }
                tests.push_str("        exp_alerts:\n");
                fired += mine.len();
                for a in mine {
                    tests.push_str("          - exp_labels:\n");
                    for (k, v) in a.labels.iter().filter(|(k, _)| *k != "alertname") {
                        let _ = writeln!(tests, "              {k}: {}", common::yaml_quote(v));
                    }
                    tests.push_str("            exp_annotations:\n");
                    for (k, v) in &a.annotations {
                        let _ = writeln!(tests, "              {k}: {}", common::yaml_quote(v));
                    }
                }
            }
        }
        let input = common::input_series(series.iter().map(|(s, v)| (s.as_str(), v.as_str())));
        let test_file = format!(
            "rule_files: [random.rules.yml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    external_labels:\n      dc: eu1\n    input_series:\n{input}    alert_rule_test:\n{tests}"
        );
        let test_path = dir.path().join("random_test.yml");
        std::fs::write(&test_path, &test_file).unwrap();

        let out = Command::new(&pt)
            .args(["test", "rules"])
            .arg(&test_path)
            .output()
            .unwrap();
        let mut ours = Vec::new();
        let our_code = run_test_files(std::slice::from_ref(&test_path), &mut ours);
        if !out.status.success() || our_code != 0 {
            let keep = std::env::temp_dir().join(format!("nodewatch_alert_diff_{round}"));
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::write(keep.join("random.rules.yml"), &rules);
            let _ = std::fs::write(keep.join("random_test.yml"), &test_file);
            panic!(
                "round {round} (kept in {}):\npromtool:\n{}{}\nours:\n{}",
                keep.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&ours)
            );
        }
    }
    // The rules must actually fire, or nothing was compared.
    eprintln!("{fired} firing alerts compared");
    assert!(fired > 20 * rounds as usize, "only {fired} firing alerts");
}
