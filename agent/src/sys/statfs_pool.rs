//! `statfs(2)` calls that may block for ever, run with a deadline.
//!
//! A `statfs` on a dead NFS server, or on a ZFS pool that suspended its I/O,
//! blocks in the kernel, possibly for ever. So the calls run on a few worker
//! threads and the caller waits at most `timeout` for each; a mount that does
//! not answer in time is answered [`Answer::TimedOut`] and not asked again
//! until the blocked call returns (`node_exporter`'s `stuckMounts`). A blocked
//! thread is left behind, at most one per mount.
//!
//! Used by the Linux and FreeBSD `filesystem` collectors, which differ in how
//! they list mounts and what they ask, not in how they wait.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::collector::CollectError;

/// How long one `statfs` may take before its mount counts as stuck:
/// `node_exporter`'s `--collector.filesystem.mount-timeout` default.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(5);

/// Concurrent `statfs` calls: `node_exporter`'s `--collector.filesystem.stat-workers`
/// default. Enough to hide one slow network mount without hammering a server.
pub const STAT_WORKERS: usize = 4;

/// `device_error` label of a mount whose statfs timed out or is still blocked.
pub const TIMEOUT_ERROR: &str = "mountpoint timeout";

/// What one mount's statfs came to.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer<T> {
    Stat(T),
    /// The call failed; the errno's text.
    Error(String),
    /// No answer within the timeout, now or in an earlier collection.
    TimedOut,
}

impl<T> Answer<T> {
    /// The `device_error` label text, `None` for a good answer.
    #[must_use]
    pub fn error(&self) -> Option<&str> {
        match self {
            Self::Stat(_) => None,
            Self::Error(e) => Some(e),
            Self::TimedOut => Some(TIMEOUT_ERROR),
        }
    }
}

/// The call made for each mount: `statfs(2)` in production, a fake in tests.
pub type StatFn<T> = fn(&Path) -> Result<T, String>;

/// Runs statfs-like calls with a deadline each, remembering mounts whose call
/// is still blocked.
pub struct StatfsPool<T> {
    /// How long one call may take before its mount counts as stuck.
    pub timeout: Duration,
    workers: usize,
    stat: StatFn<T>,
    /// Mount points whose call is still blocked. Shared with the blocked
    /// threads, which remove their entry when the call finally returns.
    stuck: Arc<Mutex<HashSet<String>>>,
}

/// One call to make.
struct Job {
    /// Position in the job list.
    idx: usize,
    path: PathBuf,
    mount_point: String,
    /// Set under the `stuck` lock when the call returned, so the pool never
    /// marks a mount stuck after its call has already finished.
    done: AtomicBool,
}

enum Msg<T> {
    Started(usize, Instant),
    Finished(usize, Result<T, String>),
}

