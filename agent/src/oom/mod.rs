//! OOM kills, from whichever source the host has, as `OomKill` events sent
//! at once and as `nodewatch_oom_kills_total`.
//!
//! Every source turns one kill into one `OomKill`, attributes it to a cgroup,
//! pod and container with [`crate::containers`], and hands it to
//! [`OomState::report`], which counts it, logs it and queues the event.
//!
//! # Layout
//! - this file: the kill counter ([`OomState`]), reporting, naming pods,
//!   the kernel clock → wall clock conversion, the reader thread.
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

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
#[cfg(target_os = "linux")]
use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(target_os = "linux")]
use std::sync::Arc;
use std::sync::Mutex;
#[cfg(target_os = "linux")]
use std::time::Duration;

use nodewatch_proto::v1::OomKill;
#[cfg(target_os = "linux")]
use nodewatch_proto::v1::{event, Event};

#[cfg(target_os = "linux")]
use crate::collector::{now_ms, EventSender, Paths};
#[cfg(target_os = "linux")]
use crate::containers::cgroup::{self, Memcg};
#[cfg(target_os = "linux")]
use crate::containers::pods::SharedPods;

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

    /// Counts a kill, logs it and queues it as an event at `t_ms`; an event
    /// the stream channel cannot take is counted as dropped.
    #[cfg(target_os = "linux")]
    pub(crate) fn report(&self, kill: OomKill, t_ms: i64, events: &EventSender) {
        self.count(&kill);
        tracing::info!(
            pid = kill.pid,
            comm = %kill.comm,
            cgroup = %kill.cgroup,
            source = %kill.source,
            "OOM kill."
        );
        let event = Event {
            t_ms,
            kind: Some(event::Kind::OomKill(kill)),
            // Filled in by the aggregator from the stream's identity.
            node: String::new(),
        };
        if events.try_send(event).is_err() {
            self.channel_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Fills namespace, pod and container names from the pod cache, when it
/// knows the pod UID or container id the cgroup path gave.
#[cfg(target_os = "linux")]
pub fn name_pod(pods: &SharedPods, kill: &mut OomKill) {
    if kill.pod_uid.is_empty() && kill.container_id.is_empty() {
        return;
    }
    let Ok(cache) = pods.read() else {
        return;
    };
    let r = cache.resolve(&kill.pod_uid, &kill.container_id);
    if !r.pod.is_empty() {
        kill.namespace = r.namespace;
        kill.pod = r.pod;
    }
    if !r.container.is_empty() {
        kill.container = r.container;
    }
}

/// Fills pod UID, container id and runtime from the memory cgroup's path,
/// and its limit and usage from the cgroup's files. Returns the limit (0:
/// none or unknown).
#[cfg(target_os = "linux")]
pub(crate) fn attribute_memcg(paths: &Paths, memcg: &Memcg, kill: &mut OomKill) -> u64 {
    let id = cgroup::identify(&memcg.path);
    kill.pod_uid = id.pod_uid.unwrap_or_default();
    kill.container_id = id.container_id.unwrap_or_default();
    kill.container_runtime = id.runtime.unwrap_or_default().to_string();
    let (limit, usage) = cgroup::memcg_stats(paths, memcg);
    kill.memcg_limit_bytes = limit;
    kill.memcg_usage_bytes = usage;
    limit
}

/// Wall-clock milliseconds of a `bpf_ktime_get_ns()` stamp (`CLOCK_MONOTONIC`):
/// the moment the kernel marked the victim, not when attribution finished.
/// Falls back to now when the clock cannot be read or the stamp is ahead.
#[cfg(target_os = "linux")]
#[must_use]
pub fn kill_time_ms(ktime_ns: u64) -> i64 {
    let now = now_ms();
    let Ok(mono) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) else {
        return now;
    };
    let mono_ns = (mono.tv_sec() as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(mono.tv_nsec() as u64);
    match mono_ns.checked_sub(ktime_ns) {
        Some(age_ns) if ktime_ns > 0 => now - (age_ns / 1_000_000) as i64,
        _ => now,
    }
}

/// How long a reader waits in `poll` before checking whether to stop: the
/// bound on how long dropping its owner takes.
#[cfg(target_os = "linux")]
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A reader thread, stopped and joined when dropped. A plain thread (not a
/// tokio task) so an event is handled within microseconds of the kernel's
/// wake-up whatever the runtime is doing, and so sources start outside a runtime.
#[cfg(target_os = "linux")]
pub(crate) struct ReaderThread {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[cfg(target_os = "linux")]
impl ReaderThread {
    /// Starts `run`, which returns soon after the flag it is given turns true.
    pub(crate) fn spawn(
        name: &str,
        run: impl FnOnce(&AtomicBool) + Send + 'static,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(&stop2))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

#[cfg(target_os = "linux")]
impl Drop for ReaderThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits until `fd` is readable or [`POLL_INTERVAL`] has passed. `Err`:
/// polling itself failed, and the reader should stop.
#[cfg(target_os = "linux")]
pub(crate) fn wait_readable(fd: std::os::fd::BorrowedFd<'_>) -> Result<(), nix::errno::Errno> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    let timeout = PollTimeout::try_from(POLL_INTERVAL).unwrap_or(PollTimeout::NONE);
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match poll(&mut fds, timeout) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn pod_names_from_cache() {
        let pods: SharedPods = std::sync::Arc::default();
        crate::containers::pods::PodCache::replace_from_json(
            &pods,
            r#"{"items":[{"metadata":{"name":"web","namespace":"shop","uid":"74c13223-5a00-11e9-b385-42010a80018d"},
               "status":{"containerStatuses":[{"name":"app","containerID":"containerd://34dc0b5e626f2c5c4c5170e34b10e7654ce36f0fcd532739f4445baabea03376"}]}}]}"#,
        )
        .unwrap();
        let mut kill = OomKill {
            pod_uid: "74c13223-5a00-11e9-b385-42010a80018d".into(),
            container_id: "34dc0b5e626f2c5c4c5170e34b10e7654ce36f0fcd532739f4445baabea03376".into(),
            ..OomKill::default()
        };
        name_pod(&pods, &mut kill);
        assert_eq!(
            (
                kill.namespace.as_str(),
                kill.pod.as_str(),
                kill.container.as_str()
            ),
            ("shop", "web", "app")
        );
        // Unknown pod: the path's identity stays, names stay empty.
        let mut other = OomKill {
            pod_uid: "0d08203e-255a-11e9-8cd9-0007cb0b2cc8".into(),
            ..OomKill::default()
        };
        name_pod(&pods, &mut other);
        assert_eq!(other.pod, "");
        let state = OomState::default();
        state.count(&kill);
        state.count(&other);
        let kills = state.kills.lock().unwrap();
        assert!(kills.keys().any(|k| k.pod == "web" && k.container == "app"));
        assert!(kills
            .keys()
            .any(|k| k.pod == "0d08203e-255a-11e9-8cd9-0007cb0b2cc8"));
    }

    #[test]
    fn kill_time_is_in_the_past() {
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
        let mono_ns = mono.tv_sec() as u64 * 1_000_000_000 + mono.tv_nsec() as u64;
        let now = now_ms();
        let t = kill_time_ms(mono_ns - 250_000_000);
        assert!((now - 300..=now - 200).contains(&t), "{t} vs {now}");
        assert!(kill_time_ms(0) >= now);
        assert!(kill_time_ms(u64::MAX) >= now);
    }

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
