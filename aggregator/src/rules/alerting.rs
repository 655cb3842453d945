//! The alert state machine of an alerting rule, after
//! `prometheus/rules/alerting.go` (`AlertingRule.Eval`).
//!
//! Each output series of the expression is an alert, identified by its
//! labels after the rule's labels are applied. A new alert is `Pending`; it
//! becomes `Firing` once it has been active for `for`. When its series
//! disappears a pending alert is dropped, and a firing one keeps firing for
//! `keep_firing_for`, then turns `Inactive` (resolved) and is kept for
//! [`RESOLVED_RETENTION_MS`] so notifiers can repeat the resolution.

use std::collections::{BTreeMap, HashMap};

use nodewatch_proto::gocompat::{query_escape, rfc3339_ms};

use super::rulefmt::RuleSpec;
use super::RuleError;
use crate::notifier::PostableAlert;
use crate::promql::{Engine, Labels, Sample, Storage, Value, METRIC_NAME};
use crate::template::{QueryFn, QuerySample, Template, TemplateData};

/// How long a resolved alert is kept (`resolvedRetention`, 15 minutes):
/// long enough to re-send the resolution to Alertmanager.
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

/// Name of the series holding active alerts.
pub const ALERTS_METRIC: &str = "ALERTS";
/// Name of the series holding when each active alert became active.
pub const ALERTS_FOR_STATE_METRIC: &str = "ALERTS_FOR_STATE";

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    /// Resolved: was firing, no longer is.
    Inactive,
    /// Active for less than `for`.
    Pending,
    /// Active for at least `for`.
    Firing,
}

impl AlertState {
    /// Prometheus' name for the state (`alertstate` label).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// One alert of an alerting rule.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveAlert {
    /// The alerting rule's name.
    pub rule: String,
    /// Identifying labels, including `alertname`.
    pub labels: Labels,
    /// Expanded annotations.
    pub annotations: BTreeMap<String, String>,
    /// Current state.
    pub state: AlertState,
    /// The expression's value at the last evaluation it was present in.
    pub value: f64,
    /// When it became active, ms.
    pub active_at_ms: i64,
    /// When it started firing, ms.
    pub fired_at_ms: Option<i64>,
    /// When it was resolved, ms.
    pub resolved_at_ms: Option<i64>,
    /// Since when it is kept firing by `keep_firing_for`, ms.
    pub keep_firing_since_ms: Option<i64>,
    /// When it was last handed to the notifier, ms.
    pub last_sent_ms: Option<i64>,
    /// The `endsAt` last sent for it while firing, ms.
    pub valid_until_ms: Option<i64>,
}

impl ActiveAlert {
    /// Whether the notifier should (re-)send this alert at `t`
    /// (`Alert.needsSending`): never while pending; at once when resolved
    /// since the last send; otherwise once `resend_delay` has passed.
    #[must_use]
    pub fn needs_sending(&self, t: i64, resend_delay_ms: i64) -> bool {
        if self.state == AlertState::Pending {
            return false;
        }
        match (self.resolved_at_ms, self.last_sent_ms) {
            (_, None) => true,
            (Some(r), Some(s)) if r > s => true,
            (_, Some(s)) => s.saturating_add(resend_delay_ms) < t,
        }
    }
}

/// Evaluation-wide data the templates can read.
#[derive(Debug, Clone, Default)]
pub struct ExternalContext {
    /// `$externalLabels`.
    pub labels: BTreeMap<String, String>,
    /// `$externalURL`.
    pub url: String,
}

/// The mutable state of one alerting rule.
#[derive(Debug, Default, Clone)]
pub(crate) struct AlertingState {
    pub(crate) active: HashMap<Labels, ActiveAlert>,
}

