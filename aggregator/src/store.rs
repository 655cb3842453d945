//! The in-memory store: per series the recent `(t, value)` samples in
//! Gorilla-compressed chunks ([`crate::chunk`]), plus metric family metadata for exposition.
//!
//! The agent is the source of truth for its recent past (it resends what was
//! not acked), so the store keeps only what rules, queries and `/metrics`
//! need: `retention` of history, at most [`MAX_SAMPLES_PER_SERIES`] points.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use promql_parser::label::{Matcher, Matchers};

use crate::chunk::Chunk;

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

/// One series: its labels and its recent samples in compressed chunks.
///
/// The chunks may hold more than is visible: retention and the per-series
/// cap hide samples one by one, but memory is released a whole chunk at a
/// time. Every read applies both bounds, so what is visible is exactly what
/// a ring trimmed after every append would hold.
#[derive(Debug)]
pub struct Series {
    pub labels: Labels,
    /// In time order; the last one is the open chunk appends go to.
    chunks: VecDeque<Chunk>,
    /// Samples held in `chunks`, visible or not.
    stored: usize,
    /// Samples older than this are past retention (newest sample − retention).
    min_t: i64,
}

impl Series {
    fn new(labels: Labels) -> Self {
        Self {
            labels,
            chunks: VecDeque::new(),
            stored: 0,
            min_t: i64::MIN,
        }
    }

    /// The metric name (`__name__`).
    #[must_use]
    pub fn name(&self) -> &str {
        label(&self.labels, "__name__").unwrap_or("")
    }

    /// Leading samples hidden by [`MAX_SAMPLES_PER_SERIES`].
    fn capped(&self) -> usize {
        self.stored.saturating_sub(MAX_SAMPLES_PER_SERIES)
    }

    /// The newest sample.
    #[must_use]
    pub fn last(&self) -> Option<(i64, f64)> {
        self.chunks.back().and_then(Chunk::last)
    }

    /// Every visible sample, oldest first.
    pub fn samples(&self) -> impl Iterator<Item = (i64, f64)> + '_ {
        let min_t = self.min_t;
        self.chunks
            .iter()
            .flat_map(Chunk::iter)
            .skip(self.capped())
            .skip_while(move |(t, _)| *t < min_t)
    }

    /// Visible samples with `start_ms <= t <= end_ms`, oldest first.
    #[must_use]
    pub fn range(&self, start_ms: i64, end_ms: i64) -> Vec<(i64, f64)> {
        let capped = self.capped();
        let lo = start_ms.max(self.min_t);
        let mut out = Vec::new();
        let mut idx = 0;
        for c in &self.chunks {
            let n = c.len();
            let skip = idx + n <= capped || c.last().is_none_or(|(t, _)| t < lo);
            if !skip {
                if c.first_t() > end_ms {
                    break;
                }
                for (k, (t, v)) in c.iter().enumerate() {
                    if t > end_ms {
                        break;
                    }
                    if idx + k >= capped && t >= lo {
                        out.push((t, v));
                    }
                }
            }
            idx += n;
        }
        out
    }

    /// Heap bytes of the encoded samples.
    #[must_use]
    pub fn sample_bytes(&self) -> usize {
        self.chunks.iter().map(Chunk::heap_bytes).sum::<usize>()
            + self.chunks.capacity() * std::mem::size_of::<Chunk>()
    }

    /// Whether the newest sample, at `t`, is visible: not hidden by retention
    /// or the per-series cap (it never is unless the cap is zero).
    fn visible(&self, t: i64) -> bool {
        t >= self.min_t && self.capped() < self.stored
    }

    /// The latest sample at or before `t_ms` within the lookback window.
    #[must_use]
    pub fn at(&self, t_ms: i64) -> Option<(i64, f64)> {
        let found = match self.last() {
            // The common case (exposition, instant queries at now): no decoding.
            Some((t, v)) if t <= t_ms => (t, v),
            Some(_) => *self.range(i64::MIN, t_ms).last()?,
            None => return None,
        };
        let (t, v) = found;
        // A staleness marker (written when a recording rule's series ends) hides the series.
        (t > t_ms - LOOKBACK_MS && !crate::promql::is_stale_nan(v)).then_some((t, v))
    }

    /// Appends one sample; false when it is not newer than the newest.
    fn push(&mut self, t: i64, v: f64, retention_ms: i64) -> bool {
        if self.last().is_some_and(|(last, _)| last >= t) {
            return false;
        }
        if self.chunks.back().is_none_or(Chunk::is_full) {
            if let Some(full) = self.chunks.back_mut() {
                full.seal();
            }
            self.chunks.push_back(Chunk::new());
        }
        if let Some(head) = self.chunks.back_mut() {
            head.push(t, v);
            self.stored += 1;
        }
        self.min_t = t.saturating_sub(retention_ms);
        // Free whole chunks once nothing in them is visible; the open chunk
        // holds the newest sample and always stays.
        while self.chunks.len() > 1 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let n = front.len();
            let past = front.last().is_none_or(|(t, _)| t < self.min_t);
            if past || self.stored - n >= MAX_SAMPLES_PER_SERIES {
                self.stored -= n;
                self.chunks.pop_front();
            } else {
                break;
            }
        }
        true
    }
}

