//! What several of the aggregator's test modules share: finding promtool and
//! prometheus (a missing one fails under `CI=true`), YAML quoting for the
//! rule test files they write, and the names of the range-vector functions.

use std::fmt::Write as _;
use std::path::PathBuf;

/// `Some(path)` of the program `name` on PATH, or `None`: a failure under
/// `CI=true`, elsewhere a message saying what is skipped (`skipping`).
pub fn find(name: &str, skipping: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let msg = format!(
            "{name} not found on PATH (install the `prometheus` package); skipping {skipping}"
        );
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("{msg}");
    }
    found
}

/// `Some(path)` of promtool, or `None` (a failure under `CI=true`).
pub fn promtool(skipping: &str) -> Option<PathBuf> {
    find("promtool", skipping)
}

/// `s` as a single-quoted YAML scalar.
pub fn yaml_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The `input_series:` items of a `promtool test rules` file, one for each
/// `(series, values)`, indented for a test at the file's top level.
pub fn input_series<'a>(series: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut input = String::new();
    for (s, v) in series {
        let _ = writeln!(
            input,
            "      - series: {}\n        values: {}",
            yaml_quote(s),
            yaml_quote(v)
        );
    }
    input
}

/// The `<f>(v[range])` functions that both Prometheus 2.42 and our engine
/// evaluate on float samples, `absent_over_time` aside.
pub const RANGE_FUNCS: [&str; 17] = [
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "changes",
    "resets",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "present_over_time",
    "stddev_over_time",
    "stdvar_over_time",
];

/// The one-argument math functions both differential tests start their
/// function lists with.
pub const MATH_FUNCS: [&str; 9] = [
    "abs", "ceil", "floor", "exp", "sqrt", "ln", "log2", "log10", "sgn",
];

/// `parts` one after another, as one array of `N` names (a compile error
/// if `N` is not their total length).
pub const fn concat<const N: usize>(parts: &[&[&'static str]]) -> [&'static str; N] {
    let mut out = [""; N];
    let mut n = 0;
    let mut p = 0;
    while p < parts.len() {
        let mut i = 0;
        while i < parts[p].len() {
            out[n] = parts[p][i];
            n += 1;
            i += 1;
        }
        p += 1;
    }
    assert!(n == N, "concat: N is not the total length");
    out
}