impl AlertingState {
    /// Applies one evaluation result at `t` and returns the `ALERTS` and
    /// `ALERTS_FOR_STATE` samples; `query` serves the templates' `query`.
    pub(crate) fn update(
        &mut self,
        rule: &RuleSpec,
        result: Vec<Sample>,
        (t, query): (i64, &QueryFn<'_>),
        ext: &ExternalContext,
        limit: u64,
    ) -> Result<Vec<Sample>, RuleError> {
        let current = Self::current(rule, result, (t, query), ext)?;
        for (k, a) in &current {
            match self.active.get_mut(k) {
                Some(old) if old.state != AlertState::Inactive => {
                    old.value = a.value;
                    old.annotations.clone_from(&a.annotations);
                }
                _ => {
                    self.active.insert(k.clone(), a.clone());
                }
            }
        }
        let mut out = Vec::new();
        let mut active_pending = 0_u64;
        let mut remove = Vec::new();
        for (k, a) in &mut self.active {
            if current.contains_key(k) {
                a.keep_firing_since_ms = None;
            } else {
                let mut keep_firing = false;
                if a.state == AlertState::Firing && rule.keep_firing_for_ms > 0 {
                    let since = *a.keep_firing_since_ms.get_or_insert(t);
                    keep_firing = t - since < rule.keep_firing_for_ms;
                }
                if a.state == AlertState::Pending
                    || a.resolved_at_ms
                        .is_some_and(|r| t - r > RESOLVED_RETENTION_MS)
                {
                    remove.push(k.clone());
                }
                if a.state != AlertState::Inactive && !keep_firing {
                    a.state = AlertState::Inactive;
                    a.resolved_at_ms = Some(t);
                }
                if !keep_firing {
                    continue;
                }
            }
            active_pending += 1;
            if a.state == AlertState::Pending && t - a.active_at_ms >= rule.for_ms {
                a.state = AlertState::Firing;
                a.fired_at_ms = Some(t);
            }
            let mut l = a.labels.clone();
            l.set(METRIC_NAME.into(), ALERTS_METRIC.into());
            l.set("alertstate".into(), a.state.as_str().into());
            out.push(Sample {
                labels: l,
                t,
                v: 1.0,
            });
            let mut l = a.labels.clone();
            l.set(METRIC_NAME.into(), ALERTS_FOR_STATE_METRIC.into());
            out.push(Sample {
                labels: l,
                t,
                v: (a.active_at_ms / 1000) as f64,
            });
        }
        for k in remove {
            self.active.remove(&k);
        }
        if limit > 0 && active_pending > limit {
            self.active.clear();
            return Err(RuleError::Limit {
                limit,
                got: active_pending,
                what: "alerts",
            });
        }
        Ok(out)
    }

    /// The alerts of one evaluation result: each series' labels with the
    /// rule's (templated) labels and annotations applied.
    fn current(
        rule: &RuleSpec,
        result: Vec<Sample>,
        (t, query): (i64, &QueryFn<'_>),
        ext: &ExternalContext,
    ) -> Result<HashMap<Labels, ActiveAlert>, RuleError> {
        let mut current: HashMap<Labels, ActiveAlert> = HashMap::with_capacity(result.len());
        for s in result {
            let data = TemplateData {
                labels: s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                external_labels: ext.labels.clone(),
                external_url: ext.url.clone(),
                value: s.v,
                time_ms: t,
                query: Some(query),
            };
            // Template errors are shown in place, as Prometheus does.
            let expand = |tmpl: &Template| {
                tmpl.expand(&data)
                    .unwrap_or_else(|e| format!("<error expanding template: {e}>"))
            };
            let mut labels = s.labels.without_name();
            for (k, _, tmpl) in &rule.labels {
                labels.set(k.clone(), expand(tmpl));
            }
            labels.set("alertname".into(), rule.name.clone());
            let annotations: BTreeMap<String, String> = rule
                .annotations
                .iter()
                .map(|(k, _, tmpl)| (k.clone(), expand(tmpl)))
                .collect();
            if current.contains_key(&labels) {
                return Err(RuleError::DuplicateLabelset(
                    "vector contains metrics with the same labelset after applying alert labels",
                ));
            }
            current.insert(
                labels.clone(),
                ActiveAlert {
                    rule: rule.name.clone(),
                    labels,
                    annotations,
                    state: AlertState::Pending,
                    value: s.v,
                    active_at_ms: t,
                    fired_at_ms: None,
                    resolved_at_ms: None,
                    keep_firing_since_ms: None,
                    last_sent_ms: None,
                    valid_until_ms: None,
                },
            );
        }
        Ok(current)
    }
}

/// The `query` of an alert's templates: it reads what the rule reads, at
/// the rule's evaluation time.
pub(crate) fn template_query<'a>(
    engine: &'a Engine,
    storage: &'a dyn Storage,
    t: i64,
) -> impl Fn(&str) -> Result<Vec<QuerySample>, String> + 'a {
    move |q: &str| {
        let sample = |labels: &Labels, value| QuerySample {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        };
        match engine.query(storage, q, t).map_err(|e| e.to_string())? {
            Value::Vector(v) => Ok(v.iter().map(|s| sample(&s.labels, s.v)).collect()),
            Value::Scalar(v) => Ok(vec![sample(&Labels::new(), v)]),
            Value::String(_) | Value::Matrix(_) => {
                Err("rule result is not a vector or scalar".into())
            }
        }
    }
}

/// Builds the API v2 form of an alert (`sendAlerts` in Prometheus' main):
/// `startsAt` is when it fired, `endsAt` its resolution time or else its
/// validity, `generatorURL` links to the expression's graph.
#[must_use]
pub fn to_postable(
    alert: &ActiveAlert,
    expr: &str,
    external_labels: &Labels,
    external_url: &str,
) -> PostableAlert {
    let mut labels: BTreeMap<String, String> = alert
        .labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in external_labels.iter() {
        labels.entry(k.to_string()).or_insert_with(|| v.to_string());
    }
    let starts = alert.fired_at_ms.unwrap_or(alert.active_at_ms);
    let ends = alert
        .resolved_at_ms
        .or(alert.valid_until_ms)
        .unwrap_or(starts);
    PostableAlert {
        labels,
        annotations: alert.annotations.clone(),
        starts_at: rfc3339_ms(starts),
        ends_at: rfc3339_ms(ends),
        generator_url: format!(
            "{}/graph?g0.expr={}&g0.tab=1",
            external_url.trim_end_matches('/'),
            query_escape(expr)
        ),
    }
}
