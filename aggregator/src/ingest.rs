//! `Ingest.Stream`: one long-lived stream per agent. Frames are validated
//! before anything is applied; a bad frame gets an error frame naming what is
//! wrong and never disturbs other nodes' streams or data already stored.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use nodewatch_proto::blocks::{BlockDecoder, BlockError};
use nodewatch_proto::v1::ingest_server::Ingest;
use nodewatch_proto::v1::{
    agent_frame, aggregator_frame, Ack, AgentFrame, AggregatorFrame, Batch, ErrorCode, Event,
    Hello, MetricMetadata, Sample, SeriesDef, StreamError, Welcome,
};
use nodewatch_proto::NodeName;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::auth::require_node;
use crate::events::EventLog;
use crate::nodes::Nodes;
use crate::store::now_ms;
use crate::store::{FamilyMeta, FamilyType, Labels, SeriesId, Store};

/// How long an agent has to send Hello after the stream opens.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// Frames queued towards one agent; acks are tiny and the agent reads them
/// continuously, so a short queue suffices and bounds memory per stream.
const OUTBOUND_QUEUE: usize = 32;

/// Samples further ahead of the aggregator's clock are refused, as
/// Prometheus' head refuses out-of-bounds samples.
pub const MAX_FUTURE_MS: i64 = 10 * 60 * 1000;

/// Problems listed in one error frame at most; the rest are counted.
const MAX_PROBLEMS_LISTED: usize = 5;

pub struct IngestService {
    /// The one live stream of each node.
    pub live: LiveStreams,
    pub store: Arc<Store>,
    pub nodes: Arc<Nodes>,
    pub events: Arc<EventLog>,
    pub max_series_per_node: usize,
    pub max_samples_per_second: u64,
    /// Evaluates rule groups at once when events land.
    pub rules: Option<Arc<crate::rules::RuleManager>>,
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<AggregatorFrame, Status>> + Send>>;

/// One live stream per node: a new stream from a node replaces its older
/// one, which gets a fatal error frame and is closed. The newer wins, as a
/// Prometheus target's newest scrape does, because an agent that restarted
/// (or lost its connection without the aggregator noticing) must never be
/// locked out by its own half-dead stream; and a node opening many streams
/// holds one stream's state (symbol table, sample-block decoder) at a time.
/// Two agents running with one node's certificate replace each other, each
/// replacement counted in
/// `nodewatch_aggregator_frame_errors_total{kind="replaced"}`.
#[derive(Default)]
pub struct LiveStreams {
    next: std::sync::atomic::AtomicU64,
    by_node: std::sync::Mutex<HashMap<NodeName, (u64, Arc<tokio::sync::Notify>)>>,
}

impl LiveStreams {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<NodeName, (u64, Arc<tokio::sync::Notify>)>> {
        self.by_node
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a node's new stream, telling its older one to end; returns
    /// the stream's id and what tells it that it was replaced in turn.
    fn open(&self, node: &NodeName) -> (u64, Arc<tokio::sync::Notify>) {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let replaced = Arc::new(tokio::sync::Notify::new());
        if let Some((_, older)) = self
            .lock()
            .insert(node.clone(), (id, Arc::clone(&replaced)))
        {
            // notify_one keeps the wake-up even if the older stream is busy applying a batch.
            older.notify_one();
        }
        (id, replaced)
    }

    fn close(&self, node: &NodeName, id: u64) {
        let mut all = self.lock();
        if all.get(node).is_some_and(|(live, _)| *live == id) {
            all.remove(node);
        }
    }

    /// Nodes with a live stream.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Hands memory freed by a closed stream back to the system: glibc keeps
/// freed blocks in its arenas, so a stream's decoder state would otherwise
/// stay in the aggregator's RSS after the stream is gone.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; it
    // takes no pointers and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_memory() {}

// Returns the outbound stream's item type so call sites can send it as is.
#[allow(clippy::unnecessary_wraps)]
fn frame(f: aggregator_frame::Frame) -> Result<AggregatorFrame, Status> {
    Ok(AggregatorFrame { frame: Some(f) })
}

fn error_frame(
    code: ErrorCode,
    message: String,
    seq: u64,
    fatal: bool,
) -> Result<AggregatorFrame, Status> {
    frame(aggregator_frame::Frame::Error(StreamError {
        code: code as i32,
        message,
        seq,
        fatal,
    }))
}

fn valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Who owns a metric name a node may not send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    /// `ALERTS`, `ALERTS_FOR_STATE`, `up`, `scrape_*`.
    Prometheus,
    /// The aggregator's own metrics.
    Aggregator,
    /// What the aggregator's recording rules write.
    RecordingRule,
}

impl Owner {
    /// The `reason` label of `nodewatch_aggregator_reserved_names_refused_total`.
    fn as_str(self) -> &'static str {
        match self {
            Owner::Prometheus => "prometheus",
            Owner::Aggregator => "aggregator",
            Owner::RecordingRule => "recording_rule",
        }
    }

    /// As the error frame names the owner.
    fn said(self) -> &'static str {
        match self {
            Owner::Prometheus => "Prometheus",
            Owner::Aggregator | Owner::RecordingRule => "the aggregator",
        }
    }
}

/// Who owns `name`, if a node may not send series by that name: the name
/// belongs to Prometheus (`ALERTS`, `ALERTS_FOR_STATE`, `up`, `scrape_*`)
/// or to the aggregator (its own metrics and what its recording rules
/// write). With `honorLabels: true` such a series would reach Prometheus
/// beside the real one.
fn reserved(name: &str, rules: Option<&crate::rules::RuleManager>) -> Option<Owner> {
    if matches!(name, "ALERTS" | "ALERTS_FOR_STATE" | "up") || name.starts_with("scrape_") {
        Some(Owner::Prometheus)
    } else if name.starts_with("nodewatch_aggregator_") {
        Some(Owner::Aggregator)
    } else if rules.is_some_and(|r| r.records(name)) {
        Some(Owner::RecordingRule)
    } else {
        None
    }
}

