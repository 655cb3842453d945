//! Rule files with mistakes: every problem is reported at once and names
//! the file, line, group, rule and field; and the group evaluator's alert
//! life cycle as the notifier sees it.

use std::io::Write as _;
use std::path::PathBuf;

use nodewatch_aggregator::promql::{is_stale_nan, Labels, MemStorage};
use nodewatch_aggregator::rules::unittest::check_rule_files;
use nodewatch_aggregator::rules::{load_groups, AlertState, GroupOptions};

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::File::create(&p)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    p
}

const BAD: &str = r#"groups:
  - name: node
    rules:
      - alert: HostDown
        expr: up == 0
        severity: page
      - alert: HostOOM
        expr: rat(node_vmstat_oom_kill[5m]) > 0
      - alert: Limitk
        expr: limitk(1, rate(x[1m])) > 0
      - alert: Slow
        expr: up == 0
        for: 5 minutes
        keep_firing_for: 10
      - alert: Template
        expr: up == 0
        annotations:
          summary: "{{ nofunc $labels }}down"
      - record: "job:up sum"
        expr: sum(up)
        annotations:
          a: b
  - name: node
    interval: fast
    rules: []
"#;

#[test]
fn every_problem_is_reported_with_file_group_rule_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "rules.yml", BAD);
    let errs = load_groups(&[p], &GroupOptions::default()).unwrap_err();
    let msgs: Vec<String> = errs
        .0
        .iter()
        .map(|e| {
            e.to_string()
                .replace(&dir.path().display().to_string(), "DIR")
        })
        .collect();
    let expected = [
        r#"DIR/rules.yml:6: group "node", rule 1 ("HostDown"): unknown field `severity`, expected one of `record`, `alert`, `expr`, `for`, `keep_firing_for`, `labels`, `annotations`"#,
        r#"DIR/rules.yml:8: group "node", rule 2 ("HostOOM"): expr: unknown function "rat""#,
        r#"DIR/rules.yml:10: group "node", rule 3 ("Limitk"): expr: unsupported aggregation "limitk""#,
        r#"DIR/rules.yml:13: group "node", rule 4 ("Slow"): for: not a valid duration string: "5 minutes""#,
        r#"DIR/rules.yml:14: group "node", rule 4 ("Slow"): keep_firing_for: not a valid duration string: "10""#,
        r#"DIR/rules.yml:18: group "node", rule 5 ("Template"): annotations.summary: template: __alert_Template:1: function "nofunc" not defined"#,
        r#"DIR/rules.yml:19: group "node", rule 6 ("job:up sum"): record: invalid recording rule name: "job:up sum""#,
        r#"DIR/rules.yml:21: group "node", rule 6 ("job:up sum"): annotations: invalid field 'annotations' in recording rule"#,
        r#"DIR/rules.yml:23: group "node", groupname: "node" is repeated in the same file"#,
        r#"DIR/rules.yml:24: group "node", interval: not a valid duration string: "fast""#,
    ];
    assert_eq!(msgs, expected, "{msgs:#?}");
}

#[test]
fn yaml_syntax_errors_have_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "broken.yml", "groups:\n  - name: x\n    rules: [\n");
    let errs = load_groups(&[p], &GroupOptions::default()).unwrap_err();
    assert_eq!(errs.0.len(), 1);
    assert!(errs.0[0].line.is_some(), "{}", errs.0[0]);
}

#[test]
fn check_rules_output_is_promtools() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        &dir,
        "good.yml",
        "groups:\n  - name: g\n    rules:\n      - record: a:b\n        expr: sum(up)\n      - alert: A\n        expr: up == 0\n",
    );
    let bad = write(&dir, "bad.yml", BAD);
    let mut out = Vec::new();
    assert_eq!(check_rule_files(std::slice::from_ref(&good), &mut out), 0);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("Checking {}\n  SUCCESS: 2 rules found\n\n", good.display())
    );
    let mut out = Vec::new();
    assert_eq!(check_rule_files(&[good, bad], &mut out), 1);
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("  SUCCESS: 2 rules found\n"), "{out}");
    assert!(out.contains("  FAILED:\n"), "{out}");
    assert_eq!(out.matches("bad.yml:").count(), 10, "{out}");
}

fn up(s: &mut MemStorage, t_s: i64, v: f64) {
    let l = Labels::from_pairs([("__name__", "up"), ("instance", "a")]);
    s.append(&l, t_s * 1000, v);
}

