//! OOM kills, from whichever source the host has, as `OomKill` events sent
//! at once and as `nodewatch_oom_kills_total`.
//!
//! Every source turns one kill into one `OomKill`, attributes it to a cgroup,
//! pod and container with [`crate::containers`], and hands it to
//! `OomState::report`, which counts it, logs it and queues the event.
//!
//! # Layout
//! - this file: the kill counter ([`OomState`]) and `nodewatch_oom_kills_total`.
//! - `source`: what the Linux sources share: reporting a kill, naming its
//!   pod, the kernel clock → wall clock conversion, the reader thread.
//! - [`bpf`]: records of `ebpf/oom.bpf.c` from its ring buffer, attributed
//!   in user space (the programs are loaded by [`crate::ebpf`]); Linux only.
//! - [`kmsg`]: the kernel's own OOM report from `/dev/kmsg`, where BPF cannot
//!   run; Linux only.
//! - [`freebsd`]: the FreeBSD page daemon's kill lines from the system log
//!   (parsers on every OS, the collector on FreeBSD).

#[cfg(target_os = "linux")]
pub mod bpf;
pub mod freebsd;
#[cfg(target_os = "linux")]
pub mod kmsg;

#[cfg(target_os = "linux")]
mod source;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use nodewatch_proto::v1::OomKill;

#[cfg(target_os = "linux")]
pub(crate) use source::{attribute_memcg, wait_readable, ReaderThread};
#[cfg(target_os = "linux")]
pub use source::{kill_time_ms, name_pod};

/// Labels of `nodewatch_oom_kills_total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KillKey {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub comm: String,
}

/// Distinct `nodewatch_oom_kills_total` series kept. Container ids change on
/// every restart, so a crash-looping pod could grow the map without bound;
/// past this many, kills are counted in one series with empty labels.
const MAX_KILL_SERIES: usize = 4096;

/// State shared between a reader thread and its collector.
#[derive(Debug, Default)]
pub struct OomState {
    pub kills: Mutex<HashMap<KillKey, u64>>,
    /// Events that could not be queued because the stream channel was full or closed.
    pub channel_dropped: AtomicU64,
    /// Records decoded (for tests and the self-metrics).
    pub records: AtomicU64,
}

impl OomState {
    /// Exports `nodewatch_oom_kills_total` from the kills counted so far.
    pub fn export_kills(&self, sink: &mut crate::collector::Sink) {
        let Ok(kills) = self.kills.lock() else {
            return;
        };
        let mut rows: Vec<_> = kills.iter().collect();
        rows.sort();
        for (k, n) in rows {
            sink.counter(
                "nodewatch_oom_kills_total",
                "Processes killed by the OOM killer (tracepoint oom/mark_victim, or the kernel log without BPF), any process of a container, not only its main one.",
                &[
                    ("namespace", &k.namespace),
                    ("pod", &k.pod),
                    ("container", &k.container),
                    ("comm", &k.comm),
                ],
                *n as f64,
            );
        }
    }

    /// Counts one kill in `nodewatch_oom_kills_total`.
    pub fn count(&self, kill: &OomKill) {
        // Without the kubelet's pod list the names are unknown: the pod label
        // carries the pod UID and the container label the container id, as
        // the cgroup path gives them.
        let or = |name: &String, id: &String| {
            if name.is_empty() {
                id.clone()
            } else {
                name.clone()
            }
        };
        let mut key = KillKey {
            namespace: kill.namespace.clone(),
            pod: or(&kill.pod, &kill.pod_uid),
            container: or(&kill.container, &kill.container_id),
            comm: kill.comm.clone(),
        };
        let Ok(mut kills) = self.kills.lock() else {
            return;
        };
        if !kills.contains_key(&key) && kills.len() >= MAX_KILL_SERIES {
            key = KillKey {
                namespace: String::new(),
                pod: String::new(),
                container: String::new(),
                comm: String::new(),
            };
        }
        *kills.entry(key).or_insert(0) += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_series_are_bounded() {
        let state = OomState::default();
        for i in 0..(MAX_KILL_SERIES + 10) {
            state.count(&OomKill {
                comm: format!("c{i}"),
                ..OomKill::default()
            });
        }
        let kills = state.kills.lock().unwrap();
        assert_eq!(kills.len(), MAX_KILL_SERIES + 1);
        assert_eq!(kills.values().sum::<u64>(), (MAX_KILL_SERIES + 10) as u64);
    }
}
