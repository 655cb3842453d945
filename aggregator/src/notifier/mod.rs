//! Sends alerts to Alertmanager (API v2, `POST /api/v2/alerts`) the way
//! Prometheus does (`prometheus/notifier` and `rules.Group.sendAlerts`):
//!
//! - after each evaluation a group hands over firing alerts not sent for
//!   `resend_delay`, and alerts resolved since their last send
//!   ([`Group::alerts_to_send`](crate::rules::Group::alerts_to_send)); a resolved alert stays in its rule for 15
//!   minutes and is re-sent every `resend_delay` meanwhile;
//! - a firing alert's `endsAt` is `now + 4 × max(eval interval, resend
//!   delay)`, so Alertmanager resolves it by itself if Prometheus goes away;
//! - external labels are added to every alert (without overriding its own);
//! - alerts wait in one bounded queue (oldest dropped when full) and go out
//!   in batches of at most [`MAX_BATCH_SIZE`] to every Alertmanager at once;
//! - unlike Prometheus, a failed send is retried with exponential backoff a
//!   few times before the batch is given up for that Alertmanager (the next
//!   re-send covers it).
//!
//! [`alertmanager`] holds one Alertmanager's settings and the request to it.

pub mod alertmanager;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::Notify;

use alertmanager::post;
pub use alertmanager::{tls_client_config, AlertmanagerTarget, Authorization, NotifyError};

use crate::promql::Labels;

/// Prometheus' `--rules.alert.resend-delay` default.
// `Duration::from_mins` is newer than the workspace's rust-version.
#[allow(clippy::duration_suboptimal_units)]
pub const DEFAULT_RESEND_DELAY: Duration = Duration::from_secs(60);
/// Prometheus' `--alertmanager.notification-queue-capacity` default.
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;
/// Alerts per request (`maxBatchSize` in prometheus/notifier).
pub const MAX_BATCH_SIZE: usize = 256;
/// Per-request timeout (`alertmanager_config.timeout` default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per batch and Alertmanager beyond the first: with the backoff
/// below a batch is retried for about 3.5 s, well inside a resend delay.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// First retry delay; doubled per attempt.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// Longest retry delay.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(10);

/// One alert as Alertmanager's API v2 takes it (`models.PostableAlert`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PostableAlert {
    /// Identifying labels, external labels included.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// When it started firing (RFC 3339).
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    /// When it resolved, or until when it is valid (RFC 3339).
    #[serde(rename = "endsAt")]
    pub ends_at: String,
    /// Link back to the expression.
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
}

/// Notifier settings; every tunable has Prometheus' default.
#[derive(Debug, Clone)]
pub struct NotifierConfig {
    /// Where to send.
    pub targets: Vec<AlertmanagerTarget>,
    /// Added to every alert.
    pub external_labels: Labels,
    /// Base of `generatorURL`.
    pub external_url: String,
    /// Re-send interval of firing alerts.
    pub resend_delay: Duration,
    /// Alerts held while Alertmanagers are slow.
    pub queue_capacity: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries of a failed batch per Alertmanager.
    pub max_retries: u32,
    /// First retry delay.
    pub retry_backoff: Duration,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            external_labels: Labels::new(),
            external_url: String::new(),
            resend_delay: DEFAULT_RESEND_DELAY,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            timeout: DEFAULT_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
        }
    }
}

/// Counters for the aggregator's own metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotifierStats {
    /// Alerts delivered (per Alertmanager).
    pub sent: u64,
    /// Alerts given up after retries (per Alertmanager).
    pub failed: u64,
    /// Alerts dropped because the queue was full.
    pub dropped: u64,
    /// Alerts waiting.
    pub queued: usize,
}

struct Shared {
    queue: Mutex<VecDeque<PostableAlert>>,
    wake: Notify,
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// The handle rule evaluation uses; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    shared: Arc<Shared>,
    cfg: Arc<NotifierConfig>,
}

/// The sending task; run it with [`NotifierTask::run`] and cancel it with
/// its shutdown future.
pub struct NotifierTask {
    shared: Arc<Shared>,
    cfg: Arc<NotifierConfig>,
}

impl Notifier {
    /// A notifier and the task that sends for it.
    #[must_use]
    pub fn new(cfg: NotifierConfig) -> (Self, NotifierTask) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let cfg = Arc::new(cfg);
        (
            Self {
                shared: Arc::clone(&shared),
                cfg: Arc::clone(&cfg),
            },
            NotifierTask { shared, cfg },
        )
    }

    /// Queues alerts; when the queue is full the oldest are dropped, as
    /// Prometheus does, since newer state supersedes them.
    pub fn send(&self, alerts: impl IntoIterator<Item = PostableAlert>) {
        let mut q = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut any = false;
        for a in alerts {
            q.push_back(a);
            any = true;
        }
        let cap = self.cfg.queue_capacity.max(1);
        if q.len() > cap {
            let excess = q.len() - cap;
            q.drain(..excess);
            self.shared
                .dropped
                .fetch_add(excess as u64, Ordering::Relaxed);
            metrics::counter!("nodewatch_aggregator_notifications_dropped_total")
                .increment(excess as u64);
            tracing::warn!(
                dropped = excess,
                "Alert notification queue full, dropping alerts."
            );
        }
        drop(q);
        if any {
            self.shared.wake.notify_one();
        }
    }

    /// The settings it was made with.
    #[must_use]
    pub fn config(&self) -> &NotifierConfig {
        &self.cfg
    }

    /// Current counters.
    #[must_use]
    pub fn stats(&self) -> NotifierStats {
        NotifierStats {
            sent: self.shared.sent.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            queued: self
                .shared
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
        }
    }
}

impl NotifierTask {
    /// Sends queued alerts until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                () = self.shared.wake.notified() => {}
            }
            loop {
                let batch: Vec<PostableAlert> = {
                    let mut q = self
                        .shared
                        .queue
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    let n = q.len().min(MAX_BATCH_SIZE);
                    q.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                // Shutdown also interrupts a batch stuck in retries.
                tokio::select! {
                    () = &mut shutdown => return,
                    () = self.send_batch(&batch) => {}
                }
            }
        }
    }

    async fn send_batch(&self, batch: &[PostableAlert]) {
        let body = match serde_json::to_vec(batch) {
            Ok(b) => Bytes::from(b),
            Err(error) => {
                tracing::error!(%error, "Cannot encode alerts.");
                return;
            }
        };
        let n = batch.len() as u64;
        let sends = self.cfg.targets.iter().map(|t| {
            let body = body.clone();
            async move {
                let mut delay = self.cfg.retry_backoff;
                for attempt in 0..=self.cfg.max_retries {
                    match post(t, body.clone(), self.cfg.timeout).await {
                        Ok(()) => {
                            self.shared.sent.fetch_add(n, Ordering::Relaxed);
                            // Prometheus' `prometheus_notifications_sent_total` under our prefix.
                            metrics::counter!("nodewatch_aggregator_notifications_sent_total", "alertmanager" => t.url.to_string()).increment(n);
                            return;
                        }
                        Err(error) => {
                            metrics::counter!("nodewatch_aggregator_notifications_errors_total", "alertmanager" => t.url.to_string()).increment(1);
                            tracing::warn!(peer = %t.url, %error, attempt, "Alertmanager send failed.");
                        }
                    }
                    if attempt < self.cfg.max_retries {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(MAX_RETRY_BACKOFF);
                    }
                }
                self.shared.failed.fetch_add(n, Ordering::Relaxed);
            }
        });
        futures::future::join_all(sends).await;
    }
}