#[test]
fn alert_life_cycle_with_for_keep_firing_for_and_resolution() {
    use AlertState::{Firing, Inactive, Pending};

    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "a.yml",
        r#"groups:
  - name: g
    interval: 10s
    rules:
      - alert: Down
        expr: up == 0
        for: 20s
        keep_firing_for: 15s
        labels:
          severity: "{{ if_missing }}"
"#,
    );
    // Unknown template functions are refused at load, by name, in Go's words.
    let e = load_groups(std::slice::from_ref(&p), &GroupOptions::default()).unwrap_err();
    assert!(
        e.to_string().contains(
            "labels.severity: template: __alert_Down:1: function \"if_missing\" not defined"
        ),
        "{e}"
    );

    std::fs::write(
        &p,
        "groups:\n  - name: g\n    interval: 10s\n    rules:\n      - alert: Down\n        expr: up == 0\n        for: 20s\n        keep_firing_for: 15s\n",
    )
    .unwrap();
    let groups = load_groups(&[p], &GroupOptions::default()).unwrap();
    let g = &groups[0];
    assert_eq!(g.interval_ms(), 10_000);
    assert!(g.reads(&Labels::from_pairs([("__name__", "up"), ("job", "x")])));
    assert!(!g.reads(&Labels::from_pairs([("__name__", "down")])));
    let mut s = MemStorage::new();
    let mut states = Vec::new();
    for t in (0..=120).step_by(10) {
        // Down from 10s to 40s, up again from 50s.
        up(&mut s, t, if (10..=40).contains(&t) { 0.0 } else { 1.0 });
        let (recorded, alerts) = g.eval(&s, t * 1000);
        for r in &recorded {
            s.append(&r.labels, r.t, r.v);
        }
        let state = alerts.first().map(|a| a.state);
        states.push((
            t,
            state,
            recorded.iter().filter(|r| is_stale_nan(r.v)).count(),
        ));
    }
    assert_eq!(
        states,
        vec![
            (0, None, 0),
            (10, Some(Pending), 0),
            (20, Some(Pending), 0),
            (30, Some(Firing), 1), // ALERTS{alertstate="pending"} ends
            (40, Some(Firing), 0),
            (50, Some(Firing), 0), // kept firing for 15s
            (60, Some(Firing), 0),
            (70, Some(Inactive), 2), // resolved: ALERTS and ALERTS_FOR_STATE end
            (80, Some(Inactive), 0),
            (90, Some(Inactive), 0),
            (100, Some(Inactive), 0),
            (110, Some(Inactive), 0),
            (120, Some(Inactive), 0),
        ]
    );
    // A resolved alert is kept for 15 minutes, then dropped.
    let (_, alerts) = g.eval(&s, 70_000 + 15 * 60_000);
    assert_eq!(alerts.len(), 1);
    let (_, alerts) = g.eval(&s, 70_000 + 15 * 60_000 + 1);
    assert!(alerts.is_empty());
}

/// Random and mutated rule files, templates and series notations must give
/// errors, never panics.
#[test]
fn fuzz_rule_files_templates_and_series_never_panic() {
    use nodewatch_aggregator::rules::rulefmt::parse_rules;
    use nodewatch_aggregator::rules::unittest::parse_series_description;
    use nodewatch_aggregator::template::{Template, TemplateData};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let seeds = [
        BAD.to_string(),
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/rules/node.rules.yml")).unwrap(),
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/rules/joins.rules.yml")).unwrap(),
        "{{ if gt $value 1.0 }}{{ $labels.a | toUpper }}{{ else if $value }}{{ printf \"%5.2f%%\" $value }}{{ end }}".to_string(),
        "{{- humanizeDuration 3661 -}} {{ reReplaceAll \"(a+)\" \"$1x\" .Labels.a }} {{/* c */}}".to_string(),
        "1+1x10 _x3 stale -2-0.5x4 1e3x2 NaN Inf -Inf".to_string(),
        "{{ with query \"up\" }}{{ range $i, $s := . | sortByLabel \"a\" }}{{ $i }}{{ $s.Labels.a }}{{ end }}{{ . | first | value | humanize }}{{ end }}{{ define \"x\" }}{{ printf \"%-5.2f|%[1]v|%*d\" . 3 4 }}{{ end }}{{ template \"x\" $value }}{{ index $labels \"a\" }}".to_string(),
    ];
    let query = |q: &str| {
        if q.contains('(') {
            return Err(format!("bad query {q}"));
        }
        Ok(vec![nodewatch_aggregator::template::QuerySample {
            labels: [("a".to_string(), q.to_string())].into(),
            value: 2.5,
        }])
    };
    let alphabet: Vec<char> = "{}[]()$.|-\"'`:=_ \n\t abcxyz019%+*".chars().collect();
    let mut rng = StdRng::seed_from_u64(99);
    let data = TemplateData {
        labels: [("a".to_string(), "aa:1".to_string())].into(),
        value: 1.5,
        query: Some(&query),
        ..TemplateData::default()
    };
    for i in 0..4000 {
        let mut chars: Vec<char> = seeds[i % seeds.len()].chars().collect();
        for _ in 0..rng.random_range(1..6) {
            let pos = rng.random_range(0..=chars.len());
            match rng.random_range(0..3) {
                0 if pos < chars.len() => {
                    chars.remove(pos);
                }
                1 => chars.insert(pos, alphabet[rng.random_range(0..alphabet.len())]),
                _ if pos < chars.len() => {
                    chars[pos] = alphabet[rng.random_range(0..alphabet.len())];
                }
                _ => {}
            }
        }
        let text: String = chars.into_iter().collect();
        // The query function is not unwind-safe by type; a panic is the
        // failure looked for, so nothing is observed after one.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = parse_rules(std::path::Path::new("f.yml"), &text);
            if let Ok(t) = Template::parse(&text) {
                let _ = t.expand(&data);
            }
            let _ = parse_series_description("m{a=\"b\"}", &text);
        }));
        assert!(r.is_ok(), "panicked on {text:?}");
    }
}