/// `labels` sorted by name, names unique (the last wins), no empty values.
fn canonical(labels: Labels) -> Labels {
    let ok =
        labels.windows(2).all(|w| w[0].0 < w[1].0) && labels.iter().all(|(_, v)| !v.is_empty());
    if ok {
        return labels;
    }
    let mut v = labels.to_vec();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<(String, String)> = Vec::with_capacity(v.len());
    for (k, val) in v {
        match out.last_mut() {
            Some(last) if last.0 == k => last.1 = val,
            _ => out.push((k, val)),
        }
    }
    out.retain(|(_, v)| !v.is_empty());
    out.into()
}

/// The value of label `name`.
#[must_use]
pub fn label<'a>(labels: &'a [(String, String)], name: &str) -> Option<&'a str> {
    // A series has a handful of labels: a scan comparing lengths first beats
    // a binary search's full string comparisons.
    labels
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
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

/// One metric name's series in label order, so selectors hand the evaluator
/// an already sorted vector.
///
/// Each series has an order key: its labels in one byte string whose
/// byte order is the label sets' order (see [`order_key`]), kept in one
/// buffer per name. Finding a new series' place compares those (a cache
/// line or two each) instead of walking two heap strings per label, which
/// is what bounds series creation when a thousand nodes' first batches
/// arrive at once.
#[derive(Debug, Default)]
struct NameIndex {
    /// (where the series' key starts in `keys`, in [`KEY_ALIGN`] units; the
    /// series), in label order.
    entries: Vec<(u32, SeriesId)>,
    /// Keys, each a little-endian `u32` length then the key, padded to
    /// [`KEY_ALIGN`]. Series are never removed, so keys only grow.
    keys: Vec<u8>,
}

/// Keys start at multiples of this, so a `u32` reaches 32 GiB of keys.
const KEY_ALIGN: usize = 8;

impl NameIndex {
    fn key(&self, at: u32) -> &[u8] {
        let start = at as usize * KEY_ALIGN;
        let mut len = [0u8; 4];
        len.copy_from_slice(&self.keys[start..start + 4]);
        &self.keys[start + 4..start + 4 + u32::from_le_bytes(len) as usize]
    }

