//! Collections (one run of every collector, or a burst of events) and their
//! encoding into wire batches with a per-stream symbol table: a series is
//! defined once per stream (`SeriesDef`), then its samples carry only a ref.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use nodewatch_proto::v1::{Batch, Event, Label, MetricMetadata, Sample as WireSample, SeriesDef};

use crate::collector::{Family, Sample};

/// One collection, numbered by `seq` (per agent instance, from 1).
#[derive(Debug)]
pub struct Collection {
    pub seq: u64,
    pub t_ms: i64,
    pub families: Arc<BTreeMap<String, Family>>,
    pub samples: Vec<Sample>,
    pub events: Vec<Event>,
}

impl Collection {
    /// A rough size in memory, for the pending queue's cap.
    #[must_use]
    pub fn approx_bytes(&self) -> usize {
        let samples: usize = self
            .samples
            .iter()
            .map(|s| {
                48 + s.name.len()
                    + s.labels
                        .iter()
                        .map(|(k, v)| 48 + k.len() + v.len())
                        .sum::<usize>()
            })
            .sum();
        64 + samples + self.events.len() * 256
    }
}

/// Per-stream encoder state. A new stream starts with a new encoder, since
/// the aggregator's symbol table lives only as long as the stream.
#[derive(Debug, Default)]
pub struct Encoder {
    refs: HashMap<(String, Vec<(String, String)>), u64>,
    families_sent: HashSet<String>,
    next_ref: u64,
}

impl Encoder {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Series defined on this stream so far.
    #[must_use]
    pub fn series(&self) -> usize {
        self.refs.len()
    }

    /// Encodes a collection as a batch.
    pub fn encode(&mut self, c: &Collection) -> Batch {
        let mut series_defs = Vec::new();
        let mut metadata = Vec::new();
        let mut samples = Vec::with_capacity(c.samples.len());
        for s in &c.samples {
            // Look up without allocating; allocate the key only for a new series.
            let key = (s.name.clone(), s.labels.clone());
            let r = if let Some(r) = self.refs.get(&key) {
                *r
            } else {
                self.next_ref += 1;
                let r = self.next_ref;
                series_defs.push(SeriesDef {
                    r#ref: r,
                    name: s.name.clone(),
                    labels: s
                        .labels
                        .iter()
                        .map(|(k, v)| Label {
                            name: k.clone(),
                            value: v.clone(),
                        })
                        .collect(),
                });
                self.refs.insert(key, r);
                r
            };
            samples.push(WireSample {
                r#ref: r,
                t_ms: c.t_ms,
                value: s.value,
            });
        }
        for (name, f) in c.families.iter() {
            if !self.families_sent.contains(name) {
                self.families_sent.insert(name.clone());
                metadata.push(MetricMetadata {
                    name: name.clone(),
                    r#type: f.kind.to_proto() as i32,
                    help: f.help.clone(),
                });
            }
        }
        Batch {
            seq: c.seq,
            series_defs,
            metadata,
            samples,
            events: c.events.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::Sink;

    #[test]
    fn series_are_defined_once_per_stream() {
        let mut sink = Sink::new();
        sink.gauge("a", "A.", &[("x", "1")], 1.0);
        sink.counter("b_total", "B.", &[], 2.0);
        let c = Collection {
            seq: 1,
            t_ms: 5,
            families: Arc::new(sink.families.clone()),
            samples: sink.samples.clone(),
            events: vec![],
        };
        let mut enc = Encoder::new();
        let b1 = enc.encode(&c);
        assert_eq!(b1.series_defs.len(), 2);
        assert_eq!(b1.metadata.len(), 2);
        assert_eq!(b1.samples.len(), 2);
        let b2 = enc.encode(&c);
        assert!(b2.series_defs.is_empty() && b2.metadata.is_empty());
        assert_eq!(b2.samples[0].r#ref, b1.samples[0].r#ref);
        // A new stream defines everything again.
        let b3 = Encoder::new().encode(&c);
        assert_eq!(b3.series_defs.len(), 2);
    }
}
