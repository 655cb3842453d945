//! Runs the rule groups: each on its interval, and all of them at once when
//! a batch carrying events (an OOM kill, a pool state change) lands, so such
//! an alert reaches Alertmanager in milliseconds rather than an interval
//! later. Rule files reload on SIGHUP and when they change; a bad file keeps
//! the old rules running.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use nodewatch_proto::lifecycle::Shutdown;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::alerting::{to_postable, ActiveAlert, AlertState};
use super::group::{load_groups, Group, GroupOptions};
use super::rulefmt::held::unheld_selectors;
use crate::notifier::Notifier;
use crate::promql::{EngineOptions, Sample};
use crate::store::now_ms;
use crate::store::Store;

/// Prometheus' `--rules.alert.for-outage-tolerance` default: alerts are
/// only restored if the aggregator was down for less than this.
pub const DEFAULT_FOR_OUTAGE_TOLERANCE_MS: i64 = 60 * 60 * 1000;
/// Prometheus' `--rules.alert.for-grace-period` default: the least time an
/// alert with a long `for` waits after a restart before firing.
pub const DEFAULT_FOR_GRACE_PERIOD_MS: i64 = 10 * 60 * 1000;

/// The history the store keeps: the configured retention, or more when
/// the rule files read further back (a `rate(x[1h])` needs an hour). Rules
/// are loaded once here to know; errors are left to the real load.
#[must_use]
pub fn retention_for_rules(patterns: &[String], opts: &GroupOptions, configured_ms: i64) -> i64 {
    let files: Vec<PathBuf> = expand(patterns).into_iter().map(|(p, _)| p).collect();
    let Ok(groups) = load_groups(&files, opts) else {
        return configured_ms;
    };
    groups
        .iter()
        .filter_map(Group::history_needed_ms)
        .fold(configured_ms, i64::max)
}

/// Hands `notifier` what `group` should send after its evaluation at
/// `t_ms` (`rules.SendAlerts`): firing alerts not sent for the notifier's
/// resend delay, and alerts resolved since their last send.
pub fn send_alerts(notifier: &Notifier, group: &Group, t_ms: i64) {
    let cfg = notifier.config();
    let resend_ms = i64::try_from(cfg.resend_delay.as_millis()).unwrap_or(i64::MAX);
    let alerts = group.alerts_to_send(t_ms, resend_ms);
    notifier.send(
        alerts
            .iter()
            .map(|(a, expr)| to_postable(a, expr, &cfg.external_labels, &cfg.external_url)),
    );
}

/// How often rule files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(5);

struct Slot {
    group: Group,
    next_ms: AtomicI64,
    /// Whether `for` state was restored after this group's first evaluation.
    restored: AtomicBool,
}

/// What [`RuleManager::reload`] found.
#[derive(Debug)]
pub struct LoadReport {
    pub files: usize,
    pub groups: usize,
    pub rules: usize,
}

pub struct RuleManager {
    store: Arc<Store>,
    patterns: Vec<String>,
    opts: GroupOptions,
    notifier: Option<Notifier>,
    slots: RwLock<Arc<Vec<Arc<Slot>>>>,
    seen: Mutex<Vec<(PathBuf, Option<SystemTime>)>>,
    wake: Notify,
    triggered: AtomicBool,
    /// Whether rules were loaded before (so this is a reload).
    loaded: AtomicBool,
}

fn expand(patterns: &[String]) -> Vec<(PathBuf, Option<SystemTime>)> {
    let mut files: Vec<PathBuf> = patterns
        .iter()
        .filter_map(|p| glob::glob(p).ok())
        .flat_map(|paths| paths.filter_map(Result::ok))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.dedup();
    files
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
            (p, m)
        })
        .collect()
}

