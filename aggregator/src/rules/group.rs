//! A rule group (`rules/group.go`): its rules evaluated in order at one
//! time, each seeing what the ones before it wrote; the alert state kept
//! across evaluations; staleness markers for series a rule stops producing;
//! `for` state restored after a restart.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use super::alerting::{self, ActiveAlert, ExternalContext};
use super::recording;
use super::rulefmt::{load_file, GroupSpec, RuleFileErrors, RuleSpec};
use super::RuleError;
use crate::promql::storage::Overlay;
use crate::promql::{
    stale_nan, Engine, EngineOptions, Labels, MemStorage, Sample, Storage, Value, METRIC_NAME,
};

/// Prometheus' default `evaluation_interval` is 1 minute; nodewatch
/// evaluates every second so node events alert within a scrape of them.
pub const DEFAULT_EVAL_INTERVAL_MS: i64 = 1000;

/// Settings shared by the groups of one configuration.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// Interval of groups that set none, ms.
    pub default_interval_ms: i64,
    /// External labels and URL for templates.
    pub external: ExternalContext,
    /// Query engine settings.
    pub engine: EngineOptions,
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self {
            default_interval_ms: DEFAULT_EVAL_INTERVAL_MS,
            external: ExternalContext::default(),
            engine: EngineOptions::default(),
        }
    }
}

/// The outcome of one group evaluation.
#[derive(Debug, Clone, Default)]
pub struct GroupEval {
    /// Samples to store: recording rule outputs, `ALERTS`,
    /// `ALERTS_FOR_STATE`, and staleness markers for series that ended.
    pub recorded: Vec<Sample>,
    /// Every alert the group's alerting rules hold (pending, firing and
    /// recently resolved).
    pub alerts: Vec<ActiveAlert>,
    /// Rules that failed, by name.
    pub errors: Vec<(String, RuleError)>,
}

#[derive(Debug, Default)]
struct GroupState {
    alerting: Vec<alerting::AlertingState>,
    /// Series each rule wrote at its last successful evaluation.
    written: Vec<HashSet<Labels>>,
}

/// A rule group with its state across evaluations.
#[derive(Debug)]
pub struct Group {
    spec: GroupSpec,
    interval_ms: i64,
    engine: Engine,
    external: ExternalContext,
    /// Every selector of every rule, for [`Group::reads`].
    selectors: Vec<promql_parser::label::Matchers>,
    state: Mutex<GroupState>,
}

impl Group {
    /// A group from its validated spec.
    #[must_use]
    pub fn new(spec: GroupSpec, opts: &GroupOptions) -> Self {
        let n = spec.rules.len();
        let selectors = spec
            .rules
            .iter()
            .flat_map(|r| crate::promql::selectors(&r.expr))
            .collect();
        Self {
            selectors,
            interval_ms: spec.interval_ms.unwrap_or(opts.default_interval_ms),
            spec,
            engine: Engine::new(opts.engine),
            external: opts.external.clone(),
            state: Mutex::new(GroupState {
                alerting: vec![alerting::AlertingState::default(); n],
                written: vec![HashSet::new(); n],
            }),
        }
    }

    /// The group's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The file the group came from.
    #[must_use]
    pub fn file(&self) -> &Path {
        &self.spec.file
    }

    /// Evaluation interval, ms.
    #[must_use]
    pub fn interval_ms(&self) -> i64 {
        self.interval_ms
    }

    /// The group as loaded.
    #[must_use]
    pub fn spec(&self) -> &GroupSpec {
        &self.spec
    }

    /// The group's rules.
    #[must_use]
    pub fn rules(&self) -> &[RuleSpec] {
        &self.spec.rules
    }

    /// Evaluates every rule at `t_ms`: returns the samples to store and the
    /// group's alerts. Rule failures are in [`Group::eval_detailed`].
    pub fn eval(&self, storage: &dyn Storage, t_ms: i64) -> (Vec<Sample>, Vec<ActiveAlert>) {
        let e = self.eval_detailed(storage, t_ms);
        (e.recorded, e.alerts)
    }

