//! Runs every rule unit-test file under `tests/rules/` through both the real
//! `promtool test rules` and our `run_test_files`, and requires the same
//! verdict: files named `*_test.yml` must pass in both, files named
//! `*_fail.yml` must fail in both.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common;
use nodewatch_aggregator::rules::unittest::{check_rule_files, run_test_files};

/// What a missing promtool makes this module skip.
const SKIPPING: &str = "the comparison with real Prometheus";

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rules")
}

fn files(suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(rules_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

fn ours(path: &Path) -> (i32, String) {
    let mut out = Vec::new();
    let code = run_test_files(&[path.to_path_buf()], &mut out);
    (code, String::from_utf8_lossy(&out).into_owned())
}

fn theirs(promtool: &Path, path: &Path) -> (i32, String) {
    let o = Command::new(promtool)
        .arg("test")
        .arg("rules")
        .arg(path)
        .output()
        .expect("run promtool");
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn passing_test_files_pass_in_promtool_and_here() {
    let passing = files("_test.yml");
    assert!(
        passing.len() >= 5,
        "expected rule test files in {}",
        rules_dir().display()
    );
    let pt = common::promtool(SKIPPING);
    let mut problems = Vec::new();
    for f in &passing {
        if let Some(pt) = &pt {
            let (code, out) = theirs(pt, f);
            if code != 0 {
                problems.push(format!("promtool failed {}:\n{out}", f.display()));
            }
        }
        let (code, out) = ours(f);
        if code != 0 {
            problems.push(format!("run_test_files failed {}:\n{out}", f.display()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn failing_test_files_fail_in_promtool_and_here() {
    let failing = files("_fail.yml");
    assert!(!failing.is_empty());
    let pt = common::promtool(SKIPPING);
    for f in &failing {
        if let Some(pt) = &pt {
            let (code, out) = theirs(pt, f);
            assert_eq!(code, 1, "promtool should fail {}:\n{out}", f.display());
        }
        let (code, out) = ours(f);
        assert_eq!(
            code,
            1,
            "run_test_files should fail {}:\n{out}",
            f.display()
        );
        assert!(out.contains("  FAILED:"), "{out}");
    }
}

#[test]
fn rule_files_check_like_promtool() {
    let rule_files = files(".rules.yml");
    let pt = common::promtool(SKIPPING);
    for f in &rule_files {
        let mut out = Vec::new();
        let code = check_rule_files(std::slice::from_ref(f), &mut out);
        let out = String::from_utf8_lossy(&out);
        assert_eq!(code, 0, "{out}");
        if let Some(pt) = &pt {
            let o = Command::new(pt)
                .args(["check", "rules"])
                .arg(f)
                .output()
                .unwrap();
            let theirs = String::from_utf8_lossy(&o.stdout);
            // Same summary line, e.g. `  SUCCESS: 4 rules found`.
            let summary = |s: &str| {
                s.lines()
                    .find(|l| l.contains("SUCCESS"))
                    .map(str::to_string)
            };
            assert_eq!(summary(&out), summary(&theirs), "{}", f.display());
        }
    }
}

/// promtool names the two clashing series of a many-to-many error in
/// whichever order its storage returns them; sort them for comparison.
fn unordered_duplicates(line: &str) -> String {
    let (Some(open), Some(close)) = (line.find(": [{"), line.find("}];")) else {
        return line.to_string();
    };
    // Between the outer braces of `{a}, {b}`.
    let inner = &line[open + 4..close];
    let mut parts: Vec<&str> = inner.split("}, {").collect();
    parts.sort_unstable();
    format!(
        "{}{}{}",
        &line[..open + 4],
        parts.join("}, {"),
        &line[close..]
    )
}

/// Our report has promtool's shape line for line, apart from the wording
/// of parser errors (a different parser) and where promtool's stdout and
/// stderr interleave.
#[test]
fn failure_report_matches_promtool() {
    let Some(pt) = common::promtool(SKIPPING) else {
        return;
    };
    for f in files("_fail.yml") {
        let keep = |s: &str| {
            let mut v: Vec<String> = s
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.contains("parse error"))
                .map(unordered_duplicates)
                .collect();
            v.sort();
            v
        };
        let (_, ours) = ours(&f);
        let (_, theirs) = theirs(&pt, &f);
        let ours_kept: Vec<String> = keep(&ours)
            .into_iter()
            .filter(|l| !l.contains("err: parse error"))
            .collect();
        assert_eq!(ours_kept, keep(&theirs), "ours:\n{ours}\ntheirs:\n{theirs}");
    }
}

#[test]
fn duplicate_order_is_normalised() {
    let a = r#"x: [{a="1", y="4"}, {a="1", y="3"}];many"#;
    let b = r#"x: [{a="1", y="3"}, {a="1", y="4"}];many"#;
    assert_eq!(unordered_duplicates(a), unordered_duplicates(b));
    assert_eq!(unordered_duplicates(b), b);
}