    fn push_key(&mut self, labels: &[(String, String)]) -> u32 {
        let start = self.keys.len();
        self.keys.extend_from_slice(&[0; 4]);
        order_key(labels, &mut self.keys);
        let len = (self.keys.len() - start - 4) as u32;
        self.keys[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.keys
            .resize(self.keys.len().next_multiple_of(KEY_ALIGN), 0);
        // Past 32 GiB of keys for one name the order would be wrong; memory
        // runs out long before.
        u32::try_from(start / KEY_ALIGN).unwrap_or(u32::MAX)
    }

    /// Adds new series (all of this name, none already here) in label order.
    fn insert<'a>(&mut self, new: impl Iterator<Item = (SeriesId, &'a [(String, String)])>) {
        let mut new: Vec<(u32, SeriesId)> = new.map(|(id, l)| (self.push_key(l), id)).collect();
        new.sort_unstable_by(|a, b| self.key(a.0).cmp(self.key(b.0)));
        let Some(first) = new.first() else {
            return;
        };
        if self
            .entries
            .last()
            .is_none_or(|last| self.key(last.0) < self.key(first.0))
        {
            self.entries.extend(new);
            return;
        }
        // Each new one's place by binary search from the previous one's, and
        // the list rebuilt once rather than shifted per series.
        let mut merged = Vec::with_capacity(self.entries.len() + new.len());
        let mut from = 0;
        for e in new {
            let key = self.key(e.0);
            let at = from + self.entries[from..].partition_point(|x| self.key(x.0) < key);
            merged.extend_from_slice(&self.entries[from..at]);
            merged.push(e);
            from = at;
        }
        merged.extend_from_slice(&self.entries[from..]);
        self.entries = merged;
    }
}

/// Appends `labels` (a canonical label set) as a byte string whose byte
/// order is the label sets' order among series of one name: the
/// `__name__` pair, the same in all of them, is one marker byte; every
/// other pair is a class byte saying on which side of `__name__` its name
/// sorts, then name and value, each with 0x00 and 0x01 escaped and ended by
/// 0x00 (so no string's encoding is a prefix of another's).
fn order_key(labels: &[(String, String)], out: &mut Vec<u8>) {
    fn string(s: &str, out: &mut Vec<u8>) {
        for &b in s.as_bytes() {
            match b {
                0 => out.extend_from_slice(&[1, 1]),
                1 => out.extend_from_slice(&[1, 2]),
                b => out.push(b),
            }
        }
        out.push(0);
    }
    for (k, v) in labels {
        match k.as_str().cmp("__name__") {
            std::cmp::Ordering::Equal => out.push(3),
            o => {
                out.push(if o == std::cmp::Ordering::Less { 2 } else { 4 });
                string(k, out);
                string(v, out);
            }
        }
    }
}

#[derive(Default)]
pub struct Inner {
    /// Every series by its labels' hash (kept beside the id, so growing the
    /// table never rehashes label sets: at a million series that was half
    /// a second under the write lock).
    ids: hashbrown::HashTable<(u64, SeriesId)>,
    hasher: foldhash::fast::RandomState,
    series: Vec<Series>,
    by_name: HashMap<String, NameIndex>,
    families: HashMap<String, FamilyMeta>,
    samples_total: u64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("series", &self.series.len())
            .field("names", &self.by_name.len())
            .field("families", &self.families.len())
            .field("samples_total", &self.samples_total)
            .finish_non_exhaustive()
    }
}

/// The hash `ids` files a label set under.
fn label_hash(hasher: &foldhash::fast::RandomState, labels: &[(String, String)]) -> u64 {
    use std::hash::BuildHasher;
    hasher.hash_one(labels)
}

/// Whether an `ids` entry is the series with these labels (and their hash).
fn is_series<'a>(
    series: &'a [Series],
    hash: u64,
    labels: &'a [(String, String)],
) -> impl Fn(&(u64, SeriesId)) -> bool + 'a {
    move |(h, id)| *h == hash && *series[id.0 as usize].labels == *labels
}

impl Inner {
    /// The series with these labels, if there is one.
    fn find(&self, labels: &[(String, String)]) -> Option<SeriesId> {
        let hash = label_hash(&self.hasher, labels);
        self.ids
            .find(hash, is_series(&self.series, hash, labels))
            .map(|(_, id)| *id)
    }

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

    /// Heap bytes held by every series' samples (for the memory budget).
    #[must_use]
    pub fn sample_bytes(&self) -> usize {
        self.series.iter().map(Series::sample_bytes).sum()
    }