    /// Evaluates every rule at `t_ms`, in order; each rule sees the outputs
    /// of the rules before it (Prometheus appends each rule's output to
    /// storage before running the next).
    pub fn eval_detailed(&self, storage: &dyn Storage, t_ms: i64) -> GroupEval {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut overlay = Overlay {
            base: storage,
            extra: MemStorage::new(),
        };
        let mut out = GroupEval::default();
        for (i, rule) in self.spec.rules.iter().enumerate() {
            let produced = match self.eval_rule(rule, &overlay, t_ms, &mut state.alerting[i]) {
                Ok(s) => s,
                Err(e) => {
                    out.errors.push((rule.name.clone(), e));
                    continue;
                }
            };
            let now: HashSet<Labels> = produced.iter().map(|s| s.labels.clone()).collect();
            // Series the rule wrote last time but not now end with a
            // staleness marker (`Group.Eval`, "stale" handling).
            let mut ended: Vec<&Labels> = state.written[i].difference(&now).collect();
            ended.sort();
            let markers: Vec<Sample> = ended
                .into_iter()
                .map(|l| Sample {
                    labels: l.clone(),
                    t: t_ms,
                    v: stale_nan(),
                })
                .collect();
            for s in produced.iter().chain(&markers) {
                overlay.extra.append(&s.labels, t_ms, s.v);
            }
            state.written[i] = now;
            out.recorded.extend(produced);
            out.recorded.extend(markers);
        }
        for a in &state.alerting {
            let mut alerts: Vec<&ActiveAlert> = a.active.values().collect();
            alerts.sort_by(|x, y| x.labels.cmp(&y.labels));
            out.alerts.extend(alerts.into_iter().cloned());
        }
        out
    }

    fn eval_rule(
        &self,
        rule: &RuleSpec,
        storage: &dyn Storage,
        t: i64,
        alert_state: &mut alerting::AlertingState,
    ) -> Result<Vec<Sample>, RuleError> {
        let vector = match self.engine.eval(storage, &rule.expr, t)? {
            Value::Vector(v) => v,
            Value::Scalar(v) => vec![Sample {
                labels: Labels::new(),
                t,
                v,
            }],
            Value::String(_) | Value::Matrix(_) => return Err(RuleError::NotAVector),
        };
        if rule.is_alert {
            let query = alerting::template_query(&self.engine, storage, t);
            return alert_state.update(rule, vector, (t, &query), &self.external, self.spec.limit);
        }
        recording::eval(rule, vector, t, self.spec.limit)
    }

    /// Whether a sample of a series with `labels` can change what this
    /// group computes: any selector of any rule matches it. The aggregator
    /// uses this to evaluate a group as soon as an event lands in a series
    /// it reads, rather than at its next interval.
    #[must_use]
    pub fn reads(&self, labels: &Labels) -> bool {
        self.selectors
            .iter()
            .any(|m| crate::promql::storage::matchers_select(labels, m))
    }

