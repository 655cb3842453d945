//! The storage the evaluator reads, and a small in-memory implementation.
//!
//! The evaluator only ever asks for "every series matching these matchers,
//! with its samples in a time window"; the aggregator's real store adapts to
//! this trait, and rule unit tests use [`MemStorage`].

use promql_parser::label::{Matcher, Matchers};

use super::value::Labels;

/// Bit pattern of Prometheus' staleness marker (`value.StaleNaN` in
/// `prometheus/model/value`). A sample with exactly these bits ends a series:
/// an instant selector that finds it as the newest sample returns nothing.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// The staleness marker as an `f64`.
#[must_use]
pub fn stale_nan() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

/// Whether `v` is the staleness marker (and not just any NaN).
#[must_use]
pub fn is_stale_nan(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// Read access to stored samples.
pub trait Storage: Send + Sync {
    /// Every series matching all `matchers` (incl. `__name__`), with its
    /// samples in `[start_ms, end_ms]`, oldest first, the series in label
    /// order (the evaluator relies on it instead of sorting every selector's
    /// result). Staleness markers are returned like any other sample.
    fn select(&self, matchers: &Matchers, start_ms: i64, end_ms: i64) -> Vec<SeriesData>;

    /// The newest sample in `[start_ms, end_ms]` of every matching series
    /// that has one, in label order: what an instant selector reads. Stores
    /// that can answer without decoding the window override it.
    fn select_latest(
        &self,
        matchers: &Matchers,
        start_ms: i64,
        end_ms: i64,
    ) -> Vec<(Labels, i64, f64)> {
        latest(self.select(matchers, start_ms, end_ms))
    }
}

/// The newest sample of each series.
fn latest(series: Vec<SeriesData>) -> Vec<(Labels, i64, f64)> {
    series
        .into_iter()
        .filter_map(|s| {
            let &(t, v) = s.samples.last()?;
            Some((s.labels, t, v))
        })
        .collect()
}

/// One series as returned by [`Storage::select`].
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesData {
    /// Sorted `(name, value)` pairs, including `__name__`.
    pub labels: Labels,
    /// `(timestamp_ms, value)`, oldest first.
    pub samples: Vec<(i64, f64)>,
}

/// Whether `labels` satisfies every matcher. A missing label matches as the
/// empty string, as in Prometheus (`{foo=""}` selects series without `foo`).
#[must_use]
pub fn matches_all(labels: &Labels, matchers: &[Matcher]) -> bool {
    matchers
        .iter()
        .all(|m| m.is_match(labels.get(&m.name).unwrap_or("")))
}

/// Whether `labels` is selected by `matchers`, including `or` groups
/// (`{a="1" or b="2"}`), which select the union of their groups.
#[must_use]
pub fn matchers_select(labels: &Labels, matchers: &Matchers) -> bool {
    if matchers.or_matchers.is_empty() {
        matches_all(labels, &matchers.matchers)
    } else {
        matchers
            .or_matchers
            .iter()
            .any(|group| matches_all(labels, group) && matches_all(labels, &matchers.matchers))
    }
}

/// An in-memory series store: enough for rule unit tests and small setups.
#[derive(Debug, Default, Clone)]
pub struct MemStorage {
    series: Vec<SeriesData>,
    /// Position of each series in `series`.
    index: std::collections::HashMap<Labels, usize>,
}

impl MemStorage {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one sample to the series with exactly `labels`, creating the
    /// series if needed. Samples must arrive in time order per series; a
    /// sample with the same timestamp as the newest one replaces it.
    pub fn append(&mut self, labels: &Labels, t_ms: i64, v: f64) {
        let idx = if let Some(&i) = self.index.get(labels) {
            i
        } else {
            self.series.push(SeriesData {
                labels: labels.clone(),
                samples: Vec::new(),
            });
            self.index.insert(labels.clone(), self.series.len() - 1);
            self.series.len() - 1
        };
        let samples = &mut self.series[idx].samples;
        match samples.last_mut() {
            Some(last) if last.0 == t_ms => last.1 = v,
            Some(last) if last.0 > t_ms => {
                // Out of order: keep the series sorted rather than refuse.
                let pos = samples.partition_point(|s| s.0 < t_ms);
                if samples.get(pos).is_some_and(|s| s.0 == t_ms) {
                    samples[pos].1 = v;
                } else {
                    samples.insert(pos, (t_ms, v));
                }
            }
            _ => samples.push((t_ms, v)),
        }
    }

    /// Number of series held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Whether no series is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

impl Storage for MemStorage {
    fn select(&self, matchers: &Matchers, start_ms: i64, end_ms: i64) -> Vec<SeriesData> {
        let mut out = self
            .series
            .iter()
            .filter(|s| matchers_select(&s.labels, matchers))
            .filter_map(|s| {
                let lo = s.samples.partition_point(|p| p.0 < start_ms);
                let hi = s.samples.partition_point(|p| p.0 <= end_ms);
                (lo < hi).then(|| SeriesData {
                    labels: s.labels.clone(),
                    samples: s.samples[lo..hi].to_vec(),
                })
            })
            .collect::<Vec<_>>();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }
}

/// A store seen through another: samples written during one rule group
/// evaluation are visible to the group's later rules before the caller
/// persists them, as in Prometheus where each rule's output is appended to
/// storage before the next rule runs.
pub(crate) struct Overlay<'a> {
    pub(crate) base: &'a dyn Storage,
    pub(crate) extra: MemStorage,
}

impl Storage for Overlay<'_> {
    fn select(&self, matchers: &Matchers, start_ms: i64, end_ms: i64) -> Vec<SeriesData> {
        let mut out = self.base.select(matchers, start_ms, end_ms);
        let extras = self.extra.select(matchers, start_ms, end_ms);
        let added = !extras.is_empty();
        for extra in extras {
            if let Ok(i) = out.binary_search_by(|s| s.labels.cmp(&extra.labels)) {
                let s = &mut out[i];
                for (t, v) in extra.samples {
                    let pos = s.samples.partition_point(|p| p.0 < t);
                    if s.samples.get(pos).is_some_and(|p| p.0 == t) {
                        s.samples[pos].1 = v;
                    } else {
                        s.samples.insert(pos, (t, v));
                    }
                }
            } else {
                out.push(extra);
            }
        }
        if added {
            out.sort_by(|a, b| a.labels.cmp(&b.labels));
        }
        out
    }

    fn select_latest(
        &self,
        matchers: &Matchers,
        start_ms: i64,
        end_ms: i64,
    ) -> Vec<(Labels, i64, f64)> {
        // Earlier rules of the group rarely wrote what this selector reads.
        if self.extra.select(matchers, start_ms, end_ms).is_empty() {
            self.base.select_latest(matchers, start_ms, end_ms)
        } else {
            latest(self.select(matchers, start_ms, end_ms))
        }
    }
}