    /// Series matching a selector. Uses the name index when `__name__` is
    /// fixed; then the series come in label order.
    #[must_use]
    pub fn select<'a>(&'a self, ms: &'a Matchers) -> Box<dyn Iterator<Item = &'a Series> + 'a> {
        let by_name = ms
            .matchers
            .iter()
            .find(|m| m.name == "__name__" && matches!(m.op, promql_parser::label::MatchOp::Equal));
        let Some(m) = by_name else {
            let mut hits: Vec<&Series> = self
                .series
                .iter()
                .filter(|s| matches_all(&s.labels, ms))
                .collect();
            hits.sort_by(|a, b| a.labels.cmp(&b.labels));
            return Box::new(hits.into_iter());
        };
        // The index already fixed the name; only the others remain.
        let rest: Vec<&Matcher> = ms
            .matchers
            .iter()
            .filter(|o| !std::ptr::eq(*o, m))
            .collect();
        Box::new(
            self.by_name
                .get(&m.value)
                .into_iter()
                .flat_map(|index| index.entries.iter())
                .map(|(_, id)| self.series(*id))
                .filter(move |s| {
                    rest.iter().all(|m| matches(&s.labels, m))
                        && (ms.or_matchers.is_empty()
                            || ms
                                .or_matchers
                                .iter()
                                .any(|g| g.iter().all(|m| matches(&s.labels, m))))
                }),
        )
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

/// Receives every sample the store accepts, in append order (remote write).
pub type AppendSink = Box<dyn Fn(&[(Labels, i64, f64)]) + Send + Sync>;

/// The store, shared by ingest, rules, exposition and queries.
pub struct Store {
    inner: RwLock<Inner>,
    retention_ms: i64,
    sink: std::sync::OnceLock<AppendSink>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("inner", &self.inner)
            .field("retention_ms", &self.retention_ms)
            .field("sink", &self.sink.get().is_some())
            .finish()
    }
}

impl Store {
    #[must_use]
    pub fn new(retention_ms: i64) -> Arc<Self> {
        Arc::new(Self {
            inner: RwLock::new(Inner::default()),
            retention_ms,
            sink: std::sync::OnceLock::new(),
        })
    }

    /// Installs the one receiver of every accepted sample; false if one is
    /// already installed. It runs under the store's write lock, so it sees
    /// each series' samples in order and must be quick (a queue push).
    pub fn set_sink(&self, sink: AppendSink) -> bool {
        self.sink.set(sink).is_ok()
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

    /// Looks up or creates the series for `labels` (holding `__name__`).
    /// Labels are kept sorted by name, names unique (the last wins), without
    /// empty values: queries share them as they are.
    pub fn series_id(&self, labels: Labels) -> SeriesId {
        let labels = canonical(labels);
        let inner = self.read();
        if let Some(id) = inner.find(&labels) {
            return id;
        }
        drop(inner);
        self.create(vec![labels])[0]
    }

    /// The label sets in the store's form (as [`Store::series_id`] keeps
    /// them), each with its series where one exists: one read lock for all.
    pub fn resolve(&self, labels: Vec<Labels>) -> Vec<(Labels, Option<SeriesId>)> {
        let labels: Vec<Labels> = labels.into_iter().map(canonical).collect();
        let inner = self.read();
        labels
            .into_iter()
            .map(|l| {
                let id = inner.find(&l);
                (l, id)
            })
            .collect()
    }

    /// The series of each label set (in the form [`Store::resolve`] returns),
    /// created where missing, under one write lock for all: an agent's
    /// first batch defines ~1,500 series, and a thousand agents reconnect
    /// at once after an aggregator restart.
    pub fn create(&self, labels: Vec<Labels>) -> Vec<SeriesId> {
        let mut inner = self.write();
        let Inner {
            ids,
            hasher,
            series,
            by_name,
            ..
        } = &mut *inner;
        let first_new = series.len();
        let out = labels
            .into_iter()
            .map(|l| {
                let hash = label_hash(hasher, &l);
                match ids.entry(hash, is_series(series, hash, &l), |(h, _)| *h) {
                    hashbrown::hash_table::Entry::Occupied(e) => e.get().1,
                    hashbrown::hash_table::Entry::Vacant(e) => {
                        let id = SeriesId(series.len() as u32);
                        series.push(Series::new(l));
                        e.insert((hash, id));
                        id
                    }
                }
            })
            .collect();
        let mut added: HashMap<&str, Vec<SeriesId>, foldhash::fast::RandomState> =
            HashMap::default();
        for (i, s) in series.iter().enumerate().skip(first_new) {
            added.entry(s.name()).or_default().push(SeriesId(i as u32));
        }
        for (name, new) in added {
            by_name
                .entry(name.to_string())
                .or_default()
                .insert(new.iter().map(|id| (*id, &*series[id.0 as usize].labels)));
        }
        out
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
        let sink = self.sink.get();
        let mut accepted = Vec::new();
        let mut n = 0;
        for &(id, t, v) in samples {
            let Some(series) = inner.series.get_mut(id.0 as usize) else {
                continue;
            };
            if series.push(t, v, self.retention_ms) {
                n += 1;
                if sink.is_some() {
                    accepted.push((Arc::clone(&series.labels), t, v));
                }
            }
        }
        if let Some(sink) = sink {
            if !accepted.is_empty() {
                sink(&accepted);
            }
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
                let samples = s.range(start_ms, end_ms);
                if samples.is_empty() {
                    return None;
                }
                Some(crate::promql::SeriesData {
                    labels: crate::promql::Labels::from_shared(Arc::clone(&s.labels)),
                    samples,
                })
            })
            .collect()
    }