fn family_type(t: i32) -> FamilyType {
    use nodewatch_proto::v1::MetricType as T;
    match T::try_from(t).unwrap_or(T::Unspecified) {
        T::Gauge => FamilyType::Gauge,
        T::Counter => FamilyType::Counter,
        T::Histogram => FamilyType::Histogram,
        T::Summary => FamilyType::Summary,
        T::Untyped | T::Unspecified => FamilyType::Untyped,
    }
}

fn kind_name(e: &Event) -> &'static str {
    use nodewatch_proto::v1::event::Kind;
    match &e.kind {
        Some(Kind::OomKill(_)) => "oom_kill",
        Some(Kind::ZpoolStateChange(_)) => "zpool_state_change",
        Some(Kind::LinkStateChange(_)) => "link_state_change",
        None => "unknown",
    }
}

/// State of one stream.
struct Session {
    node: NodeName,
    hello: Hello,
    /// The stream's symbol table: agent ref → store series.
    refs: HashMap<u64, SeriesId>,
    /// Highest seq seen on this stream, to catch seq going backwards.
    last_seq: u64,
    /// The stream's sample block state, in step with the agent's encoder.
    blocks: BlockDecoder,
}

/// Samples one batch's blocks may decode to, in multiples of the node's
/// series limit: a collection has each series once; more room is left for
/// blocks carrying several timestamps of a series.
const BLOCK_SAMPLES_PER_SERIES_LIMIT: usize = 4;

/// What is sent back for one frame: errors first, then the ack.
type Reply = Result<AggregatorFrame, Status>;

/// Why none of a batch is stored: found before anything of it is applied.
#[derive(Debug)]
enum Refused {
    /// `blocks[index]` did not decode. The stream's block state no longer
    /// matches the agent's encoder, so the stream ends.
    Block { index: usize, error: BlockError },
    /// Seqs start at 1.
    SeqZero,
    /// The seq is not after the last one seen on this stream.
    SeqBackwards { last: u64 },
    /// Stored already (the ack was lost, or a resend after a reconnect):
    /// acked again, nothing stored.
    Duplicate,
}

impl Refused {
    /// The error frame's code and text, and whether it ends the stream;
    /// `None` for a duplicate, which is acked.
    fn error(&self, seq: u64) -> Option<(ErrorCode, String, bool)> {
        match self {
            Refused::Block { index, error } => Some((
                ErrorCode::BlockDecode,
                format!(
                    "batch {seq}: blocks[{index}].{error}; nothing of this batch stored, stream closed (block state lost)"
                ),
                true,
            )),
            Refused::SeqZero => Some((
                ErrorCode::BadFrame,
                "batch seq must start at 1".into(),
                false,
            )),
            Refused::SeqBackwards { last } => Some((
                ErrorCode::BadFrame,
                format!(
                    "batch seq {seq} is not after the previous batch's seq {last} on this stream; batch ignored"
                ),
                false,
            )),
            Refused::Duplicate => None,
        }
    }

    /// The frame answering a refused batch `seq`.
    fn reply(&self, seq: u64) -> Reply {
        match self.error(seq) {
            Some((code, message, fatal)) => error_frame(code, message, seq, fatal),
            None => frame(aggregator_frame::Frame::Ack(Ack { seq })),
        }
    }

    /// Counts (and for a bad block, logs) a batch refused whole.
    fn count(&self, node: &NodeName, seq: u64) {
        match self {
            Refused::Block { .. } => {
                metrics::counter!("nodewatch_aggregator_frame_errors_total", "node" => node.to_string(), "kind" => "block_decode").increment(1);
                if let Some(suppressed) = crate::throttle::warnings().check("block_decode") {
                    let msg = self.error(seq).map(|(_, msg, _)| msg).unwrap_or_default();
                    warn!(%node, seq, error = %msg, suppressed, "Sample block refused.");
                }
            }
            Refused::SeqZero => {}
            Refused::SeqBackwards { .. } => {
                metrics::counter!("nodewatch_aggregator_frame_errors_total", "node" => node.to_string(), "kind" => "seq_backwards").increment(1);
            }
            Refused::Duplicate => {
                metrics::counter!("nodewatch_aggregator_duplicate_batches_total", "node" => node.to_string())
                    .increment(1);
            }
        }
    }
}

/// Why a series definition's labels are refused.
#[derive(Debug)]
enum LabelProblem {
    /// Not a label name, or one of the `__` names Prometheus keeps for itself.
    BadName(String),
    /// `node`, which the aggregator sets from the client certificate.
    Node,
    /// Given twice.
    Duplicate(String),
}

impl std::fmt::Display for LabelProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LabelProblem::BadName(name) => write!(f, "bad label name {name:?}"),
            LabelProblem::Node => f.write_str(
                "label \"node\" is reserved: the aggregator sets it from the certificate",
            ),
            LabelProblem::Duplicate(name) => write!(f, "duplicate label {name:?}"),
        }
    }
}

