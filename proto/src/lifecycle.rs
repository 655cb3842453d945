//! One lifecycle for every long-running binary: a shutdown signal that any
//! number of tasks listen to, and the tasks that must end with it.
//!
//! - [`Shutdown`] is the listening side, cloned into every task that has to
//!   stop: it says whether shutdown was requested and resolves when it is.
//!   It cannot request shutdown itself (as mini-redis' `Shutdown`).
//! - [`Lifecycle`] owns the signal and the tasks. [`Lifecycle::spawn`] starts
//!   a task that ends by itself once shutdown is requested, after doing what
//!   shutdown asks of it (flushing a stream, saving a file);
//!   [`Lifecycle::spawn_background`] and [`Lifecycle::adopt_background`] take
//!   tasks that never end on their own (certificate file watchers, renewals,
//!   a health endpoint) and are aborted as shutdown starts.
//!   [`Lifecycle::stop`] requests shutdown and waits for the first kind,
//!   within a grace period if one is given, cutting what is left after it.
//!
//! [`runtime`] builds the tokio runtime all of this runs on.
//!
//! The signal is tokio-util's `CancellationToken`, so a lifecycle can sit
//! inside another ([`Lifecycle::within`]): the agent's follows the one its
//! `main` ends on SIGTERM.

use std::future::Future;
use std::time::Duration;

use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// The multi-threaded runtime a binary runs on, with `workers` threads
/// (tokio's default, one per core, when `None`). Where it cannot be built it
/// says so on stderr, named after `program`, and returns `None`.
#[must_use]
pub fn runtime(program: &str, workers: Option<usize>) -> Option<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    match builder.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("{program}: cannot start the runtime: {e}");
            None
        }
    }
}

/// The listening side of a shutdown signal; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    /// A signal that turns on at the first SIGTERM or SIGINT (see
    /// [`crate::shutdown_signal`]), logging `message` then.
    #[must_use]
    pub fn on_signal(message: &'static str) -> Self {
        let token = CancellationToken::new();
        let trigger = token.clone();
        tokio::spawn(async move {
            crate::shutdown_signal().await;
            tracing::info!("{message}");
            trigger.cancel();
        });
        Self(token)
    }

    /// Whether shutdown has been requested.
    #[must_use]
    pub fn is_requested(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once shutdown is requested (at once if it already was).
    pub async fn requested(&self) {
        self.0.cancelled().await;
    }

    /// As [`Shutdown::requested`], as a future that owns what it needs, for
    /// servers that take their shutdown future by value.
    pub fn requested_owned(&self) -> impl Future<Output = ()> + Send + 'static {
        self.0.clone().cancelled_owned()
    }
}

/// How [`Lifecycle::stop`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Every task ended by itself.
    Ended,
    /// The grace period ran out; the tasks still running were aborted.
    Cut,
}

/// A shutdown signal with the tasks that must end with it.
#[derive(Debug, Default)]
pub struct Lifecycle {
    token: CancellationToken,
    tasks: JoinSet<()>,
    background: Vec<AbortHandle>,
}

impl Lifecycle {
    /// A lifecycle of its own: it shuts down when [`Lifecycle::stop`] is called.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A lifecycle that also shuts down when `outer` does.
    #[must_use]
    pub fn within(outer: &Shutdown) -> Self {
        Self {
            token: outer.0.child_token(),
            ..Self::default()
        }
    }

    /// A listener for this lifecycle's shutdown, for a task to hold.
    #[must_use]
    pub fn shutdown(&self) -> Shutdown {
        Shutdown(self.token.clone())
    }