    /// Restores the `for` progress of this group's alerts after a restart
    /// from the `ALERTS_FOR_STATE` series written before it
    /// (`Group.RestoreForState`). Call it once, right after the first
    /// evaluation at `t_ms`. For each pending or firing alert whose rule has
    /// `for` of at least the grace period, the last `ALERTS_FOR_STATE`
    /// sample older than `t_ms` within `outage_tolerance_ms` says when the
    /// alert became active and when the aggregator went down:
    /// - if it had already been pending for `for`, its activity time is
    ///   restored and it fires again at the next evaluation;
    /// - if less than the grace period was left, it fires one grace period
    ///   from now, so a restart cannot make it fire at once;
    /// - otherwise its activity time is moved forward by the downtime.
    pub fn restore_for_state(
        &self,
        storage: &dyn Storage,
        t_ms: i64,
        outage_tolerance_ms: i64,
        grace_period_ms: i64,
    ) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for (rule, alerting) in self.spec.rules.iter().zip(state.alerting.iter_mut()) {
            if !rule.is_alert || rule.for_ms < grace_period_ms {
                continue;
            }
            for a in alerting.active.values_mut() {
                let mut matchers: Vec<promql_parser::label::Matcher> = a
                    .labels
                    .iter()
                    .map(|(k, v)| {
                        promql_parser::label::Matcher::new(
                            promql_parser::label::MatchOp::Equal,
                            k,
                            v,
                        )
                    })
                    .collect();
                matchers.push(promql_parser::label::Matcher::new(
                    promql_parser::label::MatchOp::Equal,
                    METRIC_NAME,
                    alerting::ALERTS_FOR_STATE_METRIC,
                ));
                let series = storage.select(
                    &promql_parser::label::Matchers::new(matchers),
                    t_ms.saturating_sub(outage_tolerance_ms),
                    t_ms.saturating_sub(1),
                );
                // Exactly this alert's series, not one with extra labels.
                let Some((down_at, active_s)) = series
                    .iter()
                    .filter(|s| s.labels.clone().without_name() == a.labels)
                    .filter_map(|s| {
                        s.samples
                            .iter()
                            .rev()
                            .find(|(_, v)| !crate::promql::is_stale_nan(*v))
                            .copied()
                    })
                    .max_by_key(|(t, _)| *t)
                else {
                    continue;
                };
                // Prometheus keeps whole seconds here.
                let down_at = down_at.div_euclid(1000) * 1000;
                let restored = (active_s as i64).saturating_mul(1000);
                let remaining = rule.for_ms - (down_at - restored);
                a.active_at_ms = if remaining <= 0 {
                    restored
                } else if remaining < grace_period_ms {
                    t_ms + grace_period_ms - rule.for_ms
                } else {
                    restored + (t_ms - down_at)
                };
            }
        }
    }

    /// The alerts to hand to the notifier after an evaluation at `t_ms`
    /// (`AlertingRule.sendAlerts`): firing alerts not sent for
    /// `resend_delay_ms`, and alerts resolved since their last send. Each is
    /// marked sent; a firing one is valid until `t + 4 × max(interval,
    /// resend delay)`, so Alertmanager resolves it by itself if two
    /// evaluations or sends are missed. Returns each alert with the text of
    /// its rule's expression (for `generatorURL`).
    pub fn alerts_to_send(&self, t_ms: i64, resend_delay_ms: i64) -> Vec<(ActiveAlert, String)> {
        let delta = self.interval_ms.max(resend_delay_ms);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        for (rule, alerting) in self.spec.rules.iter().zip(state.alerting.iter_mut()) {
            let mut keys: Vec<&Labels> = alerting.active.keys().collect();
            keys.sort();
            let keys: Vec<Labels> = keys.into_iter().cloned().collect();
            for k in keys {
                let Some(a) = alerting.active.get_mut(&k) else {
                    continue;
                };
                if a.needs_sending(t_ms, resend_delay_ms) {
                    a.last_sent_ms = Some(t_ms);
                    a.valid_until_ms = Some(t_ms.saturating_add(delta.saturating_mul(4)));
                    out.push((a.clone(), rule.expr_text.clone()));
                }
            }
        }
        out
    }

    /// How much history the group's rules read, in milliseconds (the
    /// longest range or lookback plus offset); `None` if a rule pins a
    /// selector with `@ <time>`. The store keeps at least this much of every
    /// series the group [`reads`](Group::reads); restoring `for` state after
    /// a restart also needs `ALERTS_FOR_STATE` for the outage tolerance.
    #[must_use]
    pub fn history_needed_ms(&self) -> Option<i64> {
        let lookback = self.engine.options().lookback_ms;
        self.spec
            .rules
            .iter()
            .map(|r| crate::promql::history_needed_ms(&r.expr, lookback))
            .try_fold(0_i64, |acc, n| n.map(|n| acc.max(n)))
    }

    /// The group's alerts as of the last evaluation.
    #[must_use]
    pub fn alerts(&self) -> Vec<ActiveAlert> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .alerting
            .iter()
            .flat_map(|a| a.active.values().cloned())
            .collect()
    }
}

/// Loads and validates rule files into groups; every problem in every file
/// is reported.
pub fn load_groups(paths: &[PathBuf], opts: &GroupOptions) -> Result<Vec<Group>, RuleFileErrors> {
    let mut groups = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        match load_file(p) {
            Ok(specs) => groups.extend(specs.into_iter().map(|s| Group::new(s, opts))),
            Err(e) => errors.extend(e.0),
        }
    }
    if errors.is_empty() {
        Ok(groups)
    } else {
        Err(RuleFileErrors(errors))
    }
}
