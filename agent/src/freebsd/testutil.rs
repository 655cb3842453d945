//! Test helpers shared by the ZFS and FreeBSD parser tests: fixture paths,
//! a reader for node_exporter's expected text output, and a deterministic
//! input mutator for the no-panic tests.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::collector::Sink;

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

/// xorshift64*: a tiny deterministic generator so fuzz cases are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
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
    let mut rng = Rng(seed | 1);
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
