//! What the aggregator knows about each node: its Hello, its streams, its
//! delivery cursor and its series count.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use nodewatch_proto::v1::{Hello, NodeInfo};
use nodewatch_proto::NodeName;

use crate::store::SeriesId;

/// Delivery cursors remembered per node; an agent instance that restarts
/// gets a new instance id, so old cursors are garbage after a while.
pub const MAX_CURSORS_PER_NODE: usize = 16;

#[derive(Debug, Default)]
struct NodeState {
    hello: Hello,
    peer: String,
    streams: usize,
    connected_since_ms: i64,
    last_batch_ms: i64,
    last_seq: u64,
    /// Highest stored seq per agent instance.
    cursors: Vec<(String, u64)>,
    series: HashSet<SeriesId, foldhash::fast::RandomState>,
    /// Token bucket of samples: (tokens, last refill ms).
    bucket: Option<(f64, i64)>,
    /// Batches received from the node since this aggregator started.
    batches: u64,
    /// When a batch last arrived (stored or not), ms.
    last_received_ms: i64,
    /// When the node was last seen live: restored from the known-nodes
    /// file, or the last batch or connect.
    last_seen_ms: i64,
}

/// How many seconds of the per-node sample rate a burst may use at once.
pub const SAMPLE_BURST_SECONDS: f64 = 60.0;

/// A node's collection interval when its Hello names none (the agent's
/// default).
pub const DEFAULT_AGENT_INTERVAL_MS: i64 = 10_000;

/// How many collection intervals may pass without a batch before a node
/// with an open stream counts as down: one late batch is jitter, two
/// missed ones are not.
pub const LIVE_INTERVALS: i64 = 2;

/// One node's liveness, as [`Nodes::liveness`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Liveness {
    pub node: NodeName,
    /// Streaming, with a batch within [`LIVE_INTERVALS`] intervals.
    pub up: bool,
    /// Batches received since this aggregator started.
    pub batches: u64,
    /// Last batch or connect, ms (or the restored time).
    pub last_seen_ms: i64,
}

/// All nodes seen since start, and those restored from the known-nodes file.
#[derive(Debug, Default)]
pub struct Nodes {
    inner: Mutex<HashMap<NodeName, NodeState>>,
}

/// Seqs are per agent instance; the instance id lives in the agent's spool,
/// so it (and the cursor) survives agent restarts and host reboots.
fn cursor_key(hello: &Hello) -> String {
    hello.instance_id.clone()
}