impl<T: Send + 'static> StatfsPool<T> {
    /// `workers` calls at most run at once (`node_exporter`'s
    /// `--collector.filesystem.stat-workers`).
    #[must_use]
    pub fn new(stat: StatFn<T>, timeout: Duration, workers: usize) -> Self {
        Self {
            timeout,
            workers: workers.max(1),
            stat,
            stuck: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Whether this mount point's last call has not returned yet.
    #[must_use]
    pub fn is_stuck(&self, mount_point: &str) -> bool {
        self.stuck
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(mount_point)
    }

    /// Calls `stat` on each `(mount point, path)`, waiting at most `timeout`
    /// for each call; answer `i` belongs to job `i`. A mount point still stuck
    /// from an earlier round is answered [`Answer::TimedOut`] without a call.
    pub fn stat_all(&self, jobs: &[(String, PathBuf)]) -> Result<Vec<Answer<T>>, CollectError> {
        let stuck_now = self
            .stuck
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut answers: Vec<Option<Answer<T>>> = Vec::with_capacity(jobs.len());
        let mut todo = Vec::new();
        for (mount_point, path) in jobs {
            if stuck_now.contains(mount_point) {
                answers.push(Some(Answer::TimedOut));
                continue;
            }
            todo.push(Arc::new(Job {
                idx: answers.len(),
                path: path.clone(),
                mount_point: mount_point.clone(),
                done: AtomicBool::new(false),
            }));
            answers.push(None);
        }
        self.run(todo, &mut answers)?;
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or(Answer::TimedOut))
            .collect())
    }

    fn run(
        &self,
        jobs: Vec<Arc<Job>>,
        answers: &mut [Option<Answer<T>>],
    ) -> Result<(), CollectError> {
        let mut pending = jobs.len();
        let all: Vec<Arc<Job>> = jobs.clone();
        let by_idx = |idx: usize| all.iter().find(|j| j.idx == idx);
        let queue = Arc::new(Mutex::new(VecDeque::from(jobs)));
        let (tx, rx) = mpsc::channel();
        for _ in 0..self.workers.min(pending) {
            self.spawn_worker(&queue, &tx)?;
        }
        let mut in_flight: Vec<(usize, Instant)> = Vec::new();
        while pending > 0 {
            let now = Instant::now();
            let wait = in_flight
                .iter()
                .map(|(_, start)| (*start + self.timeout).saturating_duration_since(now))
                .min()
                .unwrap_or(self.timeout);
            match rx.recv_timeout(wait) {
                Ok(Msg::Started(idx, at)) => in_flight.push((idx, at)),
                Ok(Msg::Finished(idx, r)) => {
                    in_flight.retain(|(i, _)| *i != idx);
                    if let Some(slot @ None) = answers.get_mut(idx) {
                        *slot = Some(match r {
                            Ok(s) => Answer::Stat(s),
                            Err(e) => Answer::Error(e),
                        });
                        pending -= 1;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    let mut replaced = 0;
                    let mut stuck = self.stuck.lock().unwrap_or_else(PoisonError::into_inner);
                    in_flight.retain(|(idx, start)| {
                        if now.duration_since(*start) < self.timeout {
                            return true;
                        }
                        let Some(job) = by_idx(*idx) else {
                            return false;
                        };
                        if job.done.load(Ordering::Acquire) {
                            // Finished just now; its message is on the way.
                            return true;
                        }
                        stuck.insert(job.mount_point.clone());
                        if let Some(slot @ None) = answers.get_mut(*idx) {
                            *slot = Some(Answer::TimedOut);
                            pending -= 1;
                        }
                        replaced += 1;
                        false
                    });
                    drop(stuck);
                    // A blocked thread is lost to this round: replace it. A
                    // whole timeout with nothing in flight means no worker is
                    // left (one died): start one so queued jobs still run.
                    if in_flight.is_empty() {
                        replaced = replaced.max(1);
                    }
                    for _ in 0..replaced {
                        self.spawn_worker(&queue, &tx)?;
                    }
                }
                // Unreachable while we hold `tx`; kept so the match is total.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(CollectError::Other(
                        "filesystem: statfs result channel closed".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    fn spawn_worker(
        &self,
        queue: &Arc<Mutex<VecDeque<Arc<Job>>>>,
        tx: &mpsc::Sender<Msg<T>>,
    ) -> Result<(), CollectError> {
        let queue = Arc::clone(queue);
        let tx = tx.clone();
        let stuck = Arc::clone(&self.stuck);
        let stat = self.stat;
        std::thread::Builder::new()
            .name("statfs".into())
            .spawn(move || loop {
                let job = queue
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pop_front();
                let Some(job) = job else { return };
                if tx.send(Msg::Started(job.idx, Instant::now())).is_err() {
                    return;
                }
                let r = stat(&job.path);
                {
                    let mut stuck = stuck.lock().unwrap_or_else(PoisonError::into_inner);
                    job.done.store(true, Ordering::Release);
                    // Recovered: ask again from the next round on.
                    stuck.remove(&job.mount_point);
                }
                // The caller may have moved on; then nobody needs the answer.
                let _ = tx.send(Msg::Finished(job.idx, r));
            })
            .map(|_| ())
            .map_err(|e| {
                CollectError::Other(format!("filesystem: cannot start statfs thread: {e}"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::unnecessary_wraps, reason = "must match StatFn")]
    fn fake(path: &Path) -> Result<u32, String> {
        match path.to_str() {
            Some("/hang") => {
                std::thread::sleep(Duration::from_millis(600));
                Ok(0)
            }
            Some("/gone") => Err("no such file or directory".into()),
            _ => Ok(7),
        }
    }

    fn jobs(names: &[&str]) -> Vec<(String, PathBuf)> {
        names
            .iter()
            .map(|n| ((*n).to_string(), PathBuf::from(n)))
            .collect()
    }

    #[test]
    fn answers_in_order_times_out_skips_stuck_then_recovers() {
        let mut pool = StatfsPool::new(fake, Duration::from_millis(100), 2);
        let j = jobs(&["/a", "/hang", "/gone", "/b", "/c"]);
        let t = Instant::now();
        let got = pool.stat_all(&j).unwrap();
        assert!(t.elapsed() < Duration::from_millis(500), "waited for /hang");
        assert_eq!(
            got,
            [
                Answer::Stat(7),
                Answer::TimedOut,
                Answer::Error("no such file or directory".into()),
                Answer::Stat(7),
                Answer::Stat(7),
            ]
        );
        assert_eq!(got[1].error(), Some(TIMEOUT_ERROR));
        assert!(pool.is_stuck("/hang"));

        // Still blocked: answered at once, no second thread on it.
        let t = Instant::now();
        assert_eq!(pool.stat_all(&j).unwrap()[1], Answer::TimedOut);
        assert!(t.elapsed() < Duration::from_millis(100));

        // Once the call returns the mount is asked again.
        std::thread::sleep(Duration::from_millis(700));
        assert!(!pool.is_stuck("/hang"));
        pool.timeout = Duration::from_secs(5);
        assert_eq!(pool.stat_all(&j).unwrap()[1], Answer::Stat(0));
    }

    #[test]
    fn nothing_to_do_returns_at_once() {
        let pool = StatfsPool::new(fake, Duration::from_secs(5), 4);
        assert!(pool.stat_all(&[]).unwrap().is_empty());
    }
}
