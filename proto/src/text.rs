//! Pieces of the Prometheus text exposition format (0.0.4) shared by the
//! agent's `--once` output and the aggregator's `/metrics`.

use std::fmt::Write;

/// Formats a sample value as Prometheus does (`+Inf`, `-Inf`, `NaN`; shortest round-trip otherwise).
#[must_use]
pub fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

/// Escapes a label value: backslash, double quote and newline.
pub fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Escapes HELP text: backslash and newline.
#[must_use]
pub fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Writes `name{l1="v1",...} value\n`.
pub fn write_sample<'a>(
    out: &mut String,
    name: &str,
    labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    value: f64,
) {
    out.push_str(name);
    let mut first = true;
    for (k, v) in labels {
        out.push(if first { '{' } else { ',' });
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        escape_label_value(out, v);
        out.push('"');
    }
    if !first {
        out.push('}');
    }
    let _ = writeln!(out, " {}", fmt_value(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_value(f64::INFINITY), "+Inf");
        assert_eq!(fmt_value(1.5), "1.5");
        assert_eq!(fmt_value(3.0), "3");
        let mut s = String::new();
        write_sample(&mut s, "m", [("a", "x\"y\\\n")], 1.0);
        assert_eq!(s, "m{a=\"x\\\"y\\\\\\n\"} 1\n");
        let mut s = String::new();
        write_sample(&mut s, "m", [], 2.0);
        assert_eq!(s, "m 2\n");
    }
}