impl RuleManager {
    #[must_use]
    pub fn new(
        store: Arc<Store>,
        patterns: Vec<String>,
        opts: GroupOptions,
        notifier: Option<Notifier>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            patterns,
            opts,
            notifier,
            slots: RwLock::new(Arc::new(Vec::new())),
            seen: Mutex::new(Vec::new()),
            wake: Notify::new(),
            triggered: AtomicBool::new(false),
            loaded: AtomicBool::new(false),
        })
    }

    fn slots(&self) -> Arc<Vec<Arc<Slot>>> {
        Arc::clone(&self.slots.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// (Re)loads the rule files. On error the previous rules stay and every
    /// problem is returned (file, line, group, rule, field).
    pub fn reload(&self) -> Result<LoadReport, Vec<String>> {
        let found = expand(&self.patterns);
        let files: Vec<PathBuf> = found.iter().map(|(p, _)| p.clone()).collect();
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = found;
        match load_groups(&files, &self.opts) {
            Ok(groups) => {
                let rules = groups.iter().map(|g| g.rules().len()).sum();
                let warnings = unheld_selectors(groups.iter().map(Group::spec));
                for w in &warnings {
                    warn!(warning = %w, "Rule reads a series this aggregator never holds.");
                }
                metrics::gauge!("nodewatch_aggregator_rule_unheld_selectors")
                    .set(warnings.len() as f64);
                let now = now_ms();
                // Only the rules loaded at start restore `for` state, as in
                // Prometheus: after a reload the grace period would push
                // nearly-due alerts back by minutes.
                let restored = self.loaded.swap(true, Ordering::AcqRel);
                let slots: Vec<Arc<Slot>> = groups
                    .into_iter()
                    .map(|group| {
                        Arc::new(Slot {
                            group,
                            next_ms: AtomicI64::new(now),
                            restored: AtomicBool::new(restored),
                        })
                    })
                    .collect();
                let report = LoadReport {
                    files: files.len(),
                    groups: slots.len(),
                    rules,
                };
                *self.slots.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(slots);
                metrics::gauge!("nodewatch_aggregator_rule_groups").set(report.groups as f64);
                metrics::gauge!("nodewatch_aggregator_rules_last_reload_successful").set(1.0);
                info!(
                    files = report.files,
                    groups = report.groups,
                    rules = report.rules,
                    "Rules loaded."
                );
                self.wake.notify_one();
                Ok(report)
            }
            Err(errors) => {
                let msgs: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                metrics::counter!("nodewatch_aggregator_rule_load_errors_total")
                    .increment(msgs.len() as u64);
                metrics::gauge!("nodewatch_aggregator_rules_last_reload_successful").set(0.0);
                for m in &msgs {
                    warn!(error = %m, "Rule file refused; the previous rules keep running.");
                }
                Err(msgs)
            }
        }
    }

    /// Whether a loaded recording rule writes series named `name`: such
    /// names belong to the aggregator, and nodes may not send them.
    #[must_use]
    pub fn records(&self, name: &str) -> bool {
        self.slots().iter().any(|s| {
            s.group
                .rules()
                .iter()
                .any(|r| !r.is_alert && r.name == name)
        })
    }

    /// How much history the loaded rules read (ms): the longest range or
    /// lookback plus offset over every group; `None` if a rule pins a
    /// selector with `@`, which no retention can promise.
    #[must_use]
    pub fn history_needed_ms(&self) -> Option<i64> {
        self.slots().iter().try_fold(0_i64, |acc, s| {
            s.group.history_needed_ms().map(|n| acc.max(n))
        })
    }

    /// Asks for every group to be evaluated now (an event arrived).
    pub fn trigger(&self) {
        self.triggered.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// The query engine settings the rules are evaluated with.
    #[must_use]
    pub fn engine_options(&self) -> EngineOptions {
        self.opts.engine
    }

    /// Every group's name, interval (ms) and rules (name, whether an
    /// alerting rule, expression), for the HTTP API's `/api/v1/rules`.
    #[must_use]
    #[allow(clippy::type_complexity)]
    pub fn rule_groups(&self) -> Vec<(String, i64, Vec<(String, bool, String)>)> {
        self.slots()
            .iter()
            .map(|s| {
                let rules = s
                    .group
                    .rules()
                    .iter()
                    .map(|r| (r.name.clone(), r.is_alert, r.expr_text.clone()))
                    .collect();
                (s.group.name().to_string(), s.group.interval_ms(), rules)
            })
            .collect()
    }

    /// Every pending and firing alert, with its group's name.
    #[must_use]
    pub fn alerts(&self) -> Vec<(String, ActiveAlert)> {
        let mut out = Vec::new();
        for s in self.slots().iter() {
            for a in s.group.alerts() {
                if a.state != AlertState::Inactive {
                    out.push((s.group.name().to_string(), a));
                }
            }
        }
        out.sort_by(|a, b| a.1.labels.cmp(&b.1.labels));
        out
    }

    fn files_changed(&self) -> bool {
        let now = expand(&self.patterns);
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) != now
    }

    fn eval(&self, slot: &Slot, t_ms: i64) {
        let start = std::time::Instant::now();
        let ev = slot.group.eval_detailed(self.store.as_ref(), t_ms);
        let group = slot.group.name().to_string();
        for (rule, error) in &ev.errors {
            metrics::counter!("nodewatch_aggregator_rule_evaluation_failures_total", "group" => group.clone()).increment(1);
            warn!(group = %group, rule = %rule, %error, "Rule evaluation failed.");
        }
        self.record(&ev.recorded);
        // As Prometheus after a start: once the group knows its active
        // alerts, their `for` progress comes back from `ALERTS_FOR_STATE`,
        // before the first send, so a restored alert's first notification
        // carries its real start. The store is in memory, so today this
        // finds state only if `ALERTS_FOR_STATE` reached the store before
        // the first evaluation; it is the hook a persisted store needs.
        if !slot.restored.swap(true, Ordering::AcqRel) {
            slot.group.restore_for_state(
                self.store.as_ref(),
                t_ms,
                DEFAULT_FOR_OUTAGE_TOLERANCE_MS,
                DEFAULT_FOR_GRACE_PERIOD_MS,
            );
        }
        if let Some(n) = &self.notifier {
            send_alerts(n, &slot.group, t_ms);
        }
        metrics::counter!("nodewatch_aggregator_rule_group_evaluations_total", "group" => group.clone()).increment(1);
        metrics::histogram!("nodewatch_aggregator_rule_group_duration_seconds", "group" => group)
            .record(start.elapsed().as_secs_f64());
    }

    fn record(&self, samples: &[Sample]) {
        let mut batch = Vec::with_capacity(samples.len());
        for s in samples {
            let labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let id = self.store.series_id(labels.into());
            batch.push((id, s.t, s.v));
        }
        self.store.append(&batch);
    }

    /// Evaluates groups until `shutdown` is requested.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let mut poll = tokio::time::interval(RELOAD_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let slots = self.slots();
            let now = now_ms();
            let all = self.triggered.swap(false, Ordering::AcqRel);
            let due: Vec<Arc<Slot>> = slots
                .iter()
                .filter(|s| all || s.next_ms.load(Ordering::Acquire) <= now)
                .cloned()
                .collect();
            if !due.is_empty() {
                for s in &due {
                    let interval = s.group.interval_ms().max(1);
                    // The next evaluation stays on the group's own grid.
                    let mut next = s.next_ms.load(Ordering::Acquire);
                    while next <= now {
                        next += interval;
                    }
                    s.next_ms.store(next, Ordering::Release);
                }
                let this = Arc::clone(&self);
                let t = now_ms();
                let r = tokio::task::spawn_blocking(move || {
                    for s in &due {
                        this.eval(s, t);
                    }
                })
                .await;
                if let Err(error) = r {
                    warn!(%error, "Rule evaluation task failed.");
                }
                continue;
            }
            let next = slots
                .iter()
                .map(|s| s.next_ms.load(Ordering::Acquire))
                .min();
            let sleep = next.map_or(Duration::from_hours(1), |n| {
                Duration::from_millis((n - now).max(1) as u64)
            });
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = self.wake.notified() => {}
                _ = poll.tick() => {
                    if !self.patterns.is_empty() && self.files_changed() {
                        info!("Rule files changed; reloading.");
                        let _ = self.reload();
                    }
                }
                () = shutdown.requested() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_grows_to_the_longest_range_the_rules_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("r.yml");
        std::fs::write(
            &f,
            "groups:\n  - name: g\n    rules:\n      - record: a\n        expr: rate(x[1h])\n      - record: b\n        expr: y offset 10m\n",
        )
        .unwrap();
        let pat = vec![f.display().to_string()];
        let opts = GroupOptions::default();
        let fifteen = 15 * 60 * 1000;
        assert!(retention_for_rules(&pat, &opts, fifteen) >= 60 * 60 * 1000);
        // A longer configured retention stays; no rules, no change.
        assert_eq!(
            retention_for_rules(&pat, &opts, 3 * 3_600_000),
            3 * 3_600_000
        );
        assert_eq!(retention_for_rules(&[], &opts, fifteen), fifteen);
    }
}