impl Nodes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeName, NodeState>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A stream opened; returns the seq already stored for this agent instance.
    pub fn connect(&self, node: &NodeName, hello: &Hello, peer: String, now_ms: i64) -> u64 {
        let mut all = self.lock();
        let st = all.entry(node.clone()).or_default();
        st.hello = hello.clone();
        st.peer = peer;
        if st.streams == 0 {
            st.connected_since_ms = now_ms;
        }
        st.last_seen_ms = st.last_seen_ms.max(now_ms);
        st.streams += 1;
        let key = cursor_key(hello);
        st.cursors
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(0, |(_, s)| *s)
    }

    pub fn disconnect(&self, node: &NodeName) {
        if let Some(st) = self.lock().get_mut(node) {
            st.streams = st.streams.saturating_sub(1);
        }
    }

    /// Counts a batch received from the node (stored, duplicate or refused):
    /// the node is alive whatever becomes of the batch.
    pub fn received(&self, node: &NodeName, now_ms: i64) {
        let mut all = self.lock();
        let st = all.entry(node.clone()).or_default();
        st.batches += 1;
        st.last_received_ms = st.last_received_ms.max(now_ms);
        st.last_seen_ms = st.last_seen_ms.max(now_ms);
    }

    /// Remembers a node known from before a restart (the known-nodes
    /// file), not connected, last seen at `last_seen_ms`. A node already
    /// known is left as it is.
    pub fn restore(&self, node: NodeName, last_seen_ms: i64) {
        self.lock().entry(node).or_insert_with(|| NodeState {
            last_seen_ms,
            ..NodeState::default()
        });
    }

    /// Every node's liveness at `now_ms`, by name, after forgetting nodes
    /// without a stream and unseen for longer than `forget_after_ms`.
    ///
    /// A node is up while it has a stream and its last batch (or the
    /// stream's start, before the first batch) is at most
    /// [`LIVE_INTERVALS`] of its collection intervals old.
    pub fn liveness(&self, now_ms: i64, forget_after_ms: i64) -> Vec<Liveness> {
        let mut all = self.lock();
        all.retain(|_, st| st.streams > 0 || now_ms - st.last_seen_ms <= forget_after_ms);
        let mut out: Vec<Liveness> = all
            .iter()
            .map(|(name, st)| {
                let interval = match i64::try_from(st.hello.interval_ms) {
                    Ok(ms) if ms > 0 => ms,
                    _ => DEFAULT_AGENT_INTERVAL_MS,
                };
                let last = st.last_received_ms.max(st.connected_since_ms);
                Liveness {
                    node: name.clone(),
                    up: st.streams > 0 && now_ms - last <= LIVE_INTERVALS * interval,
                    batches: st.batches,
                    last_seen_ms: st.last_seen_ms,
                }
            })
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }

    /// The stored cursor for this agent instance.
    pub fn cursor(&self, node: &NodeName, hello: &Hello) -> u64 {
        let key = cursor_key(hello);
        self.lock()
            .get(node)
            .and_then(|st| st.cursors.iter().find(|(k, _)| *k == key).map(|(_, s)| *s))
            .unwrap_or(0)
    }

    /// Records that `seq` is stored.
    pub fn stored(&self, node: &NodeName, hello: &Hello, seq: u64, now_ms: i64) {
        let mut all = self.lock();
        let st = all.entry(node.clone()).or_default();
        st.last_batch_ms = now_ms;
        st.last_seq = seq;
        let key = cursor_key(hello);
        if let Some(c) = st.cursors.iter_mut().find(|(k, _)| *k == key) {
            c.1 = c.1.max(seq);
        } else {
            if st.cursors.len() >= MAX_CURSORS_PER_NODE {
                st.cursors.remove(0);
            }
            st.cursors.push((key, seq));
        }
    }

    /// Which of a batch's series the node may have, before any is created:
    /// one it already has always; a new or not yet created one (`None`)
    /// while the node is under `limit`, counting those admitted before it
    /// in the same call. Series that exist are added to the node's count
    /// here; created ones are added with [`Nodes::add_created`].
    pub fn admit(&self, node: &NodeName, ids: &[Option<SeriesId>], limit: usize) -> Vec<bool> {
        let mut all = self.lock();
        let st = all.entry(node.clone()).or_default();
        let mut pending = 0usize;
        ids.iter()
            .map(|id| match id {
                Some(id) if st.series.contains(id) => true,
                _ if st.series.len() + pending >= limit => false,
                Some(id) => {
                    st.series.insert(*id);
                    true
                }
                None => {
                    pending += 1;
                    true
                }
            })
            .collect()
    }

    /// Adds series created after [`Nodes::admit`] let them in; false for
    /// each refused because the node reached `limit` meanwhile (another
    /// stream of the same node admitted series at the same time).
    pub fn add_created(&self, node: &NodeName, ids: &[SeriesId], limit: usize) -> Vec<bool> {
        let mut all = self.lock();
        let st = all.entry(node.clone()).or_default();
        ids.iter()
            .map(|id| {
                if st.series.contains(id) {
                    return true;
                }
                if st.series.len() >= limit {
                    return false;
                }
                st.series.insert(*id);
                true
            })
            .collect()
    }

    /// Takes `n` samples from the node's budget of `rate` per second;
    /// false (and nothing taken) when the node is over it.
    pub fn take_samples(&self, node: &NodeName, n: usize, rate: u64, now_ms: i64) -> bool {
        let mut all = self.lock();
        let st = all.entry(node.clone()).or_default();
        let cap = rate as f64 * SAMPLE_BURST_SECONDS;
        let (tokens, last) = st.bucket.unwrap_or((cap, now_ms));
        let tokens = (tokens + (now_ms - last).max(0) as f64 / 1000.0 * rate as f64).min(cap);
        if tokens >= n as f64 {
            st.bucket = Some((tokens - n as f64, now_ms));
            true
        } else {
            st.bucket = Some((tokens, now_ms));
            false
        }
    }

    #[must_use]
    pub fn series_count(&self, node: &NodeName) -> usize {
        self.lock().get(node).map_or(0, |st| st.series.len())
    }

    #[must_use]
    pub fn connected(&self) -> usize {
        self.lock().values().filter(|s| s.streams > 0).count()
    }

    #[must_use]
    pub fn list(&self) -> Vec<NodeInfo> {
        let all = self.lock();
        let mut out: Vec<NodeInfo> = all
            .iter()
            .map(|(name, st)| NodeInfo {
                name: name.to_string(),
                os: st.hello.os.clone(),
                os_pretty: st.hello.os_pretty.clone(),
                kernel: st.hello.kernel.clone(),
                arch: st.hello.arch.clone(),
                agent_version: st.hello.agent_version.clone(),
                connected: st.streams > 0,
                connected_since_ms: st.connected_since_ms,
                last_batch_ms: st.last_batch_ms,
                series: st.series.len() as u64,
                last_seq: st.last_seq,
                boot_id: st.hello.boot_id.clone(),
                collectors: st.hello.collectors.clone(),
                peer: st.peer.clone(),
                interval_ms: st.hello.interval_ms,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}
