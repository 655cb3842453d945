//! Collections (one run of every collector, or a burst of events) and their
//! encoding into wire batches with a per-stream symbol table: a series is
//! defined once per stream (`SeriesDef`), then its samples carry only a ref,
//! and to an aggregator that reads them, go as one compact `SampleBlock`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use nodewatch_proto::blocks::BlockEncoder;
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
    /// Series fingerprint → (ref, index into `keys`); collisions are
    /// resolved by comparing the full key, so a lookup allocates nothing.
    refs: HashMap<u64, Vec<(u64, usize)>>,
    keys: Vec<(String, Vec<(String, String)>)>,
    families_sent: HashSet<String>,
    next_ref: u64,
    /// Set when the aggregator reads sample blocks.
    blocks: Option<BlockEncoder>,
}

fn fingerprint(name: &str, labels: &[(String, String)]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    labels.hash(&mut h);
    h.finish()
}

impl Encoder {
    /// An encoder that sends plain samples.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// An encoder that sends sample blocks.
    #[must_use]
    pub fn compact() -> Self {
        Self {
            blocks: Some(BlockEncoder::new()),
            ..Self::default()
        }
    }

    /// Series defined on this stream so far.
    #[must_use]
    pub fn series(&self) -> usize {
        self.keys.len()
    }

    fn lookup(&self, fp: u64, s: &Sample) -> Option<u64> {
        self.refs.get(&fp)?.iter().find_map(|(r, i)| {
            let (n, l) = self.keys.get(*i)?;
            (*n == s.name && *l == s.labels).then_some(*r)
        })
    }

    /// Encodes a collection as a batch.
    pub fn encode(&mut self, c: &Collection) -> Batch {
        let mut series_defs = Vec::new();
        let mut metadata = Vec::new();
        let mut samples = Vec::with_capacity(c.samples.len());
        for s in &c.samples {
            // Look up without allocating; allocate the key only for a new series.
            let fp = fingerprint(&s.name, &s.labels);
            let r = if let Some(r) = self.lookup(fp, s) {
                r
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
                self.refs.entry(fp).or_default().push((r, self.keys.len()));
                self.keys.push((s.name.clone(), s.labels.clone()));
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
        let mut blocks = Vec::new();
        if let (Some(enc), false) = (&mut self.blocks, samples.is_empty()) {
            match enc.encode(&samples) {
                Ok(b) => {
                    blocks.push(b);
                    samples.clear();
                }
                // Past a block limit: these go plainly, the encoder is unchanged.
                Err(e) => tracing::debug!(seq = c.seq, error = %e, "Samples sent without a block."),
            }
        }
        Batch {
            seq: c.seq,
            series_defs,
            metadata,
            samples,
            events: c.events.clone(),
            blocks,
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

    #[test]
    fn compact_encoder_sends_one_block_per_collection() {
        use nodewatch_proto::blocks::BlockDecoder;
        let mut sink = Sink::new();
        sink.gauge(
            "a",
            "A.",
            &[("x", "1")],
            f64::from_bits(0x7ff0_0000_0000_0002),
        );
        sink.counter("b_total", "B.", &[], 2.0);
        let mut c = Collection {
            seq: 1,
            t_ms: 5,
            families: Arc::new(sink.families.clone()),
            samples: sink.samples.clone(),
            events: vec![],
        };
        let mut enc = Encoder::compact();
        let mut dec = BlockDecoder::new();
        for seq in 1..4 {
            c.seq = seq;
            c.samples[1].value += 1.0;
            let b = enc.encode(&c);
            assert!(b.samples.is_empty());
            assert_eq!(b.blocks.len(), 1);
            let mut out = Vec::new();
            dec.decode(&b.blocks[0], &mut out, 10).unwrap();
            let got: Vec<(u64, i64, u64)> = out
                .iter()
                .map(|s| (s.r#ref, s.t_ms, s.value.to_bits()))
                .collect();
            assert_eq!(
                got,
                vec![
                    (1, 5, 0x7ff0_0000_0000_0002),
                    (2, 5, (2.0 + seq as f64).to_bits())
                ]
            );
        }
    }
}