/// One thing wrong in a batch whose other contents are stored; named in the
/// batch's error frame.
#[derive(Debug)]
enum Problem {
    /// A metadata entry's metric name is not a metric name.
    MetadataName { name: String },
    /// `series_defs[index]`'s metric name is not a metric name.
    SeriesName {
        index: usize,
        r#ref: u64,
        name: String,
    },
    /// `series_defs[index]` uses a name someone else owns.
    Reserved {
        index: usize,
        r#ref: u64,
        name: String,
        owner: Owner,
    },
    /// `series_defs[index]`'s labels are refused.
    Labels {
        index: usize,
        r#ref: u64,
        name: String,
        why: LabelProblem,
    },
    /// `series_defs[index]` would be a series past the node's limit.
    SeriesLimit {
        index: usize,
        name: String,
        limit: usize,
    },
    /// The first sample too far ahead of the aggregator's clock.
    Future { t_ms: i64, r#ref: u64 },
    /// The first sample whose ref no series definition on this stream gave.
    UnknownRef { r#ref: u64 },
    /// How many samples had unknown refs, when more than one had.
    UnknownRefs { count: usize },
    /// The node is over its sample rate: the batch's samples are dropped.
    SampleRate { limit: u64, dropped: usize },
}

impl Problem {
    /// Whether this is a node's limit rather than a malformed frame.
    fn is_limit(&self) -> bool {
        matches!(
            self,
            Problem::SeriesLimit { .. } | Problem::SampleRate { .. }
        )
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::MetadataName { name } => write!(f, "metadata: bad metric name {name:?}"),
            Problem::SeriesName { index, r#ref, name } => {
                write!(f, "series_defs[{index}] (ref {ref}): bad metric name {name:?}")
            }
            Problem::Reserved {
                index,
                r#ref,
                name,
                owner,
            } => write!(
                f,
                "series_defs[{index}] (ref {ref}): name {name:?} is reserved to {}; refused",
                owner.said()
            ),
            Problem::Labels {
                index,
                r#ref,
                name,
                why,
            } => write!(f, "series_defs[{index}] (ref {ref}, {name}): {why}"),
            Problem::SeriesLimit { index, name, limit } => write!(
                f,
                "series_defs[{index}] ({name}): node is at its limit of {limit} series"
            ),
            Problem::Future { t_ms, r#ref } => write!(
                f,
                "samples: timestamp {t_ms} ms is more than 10 minutes in the future (ref {ref})"
            ),
            Problem::UnknownRef { r#ref } => write!(
                f,
                "samples: unknown series ref {ref} (not defined on this stream)"
            ),
            Problem::UnknownRefs { count } => write!(
                f,
                "samples: {count} samples with unknown series refs in all"
            ),
            Problem::SampleRate { limit, dropped } => write!(
                f,
                "node is over its limit of {limit} samples per second; {dropped} samples of this batch dropped"
            ),
        }
    }
}

/// A batch's problems: all counted, the first few kept to be named.
#[derive(Default)]
struct Problems {
    listed: Vec<Problem>,
    count: usize,
    /// Some problem is a limit: the error frame's code is `Limit`.
    limit: bool,
    /// Some series was refused for the node's series limit.
    series_limit: bool,
}

impl Problems {
    fn push(&mut self, p: Problem) {
        self.count += 1;
        self.limit |= p.is_limit();
        self.series_limit |= matches!(p, Problem::SeriesLimit { .. });
        if self.listed.len() < MAX_PROBLEMS_LISTED {
            self.listed.push(p);
        }
    }

    /// The error frame's text: `batch SEQ: ` and the problems listed.
    fn message(&self, seq: u64) -> String {
        let mut msg = format!("batch {seq}: ");
        for (i, p) in self.listed.iter().enumerate() {
            if i > 0 {
                msg.push_str("; ");
            }
            let _ = write!(msg, "{p}");
        }
        let more = self.count.saturating_sub(self.listed.len());
        if more > 0 {
            let _ = write!(msg, "; and {more} more");
        }
        msg
    }

    /// Counts and logs a batch's problems; the error frame naming them, if any.
    fn report(&self, node: &NodeName, seq: u64) -> Option<Reply> {
        if self.count == 0 {
            return None;
        }
        let kind = if self.limit { "limit" } else { "bad_frame" };
        metrics::counter!("nodewatch_aggregator_frame_errors_total", "node" => node.to_string(), "kind" => kind).increment(self.count as u64);
        if self.series_limit {
            metrics::counter!("nodewatch_aggregator_node_limit_hits_total", "node" => node.to_string(), "limit" => "series").increment(1);
        }
        let msg = self.message(seq);
        // Rate-limited: a node resending a bad batch must not fill the log.
        if let Some(suppressed) = crate::throttle::warnings().check("batch_refused") {
            warn!(%node, seq, error = %msg, suppressed, "Batch partly refused.");
        }
        let code = if self.limit {
            ErrorCode::Limit
        } else {
            ErrorCode::BadFrame
        };
        Some(error_frame(code, msg, seq, false))
    }
}

/// A series definition's labels with `__name__` and `node` added, sorted;
/// or, when some label is refused, why the last refused one was.
fn series_labels(def: &SeriesDef, node: &str) -> Result<Labels, LabelProblem> {
    let mut labels: Vec<(String, String)> = Vec::with_capacity(def.labels.len() + 2);
    let mut bad = None;
    for l in &def.labels {
        if !valid_label_name(&l.name) || l.name.starts_with("__") {
            bad = Some(LabelProblem::BadName(l.name.clone()));
        } else if l.name == "node" {
            bad = Some(LabelProblem::Node);
        } else if labels.iter().any(|(k, _)| *k == l.name) {
            bad = Some(LabelProblem::Duplicate(l.name.clone()));
        }
        labels.push((l.name.clone(), l.value.clone()));
    }
    if let Some(why) = bad {
        return Err(why);
    }
    labels.push(("__name__".into(), def.name.clone()));
    labels.push(("node".into(), node.to_string()));
    labels.sort_unstable();
    Ok(labels.into())
}

impl IngestService {
    /// Applies one batch: decode its blocks, check its seq, admit its
    /// series, resolve its samples, record. Returns the frames to send back
    /// (errors, then the ack).
    fn apply(&self, s: &mut Session, batch: Batch) -> Vec<Reply> {
        // Counted in the store (crate::liveness), not the recorder, so the
        // aggregator's own rules read it.
        self.nodes.received(&s.node, now_ms());
        let seq = batch.seq;
        let checked = self.decode_blocks(s, &batch).and_then(|decoded| {
            self.check_seq(s, seq)?;
            Ok(decoded)
        });
        match checked {
            Ok(decoded) => self.store_batch(s, batch, &decoded),
            Err(refused) => {
                refused.count(&s.node, seq);
                vec![refused.reply(seq)]
            }
        }
    }

