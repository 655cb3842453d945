//! The rule file format (`prometheus/model/rulefmt`) and its validation.
//!
//! Every problem in a file is reported at once, each naming the file, the
//! group, the rule (1-based index and name), the field and, where it can be
//! found, the line.
//!
//! [`held`] adds the load-time warning for selectors the aggregator never
//! holds.

pub mod held;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use nodewatch_proto::gocompat::parse_duration;

use crate::promql::{self, Expr};
use crate::template::Template;

/// A rule file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFileDef {
    /// The rule groups.
    pub groups: Vec<RuleGroupDef>,
}

/// One group as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleGroupDef {
    /// Unique within the file.
    pub name: String,
    /// How often the group is evaluated (Prometheus duration, e.g. `30s`);
    /// the global evaluation interval when absent.
    #[serde(default)]
    pub interval: Option<String>,
    /// Most alerts or series a rule may produce; 0 is no limit.
    #[serde(default)]
    pub limit: Option<u64>,
    /// The rules, evaluated in order.
    #[serde(default)]
    pub rules: Vec<RuleDef>,
    /// The line of the group's `name` (not part of the format).
    #[serde(skip)]
    pub line: Option<usize>,
}

/// One rule as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    /// Name of the series a recording rule writes.
    #[serde(default)]
    pub record: Option<String>,
    /// Name of an alerting rule.
    #[serde(default)]
    pub alert: Option<String>,
    /// The `PromQL` expression.
    #[serde(default)]
    pub expr: Option<String>,
    /// How long an alert stays pending before it fires.
    #[serde(default, rename = "for")]
    pub for_: Option<String>,
    /// How long an alert keeps firing after its condition clears.
    #[serde(default)]
    pub keep_firing_for: Option<String>,
    /// Labels added to every output (templated for alerts).
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Alert annotations (templated).
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Where the rule starts in its file (not part of the format).
    #[serde(skip)]
    pub line: Option<usize>,
    /// 1-based position in its group (not part of the format).
    #[serde(skip)]
    pub index: usize,
    /// The line before the next rule, if any (not part of the format).
    #[serde(skip)]
    pub end_line: Option<usize>,
}

/// One problem in a rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleFileError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The group's name, when the problem is inside one.
    pub group: Option<String>,
    /// 1-based rule index and the rule's name, when inside a rule.
    pub rule: Option<(usize, String)>,
    /// The field and what is wrong with it.
    pub problem: String,
}

impl fmt::Display for RuleFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        f.write_str(":")?;
        if let Some(g) = &self.group {
            write!(f, " group {g:?},")?;
        }
        if let Some((i, name)) = &self.rule {
            if name.is_empty() {
                write!(f, " rule {i}:")?;
            } else {
                write!(f, " rule {i} ({name:?}):")?;
            }
        }
        write!(f, " {}", self.problem)
    }
}

impl std::error::Error for RuleFileError {}

impl RuleFileError {
    /// A problem in `file`, at `line` when known, inside `group` and
    /// `rule` (1-based index and name) when it is.
    fn new(
        file: &Path,
        line: Option<usize>,
        group: Option<&str>,
        rule: Option<(usize, &str)>,
        problem: String,
    ) -> Self {
        Self {
            file: file.to_path_buf(),
            line,
            group: group.map(str::to_string),
            rule: rule.map(|(i, n)| (i, n.to_string())),
            problem,
        }
    }
}

/// All problems found in one or more rule files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct RuleFileErrors(pub Vec<RuleFileError>);

/// A validated rule.
#[derive(Debug, Clone)]
pub struct RuleSpec {
    /// Alert or recording rule name.
    pub name: String,
    /// Whether this is an alerting rule.
    pub is_alert: bool,
    /// The parsed expression.
    pub expr: Expr,
    /// The expression text as written.
    pub expr_text: String,
    /// `for`, in milliseconds.
    pub for_ms: i64,
    /// `keep_firing_for`, in milliseconds.
    pub keep_firing_for_ms: i64,
    /// Labels with their parsed templates.
    pub labels: Vec<(String, String, Template)>,
    /// Annotations with their parsed templates.
    pub annotations: Vec<(String, String, Template)>,
}

