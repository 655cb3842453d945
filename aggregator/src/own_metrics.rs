//! The aggregator's own metrics (`nodewatch_aggregator_*`): one table of
//! names and help texts, registered with the process recorder at start so
//! that `/metrics` carries a `# HELP` line for each, as `promtool check
//! metrics` asks.

/// What a metric is, for its `describe_*` call.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric the aggregator records about itself, with its help text.
const OWN: &[(&str, Kind, &str)] = &[
    ("nodewatch_aggregator_batches_total", Kind::Counter, "Batches received from each node, duplicates included."),
    ("nodewatch_aggregator_samples_total", Kind::Counter, "Samples stored from each node."),
    ("nodewatch_aggregator_events_total", Kind::Counter, "Events (OOM kills, pool state changes) received from each node, by kind."),
    ("nodewatch_aggregator_duplicate_batches_total", Kind::Counter, "Batches received again after they were stored (a lost ack or a resend after reconnect); acknowledged, not stored twice."),
    ("nodewatch_aggregator_frame_errors_total", Kind::Counter, "Frames refused from each node, by kind of problem."),
    ("nodewatch_aggregator_node_limit_hits_total", Kind::Counter, "Times a node went over one of its limits (series, samples per second), by limit."),
    ("nodewatch_aggregator_nodes_connected", Kind::Gauge, "Agent streams open now."),
    ("nodewatch_aggregator_series", Kind::Gauge, "Series held in the store."),
    ("nodewatch_aggregator_reserved_names_refused_total", Kind::Counter, "Series a node sent under a name reserved to Prometheus, the aggregator or a recording rule, refused one by one, by node and owner of the name."),
    ("nodewatch_aggregator_api_queries_refused_total", Kind::Counter, "HTTP query API requests refused (timeout, sample or point limit, authentication), by reason."),
    ("nodewatch_aggregator_denied_total", Kind::Counter, "Calls refused because the client certificate's role may not make them, by RPC."),
    ("nodewatch_aggregator_auth_failures_total", Kind::Counter, "Connections or calls refused for their certificate or identity, by reason."),
    ("nodewatch_aggregator_bootstrap_total", Kind::Counter, "Bootstrap calls (node certificates from ServiceAccount tokens), by result."),
    ("nodewatch_aggregator_rule_groups", Kind::Gauge, "Rule groups loaded."),
    ("nodewatch_aggregator_rules_last_reload_successful", Kind::Gauge, "Whether the last rule reload succeeded (1) or was refused and the previous rules kept (0)."),
    ("nodewatch_aggregator_rule_load_errors_total", Kind::Counter, "Problems found in rule files at load or reload."),
    ("nodewatch_aggregator_rule_unheld_selectors", Kind::Gauge, "Selectors in the loaded rules that name series this aggregator never holds (each warned about at load)."),
    ("nodewatch_aggregator_rule_evaluation_failures_total", Kind::Counter, "Rule evaluations that failed, by group."),
    ("nodewatch_aggregator_rule_group_evaluations_total", Kind::Counter, "Rule group evaluations, by group."),
    ("nodewatch_aggregator_rule_group_duration_seconds", Kind::Histogram, "Time one evaluation of a rule group took, by group."),
    ("nodewatch_aggregator_notifications_sent_total", Kind::Counter, "Alerts sent to each Alertmanager."),
    ("nodewatch_aggregator_notifications_errors_total", Kind::Counter, "Failed sends to each Alertmanager."),
    ("nodewatch_aggregator_notifications_dropped_total", Kind::Counter, "Alerts dropped because the notification queue was full."),
    ("nodewatch_aggregator_remote_write_samples_total", Kind::Counter, "Samples accepted by each remote-write receiver."),
    ("nodewatch_aggregator_remote_write_retried_samples_total", Kind::Counter, "Samples sent again to each remote-write receiver after a failure or a busy answer."),
    ("nodewatch_aggregator_remote_write_failed_samples_total", Kind::Counter, "Samples a remote-write receiver refused for good, or that could not be encoded."),
    ("nodewatch_aggregator_remote_write_dropped_samples_total", Kind::Counter, "Samples dropped because a remote-write queue was full."),
    ("nodewatch_aggregator_remote_write_queue_length", Kind::Gauge, "Samples waiting in each remote-write queue."),
];

/// Registers every help text with the installed recorder.
pub fn describe() {
    for &(name, kind, help) in OWN {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::OWN;

    /// Every `nodewatch_aggregator_*` name the sources record is in the
    /// table, so a new metric cannot ship without its help text.
    #[test]
    fn every_recorded_metric_has_help() {
        let mut missing = Vec::new();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut dirs = vec![root];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") || path.ends_with("own_metrics.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                for (i, _) in text.match_indices("\"nodewatch_aggregator_") {
                    let name: String = text[i + 1..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    // The bare prefix is a pattern (reserved names), not a metric.
                    if name != "nodewatch_aggregator_" && !OWN.iter().any(|(n, _, _)| *n == name) {
                        missing.push(format!("{}: {name}", path.display()));
                    }
                }
            }
        }
        assert!(missing.is_empty(), "no help text for: {missing:#?}");
    }
}
