//! Helpers shared by the collector integration tests: a Prometheus text
//! format reader and series diffs that print readably.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Labels of one series, sorted; empty values dropped (Prometheus treats
/// `l=""` as the label being absent).
pub type Labels = BTreeMap<String, String>;

/// One parsed exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Family → (TYPE, HELP).
    pub meta: BTreeMap<String, (String, String)>,
    /// Family → series → value.
    pub series: BTreeMap<String, BTreeMap<Labels, f64>>,
}

impl Exposition {
    /// Parses Prometheus text format 0.0.4 (what `node_exporter` and
    /// `Sink::render_text` write). Only untyped, gauge and counter samples are
    /// expected here, so a sample's family is its name.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut e = Exposition::default();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                let help = help.replace("\\n", "\n").replace("\\\\", "\\");
                e.meta.entry(name.to_string()).or_default().1 = help;
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| format!("line {n}: bad TYPE"))?;
                e.meta.entry(name.to_string()).or_default().0 = kind.to_string();
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (name, labels, rest) =
                parse_series(line).map_err(|m| format!("line {n}: {m}: {line}"))?;
            let value = rest
                .split_whitespace()
                .next()
                .ok_or_else(|| format!("line {n}: no value"))?;
            let value = parse_value(value).ok_or_else(|| format!("line {n}: bad value {value}"))?;
            e.series.entry(name).or_default().insert(labels, value);
        }
        Ok(e)
    }

    /// Number of series in all families.
    pub fn len(&self) -> usize {
        self.series.values().map(BTreeMap::len).sum()
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// `name{a="x",b="y"} rest` → (name, labels, rest).
fn parse_series(line: &str) -> Result<(String, Labels, &str), &'static str> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = line[..name_end].to_string();
    let mut labels = Labels::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let end = loop {
            // Skip separators.
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || *c == ' ' {
                    chars.next();
                } else {
                    break;
                }
            }
            match chars.peek() {
                Some((i, '}')) => break *i,
                None => return Err("unterminated labels"),
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("label value not quoted");
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => return Err("dangling escape"),
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err("unterminated label value");
            }
            if !value.is_empty() {
                labels.insert(key.trim().to_string(), value);
            }
        };
        rest = &body[end + 1..];
    }
    Ok((name, labels, rest))
}

/// `name{a="x"}` for messages.
pub fn show(name: &str, labels: &Labels) -> String {
    let mut s = name.to_string();
    if !labels.is_empty() {
        s.push('{');
        let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        s.push_str(&parts.join(","));
        s.push('}');
    }
    s
}

/// Whether two values agree within a relative tolerance (absolute near zero).
#[allow(
    clippy::float_cmp,
    reason = "equal values, infinities included, are close"
)]
pub fn close(a: f64, b: f64, rel: f64) -> bool {
    if a == b || (a.is_nan() && b.is_nan()) {
        return true;
    }
    let scale = a.abs().max(b.abs());
    (a - b).abs() <= rel * scale.max(1e-12)
}

/// Compares the series sets of one family; returns readable difference lines.
pub fn diff_family(
    family: &str,
    ours: &BTreeMap<Labels, f64>,
    theirs: &BTreeMap<Labels, f64>,
    rel: Option<f64>,
) -> Vec<String> {
    let mut out = Vec::new();
    let our_keys: BTreeSet<&Labels> = ours.keys().collect();
    let their_keys: BTreeSet<&Labels> = theirs.keys().collect();
    for labels in our_keys.difference(&their_keys) {
        let value = ours[*labels];
        out.push(format!(
            "  + {} (only ours) = {value}",
            show(family, labels)
        ));
    }
    for labels in their_keys.difference(&our_keys) {
        let value = theirs[*labels];
        out.push(format!(
            "  - {} (only theirs) = {value}",
            show(family, labels)
        ));
    }
    if let Some(rel) = rel {
        for labels in our_keys.intersection(&their_keys) {
            let (mine, other) = (ours[*labels], theirs[*labels]);
            if !close(mine, other, rel) {
                let mut line = String::new();
                let _ = write!(
                    line,
                    "  ≠ {}: ours {mine} theirs {other}",
                    show(family, labels)
                );
                out.push(line);
            }
        }
    }
    out
}
