//! `Ingest.Stream`: one long-lived stream per agent. Frames are validated
//! before anything is applied; a bad frame gets an error frame naming what is
//! wrong and never disturbs other nodes' streams or data already stored.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use nodewatch_proto::blocks::BlockDecoder;
use nodewatch_proto::v1::ingest_server::Ingest;
use nodewatch_proto::v1::{
    agent_frame, aggregator_frame, Ack, AgentFrame, AggregatorFrame, Batch, ErrorCode, Event,
    Hello, StreamError, Welcome,
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

/// Why a node may not send series named `name`, if it may not: the name
/// belongs to Prometheus (`ALERTS`, `ALERTS_FOR_STATE`, `up`, `scrape_*`)
/// or to the aggregator (its own metrics and what its recording rules
/// write). With `honorLabels: true` such a series would reach Prometheus
/// beside the real one.
fn reserved(name: &str, rules: Option<&crate::rules::RuleManager>) -> Option<&'static str> {
    if matches!(name, "ALERTS" | "ALERTS_FOR_STATE" | "up") || name.starts_with("scrape_") {
        Some("prometheus")
    } else if name.starts_with("nodewatch_aggregator_") {
        Some("aggregator")
    } else if rules.is_some_and(|r| r.records(name)) {
        Some("recording_rule")
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

impl IngestService {
    /// Applies one batch. Returns the frames to send back (errors, then the ack).
    fn apply(&self, s: &mut Session, batch: Batch) -> Vec<Result<AggregatorFrame, Status>> {
        let node = s.node.as_str().to_string();
        // Counted in the store (crate::liveness), not the recorder, so the
        // aggregator's own rules read it.
        self.nodes.received(&s.node, now_ms());
        let mut out = Vec::new();
        let seq = batch.seq;
        // Blocks first, whatever happens to the batch next (a duplicate, a
        // bad seq): each is encoded against the ones before it, so skipping
        // one would put every later block out of step.
        let mut decoded = Vec::new();
        let budget = self
            .max_series_per_node
            .saturating_mul(BLOCK_SAMPLES_PER_SERIES_LIMIT);
        for (i, block) in batch.blocks.iter().enumerate() {
            let left = budget.saturating_sub(decoded.len());
            if let Err(e) = s.blocks.decode(block, &mut decoded, left) {
                metrics::counter!("nodewatch_aggregator_frame_errors_total", "node" => node.clone(), "kind" => "block_decode").increment(1);
                let msg = format!(
                    "batch {seq}: blocks[{i}].{e}; nothing of this batch stored, stream closed (block state lost)"
                );
                if let Some(suppressed) = crate::throttle::warnings().check("block_decode") {
                    warn!(node = %s.node, seq, error = %msg, suppressed, "Sample block refused.");
                }
                return vec![error_frame(ErrorCode::BlockDecode, msg, seq, true)];
            }
        }
        if seq == 0 {
            return vec![error_frame(
                ErrorCode::BadFrame,
                "batch seq must start at 1".into(),
                seq,
                false,
            )];
        }
        if s.last_seq != 0 && seq <= s.last_seq {
            metrics::counter!("nodewatch_aggregator_frame_errors_total", "node" => node.clone(), "kind" => "seq_backwards").increment(1);
            return vec![error_frame(
                ErrorCode::BadFrame,
                format!("batch seq {seq} is not after the previous batch's seq {} on this stream; batch ignored", s.last_seq),
                seq,
                false,
            )];
        }
        s.last_seq = seq;
        let cursor = self.nodes.cursor(&s.node, &s.hello);
        if seq <= cursor {
            // Already stored (the ack was lost, or a resend after reconnect): ack again, store nothing.
            metrics::counter!("nodewatch_aggregator_duplicate_batches_total", "node" => node)
                .increment(1);
            return vec![frame(aggregator_frame::Frame::Ack(Ack { seq }))];
        }

        let mut problems: Vec<String> = Vec::new();
        let mut problem_count = 0usize;
        let mut problem = |msg: String| {
            problem_count += 1;
            if problems.len() < MAX_PROBLEMS_LISTED {
                problems.push(msg);
            }
        };
        let mut limit_hit = false;
        for meta in &batch.metadata {
            if reserved(&meta.name, self.rules.as_deref()).is_some() {
                // Refused (and counted) with its series below.
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
                problem(format!("metadata: bad metric name {:?}", meta.name));
            }
        }
        let mut wanted: Vec<(usize, Labels)> = Vec::with_capacity(batch.series_defs.len());
        for (i, def) in batch.series_defs.iter().enumerate() {
            if !valid_metric_name(&def.name) {
                problem(format!(
                    "series_defs[{i}] (ref {}): bad metric name {:?}",
                    def.r#ref, def.name
                ));
                continue;
            }
            if let Some(owner) = reserved(&def.name, self.rules.as_deref()) {
                metrics::counter!("nodewatch_aggregator_reserved_names_refused_total", "node" => node.clone(), "reason" => owner).increment(1);
                problem(format!(
                    "series_defs[{i}] (ref {}): name {:?} is reserved to {}; refused",
                    def.r#ref,
                    def.name,
                    if owner == "prometheus" {
                        "Prometheus"
                    } else {
                        "the aggregator"
                    }
                ));
                continue;
            }
            let mut labels: Vec<(String, String)> = Vec::with_capacity(def.labels.len() + 2);
            let mut bad = None;
            for l in &def.labels {
                if !valid_label_name(&l.name) || l.name.starts_with("__") {
                    bad = Some(format!("bad label name {:?}", l.name));
                } else if l.name == "node" {
                    bad = Some(
                        "label \"node\" is reserved: the aggregator sets it from the certificate"
                            .to_string(),
                    );
                } else if labels.iter().any(|(k, _)| *k == l.name) {
                    bad = Some(format!("duplicate label {:?}", l.name));
                }
                labels.push((l.name.clone(), l.value.clone()));
            }
            if let Some(why) = bad {
                problem(format!(
                    "series_defs[{i}] (ref {}, {}): {why}",
                    def.r#ref, def.name
                ));
                continue;
            }
            labels.push(("__name__".into(), def.name.clone()));
            labels.push(("node".into(), node.clone()));
            labels.sort_unstable();
            wanted.push((i, labels.into()));
        }
        // The node's series limit is applied before any series is created,
        // and the store is locked once for the whole batch, not per series.
        if !wanted.is_empty() {
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
                        s.refs.insert(batch.series_defs[i].r#ref, id);
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
                        s.refs.insert(batch.series_defs[i].r#ref, id);
                    } else {
                        refused.push(i);
                    }
                }
            }
            refused.sort_unstable();
            for i in refused {
                limit_hit = true;
                problem(format!(
                    "series_defs[{i}] ({}): node is at its limit of {} series",
                    batch.series_defs[i].name, self.max_series_per_node
                ));
            }
        }
        let mut samples = Vec::with_capacity(batch.samples.len() + decoded.len());
        let mut unknown = 0usize;
        let mut future = 0usize;
        let newest_allowed = now_ms() + MAX_FUTURE_MS;
        for smp in batch.samples.iter().chain(&decoded) {
            if smp.t_ms > newest_allowed {
                // A clock far ahead would push the node's own history out of retention.
                future += 1;
                if future == 1 {
                    problem(format!(
                        "samples: timestamp {} ms is more than 10 minutes in the future (ref {})",
                        smp.t_ms, smp.r#ref
                    ));
                }
                continue;
            }
            if let Some(id) = s.refs.get(&smp.r#ref) {
                samples.push((*id, smp.t_ms, smp.value));
            } else {
                unknown += 1;
                if unknown == 1 {
                    problem(format!(
                        "samples: unknown series ref {} (not defined on this stream)",
                        smp.r#ref
                    ));
                }
            }
        }
        if unknown > 1 {
            problem(format!(
                "samples: {unknown} samples with unknown series refs in all"
            ));
        }
        if !samples.is_empty()
            && !self.nodes.take_samples(
                &s.node,
                samples.len(),
                self.max_samples_per_second,
                now_ms(),
            )
        {
            limit_hit = true;
            metrics::counter!("nodewatch_aggregator_node_limit_hits_total", "node" => node.clone(), "limit" => "samples_per_second").increment(1);
            problem(format!(
                "node is over its limit of {} samples per second; {} samples of this batch dropped",
                self.max_samples_per_second,
                samples.len()
            ));
            samples.clear();
        }
        let appended = self.store.append(&samples);
        metrics::counter!("nodewatch_aggregator_samples_total", "node" => node.clone())
            .increment(appended as u64);
        let now = now_ms();
        let had_events = !batch.events.is_empty();
        for mut e in batch.events {
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
        if !problems.is_empty() {
            let kind = if limit_hit { "limit" } else { "bad_frame" };
            metrics::counter!("nodewatch_aggregator_frame_errors_total", "node" => node.clone(), "kind" => kind).increment(problem_count as u64);
            if problems
                .iter()
                .any(|p| p.contains("series_defs") && p.contains("limit"))
            {
                metrics::counter!("nodewatch_aggregator_node_limit_hits_total", "node" => node.clone(), "limit" => "series").increment(1);
            }
            let more = problem_count.saturating_sub(problems.len());
            let mut msg = format!("batch {seq}: {}", problems.join("; "));
            if more > 0 {
                let _ = write!(msg, "; and {more} more");
            }
            // Rate-limited: a node resending a bad batch must not fill the log.
            if let Some(suppressed) = crate::throttle::warnings().check("batch_refused") {
                warn!(node = %s.node, seq, error = %msg, suppressed, "Batch partly refused.");
            }
            let code = if limit_hit {
                ErrorCode::Limit
            } else {
                ErrorCode::BadFrame
            };
            out.push(error_frame(code, msg, seq, false));
        }
        // Ack even a partly refused batch: resending it would fail the same way,
        // and everything valid in it is stored.
        out.push(frame(aggregator_frame::Frame::Ack(Ack { seq })));
        out
    }

    async fn run(
        self: Arc<Self>,
        node: NodeName,
        peer: String,
        mut inbound: Streaming<AgentFrame>,
        tx: mpsc::Sender<Result<AggregatorFrame, Status>>,
    ) {
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.next()).await {
            Ok(Some(Ok(AgentFrame {
                frame: Some(agent_frame::Frame::Hello(h)),
            }))) => h,
            Ok(Some(Ok(_))) => {
                let _ = tx
                    .send(error_frame(
                        ErrorCode::BadFrame,
                        "the first frame must be Hello".into(),
                        0,
                        true,
                    ))
                    .await;
                return;
            }
            Ok(Some(Err(status))) => {
                if let Some(suppressed) = crate::throttle::warnings().check("before_hello") {
                    warn!(%node, error = %status, suppressed, "Stream failed before Hello.");
                }
                return;
            }
            Ok(None) => return,
            Err(_) => {
                let _ = tx
                    .send(Err(Status::deadline_exceeded("no Hello within 30 s")))
                    .await;
                return;
            }
        };
        if !hello.node.is_empty() && hello.node != node.as_str() {
            metrics::counter!("nodewatch_aggregator_denied_total", "rpc" => "hello_identity")
                .increment(1);
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
            return;
        }
        let (stream_id, replaced) = self.live.open(&node);
        let acked = self.nodes.connect(&node, &hello, peer.clone(), now_ms());
        metrics::gauge!("nodewatch_aggregator_nodes_connected").set(self.nodes.connected() as f64);
        // A node's trouble counters exist at 0 from its first stream on, so
        // an alert on their increase sees the first error.
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
        for reason in ["prometheus", "aggregator", "recording_rule"] {
            metrics::counter!("nodewatch_aggregator_reserved_names_refused_total", "node" => node.to_string(), "reason" => reason).increment(0);
        }
        for limit in ["frame_bytes", "series", "samples_per_second"] {
            metrics::counter!("nodewatch_aggregator_node_limit_hits_total", "node" => node.to_string(), "limit" => limit).increment(0);
        }
        info!(%node, %peer, agent_version = %hello.agent_version, acked, "Agent connected.");
        let welcome = Welcome {
            node: node.to_string(),
            aggregator_version: nodewatch_proto::VERSION.into(),
            acked_seq: acked,
            sample_blocks: nodewatch_proto::blocks::VERSION,
        };
        // The session's state (symbol table, decoder) ends with this block.
        {
            let mut session = Session {
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
                loop {
                    let msg = tokio::select! {
                        m = inbound.next() => match m {
                            Some(m) => m,
                            None => break,
                        },
                        () = replaced.notified() => {
                            metrics::counter!("nodewatch_aggregator_frame_errors_total", "node" => node.to_string(), "kind" => "replaced").increment(1);
                            if let Some(suppressed) = crate::throttle::warnings().check("stream_replaced") {
                                warn!(%node, %peer, suppressed, "Stream replaced by a newer one from the same node; closed.");
                            }
                            let _ = tx
                                .send(error_frame(
                                    ErrorCode::BadFrame,
                                    "replaced by a newer stream from this node; closed (one live stream per node)".into(),
                                    0,
                                    true,
                                ))
                                .await;
                            break;
                        }
                    };
                    let replies = match msg {
                        Ok(AgentFrame {
                            frame: Some(agent_frame::Frame::Batch(b)),
                        }) => {
                            let this = Arc::clone(&self);
                            // Applying takes the store's write lock; keep it off the async workers.
                            match tokio::task::spawn_blocking(move || {
                                let r = this.apply(&mut session, b);
                                (session, r)
                            })
                            .await
                            {
                                Ok((s, r)) => {
                                    session = s;
                                    r
                                }
                                Err(e) => {
                                    warn!(%node, error = %e, "Batch handling panicked; closing the stream.");
                                    break;
                                }
                            }
                        }
                        Ok(AgentFrame {
                            frame: Some(agent_frame::Frame::Hello(_)),
                        }) => {
                            vec![error_frame(
                                ErrorCode::BadFrame,
                                "Hello may only be the first frame; ignored".into(),
                                0,
                                false,
                            )]
                        }
                        Ok(AgentFrame { frame: None }) => {
                            vec![error_frame(
                                ErrorCode::BadFrame,
                                "empty frame (no Hello or Batch); ignored".into(),
                                0,
                                false,
                            )]
                        }
                        Err(status) => {
                            // Decoding errors (oversized or malformed frames) end up here.
                            metrics::counter!("nodewatch_aggregator_frame_errors_total", "node" => node.to_string(), "kind" => "decode").increment(1);
                            if status.message().contains("too large") {
                                metrics::counter!("nodewatch_aggregator_node_limit_hits_total", "node" => node.to_string(), "limit" => "frame_bytes").increment(1);
                            }
                            if let Some(suppressed) =
                                crate::throttle::warnings().check("stream_error")
                            {
                                warn!(%node, error = %status, suppressed, "Stream ended with an error.");
                            }
                            let msg = format!("frame refused: {}", status.message());
                            let _ = tx.send(Err(Status::new(status.code(), msg))).await;
                            break;
                        }
                    };
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
                    if fatal {
                        break;
                    }
                }
            }
        }
        self.live.close(&node, stream_id);
        release_memory();
        self.nodes.disconnect(&node);
        metrics::gauge!("nodewatch_aggregator_nodes_connected").set(self.nodes.connected() as f64);
        info!(%node, "Agent disconnected.");
    }
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