/// A validated group.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    /// The file it came from.
    pub file: PathBuf,
    /// The group name.
    pub name: String,
    /// Its own interval, if set.
    pub interval_ms: Option<i64>,
    /// Output limit per rule (0: none).
    pub limit: u64,
    /// The rules in order.
    pub rules: Vec<RuleSpec>,
}

/// A valid metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(x) if x.is_ascii_alphabetic() || x == '_' || x == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(x) if x.is_ascii_alphabetic() || x == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// Lines (1-based) of every `alert:`/`record:` key, in file order: the
/// k-th rule of the file is usually on the k-th of these.
fn rule_lines(text: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim_start().trim_start_matches('-').trim_start();
            t.starts_with("alert:") || t.starts_with("record:")
        })
        .map(|(i, _)| i + 1)
        .collect()
}

const FILE_KEYS: &[&str] = &["groups"];
const GROUP_KEYS: &[&str] = &["name", "interval", "limit", "rules"];
const RULE_KEYS: &[&str] = &[
    "record",
    "alert",
    "expr",
    "for",
    "keep_firing_for",
    "labels",
    "annotations",
];

/// The first line at or after `from` (1-based) of `lines` (the file's,
/// split once per file: searching the text itself would walk it from the
/// start on every call) that sets `key`.
fn key_line(lines: &[&str], from: usize, key: &str) -> Option<usize> {
    lines
        .iter()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find(|(_, l)| {
            let t = l.trim_start().trim_start_matches('-').trim_start();
            t.strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with(':'))
        })
        .map(|(i, _)| i + 1)
}

/// YAML scalars as the strings Go's YAML decoder would give a string
/// field (`for: 5` is the string "5", then an invalid duration).
fn scalar_string(v: &serde_yaml_ng::Value) -> Option<String> {
    match v {
        serde_yaml_ng::Value::String(s) => Some(s.clone()),
        serde_yaml_ng::Value::Number(n) => Some(n.to_string()),
        serde_yaml_ng::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Normalises scalar values to strings so the typed decoding below only
/// fails on real structure errors.
fn stringify_scalars(v: &mut serde_yaml_ng::Value, depth: u8) {
    match v {
        serde_yaml_ng::Value::Number(_) | serde_yaml_ng::Value::Bool(_) => {
            if let Some(s) = scalar_string(v) {
                *v = serde_yaml_ng::Value::String(s);
            }
        }
        serde_yaml_ng::Value::Mapping(m) if depth > 0 => {
            for (_, val) in m.iter_mut() {
                stringify_scalars(val, depth - 1);
            }
        }
        _ => {}
    }
}

fn unknown_field(key: &str, expected: &[&str]) -> String {
    let exp: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
    format!("unknown field `{key}`, expected one of {}", exp.join(", "))
}

/// Decodes the file leniently so every problem can be reported with its
/// group and rule: unknown keys and wrongly typed fields are collected and
/// the rest of the file is still read.
fn decode(path: &Path, text: &str, lines: &[&str]) -> (RuleFileDef, Vec<RuleFileError>) {
    let mut d = Decoder {
        path,
        lines,
        rule_starts: rule_lines(text),
        rule_counter: 0,
        group_search_from: 1,
        errors: Vec::new(),
    };
    let mut def = RuleFileDef { groups: Vec::new() };
    if let Some(groups) = d.groups(text) {
        for (gi, g) in groups.iter().enumerate() {
            if let Some(g) = d.group(gi, g) {
                def.groups.push(g);
            }
        }
    }
    (def, d.errors)
}

/// The state of one [`decode`]: where in the text it is, and the problems
/// found so far.
struct Decoder<'a> {
    path: &'a Path,
    lines: &'a [&'a str],
    /// The line each rule starts on, in file order.
    rule_starts: Vec<usize>,
    /// Rules seen so far in the file.
    rule_counter: usize,
    /// Where to look for the next group's `name`.
    group_search_from: usize,
    errors: Vec<RuleFileError>,
}

