//! The in-memory store: per series a bounded ring of recent `(t, value)`
//! samples, plus metric family metadata for exposition.
//!
//! The agent is the source of truth for its recent past (it resends what was
//! not acked), so the store keeps only what rules, queries and `/metrics`
//! need: `retention` of history, at most [`MAX_SAMPLES_PER_SERIES`] points.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use promql_parser::label::{Matcher, Matchers};

/// Hard cap of samples kept per series whatever the retention, so a node
/// sending far faster than expected cannot grow a ring without bound
/// (15 minutes at 1 s is 900).
pub const MAX_SAMPLES_PER_SERIES: usize = 4096;

/// Prometheus' lookback: a series with no sample in the last 5 minutes is
/// absent from instant queries and from `/metrics`.
pub const LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// Milliseconds since the Unix epoch.
#[must_use]
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A label set, sorted by name, including `__name__` and `node`.
pub type Labels = Arc<[(String, String)]>;

/// Index of a series in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeriesId(u32);

/// The type of a metric family, as in the exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FamilyType {
    Gauge,
    Counter,
    Histogram,
    Summary,
    Untyped,
}

impl FamilyType {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            FamilyType::Gauge => "gauge",
            FamilyType::Counter => "counter",
            FamilyType::Histogram => "histogram",
            FamilyType::Summary => "summary",
            FamilyType::Untyped => "untyped",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyMeta {
    pub kind: FamilyType,
    pub help: String,
}

#[derive(Debug)]
pub struct Series {
    pub labels: Labels,
    pub samples: VecDeque<(i64, f64)>,
}

impl Series {
    /// The metric name (`__name__`).
    #[must_use]
    pub fn name(&self) -> &str {
        label(&self.labels, "__name__").unwrap_or("")
    }

    /// The latest sample at or before `t_ms` within the lookback window.
    #[must_use]
    pub fn at(&self, t_ms: i64) -> Option<(i64, f64)> {
        let idx = self.samples.partition_point(|(t, _)| *t <= t_ms);
        let (t, v) = *self.samples.get(idx.checked_sub(1)?)?;
        // A staleness marker (written when a recording rule's series ends) hides the series.
        (t > t_ms - LOOKBACK_MS && !crate::promql::is_stale_nan(v)).then_some((t, v))
    }
}

/// The value of label `name`.
#[must_use]
pub fn label<'a>(labels: &'a [(String, String)], name: &str) -> Option<&'a str> {
    labels
        .binary_search_by(|(k, _)| k.as_str().cmp(name))
        .ok()
        .map(|i| labels[i].1.as_str())
}

fn matches(labels: &[(String, String)], m: &Matcher) -> bool {
    m.is_match(label(labels, &m.name).unwrap_or(""))
}

/// Whether a label set satisfies a selector's matchers (`PromQL` semantics:
/// a missing label matches as the empty string).
#[must_use]
pub fn matches_all(labels: &[(String, String)], ms: &Matchers) -> bool {
    ms.matchers.iter().all(|m| matches(labels, m))
        && (ms.or_matchers.is_empty()
            || ms
                .or_matchers
                .iter()
                .any(|g| g.iter().all(|m| matches(labels, m))))
}

#[derive(Debug, Default)]
pub struct Inner {
    ids: HashMap<Labels, SeriesId>,
    series: Vec<Series>,
    by_name: HashMap<String, Vec<SeriesId>>,
    families: HashMap<String, FamilyMeta>,
    samples_total: u64,
}

impl Inner {
    #[must_use]
    pub fn series(&self, id: SeriesId) -> &Series {
        &self.series[id.0 as usize]
    }

    /// Every series, for exposition.
    pub fn all(&self) -> impl Iterator<Item = &Series> {
        self.series.iter()
    }

    #[must_use]
    pub fn family(&self, name: &str) -> Option<&FamilyMeta> {
        self.families.get(name)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.series.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Series matching a selector. Uses the name index when `__name__` is fixed.
    #[must_use]
    pub fn select<'a>(&'a self, ms: &'a Matchers) -> Box<dyn Iterator<Item = &'a Series> + 'a> {
        let by_name = ms
            .matchers
            .iter()
            .find(|m| m.name == "__name__" && matches!(m.op, promql_parser::label::MatchOp::Equal));
        match by_name {
            Some(m) => Box::new(
                self.by_name
                    .get(&m.value)
                    .into_iter()
                    .flatten()
                    .map(|id| self.series(*id))
                    .filter(move |s| matches_all(&s.labels, ms)),
            ),
            None => Box::new(
                self.series
                    .iter()
                    .filter(move |s| matches_all(&s.labels, ms)),
            ),
        }
    }