    fn select_latest(
        &self,
        matchers: &Matchers,
        start_ms: i64,
        end_ms: i64,
    ) -> Vec<(crate::promql::Labels, i64, f64)> {
        let inner = self.read();
        inner
            .select(matchers)
            .filter_map(|s| {
                let (t, v) = match s.last() {
                    // The common case (rules and queries at now): no decoding.
                    Some((t, v)) if t <= end_ms && s.visible(t) => (t, v),
                    Some(_) => *s.range(start_ms, end_ms).last()?,
                    None => return None,
                };
                (t >= start_ms).then(|| {
                    (
                        crate::promql::Labels::from_shared(Arc::clone(&s.labels)),
                        t,
                        v,
                    )
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

    /// Selectors get a name's series in label order whatever order they
    /// were created in, and label sets are stored in canonical form.
    #[test]
    fn select_is_in_label_order() {
        let store = Store::new(60_000);
        for node in ["c", "a", "d", "b"] {
            let id = store.series_id(labels(&[("__name__", "m"), ("node", node)]));
            store.append(&[(id, 1000, 1.0)]);
        }
        let unsorted: Labels = vec![
            ("node".to_string(), "e".to_string()),
            ("__name__".to_string(), "m".to_string()),
            ("x".to_string(), String::new()),
        ]
        .into();
        let e = store.series_id(unsorted);
        assert_eq!(
            store.series_id(labels(&[("__name__", "m"), ("node", "e")])),
            e
        );
        store.append(&[(e, 1000, 1.0)]);
        for ms in [
            Matchers::new(vec![Matcher::new(MatchOp::Equal, "__name__", "m")]),
            Matchers::new(vec![Matcher::new(MatchOp::NotEqual, "node", "zz")]),
        ] {
            let got: Vec<String> = crate::promql::Storage::select(&*store, &ms, 0, 2000)
                .iter()
                .map(|s| s.labels.get("node").unwrap_or("").to_string())
                .collect();
            assert_eq!(got, ["a", "b", "c", "d", "e"]);
            let latest = crate::promql::Storage::select_latest(&*store, &ms, 0, 2000);
            assert_eq!(latest.len(), 5);
            assert!(latest
                .iter()
                .all(|(_, t, v)| *t == 1000 && v.to_bits() == 1f64.to_bits()));
        }
    }

    /// Series created in batches (as an agent's first batch defines them),
    /// in any order and with repeats, get the ids one-at-a-time creation
    /// would give the same label sets, and selectors still see each name's
    /// series in label order.
    #[test]
    fn batch_creation_keeps_label_order_and_ids() {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut all: Vec<Labels> = Vec::new();
        for node in 0..40 {
            for cpu in 0..3 {
                for name in ["m", "n"] {
                    all.push(labels(&[
                        ("__name__", name),
                        ("cpu", &cpu.to_string()),
                        ("node", &format!("n{node}")),
                    ]));
                }
            }
        }
        all.shuffle(&mut rng);
        let store = Store::new(60_000);
        let mut ids = HashMap::new();
        for batch in all.chunks(17) {
            // A repeat inside the batch and one from an earlier batch.
            let mut b = batch.to_vec();
            b.push(batch[0].clone());
            b.push(all[0].clone());
            let resolved = store.resolve(b);
            let want: Vec<Labels> = resolved.iter().map(|(l, _)| Arc::clone(l)).collect();
            let got = store.create(want.clone());
            for (l, id) in want.iter().zip(&got) {
                assert_eq!(*ids.entry(Arc::clone(l)).or_insert(*id), *id, "{l:?}");
                assert_eq!(store.series_id(Arc::clone(l)), *id);
            }
        }
        assert_eq!(store.read().len(), all.len());
        let inner = store.read();
        for name in ["m", "n"] {
            let ms = Matchers::new(vec![Matcher::new(MatchOp::Equal, "__name__", name)]);
            let got: Vec<Labels> = inner.select(&ms).map(|s| Arc::clone(&s.labels)).collect();
            let mut want: Vec<Labels> = all
                .iter()
                .filter(|l| label(l, "__name__") == Some(name))
                .cloned()
                .collect();
            want.sort();
            assert_eq!(got, want);
        }
    }

    fn label_set() -> impl proptest::strategy::Strategy<Value = Vec<(String, String)>> {
        use proptest::prelude::*;
        // Names on both sides of `__name__` (upper case and `_A` sort
        // before it), values with the escaped bytes and prefixes of others.
        let name = prop_oneof![
            Just("A".to_string()),
            Just("_A".to_string()),
            Just("a".to_string()),
            Just("ab".to_string()),
            Just("node".to_string()),
        ];
        let value = proptest::collection::vec(
            prop_oneof![
                Just('\0'),
                Just('\u{1}'),
                Just('\u{2}'),
                Just('a'),
                Just('é')
            ],
            1..4,
        )
        .prop_map(|c| c.into_iter().collect::<String>());
        proptest::collection::btree_map(name, value, 0..4).prop_map(|m| {
            let mut v: Vec<(String, String)> = m.into_iter().collect();
            v.push(("__name__".into(), "m".into()));
            v.sort();
            v
        })
    }

    proptest::proptest! {
        /// Order keys sort as the label sets they encode (one name).
        #[test]
        fn order_keys_sort_as_label_sets(a in label_set(), b in label_set()) {
            let (mut ka, mut kb) = (Vec::new(), Vec::new());
            order_key(&a, &mut ka);
            order_key(&b, &mut kb);
            proptest::prop_assert_eq!(ka.cmp(&kb), a.cmp(&b), "{:?} {:?}", a, b);
        }

        /// A name's index keeps label order however its series arrive.
        #[test]
        fn name_index_keeps_label_order(
            batches in proptest::collection::vec(proptest::collection::vec(label_set(), 0..6), 1..6)
        ) {
            let mut all: Vec<Vec<(String, String)>> = Vec::new();
            let mut index = NameIndex::default();
            for batch in batches {
                let mut fresh = Vec::new();
                for l in batch {
                    if !all.contains(&l) && !fresh.contains(&l) {
                        fresh.push(l);
                    }
                }
                let first = all.len();
                all.extend(fresh);
                index.insert(
                    all[first..]
                        .iter()
                        .enumerate()
                        .map(|(i, l)| (SeriesId((first + i) as u32), l.as_slice())),
                );
            }
            let got: Vec<&Vec<(String, String)>> =
                index.entries.iter().map(|(_, id)| &all[id.0 as usize]).collect();
            let mut want: Vec<&Vec<(String, String)>> = all.iter().collect();
            want.sort();
            proptest::prop_assert_eq!(got, want);
        }
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
        assert_eq!(store.read().series(a).samples().count(), 1);
    }

    /// The chunked store against the plain ring it replaced: same appends,
    /// same visible samples, windows and `at`, across chunk boundaries,
    /// retention cuts, the per-series cap and special values.
    #[test]
    #[allow(clippy::many_single_char_names)]
    fn matches_a_plain_ring() {
        use crate::promql::Storage;
        use rand::{Rng, SeedableRng};
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for round in 0..12 {
            let retention = [5_000, 60_000, 1_000_000, 10_000_000][round % 4];
            let store = Store::new(retention);
            let id = store.series_id(labels(&[("__name__", "m"), ("node", "a")]));
            let mut model: VecDeque<(i64, f64)> = VecDeque::new();
            let mut t = 1_700_000_000_000i64;
            let n = rng.random_range(1..6000);
            for _ in 0..n {
                t += match rng.random_range(0..10) {
                    0 => -rng.random_range(0..3000),
                    1 => rng.random_range(0..100_000),
                    _ => 1000 + rng.random_range(-3..3),
                };
                let v = match rng.random_range(0..8) {
                    0 => stale,
                    1 => f64::INFINITY,
                    2 => f64::NEG_INFINITY,
                    3 => 0.0,
                    _ => rng.random_range(0.0..1e9f64).floor(),
                };
                let took = store.append(&[(id, t, v)]);
                if model.back().is_some_and(|(last, _)| *last >= t) {
                    assert_eq!(took, 0);
                    continue;
                }
                assert_eq!(took, 1);
                model.push_back((t, v));
                while model.len() > MAX_SAMPLES_PER_SERIES
                    || model.front().is_some_and(|(t0, _)| *t0 < t - retention)
                {
                    model.pop_front();
                }
            }
            let bits =
                |v: &[(i64, f64)]| v.iter().map(|(t, v)| (*t, v.to_bits())).collect::<Vec<_>>();
            let want: Vec<_> = model.iter().copied().collect();
            let inner = store.read();
            let s = inner.series(id);
            assert_eq!(bits(&s.samples().collect::<Vec<_>>()), bits(&want));
            drop(inner);
            let ms = Matchers::new(vec![Matcher::new(MatchOp::Equal, "__name__", "m")]);
            for _ in 0..50 {
                let a = rng.random_range(want[0].0 - 5000..=t + 5000);
                let b = a + rng.random_range(0..200_000);
                let got = store.select(&ms, a, b);
                let expect: Vec<_> = want
                    .iter()
                    .copied()
                    .filter(|(x, _)| *x >= a && *x <= b)
                    .collect();
                assert_eq!(
                    got.first().map(|s| bits(&s.samples)).unwrap_or_default(),
                    bits(&expect)
                );
                let at = want
                    .iter()
                    .rev()
                    .find(|(x, _)| *x <= a)
                    .filter(|(x, v)| *x > a - LOOKBACK_MS && !crate::promql::is_stale_nan(*v));
                assert_eq!(
                    store.read().series(id).at(a).map(|(t, v)| (t, v.to_bits())),
                    at.map(|(t, v)| (*t, v.to_bits()))
                );
            }
        }
    }

    /// The memory budget: 900 samples (15 minutes at 1 s) of node-like
    /// series (jittered timestamps, rising counters, mostly still gauges)
    /// cost a few bytes per sample, not the ring's 16.
    #[test]
    fn a_few_bytes_per_sample() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let store = Store::new(15 * 60 * 1000);
        let ids: Vec<SeriesId> = (0..200)
            .map(|i| store.series_id(labels(&[("__name__", "m"), ("i", &i.to_string())])))
            .collect();
        let mut values: Vec<f64> = (0..ids.len()).map(|i| (i * 1000) as f64).collect();
        let t0 = 1_700_000_000_000i64;
        for k in 0..900i64 {
            let t = t0 + k * 1000 + rng.random_range(0..5);
            let batch: Vec<_> = ids
                .iter()
                .zip(values.iter_mut())
                .enumerate()
                .map(|(i, (id, v))| {
                    if i % 2 == 0 {
                        *v += f64::from(rng.random_range(0u32..2000));
                    } else if rng.random_bool(0.2) {
                        *v = (*v * rng.random_range(0.9..1.1)).round();
                    }
                    (*id, t, *v)
                })
                .collect();
            store.append(&batch);
        }
        let bytes = store.read().sample_bytes() as f64 / (200.0 * 900.0);
        eprintln!("{bytes:.2} bytes per sample");
        assert!(bytes < 6.0, "{bytes:.2} bytes per sample");
    }
}
