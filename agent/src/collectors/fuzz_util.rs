//! Deterministic mutation of fixture text for the parsers' no-panic tests.
//!
//! Every parser gets the same treatment: its fixture truncated at every
//! position, bytes flipped and inserted, whitespace and empty lines sprinkled
//! in, numbers replaced by huge, negative and non-numeric ones. The generator
//! is a seeded xorshift, so a failure reproduces exactly.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// xorshift64* (Vigna): tiny, good enough to pick positions and tokens.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // xorshift must not start at zero.
        Self((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
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
