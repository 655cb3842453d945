//! Label sets, samples and query results.

use std::fmt::{self, Write as _};

/// The label that holds a series' metric name.
pub const METRIC_NAME: &str = "__name__";

/// A label set: `(name, value)` pairs sorted by name, names unique, no empty
/// values (Prometheus treats an empty value as an absent label).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    /// An empty label set.
    #[must_use]
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Builds a label set from pairs in any order. Later duplicates win and
    /// empty values are dropped.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut l = Self::new();
        for (k, v) in pairs {
            l.set(k.into(), v.into());
        }
        l
    }

    /// The value of label `name`, if present.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    /// Sets `name` to `value`; an empty value removes the label.
    pub fn set(&mut self, name: String, value: String) {
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(&name)) {
            Ok(i) if value.is_empty() => {
                self.0.remove(i);
            }
            Ok(i) => self.0[i].1 = value,
            Err(_) if value.is_empty() => {}
            Err(i) => self.0.insert(i, (name, value)),
        }
    }

    /// Removes label `name` if present.
    pub fn remove(&mut self, name: &str) {
        if let Ok(i) = self.0.binary_search_by(|(k, _)| k.as_str().cmp(name)) {
            self.0.remove(i);
        }
    }

    /// This label set without `__name__`.
    #[must_use]
    pub fn without_name(&self) -> Self {
        let mut l = self.clone();
        l.remove(METRIC_NAME);
        l
    }

    /// Only the labels named in `names`.
    #[must_use]
    pub fn keep(&self, names: &[String]) -> Self {
        Self(
            self.0
                .iter()
                .filter(|(k, _)| names.iter().any(|n| n == k))
                .cloned()
                .collect(),
        )
    }

    /// All labels except those in `names`.
    #[must_use]
    pub fn drop(&self, names: &[String]) -> Self {
        Self(
            self.0
                .iter()
                .filter(|(k, _)| !names.iter().any(|n| n == k))
                .cloned()
                .collect(),
        )
    }

    /// Iterates `(name, value)` in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of labels.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no labels.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Labels {
    /// Prometheus' text form, `{a="1", b="2"}` (`labels.Labels.String`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}={}", go_quote(v))?;
        }
        f.write_str("}")
    }
}

/// Quotes `s` like Go's `strconv.Quote` for the characters labels contain.
#[must_use]
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series' labels.
    pub labels: Labels,
    /// Timestamp in milliseconds: the evaluation time, except for samples
    /// straight from a selector, which keep their own (read by `timestamp()`).
    pub t: i64,
    /// The value.
    pub v: f64,
}

/// A query result.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An instant vector.
    Vector(Vec<Sample>),
    /// A scalar at the evaluation time.
    Scalar(f64),
    /// A string literal.
    String(String),
}

/// One series with several samples: the value of a range selector, only
/// ever an argument to a range function.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Series {
    pub(crate) labels: Labels,
    pub(crate) points: Vec<(i64, f64)>,
}