    /// Stores what is valid in a batch whose blocks decoded and whose seq
    /// is new; the error frame naming the rest, then the ack.
    fn store_batch(&self, s: &mut Session, batch: Batch, decoded: &[Sample]) -> Vec<Reply> {
        let seq = batch.seq;
        let mut problems = Problems::default();
        self.admit_metadata(&batch.metadata, &mut problems);
        self.admit_series(s, &batch.series_defs, &mut problems);
        let samples = self.resolve_samples(s, &batch.samples, decoded, &mut problems);
        self.record(s, seq, &samples, batch.events);
        let mut out: Vec<Reply> = problems.report(&s.node, seq).into_iter().collect();
        // Ack even a partly refused batch: resending it would fail the same way,
        // and everything valid in it is stored.
        out.push(frame(aggregator_frame::Frame::Ack(Ack { seq })));
        out
    }

    /// Decodes the batch's sample blocks. Blocks come first, whatever
    /// happens to the batch next (a duplicate, a bad seq): each is encoded
    /// against the ones before it, so skipping one would put every later
    /// block out of step.
    fn decode_blocks(&self, s: &mut Session, batch: &Batch) -> Result<Vec<Sample>, Refused> {
        let mut decoded = Vec::new();
        let budget = self
            .max_series_per_node
            .saturating_mul(BLOCK_SAMPLES_PER_SERIES_LIMIT);
        for (index, block) in batch.blocks.iter().enumerate() {
            let left = budget.saturating_sub(decoded.len());
            s.blocks
                .decode(block, &mut decoded, left)
                .map_err(|error| Refused::Block { index, error })?;
        }
        Ok(decoded)
    }

    /// Checks that `seq` moves forward on this stream and is not stored yet.
    fn check_seq(&self, s: &mut Session, seq: u64) -> Result<(), Refused> {
        if seq == 0 {
            return Err(Refused::SeqZero);
        }
        if s.last_seq != 0 && seq <= s.last_seq {
            return Err(Refused::SeqBackwards { last: s.last_seq });
        }
        s.last_seq = seq;
        if seq <= self.nodes.cursor(&s.node, &s.hello) {
            return Err(Refused::Duplicate);
        }
        Ok(())
    }