    /// The family a series name belongs to: histogram and summary series
    /// (`_bucket`, `_sum`, `_count`) belong to their base name.
    #[must_use]
    pub fn family_of<'a>(&self, name: &'a str) -> &'a str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if self
                    .families
                    .get(base)
                    .is_some_and(|f| matches!(f.kind, FamilyType::Histogram | FamilyType::Summary))
                {
                    return base;
                }
            }
        }
        name
    }
}

/// The store, shared by ingest, rules, exposition and queries.
#[derive(Debug)]
pub struct Store {
    inner: RwLock<Inner>,
    retention_ms: i64,
}

impl Store {
    #[must_use]
    pub fn new(retention_ms: i64) -> Arc<Self> {
        Arc::new(Self {
            inner: RwLock::new(Inner::default()),
            retention_ms,
        })
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Looks up or creates the series for `labels` (must be sorted and hold `__name__`).
    pub fn series_id(&self, labels: Labels) -> SeriesId {
        if let Some(id) = self.read().ids.get(&labels) {
            return *id;
        }
        let mut inner = self.write();
        if let Some(id) = inner.ids.get(&labels) {
            return *id;
        }
        let id = SeriesId(inner.series.len() as u32);
        let name = label(&labels, "__name__").unwrap_or("").to_string();
        inner.by_name.entry(name).or_default().push(id);
        inner.ids.insert(Arc::clone(&labels), id);
        inner.series.push(Series {
            labels,
            samples: VecDeque::new(),
        });
        id
    }

    /// Records metadata for a family; the first writer wins, later
    /// disagreements are ignored (every agent of one version sends the same).
    pub fn set_family(&self, name: &str, meta: FamilyMeta) {
        if self.read().families.contains_key(name) {
            return;
        }
        self.write()
            .families
            .entry(name.to_string())
            .or_insert(meta);
    }

    /// Appends samples. Out-of-order samples (older than a series' newest)
    /// are dropped, as Prometheus' head does; returns how many were appended.
    pub fn append(&self, samples: &[(SeriesId, i64, f64)]) -> usize {
        let mut inner = self.write();
        let mut n = 0;
        for &(id, t, v) in samples {
            let Some(series) = inner.series.get_mut(id.0 as usize) else {
                continue;
            };
            if series.samples.back().is_some_and(|(last, _)| *last >= t) {
                continue;
            }
            series.samples.push_back((t, v));
            let horizon = t - self.retention_ms;
            while series.samples.len() > MAX_SAMPLES_PER_SERIES
                || series.samples.front().is_some_and(|(t0, _)| *t0 < horizon)
            {
                series.samples.pop_front();
            }
            n += 1;
        }
        inner.samples_total += n as u64;
        n
    }
}

/// The rule engine and queries read the store through this trait.
impl crate::promql::Storage for Store {
    fn select(
        &self,
        matchers: &Matchers,
        start_ms: i64,
        end_ms: i64,
    ) -> Vec<crate::promql::SeriesData> {
        let inner = self.read();
        inner
            .select(matchers)
            .filter_map(|s| {
                let lo = s.samples.partition_point(|(t, _)| *t < start_ms);
                let hi = s.samples.partition_point(|(t, _)| *t <= end_ms);
                if lo >= hi {
                    return None;
                }
                Some(crate::promql::SeriesData {
                    labels: crate::promql::Labels::from_pairs(
                        s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    ),
                    samples: s.samples.range(lo..hi).copied().collect(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use promql_parser::label::MatchOp;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        let mut v: Vec<(String, String)> = pairs
            .iter()
            .map(|(a, b)| ((*a).into(), (*b).into()))
            .collect();
        v.sort();
        v.into()
    }

    #[test]
    fn append_select_and_bounds() {
        let store = Store::new(60_000);
        let a = store.series_id(labels(&[("__name__", "m"), ("node", "a")]));
        let b = store.series_id(labels(&[("__name__", "m"), ("node", "b")]));
        assert_eq!(
            store.series_id(labels(&[("node", "a"), ("__name__", "m")])),
            a
        );
        assert_eq!(
            store.append(&[
                (a, 1000, 1.0),
                (a, 1000, 2.0),
                (a, 500, 3.0),
                (b, 2000, 4.0)
            ]),
            2
        );
        let ms = Matchers::new(vec![
            Matcher::new(MatchOp::Equal, "__name__", "m"),
            Matcher::new(MatchOp::NotEqual, "node", "b"),
        ]);
        let inner = store.read();
        let hits: Vec<_> = inner.select(&ms).collect();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].at(1500), Some((1000, 1.0)));
        assert_eq!(hits[0].at(999), None);
        assert_eq!(hits[0].at(1000 + LOOKBACK_MS), None);
        drop(inner);
        // Retention drops old samples.
        store.append(&[(a, 100_000, 5.0)]);
        assert_eq!(store.read().series(a).samples.len(), 1);
    }
}