    /// Starts a task that ends by itself once shutdown is requested;
    /// [`Lifecycle::stop`] waits for it.
    pub fn spawn<F>(&mut self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Starts a task that never ends on its own; it is aborted when
    /// shutdown starts.
    pub fn spawn_background<F>(&mut self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.adopt_background(tokio::spawn(task));
    }

    /// Takes a task started elsewhere that never ends on its own; it is
    /// aborted when shutdown starts.
    pub fn adopt_background<T>(&mut self, task: JoinHandle<T>) {
        self.background.push(task.abort_handle());
        // Detached: from now on only the lifecycle can end it.
        drop(task);
    }

    /// Requests shutdown, aborts the background tasks, and waits for the
    /// others to end: without limit, or for `grace` after which the ones
    /// still running are aborted.
    pub async fn stop(mut self, grace: Option<Duration>) -> Stopped {
        self.token.cancel();
        for task in self.background.drain(..) {
            task.abort();
        }
        let tasks = &mut self.tasks;
        // A task that panicked has ended too; its panic was already reported.
        let all = async move { while tasks.join_next().await.is_some() {} };
        let Some(grace) = grace else {
            all.await;
            return Stopped::Ended;
        };
        if tokio::time::timeout(grace, all).await.is_ok() {
            Stopped::Ended
        } else {
            self.tasks.abort_all();
            Stopped::Cut
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A task that sets `done` after seeing shutdown and working `for_` more.
    async fn flusher(shutdown: Shutdown, for_: Duration, done: Arc<AtomicBool>) {
        shutdown.requested().await;
        tokio::time::sleep(for_).await;
        done.store(true, Ordering::SeqCst);
    }

    #[tokio::test]
    async fn stop_waits_for_tasks_to_finish_their_shutdown_work() {
        let mut life = Lifecycle::new();
        let done = Arc::new(AtomicBool::new(false));
        life.spawn(flusher(
            life.shutdown(),
            Duration::from_millis(50),
            Arc::clone(&done),
        ));
        assert!(!life.shutdown().is_requested());
        assert_eq!(life.stop(None).await, Stopped::Ended);
        assert!(done.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn grace_cuts_what_does_not_end_in_time() {
        let mut life = Lifecycle::new();
        let slow = Arc::new(AtomicBool::new(false));
        let quick = Arc::new(AtomicBool::new(false));
        life.spawn(flusher(
            life.shutdown(),
            Duration::from_secs(60),
            Arc::clone(&slow),
        ));
        life.spawn(flusher(life.shutdown(), Duration::ZERO, Arc::clone(&quick)));
        let t = std::time::Instant::now();
        assert_eq!(
            life.stop(Some(Duration::from_millis(100))).await,
            Stopped::Cut
        );
        assert!(t.elapsed() < Duration::from_secs(30));
        assert!(quick.load(Ordering::SeqCst));
        assert!(!slow.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn background_tasks_are_aborted_without_waiting() {
        let mut life = Lifecycle::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // The sender lives in the background task: aborting it drops it.
        life.spawn_background(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        let adopted = tokio::spawn(std::future::pending::<()>());
        let check = adopted.abort_handle();
        life.adopt_background(adopted);
        assert_eq!(
            life.stop(Some(Duration::from_secs(5))).await,
            Stopped::Ended
        );
        assert!(
            rx.await.is_err(),
            "the background task still holds its sender"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(check.is_finished());
    }

    #[tokio::test]
    async fn a_lifecycle_within_another_follows_it() {
        let mut outer = Lifecycle::new();
        let inner = Lifecycle::within(&outer.shutdown());
        let listener = inner.shutdown();
        let done = Arc::new(AtomicBool::new(false));
        outer.spawn(flusher(listener.clone(), Duration::ZERO, Arc::clone(&done)));
        assert_eq!(
            outer.stop(Some(Duration::from_secs(5))).await,
            Stopped::Ended
        );
        assert!(listener.is_requested());
        assert!(done.load(Ordering::SeqCst));
        // Stopping the inner one does not reach back out.
        let outer = Lifecycle::new();
        let inner = Lifecycle::within(&outer.shutdown());
        assert_eq!(inner.stop(None).await, Stopped::Ended);
        assert!(!outer.shutdown().is_requested());
    }
}
