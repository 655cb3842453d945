//! Test helpers shared by the collectors' tests: fixture paths, a reader for
//! node_exporter's expected text output, a sink lookup, and the deterministic
//! input mutations of the parsers' no-panic tests ([`assert_no_panic`] for
//! the Linux procfs parsers, [`fuzz_inputs`] for the ZFS and FreeBSD ones).
//! The generator is a seeded xorshift, so a failure reproduces exactly.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use crate::collector::{Collector, Sink};

/// A path below the workspace's `tests/fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures")).join(rel)
}

/// A fixture's text.
pub fn fixture_text(rel: &str) -> String {
    std::fs::read_to_string(fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Families (HELP, TYPE) and samples (`name{k="v",...}` → value) of a
/// Prometheus text file, restricted to names starting with `prefix`.
pub struct Expected {
    pub families: BTreeMap<String, (String, String)>,
    pub samples: BTreeMap<String, f64>,
}

/// Reads node_exporter's expected output (labels there are sorted by name,
/// as the Go client writes them).
pub fn expected_families(path: &std::path::Path, prefix: &str) -> Expected {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut families: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if name.starts_with(prefix) {
                families.entry(name.to_string()).or_default().0 = help.to_string();
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            if name.starts_with(prefix) {
                families.entry(name.to_string()).or_default().1 = kind.to_string();
            }
        } else if line.starts_with(prefix) {
            let (key, value) = line.rsplit_once(' ').unwrap_or((line, ""));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line}"));
            samples.insert(key.to_string(), value);
        }
    }
    Expected { families, samples }
}

/// The sink's samples whose name starts with `prefix`, keyed as in [`expected_families`].
pub fn samples_by_key(sink: &Sink, prefix: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in sink.samples.iter().filter(|s| s.name.starts_with(prefix)) {
        let mut key = s.name.clone();
        if !s.labels.is_empty() {
            let labels: Vec<String> = s
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            key = format!("{key}{{{}}}", labels.join(","));
        }
        out.insert(key, s.value);
    }
    out
}

/// One collection by the collector `build` makes with its procfs at `procfs`.
pub fn collect_with_procfs(
    procfs: &std::path::Path,
    build: fn(
        &crate::collector::Paths,
    ) -> Result<Box<dyn Collector>, crate::collector::Unavailable>,
) -> Sink {
    let paths = crate::collector::Paths {
        procfs: procfs.into(),
        ..crate::collector::Paths::default()
    };
    let mut c = build(&paths).unwrap();
    let mut sink = Sink::new();
    c.collect(&mut sink).unwrap();
    sink
}