    /// Sets the families' metadata. Metadata for reserved names is skipped
    /// without a word: their series are refused (and counted) on their own.
    fn admit_metadata(&self, metadata: &[MetricMetadata], problems: &mut Problems) {
        for meta in metadata {
            if reserved(&meta.name, self.rules.as_deref()).is_some() {
                continue;
            }
            if valid_metric_name(&meta.name) {
                self.store.set_family(
                    &meta.name,
                    FamilyMeta {
                        kind: family_type(meta.r#type),
                        help: meta.help.clone(),
                    },
                );
            } else {
                problems.push(Problem::MetadataName {
                    name: meta.name.clone(),
                });
            }
        }
    }

    /// Checks the series definitions, then gives each one the node may
    /// have its store series in the stream's symbol table. The node's series
    /// limit is applied before any series is created, and the store is
    /// locked once for the whole batch, not per series.
    fn admit_series(&self, s: &mut Session, defs: &[SeriesDef], problems: &mut Problems) {
        let wanted = self.wanted_series(s, defs, problems);
        if wanted.is_empty() {
            return;
        }
        let (at, labels): (Vec<usize>, Vec<Labels>) = wanted.into_iter().unzip();
        let resolved = self.store.resolve(labels);
        let existing: Vec<Option<SeriesId>> = resolved.iter().map(|(_, id)| *id).collect();
        let admitted = self
            .nodes
            .admit(&s.node, &existing, self.max_series_per_node);
        let mut refused = Vec::new();
        let (mut create, mut create_at) = (Vec::new(), Vec::new());
        for ((i, (labels, id)), ok) in at.into_iter().zip(resolved).zip(admitted) {
            match (ok, id) {
                (false, _) => refused.push(i),
                (true, Some(id)) => {
                    s.refs.insert(defs[i].r#ref, id);
                }
                (true, None) => {
                    create.push(labels);
                    create_at.push(i);
                }
            }
        }
        if !create.is_empty() {
            let ids = self.store.create(create);
            let added = self
                .nodes
                .add_created(&s.node, &ids, self.max_series_per_node);
            for ((i, id), ok) in create_at.into_iter().zip(ids).zip(added) {
                if ok {
                    s.refs.insert(defs[i].r#ref, id);
                } else {
                    refused.push(i);
                }
            }
        }
        refused.sort_unstable();
        for index in refused {
            problems.push(Problem::SeriesLimit {
                index,
                name: defs[index].name.clone(),
                limit: self.max_series_per_node,
            });
        }
    }

    /// The series definitions that are acceptable, by index, with their
    /// full label sets; the others are problems.
    fn wanted_series(
        &self,
        s: &Session,
        defs: &[SeriesDef],
        problems: &mut Problems,
    ) -> Vec<(usize, Labels)> {
        let mut wanted = Vec::with_capacity(defs.len());
        for (index, def) in defs.iter().enumerate() {
            let (r#ref, name) = (def.r#ref, def.name.clone());
            if !valid_metric_name(&def.name) {
                problems.push(Problem::SeriesName { index, r#ref, name });
                continue;
            }
            if let Some(owner) = reserved(&def.name, self.rules.as_deref()) {
                metrics::counter!("nodewatch_aggregator_reserved_names_refused_total", "node" => s.node.to_string(), "reason" => owner.as_str()).increment(1);
                problems.push(Problem::Reserved {
                    index,
                    r#ref,
                    name,
                    owner,
                });
                continue;
            }
            match series_labels(def, s.node.as_str()) {
                Ok(labels) => wanted.push((index, labels)),
                Err(why) => problems.push(Problem::Labels {
                    index,
                    r#ref,
                    name,
                    why,
                }),
            }
        }
        wanted
    }

    /// The batch's samples (plain, then decoded from blocks) as store
    /// series, leaving out those too far in the future or with unknown
    /// refs, and all of them when the node is over its sample rate.
    fn resolve_samples(
        &self,
        s: &Session,
        plain: &[Sample],
        decoded: &[Sample],
        problems: &mut Problems,
    ) -> Vec<(SeriesId, i64, f64)> {
        let mut samples = Vec::with_capacity(plain.len() + decoded.len());
        let mut unknown = 0usize;
        let mut future = 0usize;
        let newest_allowed = now_ms() + MAX_FUTURE_MS;
        for smp in plain.iter().chain(decoded) {
            if smp.t_ms > newest_allowed {
                // A clock far ahead would push the node's own history out of retention.
                future += 1;
                if future == 1 {
                    problems.push(Problem::Future {
                        t_ms: smp.t_ms,
                        r#ref: smp.r#ref,
                    });
                }
                continue;
            }
            if let Some(id) = s.refs.get(&smp.r#ref) {
                samples.push((*id, smp.t_ms, smp.value));
            } else {
                unknown += 1;
                if unknown == 1 {
                    problems.push(Problem::UnknownRef { r#ref: smp.r#ref });
                }
            }
        }
        if unknown > 1 {
            problems.push(Problem::UnknownRefs { count: unknown });
        }
        if !samples.is_empty()
            && !self.nodes.take_samples(
                &s.node,
                samples.len(),
                self.max_samples_per_second,
                now_ms(),
            )
        {
            metrics::counter!("nodewatch_aggregator_node_limit_hits_total", "node" => s.node.to_string(), "limit" => "samples_per_second").increment(1);
            problems.push(Problem::SampleRate {
                limit: self.max_samples_per_second,
                dropped: samples.len(),
            });
            samples.clear();
        }
        samples
    }

    /// Stores the samples and events and moves the node's cursor to `seq`.
    fn record(&self, s: &Session, seq: u64, samples: &[(SeriesId, i64, f64)], events: Vec<Event>) {
        let node = s.node.to_string();
        let appended = self.store.append(samples);
        metrics::counter!("nodewatch_aggregator_samples_total", "node" => node.clone())
            .increment(appended as u64);
        let now = now_ms();
        let had_events = !events.is_empty();
        for mut e in events {
            e.node.clone_from(&node);
            metrics::counter!("nodewatch_aggregator_events_total", "node" => node.clone(), "kind" => kind_name(&e)).increment(1);
            self.events.push(e);
        }
        self.nodes.stored(&s.node, &s.hello, seq, now);
        if had_events {
            if let Some(m) = &self.rules {
                m.trigger();
            }
        }
    }

    async fn run(
        self: Arc<Self>,
        node: NodeName,
        peer: String,
        mut inbound: Streaming<AgentFrame>,
        tx: mpsc::Sender<Reply>,
    ) {
        let Some(hello) = await_hello(&node, &mut inbound, &tx).await else {
            return;
        };
        if !hello.node.is_empty() && hello.node != node.as_str() {
            refuse_hello_identity(&node, &hello, &tx).await;
            return;
        }
        let (stream_id, replaced) = self.live.open(&node);
        let acked = self.nodes.connect(&node, &hello, peer.clone(), now_ms());
        metrics::gauge!("nodewatch_aggregator_nodes_connected").set(self.nodes.connected() as f64);
        zero_node_counters(&node);
        info!(%node, %peer, agent_version = %hello.agent_version, acked, "Agent connected.");
        let welcome = Welcome {
            node: node.to_string(),
            aggregator_version: nodewatch_proto::VERSION.into(),
            acked_seq: acked,
            sample_blocks: nodewatch_proto::blocks::VERSION,
        };
        let session = Session {
            node: node.clone(),
            hello,
            refs: HashMap::new(),
            last_seq: 0,
            // Decoder state inside the node's series limit.
            blocks: BlockDecoder::with_max_series(self.max_series_per_node),
        };
        if tx
            .send(frame(aggregator_frame::Frame::Welcome(welcome)))
            .await
            .is_ok()
        {
            // The session's state (symbol table, decoder) ends with this call.
            self.serve(session, &peer, &mut inbound, &tx, &replaced)
                .await;
        }
        self.live.close(&node, stream_id);
        release_memory();
        self.nodes.disconnect(&node);
        metrics::gauge!("nodewatch_aggregator_nodes_connected").set(self.nodes.connected() as f64);
        info!(%node, "Agent disconnected.");
    }

    /// Answers the stream's frames after Welcome until it ends, fails, is
    /// replaced, or a fatal error is sent.
    async fn serve(
        self: &Arc<Self>,
        mut session: Session,
        peer: &str,
        inbound: &mut Streaming<AgentFrame>,
        tx: &mpsc::Sender<Reply>,
        replaced: &tokio::sync::Notify,
    ) {
        let node = session.node.clone();
        loop {
            let msg = tokio::select! {
                m = inbound.next() => match m {
                    Some(m) => m,
                    None => break,
                },
                () = replaced.notified() => {
                    close_replaced(&node, peer, tx).await;
                    break;
                }
            };
            let replies = match msg {
                Ok(AgentFrame {
                    frame: Some(agent_frame::Frame::Batch(b)),
                }) => match self.apply_off_workers(session, b).await {
                    Some((s, r)) => {
                        session = s;
                        r
                    }
                    None => break,
                },
                Ok(AgentFrame {
                    frame: Some(agent_frame::Frame::Hello(_)),
                }) => vec![error_frame(
                    ErrorCode::BadFrame,
                    "Hello may only be the first frame; ignored".into(),
                    0,
                    false,
                )],
                Ok(AgentFrame { frame: None }) => vec![error_frame(
                    ErrorCode::BadFrame,
                    "empty frame (no Hello or Batch); ignored".into(),
                    0,
                    false,
                )],
                Err(status) => {
                    end_failed_stream(&node, &status, tx).await;
                    break;
                }
            };
            if send_replies(tx, replies).await {
                break;
            }
        }
    }

    /// Applies a batch on a blocking thread, as applying takes the store's
    /// write lock; `None` when that panicked and the stream must close.
    async fn apply_off_workers(
        self: &Arc<Self>,
        mut session: Session,
        batch: Batch,
    ) -> Option<(Session, Vec<Reply>)> {
        let this = Arc::clone(self);
        let node = session.node.clone();
        match tokio::task::spawn_blocking(move || {
            let r = this.apply(&mut session, batch);
            (session, r)
        })
        .await
        {
            Ok(done) => Some(done),
            Err(e) => {
                warn!(%node, error = %e, "Batch handling panicked; closing the stream.");
                None
            }
        }
    }
}

/// Waits for the stream's first frame, which must be Hello; on anything
/// else the stream ends (with an error frame or status where one helps).
async fn await_hello(
    node: &NodeName,
    inbound: &mut Streaming<AgentFrame>,
    tx: &mpsc::Sender<Reply>,
) -> Option<Hello> {
    match tokio::time::timeout(HELLO_TIMEOUT, inbound.next()).await {
        Ok(Some(Ok(AgentFrame {
            frame: Some(agent_frame::Frame::Hello(h)),
        }))) => Some(h),
        Ok(Some(Ok(_))) => {
            close_with(tx, "the first frame must be Hello").await;
            None
        }
        Ok(Some(Err(status))) => {
            if let Some(suppressed) = crate::throttle::warnings().check("before_hello") {
                warn!(%node, error = %status, suppressed, "Stream failed before Hello.");
            }
            None
        }
        Ok(None) => None,
        Err(_) => {
            let _ = tx
                .send(Err(Status::deadline_exceeded("no Hello within 30 s")))
                .await;
            None
        }
    }
}

/// Refuses a Hello that names another node than the client certificate.
async fn refuse_hello_identity(node: &NodeName, hello: &Hello, tx: &mpsc::Sender<Reply>) {
    metrics::counter!("nodewatch_aggregator_denied_total", "rpc" => "hello_identity").increment(1);
    nodewatch_proto::tls::count_auth_failure(
        nodewatch_proto::tls::AuthFailure::HelloIdentity.as_str(),
    );
    let msg = format!(
        "Hello names node {:?} but the client certificate is for node {:?}; refused",
        hello.node,
        node.as_str()
    );
    if let Some(suppressed) = crate::throttle::warnings().check("hello_identity") {
        warn!(%node, claimed = %hello.node, reason = "hello_identity", suppressed, "Hello names another node; stream refused.");
    }
    let _ = tx
        .send(error_frame(ErrorCode::Identity, msg.clone(), 0, true))
        .await;
    let _ = tx.send(Err(Status::permission_denied(msg))).await;
}

/// A node's trouble counters exist at 0 from its first stream on, so an
/// alert on their increase sees the first error.
fn zero_node_counters(node: &NodeName) {
    for kind in [
        "decode",
        "bad_frame",
        "limit",
        "block_decode",
        "seq_backwards",
        "replaced",
    ] {
        metrics::counter!("nodewatch_aggregator_frame_errors_total", "node" => node.to_string(), "kind" => kind).increment(0);
    }
    for owner in [Owner::Prometheus, Owner::Aggregator, Owner::RecordingRule] {
        metrics::counter!("nodewatch_aggregator_reserved_names_refused_total", "node" => node.to_string(), "reason" => owner.as_str()).increment(0);
    }
    for limit in ["frame_bytes", "series", "samples_per_second"] {
        metrics::counter!("nodewatch_aggregator_node_limit_hits_total", "node" => node.to_string(), "limit" => limit).increment(0);
    }
}

/// Ends a stream that a newer one from the same node replaced.
async fn close_replaced(node: &NodeName, peer: &str, tx: &mpsc::Sender<Reply>) {
    metrics::counter!("nodewatch_aggregator_frame_errors_total", "node" => node.to_string(), "kind" => "replaced").increment(1);
    if let Some(suppressed) = crate::throttle::warnings().check("stream_replaced") {
        warn!(%node, %peer, suppressed, "Stream replaced by a newer one from the same node; closed.");
    }
    close_with(
        tx,
        "replaced by a newer stream from this node; closed (one live stream per node)",
    )
    .await;
}

/// Sends the fatal error frame that ends a stream.
async fn close_with(tx: &mpsc::Sender<Reply>, message: &str) {
    let _ = tx
        .send(error_frame(ErrorCode::BadFrame, message.into(), 0, true))
        .await;
}

/// Why an inbound frame failed to arrive, as far as the node's counters care.
#[derive(Debug, PartialEq, Eq)]
enum StreamFailure {
    /// Over the gRPC message size limit: a node limit hit (`frame_bytes`).
    FrameTooLarge,
    /// Malformed, cut off, or the connection failed.
    Other,
}

impl StreamFailure {
    /// tonic reports a message over the size limit only as a status with
    /// `OutOfRange` and the words "message length too large"; this is the
    /// one place that reads them.
    fn of(status: &Status) -> Self {
        if status.message().contains("too large") {
            StreamFailure::FrameTooLarge
        } else {
            StreamFailure::Other
        }
    }
}

/// Counts and logs a stream that failed while reading a frame (decoding
/// errors, oversized or malformed frames, end up here) and ends it with the
/// reason.
async fn end_failed_stream(node: &NodeName, status: &Status, tx: &mpsc::Sender<Reply>) {
    metrics::counter!("nodewatch_aggregator_frame_errors_total", "node" => node.to_string(), "kind" => "decode").increment(1);
    if StreamFailure::of(status) == StreamFailure::FrameTooLarge {
        metrics::counter!("nodewatch_aggregator_node_limit_hits_total", "node" => node.to_string(), "limit" => "frame_bytes").increment(1);
    }
    if let Some(suppressed) = crate::throttle::warnings().check("stream_error") {
        warn!(%node, error = %status, suppressed, "Stream ended with an error.");
    }
    let msg = format!("frame refused: {}", status.message());
    let _ = tx.send(Err(Status::new(status.code(), msg))).await;
}

/// Sends the replies to one frame; whether one of them was fatal, which
/// ends the stream.
async fn send_replies(tx: &mpsc::Sender<Reply>, replies: Vec<Reply>) -> bool {
    let fatal = replies.iter().any(|r| {
        matches!(r, Ok(AggregatorFrame {
            frame: Some(aggregator_frame::Frame::Error(e)),
        }) if e.fatal)
    });
    for r in replies {
        if tx.send(r).await.is_err() {
            break;
        }
    }
    fatal
}

/// The tonic service; `Arc` so each stream's task can hold it.
pub struct IngestHandle(pub Arc<IngestService>);

#[tonic::async_trait]
impl Ingest for IngestHandle {
    type StreamStream = FrameStream;

    async fn stream(
        &self,
        req: Request<Streaming<AgentFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        let (node, peer) = require_node(&req)?;
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        tokio::spawn(Arc::clone(&self.0).run(node, peer.remote_addr.to_string(), inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodewatch_proto::v1::{Label, MetricMetadata, Sample, SeriesDef};
    use prost::Message;

    /// `SplitMix64`: a tiny deterministic generator for the fuzz loop.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn service() -> (IngestService, Session) {
        let svc = IngestService {
            live: LiveStreams::default(),
            store: Store::new(3_600_000),
            nodes: Arc::new(Nodes::default()),
            events: Arc::new(EventLog::default()),
            max_series_per_node: 64,
            max_samples_per_second: 1_000_000,
            rules: None,
        };
        let node = NodeName::new("fuzz").unwrap();
        let s = Session {
            node,
            hello: Hello::default(),
            refs: HashMap::new(),
            last_seq: 0,
            blocks: BlockDecoder::new(),
        };
        (svc, s)
    }

    /// A timestamp near now, so samples are inside the accepted window.
    fn t0() -> i64 {
        static T0: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
        *T0.get_or_init(now_ms)
    }

    fn valid_batch(seq: u64) -> Batch {
        Batch {
            seq,
            series_defs: vec![SeriesDef {
                r#ref: 1,
                name: "m".into(),
                labels: vec![Label {
                    name: "a".into(),
                    value: "b".into(),
                }],
            }],
            metadata: vec![MetricMetadata {
                name: "m".into(),
                r#type: 1,
                help: "h".into(),
            }],
            samples: vec![Sample {
                r#ref: 1,
                t_ms: t0() + seq as i64,
                value: 1.5,
            }],
            events: vec![Event::default()],
            blocks: Vec::new(),
        }
    }

    /// A node defining more series than its limit: the ones past it are
    /// refused, named in the error, and never created in the store; the
    /// ones it has keep working, including when defined again.
    #[test]
    fn series_past_the_limit_are_refused_before_they_exist() {
        let (svc, mut s) = service();
        let def = |i: u64| SeriesDef {
            r#ref: i,
            name: "m".into(),
            labels: vec![Label {
                name: "i".into(),
                value: i.to_string(),
            }],
        };
        let mut batch = valid_batch(1);
        batch.series_defs = (1..=100).map(def).collect();
        let replies = svc.apply(&mut s, batch);
        let err = error_of(&replies).expect("a limit error");
        assert_eq!(err.code, ErrorCode::Limit as i32, "{err:?}");
        assert!(
            err.message
                .contains("series_defs[64] (m): node is at its limit of 64 series"),
            "{}",
            err.message
        );
        assert_eq!(svc.store.read().len(), 64);
        assert_eq!(s.refs.len(), 64);
        // Defined again on a new stream (a reconnect): the same 64, no more.
        s.refs.clear();
        s.last_seq = 0;
        let mut again = valid_batch(2);
        again.series_defs = (1..=100).map(def).collect();
        svc.apply(&mut s, again);
        assert_eq!(svc.store.read().len(), 64);
        assert_eq!(s.refs.len(), 64);
        assert!((1..=64).all(|r| s.refs.contains_key(&r)));
    }

    fn stored(svc: &IngestService, name: &str) -> Vec<(i64, f64)> {
        let inner = svc.store.read();
        inner
            .all()
            .filter(|x| x.name() == name)
            .flat_map(|x| x.samples().collect::<Vec<_>>())
            .collect()
    }

    fn error_of(replies: &[Result<AggregatorFrame, Status>]) -> Option<&StreamError> {
        replies.iter().find_map(|r| match r {
            Ok(AggregatorFrame {
                frame: Some(aggregator_frame::Frame::Error(e)),
            }) => Some(e),
            _ => None,
        })
    }

    /// Blocks are decoded even in batches dropped as duplicates (the
    /// encoder moved on), and a block that does not decode is a fatal error
    /// naming the batch and field, with what was stored before kept.
    #[test]
    fn sample_blocks_stay_in_step_and_fail_clearly() {
        use nodewatch_proto::blocks::BlockEncoder;
        let (svc, mut s) = service();
        let mut enc = BlockEncoder::new();
        let mut block_batch = |seq: u64, v: f64| {
            let samples = [Sample {
                r#ref: 1,
                t_ms: t0() + seq as i64,
                value: v,
            }];
            Batch {
                seq,
                series_defs: valid_batch(seq).series_defs,
                blocks: vec![enc.encode(&samples).unwrap()],
                ..Batch::default()
            }
        };
        let b1 = block_batch(1, 10.0);
        let b2 = block_batch(2, 12.5);
        let b3 = block_batch(3, 12.5);
        assert!(error_of(&svc.apply(&mut s, b1)).is_none());
        // Batch 2 is stored already (here without samples; say its ack was
        // lost and the agent resends it): dropped as a duplicate, yet its
        // block sets the state batch 3 is encoded against.
        let mut dup = b2.clone();
        dup.blocks.clear();
        assert!(error_of(&svc.apply(&mut s, dup)).is_none());
        s.last_seq = 1;
        assert!(error_of(&svc.apply(&mut s, b2)).is_none());
        assert!(error_of(&svc.apply(&mut s, b3)).is_none());
        // Batch 3's value is "unchanged" from the duplicate's.
        assert_eq!(stored(&svc, "m"), vec![(t0() + 1, 10.0), (t0() + 3, 12.5)]);

        let mut bad = block_batch(4, 99.0);
        bad.blocks[0].values.push(7);
        let replies = svc.apply(&mut s, bad);
        let e = error_of(&replies).unwrap();
        assert!(e.fatal);
        assert_eq!(e.seq, 4);
        assert_eq!(e.code, ErrorCode::BlockDecode as i32);
        assert!(
            e.message.contains("batch 4: blocks[0].values"),
            "{}",
            e.message
        );
        assert!(!replies.iter().any(|r| matches!(
            r,
            Ok(AggregatorFrame {
                frame: Some(aggregator_frame::Frame::Ack(_))
            })
        )));
        assert_eq!(stored(&svc, "m").len(), 2);
    }

    /// Mutated encodings of valid frames: decoding may fail, applying what
    /// decodes may produce error frames, but nothing panics and the data
    /// stored by the first valid batch stays.
    #[test]
    fn fuzzed_frames_never_panic_or_lose_stored_data() {
        let (svc, mut s) = service();
        assert!(svc.apply(&mut s, valid_batch(1)).iter().any(|r| matches!(
            r,
            Ok(AggregatorFrame {
                frame: Some(aggregator_frame::Frame::Ack(_))
            })
        )));
        let seed = AgentFrame {
            frame: Some(agent_frame::Frame::Batch(valid_batch(2))),
        }
        .encode_to_vec();
        let mut rng = Rng(42);
        for _ in 0..20_000 {
            let mut bytes = seed.clone();
            for _ in 0..=rng.below(4) {
                if bytes.is_empty() {
                    break;
                }
                match rng.below(4) {
                    0 => {
                        let i = rng.below(bytes.len());
                        bytes[i] ^= 1 << rng.below(8);
                    }
                    1 => bytes.truncate(rng.below(bytes.len())),
                    2 => {
                        let i = rng.below(bytes.len() + 1);
                        bytes.insert(i, rng.next() as u8);
                    }
                    _ => {
                        let i = rng.below(bytes.len());
                        bytes[i] = 0xff;
                    }
                }
            }
            if let Ok(AgentFrame {
                frame: Some(agent_frame::Frame::Batch(mut b)),
            }) = AgentFrame::decode(bytes.as_slice())
            {
                // Keep seqs moving so most batches get past the seq checks and into the body.
                if rng.below(2) == 0 {
                    b.seq = s.last_seq + 1;
                }
                let _ = svc.apply(&mut s, b);
            }
        }
        let inner = svc.store.read();
        let id = inner
            .all()
            .find(|x| x.name() == "m")
            .map(|x| x.samples().next());
        assert_eq!(id, Some(Some((t0() + 1, 1.5))));
        assert!(
            svc.nodes.series_count(&s.node) <= 64,
            "series limit not enforced"
        );
    }

    /// The words of every problem, as agents and logs have always read them.
    #[test]
    fn problems_read_as_agents_know_them() {
        let mut p = Problems::default();
        for problem in [
            Problem::MetadataName { name: "1m".into() },
            Problem::SeriesName {
                index: 0,
                r#ref: 7,
                name: "1m".into(),
            },
            Problem::Reserved {
                index: 1,
                r#ref: 8,
                name: "up".into(),
                owner: Owner::Prometheus,
            },
            Problem::Reserved {
                index: 2,
                r#ref: 9,
                name: "x".into(),
                owner: Owner::RecordingRule,
            },
            Problem::Labels {
                index: 3,
                r#ref: 10,
                name: "m".into(),
                why: LabelProblem::Node,
            },
            Problem::SeriesLimit {
                index: 4,
                name: "m".into(),
                limit: 64,
            },
        ] {
            p.push(problem);
        }
        assert!(p.limit && p.series_limit);
        assert_eq!(
            p.message(3),
            "batch 3: metadata: bad metric name \"1m\"; \
             series_defs[0] (ref 7): bad metric name \"1m\"; \
             series_defs[1] (ref 8): name \"up\" is reserved to Prometheus; refused; \
             series_defs[2] (ref 9): name \"x\" is reserved to the aggregator; refused; \
             series_defs[3] (ref 10, m): label \"node\" is reserved: the aggregator sets it from the certificate; \
             and 1 more"
        );
        let mut q = Problems::default();
        for problem in [
            Problem::Labels {
                index: 0,
                r#ref: 1,
                name: "m".into(),
                why: LabelProblem::BadName("limit".into()),
            },
            Problem::Labels {
                index: 1,
                r#ref: 2,
                name: "m".into(),
                why: LabelProblem::Duplicate("a".into()),
            },
            Problem::Future { t_ms: 5, r#ref: 1 },
            Problem::UnknownRef { r#ref: 3 },
            Problem::UnknownRefs { count: 2 },
        ] {
            q.push(problem);
        }
        // A label named "limit" is no limit hit.
        assert!(!q.limit && !q.series_limit);
        assert_eq!(
            q.message(4),
            "batch 4: series_defs[0] (ref 1, m): bad label name \"limit\"; \
             series_defs[1] (ref 2, m): duplicate label \"a\"; \
             samples: timestamp 5 ms is more than 10 minutes in the future (ref 1); \
             samples: unknown series ref 3 (not defined on this stream); \
             samples: 2 samples with unknown series refs in all"
        );
        let rate = Problem::SampleRate {
            limit: 10,
            dropped: 20,
        };
        assert!(rate.is_limit());
        assert_eq!(
            rate.to_string(),
            "node is over its limit of 10 samples per second; 20 samples of this batch dropped"
        );
    }

    #[test]
    fn names() {
        assert!(valid_metric_name("node_cpu_seconds_total"));
        assert!(valid_metric_name("a:b"));
        assert!(!valid_metric_name("1abc"));
        assert!(!valid_metric_name(""));
        assert!(valid_label_name("le"));
        assert!(!valid_label_name("a-b"));
    }
}