impl Decoder<'_> {
    fn err(
        &mut self,
        line: Option<usize>,
        group: Option<&str>,
        rule: Option<(usize, &str)>,
        problem: String,
    ) {
        self.errors
            .push(RuleFileError::new(self.path, line, group, rule, problem));
    }

    /// The file's `groups` list; `None` when there is none to read.
    fn groups(&mut self, text: &str) -> Option<Vec<serde_yaml_ng::Value>> {
        use serde_yaml_ng::Value;
        let root: Value = match serde_yaml_ng::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let line = e.location().map(|l| l.line());
                self.err(line, None, None, e.to_string());
                return None;
            }
        };
        let root = match root {
            Value::Null => return None,
            Value::Mapping(m) => m,
            _ => {
                self.err(
                    Some(1),
                    None,
                    None,
                    "expected a mapping with `groups`".into(),
                );
                return None;
            }
        };
        for k in root.keys() {
            let k = scalar_string(k).unwrap_or_default();
            if !FILE_KEYS.contains(&k.as_str()) {
                let line = key_line(self.lines, 1, &k);
                self.err(line, None, None, unknown_field(&k, FILE_KEYS));
            }
        }
        match root.get("groups") {
            None | Some(Value::Null) => None,
            Some(Value::Sequence(s)) => Some(s.clone()),
            Some(_) => {
                let line = key_line(self.lines, 1, "groups");
                self.err(line, None, None, "groups: expected a list".into());
                None
            }
        }
    }

    /// Group `gi` (0-based) as written.
    fn group(&mut self, gi: usize, g: &serde_yaml_ng::Value) -> Option<RuleGroupDef> {
        use serde_yaml_ng::Value;
        let Value::Mapping(g) = g else {
            self.err(
                None,
                None,
                None,
                format!("group {}: expected a mapping", gi + 1),
            );
            return None;
        };
        let name = g.get("name").and_then(scalar_string).unwrap_or_default();
        let gline = key_line(self.lines, self.group_search_from, "name");
        if let Some(l) = gline {
            self.group_search_from = l + 1;
        }
        let gname = Some(name.as_str());
        for k in g.keys() {
            let k = scalar_string(k).unwrap_or_default();
            if !GROUP_KEYS.contains(&k.as_str()) {
                let line = key_line(self.lines, gline.unwrap_or(1), &k);
                self.err(line, gname, None, unknown_field(&k, GROUP_KEYS));
            }
        }
        let interval = match g.get("interval") {
            None | Some(Value::Null) => None,
            Some(v) => scalar_string(v).or_else(|| {
                self.err(gline, gname, None, "interval: expected a duration".into());
                None
            }),
        };
        let limit = match g.get("limit") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
            Some(_) => {
                let problem = "limit: expected a non-negative integer".into();
                self.err(gline, gname, None, problem);
                None
            }
        };
        let mut rules = Vec::new();
        match g.get("rules") {
            None | Some(Value::Null) => {}
            Some(Value::Sequence(rs)) => {
                for (ri, r) in rs.iter().enumerate() {
                    if let Some(d) = self.rule(gname, ri, r) {
                        rules.push(d);
                    }
                }
            }
            Some(_) => self.err(gline, gname, None, "rules: expected a list".into()),
        }
        Some(RuleGroupDef {
            name,
            interval,
            limit,
            rules,
            line: gline,
        })
    }

    /// Rule `ri` (0-based) of group `gname` as written.
    fn rule(
        &mut self,
        gname: Option<&str>,
        ri: usize,
        r: &serde_yaml_ng::Value,
    ) -> Option<RuleDef> {
        use serde_yaml_ng::Value;
        let line = self.rule_starts.get(self.rule_counter).copied();
        self.rule_counter += 1;
        let Value::Mapping(rm) = r else {
            self.err(line, gname, Some((ri + 1, "")), "expected a mapping".into());
            return None;
        };
        let rname = rm
            .get("alert")
            .or_else(|| rm.get("record"))
            .and_then(scalar_string)
            .unwrap_or_default();
        let rid = Some((ri + 1, rname.as_str()));
        let mut known = serde_yaml_ng::Mapping::new();
        for (k, v) in rm {
            let ks = scalar_string(k).unwrap_or_default();
            if RULE_KEYS.contains(&ks.as_str()) {
                let mut v = v.clone();
                stringify_scalars(&mut v, 1);
                known.insert(k.clone(), v);
            } else {
                let at = key_line(self.lines, line.unwrap_or(1), &ks).or(line);
                self.err(at, gname, rid, unknown_field(&ks, RULE_KEYS));
            }
        }
        match serde_yaml_ng::from_value::<RuleDef>(Value::Mapping(known)) {
            Ok(mut d) => {
                d.line = line;
                d.index = ri + 1;
                d.end_line = self
                    .rule_starts
                    .get(self.rule_counter)
                    .map(|l| l.saturating_sub(1));
                Some(d)
            }
            Err(e) => {
                self.err(line, gname, rid, e.to_string());
                None
            }
        }
    }
}