/// The value of one series in a sink, if present.
pub fn value(sink: &Sink, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    want.sort();
    sink.samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

/// Junk spliced into inputs: separators, headers, and numbers past every integer width.
const JUNK: &[&str] = &[
    "\n",
    "\t",
    " ",
    ":",
    "-",
    "%",
    "x",
    "(",
    ")",
    "\"",
    "{",
    "}",
    "name type data\n",
    "99999999999999999999999999999",
    "18446744073709551616",
    "-9223372036854775809",
    "1e400",
    "NaN",
    "-",
    "\u{fffd}",
    "é",
    "pool: ",
    " state: ",
    "config:\n",
    "\0",
];

/// Deterministic mutations of each seed: every truncation point on a
/// stride, single byte flips, inserted junk, and digit runs replaced by huge
/// numbers. Invalid UTF-8 from byte flips is made lossy, as the collectors
/// read text.
pub fn fuzz_inputs(seeds: &[String], seed: u64) -> Vec<String> {
    let mut rng = Rng::raw(seed | 1);
    let mut out = Vec::new();
    for s in seeds {
        let bytes = s.as_bytes();
        out.push(String::new());
        let stride = (bytes.len() / 64).max(1);
        for cut in (0..bytes.len()).step_by(stride) {
            out.push(String::from_utf8_lossy(&bytes[..cut]).into_owned());
            out.push(String::from_utf8_lossy(&bytes[cut..]).into_owned());
        }
        for _ in 0..200 {
            let mut b = bytes.to_vec();
            for _ in 0..=rng.below(4) {
                if b.is_empty() {
                    break;
                }
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            out.push(String::from_utf8_lossy(&b).into_owned());
        }
        for _ in 0..200 {
            let mut t = s.clone();
            for _ in 0..=rng.below(3) {
                let mut i = rng.below(t.len() + 1);
                while !t.is_char_boundary(i) {
                    i -= 1;
                }
                t.insert_str(i, JUNK[rng.below(JUNK.len())]);
            }
            out.push(t);
        }
        let huge: String = s
            .split_inclusive(|c: char| !c.is_ascii_digit())
            .map(|part| {
                if part.starts_with(|c: char| c.is_ascii_digit()) {
                    format!("99999999999999999999999999{part}")
                } else {
                    part.to_string()
                }
            })
            .collect();
        out.push(huge);
        // Lines shuffled: a parser must not rely on order to stay in bounds.
        let mut lines: Vec<&str> = s.lines().collect();
        for i in (1..lines.len()).rev() {
            lines.swap(i, rng.below(i + 1));
        }
        out.push(lines.join("\n"));
    }
    out
}

/// xorshift64* (Vigna): tiny, good enough to pick positions and tokens.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // xorshift must not start at zero.
        Self((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A generator started at `state` as given (non-zero).
    pub fn raw(state: u64) -> Self {
        Self(state)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`; 0 when `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Tokens that break naive parsers: overflow, signs, odd separators, non-ASCII.
const NASTY: &[&str] = &[
    "",
    " ",
    "\t",
    "\n",
    "\n\n",
    ":",
    "=",
    "|",
    "-",
    "-1",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999999999999999",
    "1e309",
    "NaN",
    "inf",
    "0x1f",
    "\u{1F4A9}",
    "é",
    "\0",
    "some",
    "full",
    "total=",
    "cpu",
    "kB",
];

/// How many leading positions are cut one by one; beyond that, truncation strides.
const TRUNCATE_EVERY_UP_TO: usize = 600;

/// Mutations of `text`, deterministic for a given `seed`.
pub fn mutations(text: &str, seed: u64) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let mut out = vec![String::new(), text.to_string()];
    let bytes = text.as_bytes();

    // Truncation at every position (then strided), as a partial read would leave it.
    let stride = (bytes.len() / 200).max(1);
    let mut cut = 0;
    while cut < bytes.len() {
        out.push(String::from_utf8_lossy(&bytes[..cut]).into_owned());
        cut += if cut < TRUNCATE_EVERY_UP_TO {
            1
        } else {
            stride
        };
    }

    for _ in 0..300 {
        let mut b = bytes.to_vec();
        let n = 1 + rng.below(4);
        for _ in 0..n {
            if b.is_empty() {
                break;
            }
            let at = rng.below(b.len());
            match rng.below(4) {
                0 => b[at] ^= 1 << rng.below(8),
                1 => b[at] = b" \t\n:=-0123456789abcdef"[rng.below(22)],
                2 => {
                    b.remove(at);
                }
                _ => {
                    let tok = NASTY[rng.below(NASTY.len())];
                    b.splice(at..at, tok.bytes());
                }
            }
        }
        out.push(String::from_utf8_lossy(&b).into_owned());
    }

    // Number replacement, whitespace and empty lines, line shuffles.
    let lines: Vec<&str> = text.lines().collect();
    for round in 0..120 {
        let mut ls: Vec<String> = lines.iter().map(|l| (*l).to_string()).collect();
        match round % 6 {
            0 => {
                let tok = NASTY[rng.below(NASTY.len())];
                ls = ls.iter().map(|l| replace_numbers(l, tok)).collect();
            }
            1 => {
                if !ls.is_empty() {
                    let at = rng.below(ls.len());
                    let tok = NASTY[rng.below(NASTY.len())];
                    ls[at] = replace_numbers(&ls[at], tok);
                }
            }
            2 => {
                for l in &mut ls {
                    if rng.below(3) == 0 {
                        *l = l.replace(' ', ["  ", "\t", "", " \t "][rng.below(4)]);
                    }
                }
            }
            3 => {
                let at = rng.below(ls.len() + 1);
                ls.insert(at, String::new());
                let at = rng.below(ls.len() + 1);
                ls.insert(at, "   ".to_string());
            }
            4 => {
                if !ls.is_empty() {
                    let at = rng.below(ls.len());
                    let line = ls.remove(at);
                    let to = rng.below(ls.len() + 1);
                    ls.insert(to, line.clone());
                    ls.push(line);
                }
            }
            _ => {
                for l in &mut ls {
                    if rng.below(4) == 0 {
                        let keep = rng.below(l.split_whitespace().count() + 1);
                        *l = l
                            .split_whitespace()
                            .take(keep)
                            .collect::<Vec<_>>()
                            .join(" ");
                    }
                }
            }
        }
        out.push(ls.join("\n"));
    }
    out
}

/// Replaces every run of ASCII digits in `line` by `tok`.
fn replace_numbers(line: &str, tok: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_num = false;
    for c in line.chars() {
        if c.is_ascii_digit() {
            if !in_num {
                out.push_str(tok);
                in_num = true;
            }
        } else {
            in_num = false;
            out.push(c);
        }
    }
    out
}

/// Runs `parse` on every mutation of `text`; a panic fails with the input that caused it.
pub fn assert_no_panic<T, E>(text: &str, seed: u64, parse: impl Fn(&str) -> Result<T, E>) {
    for (i, input) in mutations(text, seed).iter().enumerate() {
        let r = catch_unwind(AssertUnwindSafe(|| {
            let _ = parse(input);
        }));
        assert!(r.is_ok(), "parser panicked on mutation #{i}: {input:?}");
    }
}

#[test]
fn mutations_are_deterministic_and_varied() {
    let a = mutations("cpu0 1 2 3\nintr 5\n", 7);
    let b = mutations("cpu0 1 2 3\nintr 5\n", 7);
    assert_eq!(a, b);
    assert!(a.len() > 400);
    assert!(a
        .iter()
        .any(|m| m.contains("18446744073709551616") || m.contains("-1")));
}
