//! `testseq`: a deterministic collector for delivery tests, off by default
//! (`collectors: {testseq: true}`).
//!
//! Real counters move by unknown amounts, so a test cannot tell from them
//! whether a sample was lost or stored twice. This one can:
//! `nodewatch_testseq_total` is 1 at the first collection of the process and
//! grows by exactly 1 per collection, so over any stored range
//! `count == max - min + 1` holds exactly when nothing is missing or doubled.
//! Every [`EVENT_EVERY`] collections it also emits one event
//! (`LinkStateChange{device: "testseq", to: "<n>"}`, n = 1, 2, …), so event
//! delivery can be checked the same way.
//!
//! `NODEWATCH_TESTSEQ_SERIES=N` adds N padding gauges per collection
//! (`nodewatch_testseq_padding{i="0".."N-1"}`, value = the counter), for
//! tests that need to fill the spool quickly.

use nodewatch_proto::v1::{event, LinkStateChange};

use crate::collector::{CollectError, Collector, CollectorSpec, Paths, Sink, Unavailable};

pub const SPEC: CollectorSpec = CollectorSpec {
    name: "testseq",
    default_enabled: false,
    build,
};

/// One test event per this many collections.
pub const EVENT_EVERY: u64 = 10;

/// Upper bound for the padding series, so a typo cannot make the agent
/// allocate without end.
const MAX_PADDING: usize = 100_000;

pub fn build(_paths: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
    let padding = std::env::var("NODEWATCH_TESTSEQ_SERIES")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_PADDING);
    Ok(Box::new(TestSeqCollector::new(padding)))
}

pub struct TestSeqCollector {
    n: u64,
    padding: Vec<String>,
}

impl TestSeqCollector {
    #[must_use]
    pub fn new(padding: usize) -> Self {
        Self {
            n: 0,
            padding: (0..padding).map(|i| i.to_string()).collect(),
        }
    }
}

impl Collector for TestSeqCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        self.n += 1;
        let n = self.n;
        sink.counter(
            "nodewatch_testseq_total",
            "Collections of the test collector in this process: grows by exactly 1 each time.",
            &[],
            n as f64,
        );
        for i in &self.padding {
            sink.gauge(
                "nodewatch_testseq_padding",
                "Padding series of the test collector (NODEWATCH_TESTSEQ_SERIES).",
                &[("i", i)],
                n as f64,
            );
        }
        if n.is_multiple_of(EVENT_EVERY) {
            let k = n / EVENT_EVERY;
            sink.event(event::Kind::LinkStateChange(LinkStateChange {
                device: "testseq".into(),
                from: (k - 1).to_string(),
                to: k.to_string(),
            }));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_one_and_emits_an_event_every_n() {
        let mut c = TestSeqCollector::new(2);
        let mut events = 0;
        for want in 1..=25u64 {
            let mut sink = Sink::new();
            c.collect(&mut sink).unwrap();
            let text = sink.render_text();
            assert!(
                text.contains(&format!("nodewatch_testseq_total {want}")),
                "{text}"
            );
            assert!(
                text.contains("nodewatch_testseq_padding{i=\"1\"}"),
                "{text}"
            );
            events += sink.events.len();
        }
        assert_eq!(events, 2);
    }
}