/// The line of the field a problem names (`expr: …`, `annotations.x: …`)
/// within a rule's lines.
fn field_line(lines: &[&str], (start, end): (usize, usize), problem: &str) -> Option<usize> {
    let path = problem.split_once(": ")?.0;
    if path.contains(char::is_whitespace) {
        return None;
    }
    // Lines past `end` belong to the next rule: no need to search them.
    let lines = &lines[..end.min(lines.len())];
    let mut at = start;
    for key in path.split('.') {
        at = key_line(lines, at, key)?;
    }
    Some(at)
}

/// Reads and validates one rule file.
pub fn load_file(path: &Path) -> Result<Vec<GroupSpec>, RuleFileErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        RuleFileErrors(vec![RuleFileError::new(
            path,
            None,
            None,
            None,
            format!("cannot read: {e}"),
        )])
    })?;
    parse_rules(path, &text)
}

/// Parses and validates rule file text; `path` is only used in errors.
pub fn parse_rules(path: &Path, text: &str) -> Result<Vec<GroupSpec>, RuleFileErrors> {
    let lines: Vec<&str> = text.lines().collect();
    let (def, mut errors) = decode(path, text, &lines);
    let mut groups = Vec::new();
    let mut seen_groups: Vec<&str> = Vec::new();
    for g in &def.groups {
        let gname = Some(g.name.as_str());
        let gline = g.line;
        let interval_line = g.line.and_then(|l| key_line(&lines, l, "interval"));
        if g.name.is_empty() {
            errors.push(RuleFileError::new(
                path,
                gline,
                None,
                None,
                "groupname must not be empty".into(),
            ));
        } else if seen_groups.contains(&g.name.as_str()) {
            errors.push(RuleFileError::new(
                path,
                gline,
                gname,
                None,
                format!("groupname: {:?} is repeated in the same file", g.name),
            ));
        }
        seen_groups.push(&g.name);
        let mut err = |line, problem: String| {
            errors.push(RuleFileError::new(path, line, gname, None, problem));
        };
        let interval_ms = match &g.interval {
            None => None,
            Some(s) => match parse_duration(s) {
                Ok(0) => {
                    err(interval_line, "interval: must be greater than 0".into());
                    None
                }
                Ok(v) => Some(v),
                Err(e) => {
                    err(interval_line, format!("interval: {e}"));
                    None
                }
            },
        };
        let mut rules = Vec::new();
        for r in &g.rules {
            let name = r
                .alert
                .clone()
                .or_else(|| r.record.clone())
                .unwrap_or_default();
            let rid = Some((r.index, name.as_str()));
            let span = (r.line.unwrap_or(1), r.end_line.unwrap_or(usize::MAX));
            let mut push = |problem: String| {
                let at = field_line(&lines, span, &problem).or(r.line);
                errors.push(RuleFileError::new(path, at, gname, rid, problem));
            };
            if let Some(spec) = validate_rule(r, name.clone(), &mut push) {
                rules.push(spec);
            }
        }
        groups.push(GroupSpec {
            file: path.to_path_buf(),
            name: g.name.clone(),
            interval_ms,
            limit: g.limit.unwrap_or(0),
            rules,
        });
    }
    if errors.is_empty() {
        Ok(groups)
    } else {
        Err(RuleFileErrors(errors))
    }
}

