//! What the Linux OOM sources share: attributing a kill to its memory
//! cgroup and pod, the kernel clock → wall clock conversion, reporting a
//! kill, and the reader thread each source runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nodewatch_proto::v1::{event, Event, OomKill};

use super::OomState;
use crate::collector::{now_ms, EventSender, Paths};
use crate::containers::cgroup::{self, Memcg};
use crate::containers::pods::SharedPods;

impl OomState {
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
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A reader thread, stopped and joined when dropped. A plain thread (not a
/// tokio task) so an event is handled within microseconds of the kernel's
/// wake-up whatever the runtime is doing, and so sources start outside a runtime.
pub(crate) struct ReaderThread {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

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
pub(crate) fn wait_readable(fd: std::os::fd::BorrowedFd<'_>) -> Result<(), nix::errno::Errno> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    let timeout = PollTimeout::try_from(POLL_INTERVAL).unwrap_or(PollTimeout::NONE);
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match poll(&mut fds, timeout) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
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
}
