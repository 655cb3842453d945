//! Label sets, samples and query results.

use std::fmt;
use std::sync::Arc;

use nodewatch_proto::gocompat::quote;

use super::EvalError;

/// The label that holds a series' metric name.
pub const METRIC_NAME: &str = "__name__";

/// A label set: `(name, value)` pairs sorted by name, names unique, no empty
/// values (Prometheus treats an empty value as an absent label).
///
/// The pairs are shared: a selector hands out the store's own label set
/// without copying it, dropping the metric name (as every function and
/// operator does) only hides it, and only other changes (`set`, `remove`, …)
/// build a new set.
#[derive(Debug, Clone)]
pub struct Labels {
    pairs: Arc<[(String, String)]>,
    /// Index of a pair that is not part of the set ([`NONE_HIDDEN`] if none).
    hidden: usize,
}

const NONE_HIDDEN: usize = usize::MAX;

impl Default for Labels {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for Labels {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Labels {}

impl std::hash::Hash for Labels {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_usize(self.len());
        for (k, v) in self.iter() {
            k.hash(state);
            v.hash(state);
        }
    }
}

impl PartialOrd for Labels {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Labels {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.iter().cmp(other.iter())
    }
}

impl Labels {
    /// An empty label set.
    #[must_use]
    pub fn new() -> Self {
        Self::shared(Arc::from(Vec::new()))
    }

    fn shared(pairs: Arc<[(String, String)]>) -> Self {
        Self {
            pairs,
            hidden: NONE_HIDDEN,
        }
    }

    /// Builds a label set from pairs in any order. Later duplicates win and
    /// empty values are dropped.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut v: Vec<(String, String)> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        // A stable sort keeps duplicates in input order, so the last one wins.
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(String, String)> = Vec::with_capacity(v.len());
        for (k, val) in v {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = val,
                _ => out.push((k, val)),
            }
        }
        out.retain(|(_, v)| !v.is_empty());
        Self::shared(out.into())
    }

    /// Shares a label set that is already sorted by name with unique names
    /// and no empty values (the store keeps its labels so).
    #[must_use]
    pub fn from_shared(pairs: Arc<[(String, String)]>) -> Self {
        debug_assert!(
            pairs.windows(2).all(|w| w[0].0 < w[1].0) && pairs.iter().all(|(_, v)| !v.is_empty()),
            "label set not in canonical form"
        );
        Self::shared(pairs)
    }

    /// The visible pairs, as owned strings, for building a changed set.
    fn to_vec(&self) -> Vec<(String, String)> {
        self.pairs_iter().cloned().collect()
    }

    fn pairs_iter(&self) -> impl Iterator<Item = &(String, String)> {
        let hidden = self.hidden;
        self.pairs
            .iter()
            .enumerate()
            .filter(move |(i, _)| *i != hidden)
            .map(|(_, p)| p)
    }

    /// The value of label `name`, if present.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&str> {
        // Label sets are small: a scan comparing lengths first beats a
        // binary search's full string comparisons.
        self.pairs_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `name` to `value`; an empty value removes the label.
    pub fn set(&mut self, name: String, value: String) {
        let mut v = self.to_vec();
        match v.binary_search_by(|(k, _)| k.as_str().cmp(&name)) {
            Ok(i) if value.is_empty() => {
                v.remove(i);
            }
            Ok(i) if v[i].1 == value => return,
            Ok(i) => v[i].1 = value,
            Err(_) if value.is_empty() => return,
            Err(i) => v.insert(i, (name, value)),
        }
        *self = Self::shared(v.into());
    }

    /// Removes label `name` if present.
    pub fn remove(&mut self, name: &str) {
        if self.get(name).is_some() {
            let v: Vec<(String, String)> = self
                .pairs_iter()
                .filter(|(k, _)| k != name)
                .cloned()
                .collect();
            *self = Self::shared(v.into());
        }
    }

    /// This label set without `__name__`.
    #[must_use]
    pub fn without_name(mut self) -> Self {
        match self.pairs.iter().position(|(k, _)| k == METRIC_NAME) {
            Some(i) if self.hidden == NONE_HIDDEN => {
                self.hidden = i;
                self
            }
            Some(i) if self.hidden != i => {
                self.remove(METRIC_NAME);
                self
            }
            _ => self,
        }
    }

    /// The metric name this set no longer shows, if it was dropped by
    /// [`Labels::without_name`] and nothing else changed since.
    #[must_use]
    pub(crate) fn dropped_name(&self) -> Option<&str> {
        self.pairs.get(self.hidden).map(|(_, v)| v.as_str())
    }

    /// Only the labels named in `names`.
    #[must_use]
    pub fn keep(&self, names: &[String]) -> Self {
        Self::shared(
            self.pairs_iter()
                .filter(|(k, _)| names.iter().any(|n| n == k))
                .cloned()
                .collect(),
        )
    }

    /// All labels except those in `names`.
    #[must_use]
    pub fn remove_all(&self, names: &[String]) -> Self {
        Self::shared(
            self.pairs_iter()
                .filter(|(k, _)| !names.iter().any(|n| n == k))
                .cloned()
                .collect(),
        )
    }

    /// Iterates `(name, value)` in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs_iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of labels.
    #[must_use]
    pub fn len(&self) -> usize {
        self.pairs.len() - usize::from(self.hidden != NONE_HIDDEN)
    }

    /// Whether there are no labels.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Display for Labels {
    /// Prometheus' text form, `{a="1", b="2"}` (`labels.Labels.String`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}={}", quote(v))?;
        }
        f.write_str("}")
    }
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
    /// A range vector: the answer of an instant query that is a range
    /// selector or subquery.
    Matrix(Vec<RangeSeries>),
}