#[test]
fn limits_and_duplicate_outputs_fail_the_rule_like_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "l.yml",
        "groups:
  - name: limited
    limit: 1
    rules:
      - record: two
        expr: up
      - alert: Two
        expr: up
  - name: dup
    rules:
      - alert: Same
        expr: up
        labels:
          instance: fixed
      - record: one
        expr: sum(up)
",
    );
    let groups = load_groups(&[p], &GroupOptions::default()).unwrap();
    let mut s = MemStorage::new();
    for i in ["a", "b"] {
        s.append(
            &Labels::from_pairs([("__name__", "up"), ("instance", i)]),
            0,
            1.0,
        );
    }
    let e = groups[0].eval_detailed(&s, 0);
    let msgs: Vec<String> = e.errors.iter().map(|(r, e)| format!("{r}: {e}")).collect();
    assert_eq!(
        msgs,
        vec![
            "two: exceeded limit of 1 with 2 series",
            "Two: exceeded limit of 1 with 2 alerts"
        ]
    );
    assert!(e.recorded.is_empty());
    let e = groups[1].eval_detailed(&s, 0);
    assert_eq!(e.errors.len(), 1);
    assert_eq!(
        e.errors[0].1.to_string(),
        "vector contains metrics with the same labelset after applying alert labels"
    );
    // The failing rule does not stop the next one.
    assert_eq!(e.recorded.len(), 1);
    assert!((e.recorded[0].v - 2.0).abs() < f64::EPSILON);
}

#[test]
fn for_state_is_restored_after_a_restart() {
    use nodewatch_aggregator::rules::{
        DEFAULT_FOR_GRACE_PERIOD_MS, DEFAULT_FOR_OUTAGE_TOLERANCE_MS,
    };
    const MIN: i64 = 60_000;
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "r.yml",
        "groups:\n  - name: g\n    rules:\n      - alert: Long\n        expr: up == 0\n        for: 30m\n",
    );
    // (minute the old process went down, minute it restarts) -> minute the
    // alert, active since minute 0, fires after the restart.
    for (down, restart, fires) in [
        (40, 45, 45 + 1),  // already due: fires at the next evaluation
        (25, 28, 28 + 10), // 5m left < 10m grace: one grace period later
        (10, 15, 15 + 20), // 20m left: shifted by the 5m downtime
    ] {
        let groups = load_groups(std::slice::from_ref(&p), &GroupOptions::default()).unwrap();
        let g = &groups[0];
        let mut s = MemStorage::new();
        let up = Labels::from_pairs([("__name__", "up"), ("instance", "a")]);
        let for_state = Labels::from_pairs([
            ("__name__", "ALERTS_FOR_STATE"),
            ("alertname", "Long"),
            ("instance", "a"),
        ]);
        for m in 0..=down {
            s.append(&up, m * MIN, 0.0);
            s.append(&for_state, m * MIN, 0.0);
        }
        let mut first = true;
        let mut fired_at = None;
        for m in restart..restart + 40 {
            s.append(&up, m * MIN, 0.0);
            let (rec, alerts) = g.eval(&s, m * MIN);
            for r in rec {
                s.append(&r.labels, r.t, r.v);
            }
            if first {
                g.restore_for_state(
                    &s,
                    m * MIN,
                    DEFAULT_FOR_OUTAGE_TOLERANCE_MS,
                    DEFAULT_FOR_GRACE_PERIOD_MS,
                );
                first = false;
            }
            if fired_at.is_none() && alerts.iter().any(|a| a.state == AlertState::Firing) {
                fired_at = Some(m);
            }
        }
        assert_eq!(
            fired_at,
            Some(fires),
            "down at {down}m, restarted at {restart}m"
        );
    }
}