/// Validates one rule as written into its spec; each problem goes to
/// `push`, and a rule without a usable expression gives `None`.
fn validate_rule(r: &RuleDef, name: String, push: &mut dyn FnMut(String)) -> Option<RuleSpec> {
    let is_alert = r.alert.is_some();
    match (&r.alert, &r.record) {
        (Some(_), Some(_)) => push("only one of 'record' and 'alert' must be set".into()),
        (None, None) => push("one of 'record' or 'alert' must be set".into()),
        (Some(a), None) if a.is_empty() => push("alert: must not be empty".into()),
        (None, Some(rec)) if !is_metric_name(rec) => {
            push(format!("record: invalid recording rule name: {rec:?}"));
        }
        _ => {}
    }
    let expr_text = r.expr.clone().unwrap_or_default();
    let expr = parse_expr(&expr_text, push);
    let mut dur = |field: &str, v: &Option<String>| -> i64 {
        match v {
            None => 0,
            Some(_) if !is_alert => {
                push(format!(
                    "{field}: invalid field '{field}' in recording rule"
                ));
                0
            }
            Some(s) => parse_duration(s).unwrap_or_else(|e| {
                push(format!("{field}: {e}"));
                0
            }),
        }
    };
    let for_ms = dur("for", &r.for_);
    let keep_firing_for_ms = dur("keep_firing_for", &r.keep_firing_for);
    if !is_alert && r.annotations.is_some() {
        push("annotations: invalid field 'annotations' in recording rule".into());
    }
    let mut templated = |field: &str, m: &Option<BTreeMap<String, String>>| {
        let mut out = Vec::new();
        for (k, v) in m.iter().flatten() {
            if field == "labels" && (!is_label_name(k) || k == "__name__") {
                push(format!("{field}: invalid label name: {k:?}"));
                continue;
            }
            if field == "annotations" && !is_label_name(k) {
                push(format!("{field}: invalid annotation name: {k:?}"));
                continue;
            }
            if is_alert {
                match Template::parse_for_alert(&name, v) {
                    Ok(t) => out.push((k.clone(), v.clone(), t)),
                    Err(e) => push(format!("{field}.{k}: {e}")),
                }
            } else {
                // Recording rule labels are literal.
                out.push((k.clone(), v.clone(), Template::literal(v)));
            }
        }
        out
    };
    let labels = templated("labels", &r.labels);
    let annotations = templated("annotations", &r.annotations);
    let expr = expr?;
    Some(RuleSpec {
        name,
        is_alert,
        expr,
        expr_text,
        for_ms,
        keep_firing_for_ms,
        labels,
        annotations,
    })
}

/// A rule's expression, parsed and checked against what the evaluator
/// implements.
fn parse_expr(expr_text: &str, push: &mut dyn FnMut(String)) -> Option<Expr> {
    if expr_text.trim().is_empty() {
        push("expr: field 'expr' must be set in rule".into());
        return None;
    }
    match promql::parse(expr_text) {
        Ok(e) => match promql::check_supported(&e) {
            Ok(()) => Some(e),
            Err(u) => {
                push(format!("expr: {u}"));
                None
            }
        },
        Err(e) => {
            push(format!("expr: {}", describe_parse_error(&e.0)));
            None
        }
    }
}

/// Turns the parser's `unknown function with name 'rat'` into the wording
/// users know from Prometheus.
fn describe_parse_error(msg: &str) -> String {
    if let Some(rest) = msg.strip_prefix("unknown function with name '") {
        if let Some(name) = rest.strip_suffix('\'') {
            return format!("unknown function \"{name}\"");
        }
    }
    format!("could not parse expression: {msg}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let text = r#"groups:
- name: node
  rules:
  - alert: A
    expr: up == 0
  - alert: B
    expr: rat(x[5m]) > 0
  - alert: HostOOM
    expr: histogram_count(x) > 0
    for: 5x
  - record: "bad name"
    expr: up
    for: 1m
"#;
        let e = parse_rules(Path::new("rules.yml"), text).unwrap_err();
        let msgs: Vec<String> = e.0.iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs,
            vec![
                r#"rules.yml:7: group "node", rule 2 ("B"): expr: unknown function "rat""#,
                r#"rules.yml:9: group "node", rule 3 ("HostOOM"): expr: unsupported function "histogram_count""#,
                r#"rules.yml:10: group "node", rule 3 ("HostOOM"): for: not a valid duration string: "5x""#,
                r#"rules.yml:11: group "node", rule 4 ("bad name"): record: invalid recording rule name: "bad name""#,
                r#"rules.yml:13: group "node", rule 4 ("bad name"): for: invalid field 'for' in recording rule"#,
            ]
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_line() {
        let text = "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up\n    severity: page\n";
        let e = parse_rules(Path::new("r.yml"), text).unwrap_err();
        let m = e.to_string();
        assert!(m.starts_with("r.yml:"), "{m}");
        assert!(m.contains("unknown field `severity`"), "{m}");
    }
}
