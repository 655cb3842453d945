//! Which series the aggregator can hold, and the load-time warning for rules
//! that read one it never can.
//!
//! The aggregator's store holds what agents send (ingest refuses node
//! series named `up`, `ALERTS*` and `nodewatch_aggregator_*`), what it
//! writes itself (node liveness, [`crate::liveness::WRITTEN`]; `ALERTS`,
//! `ALERTS_FOR_STATE`) and the outputs of recording rules. Some series only
//! ever exist in Prometheus: `up` of a scrape job other than the agents',
//! Prometheus' and Alertmanager's own metrics, the per-scrape `scrape_*`
//! series, and the aggregator's own `nodewatch_aggregator_*` health, which
//! is exported on `/metrics` and never stored here. A rule reading one of
//! those evaluates, but over nothing: an `absent()` of it is always 1 and
//! a comparison never matches. Such a rule belongs in a file only
//! Prometheus loads (`deploy/rules/nodewatch-aggregators.rules.yml`); the
//! aggregator and `check-rules` warn, naming file, group, rule and
//! selector, and keep the rule.

use std::collections::HashSet;

use promql_parser::label::{MatchOp, Matcher, Matchers};

use super::{GroupSpec, RuleFileError};
use crate::promql::selectors;
use crate::promql::METRIC_NAME;

/// Name prefixes of series that exist only in Prometheus (its own, its
/// scrapes', Alertmanager's) or only on the aggregator's `/metrics`.
pub const PROMETHEUS_ONLY_PREFIXES: &[&str] = &[
    "prometheus_",
    "scrape_",
    "alertmanager_",
    "promhttp_",
    "nodewatch_aggregator_",
];

/// Why the aggregator can never hold a series `m` selects, or `None` when
/// it can (or the name is not fixed).
fn never_held(m: &Matchers, recorded: &HashSet<&str>) -> Option<String> {
    let name = m
        .matchers
        .iter()
        .find(|x| x.name == METRIC_NAME && x.op == MatchOp::Equal)
        .map(|x| x.value.as_str())?;
    if recorded.contains(name) || crate::liveness::WRITTEN.contains(&name) {
        // The liveness `up` is job="nodewatch-agent" only.
        if name == crate::liveness::UP {
            if let Some(job) = m.matchers.iter().find(|x| x.name == "job") {
                if !job.is_match(crate::liveness::JOB) {
                    return Some(format!(
                        "the aggregator's `up` has only job=\"{}\" (its nodes); `up` of other jobs exists only in Prometheus",
                        crate::liveness::JOB
                    ));
                }
            }
        }
        return None;
    }
    PROMETHEUS_ONLY_PREFIXES
        .iter()
        .find(|p| name.starts_with(*p))
        .map(|p| {
            if *p == "nodewatch_aggregator_" {
                "the aggregator's own health is on /metrics only, for Prometheus".to_string()
            } else {
                format!("`{p}*` series exist only in Prometheus or Alertmanager")
            }
        })
}

/// A selector as written: `name{label="value",…}`.
fn render(m: &Matchers) -> String {
    let name = m
        .matchers
        .iter()
        .find(|x| x.name == METRIC_NAME && x.op == MatchOp::Equal)
        .map_or("", |x| x.value.as_str());
    let rest: Vec<String> = m
        .matchers
        .iter()
        .filter(|x| !(x.name == METRIC_NAME && x.op == MatchOp::Equal))
        .map(Matcher::to_string)
        .collect();
    if rest.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{}}}", rest.join(","))
    }
}

/// One warning per rule selector the aggregator can never hold, over all
/// `groups` (recording rules of any of them count as held).
#[must_use]
pub fn unheld_selectors<'a>(
    groups: impl IntoIterator<Item = &'a GroupSpec> + Clone,
) -> Vec<RuleFileError> {
    let recorded: HashSet<&str> = groups
        .clone()
        .into_iter()
        .flat_map(|g| {
            g.rules
                .iter()
                .filter(|r| !r.is_alert)
                .map(|r| r.name.as_str())
        })
        .collect();
    let mut out = Vec::new();
    for g in groups {
        for (i, r) in g.rules.iter().enumerate() {
            let mut seen = HashSet::new();
            for m in selectors(&r.expr) {
                let Some(why) = never_held(&m, &recorded) else {
                    continue;
                };
                let sel = render(&m);
                if !seen.insert(sel.clone()) {
                    continue;
                }
                out.push(RuleFileError {
                    file: g.file.clone(),
                    line: None,
                    group: Some(g.name.clone()),
                    rule: Some((i + 1, r.name.clone())),
                    problem: format!(
                        "selector `{sel}` reads a series the aggregator never holds ({why}); the rule is kept but sees nothing here: load it in Prometheus instead"
                    ),
                });
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::Path;

    fn warnings(text: &str) -> Vec<String> {
        let groups = super::super::parse_rules(Path::new("r.yml"), text).unwrap();
        unheld_selectors(&groups)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn prometheus_only_selectors_are_named_with_file_group_and_rule() {
        let w = warnings(
            r#"groups:
  - name: agg
    rules:
      - alert: AggregatorsAbsent
        expr: absent(up{job="nodewatch-aggregator"} == 1)
      - alert: Denied
        expr: increase(nodewatch_aggregator_denied_total[5m]) > 0 and on() prometheus_ready == 1
"#,
        );
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(
            w[0].starts_with("r.yml: group \"agg\", rule 1 (\"AggregatorsAbsent\"): selector `up{job=\"nodewatch-aggregator\"}`"),
            "{}",
            w[0]
        );
        assert!(
            w[1].contains("rule 2 (\"Denied\"): selector `nodewatch_aggregator_denied_total`"),
            "{}",
            w[1]
        );
        assert!(w[2].contains("selector `prometheus_ready`"), "{}", w[2]);
    }

    #[test]
    fn agent_liveness_and_recorded_series_are_not_warned_about() {
        let w = warnings(
            r#"groups:
  - name: ok
    rules:
      - record: prometheus_like:sum
        expr: sum(node_load1)
      - alert: A
        expr: up{job="nodewatch-agent"} == 0 or up == 0 or rate(nodewatch_aggregator_batches_total[1m]) == 0
      - alert: B
        expr: prometheus_like:sum > 1 and on() count(ALERTS) > 0 and on() {__name__=~"scrape_.*"}
      - alert: C
        expr: nodewatch_oom_kills_total > 0 and on() vector(1)
"#,
        );
        assert!(w.is_empty(), "{w:?}");
    }
}