/// One series of a range query's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeSeries {
    /// The series' labels.
    pub labels: Labels,
    /// `(timestamp_ms, value)`, oldest first.
    pub points: Vec<(i64, f64)>,
}

/// One series with several samples: the value of a range selector or
/// subquery, only ever an argument to a range function.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Series {
    pub(crate) labels: Labels,
    pub(crate) points: Vec<(i64, f64)>,
}

/// An intermediate value; matrices only ever feed range functions.
#[derive(Debug, Clone)]
pub(crate) enum Val {
    Scalar(f64),
    Str(String),
    Vector(Vec<Sample>),
    /// A range selector or subquery outside a range function: only a
    /// type error.
    Matrix,
}

impl Val {
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Val::Scalar(_) => "scalar",
            Val::Str(_) => "string",
            Val::Vector(_) => "vector",
            Val::Matrix => "matrix",
        }
    }
}

/// Fails if two samples share a label set (Prometheus checks this after
/// every step of a function or operator).
pub(crate) fn check_unique(v: &[Sample]) -> Result<(), EvalError> {
    if v.len() < 2 {
        return Ok(());
    }
    // Sets that are distinct sets minus one shared metric name are still
    // distinct: the common case of a function or operator over one metric.
    // Every vector reaching here had unique label sets before the step.
    if let Some(name) = v[0].labels.dropped_name() {
        if v.iter().all(|s| s.labels.dropped_name() == Some(name)) {
            return Ok(());
        }
    }
    // Results mostly come in label order (as selectors return them): then
    // one pass shows every set differs from the next.
    if v.windows(2).all(|w| w[0].labels < w[1].labels) {
        return Ok(());
    }
    let mut seen: Vec<&Labels> = v.iter().map(|s| &s.labels).collect();
    seen.sort();
    if seen.windows(2).any(|w| w[0] == w[1]) {
        return Err(EvalError::DuplicateLabelset);
    }
    Ok(())
}

/// A valid label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub(crate) fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    fn hash(l: &Labels) -> u64 {
        foldhash::fast::FixedState::default().hash_one(l)
    }

    /// A set whose name is only hidden behaves exactly like one built
    /// without it: equality, hashing, order, lookups, changes.
    #[test]
    fn hidden_name_is_absent() {
        let full = Labels::from_pairs([("__name__", "m"), ("a", "1"), ("b", "2")]);
        let hidden = full.clone().without_name();
        assert_eq!(hidden.dropped_name(), Some("m"));
        assert_eq!(full.dropped_name(), None);
        let built = Labels::from_pairs([("a", "1"), ("b", "2")]);
        assert_eq!(hidden, built);
        assert_eq!(hash(&hidden), hash(&built));
        assert_eq!(hidden.cmp(&built), std::cmp::Ordering::Equal);
        assert_eq!(hidden.len(), 2);
        assert_eq!(hidden.get("__name__"), None);
        assert_eq!(hidden.to_string(), r#"{a="1", b="2"}"#);
        assert_eq!(hidden.clone().without_name(), built);
        let mut changed = hidden.clone();
        changed.set("c".into(), "3".into());
        assert_eq!(
            changed,
            Labels::from_pairs([("a", "1"), ("b", "2"), ("c", "3")])
        );
        let mut renamed = hidden;
        renamed.set("__name__".into(), "n".into());
        assert_eq!(renamed.get("__name__"), Some("n"));
        assert!(Labels::from_pairs([("a", "1")]) < built);
    }

    #[test]
    fn from_pairs_sorts_and_last_wins() {
        let l = Labels::from_pairs([("b", "1"), ("a", "x"), ("b", "2"), ("c", "")]);
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![("a", "x"), ("b", "2")]);
        let l = Labels::from_pairs([("a", "1"), ("a", "")]);
        assert!(l.is_empty());
    }
}
