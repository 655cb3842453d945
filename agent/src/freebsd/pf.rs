//! pf state table and counters from `pfctl -si` and `pfctl -sm`.
//!
//! `pfctl -si` (`print_status` in FreeBSD `sbin/pfctl/pfctl_parser.c`)
//! prints unindented section titles (`State Table`, `Counters`, `Limit
//! Counters`, `Source Tracking Table`, `Interface Stats for …`) followed by
//! indented rows `<name>  <total>  [<rate>/s]`. `pfctl -sm` prints one
//! `<pool>  hard limit  <n>` row per memory pool (`states`, `src-nodes`,
//! `frags`, `table-entries`). Exported:
//!
//! - `nodewatch_pf_states` (current entries), `nodewatch_pf_states_limit`;
//! - `nodewatch_pf_state_{searches,inserts,removals}_total`;
//! - `nodewatch_pf_counter_total{counter}` (the `Counters` section: `match`,
//!   `bad-offset`, `state-insert`, …) and
//!   `nodewatch_pf_limit_counter_total{counter}` (`Limit Counters`);
//! - `nodewatch_pf_limit{pool}` for every `pfctl -sm` row.

use crate::collector::{CollectError, Collector, Sink};
use crate::sys::command::CommandRunner;

/// What `pfctl -si` says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PfInfo {
    pub states: Option<u64>,
    pub searches: Option<u64>,
    pub inserts: Option<u64>,
    pub removals: Option<u64>,
    /// `Counters` rows in order.
    pub counters: Vec<(String, u64)>,
    /// `Limit Counters` rows in order.
    pub limit_counters: Vec<(String, u64)>,
}

/// Splits an indented row into its name (which may contain spaces, as in
/// `current entries` or `max states per rule`) and its total, dropping a
/// trailing `<rate>/s` column.
fn row(line: &str) -> Option<(String, u64)> {
    let mut fields: Vec<&str> = line.split_whitespace().collect();
    if fields.last().is_some_and(|f| f.ends_with("/s")) {
        fields.pop();
    }
    let total = fields.pop()?.parse::<u64>().ok()?;
    if fields.is_empty() {
        return None;
    }
    Some((fields.join(" "), total))
}

/// Parses `pfctl -si` output.
#[must_use]
pub fn parse_info(text: &str) -> PfInfo {
    let mut info = PfInfo::default();
    let mut section = "";
    for line in text.lines() {
        if !line.starts_with([' ', '\t']) {
            section = if line.starts_with("State Table") {
                "state"
            } else if line.starts_with("Limit Counters") {
                "limit"
            } else if line.starts_with("Counters") {
                "counters"
            } else {
                ""
            };
            continue;
        }
        let Some((name, total)) = row(line) else {
            continue;
        };
        match section {
            "state" => match name.as_str() {
                "current entries" => info.states = Some(total),
                "searches" => info.searches = Some(total),
                "inserts" => info.inserts = Some(total),
                "removals" => info.removals = Some(total),
                _ => {}
            },
            "counters" => info.counters.push((name, total)),
            "limit" => info.limit_counters.push((name, total)),
            _ => {}
        }
    }
    info
}

/// Parses `pfctl -sm`: `(pool, hard limit)` rows.
#[must_use]
pub fn parse_limits(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|line| {
            let (pool, rest) = line.split_once("hard limit")?;
            let pool = pool.trim();
            let limit = rest.trim().parse::<u64>().ok()?;
            (!pool.is_empty()).then(|| (pool.to_string(), limit))
        })
        .collect()
}

/// Writes the samples of both commands.
pub fn write(sink: &mut Sink, info: &PfInfo, limits: &[(String, u64)]) {
    if let Some(v) = info.states {
        sink.gauge(
            "nodewatch_pf_states",
            "Entries in the pf state table.",
            &[],
            v as f64,
        );
    }
    for (name, help, v) in [
        (
            "nodewatch_pf_state_searches_total",
            "pf state table searches.",
            info.searches,
        ),
        (
            "nodewatch_pf_state_inserts_total",
            "pf state table inserts.",
            info.inserts,
        ),
        (
            "nodewatch_pf_state_removals_total",
            "pf state table removals.",
            info.removals,
        ),
    ] {
        if let Some(v) = v {
            sink.counter(name, help, &[], v as f64);
        }
    }
    for (counter, v) in &info.counters {
        sink.counter(
            "nodewatch_pf_counter_total",
            "pf counters (pfctl -si Counters): packets matched, dropped for each reason.",
            &[("counter", counter)],
            *v as f64,
        );
    }
    for (counter, v) in &info.limit_counters {
        sink.counter(
            "nodewatch_pf_limit_counter_total",
            "pf limit counters (pfctl -si Limit Counters): packets dropped by a rule's limits.",
            &[("counter", counter)],
            *v as f64,
        );
    }
    for (pool, v) in limits {
        if pool == "states" {
            sink.gauge(
                "nodewatch_pf_states_limit",
                "Hard limit of the pf state table (set limit states).",
                &[],
                *v as f64,
            );
        }
        sink.gauge(
            "nodewatch_pf_limit",
            "Hard limits of pf's memory pools (pfctl -sm).",
            &[("pool", pool)],
            *v as f64,
        );
    }
}

/// Runs `pfctl -si` and `pfctl -sm` each collection.
pub struct PfCollector {
    runner: Box<dyn CommandRunner>,
}

impl PfCollector {
    #[must_use]
    pub fn new(runner: Box<dyn CommandRunner>) -> Self {
        Self { runner }
    }
}

impl Collector for PfCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        let other = |e: crate::sys::command::CommandError| CollectError::Other(e.to_string());
        // No pfctl (not a firewall host): no data.
        let Some(info) = self.runner.run("pfctl", &["-si"]).map_err(other)? else {
            return Ok(());
        };
        let limits = self
            .runner
            .run("pfctl", &["-sm"])
            .map_err(other)?
            .unwrap_or_default();
        write(sink, &parse_info(&info), &parse_limits(&limits));
        Ok(())
    }
}

#[cfg(target_os = "freebsd")]
pub const SPEC: crate::collector::CollectorSpec =
    crate::collector::CollectorSpec::new("pf", |paths| {
        // pfctl needs /dev/pf, which exists once pf.ko is loaded.
        if !paths.root("/dev/pf").exists() {
            return Err(crate::collector::Unavailable(
                "no /dev/pf (pf not loaded)".into(),
            ));
        }
        Ok(Box::new(PfCollector::new(Box::new(
            crate::sys::command::SystemRunner::default(),
        ))))
    });

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil::{fixture_text, fuzz_inputs, value};
    use crate::sys::command::CommandError;

    /// `pfctl -sm` as FreeBSD 14 prints it (`print_limits`, `pfctl.c`:
    /// `"%-13s hard limit %8u"`).
    const SM: &str = "states        hard limit   800000\n\
                      src-nodes     hard limit   800000\n\
                      frags         hard limit     5000\n\
                      table-entries hard limit   400000\n";

    #[test]
    fn interface_stats_fixture() {
        let info = parse_info(&fixture_text("freebsd/pfctl-si-interface-stats.txt"));
        assert_eq!(info.states, Some(649));
        assert_eq!(info.searches, Some(18_421_725_761));
        assert_eq!(info.inserts, Some(156_762_508));
        assert_eq!(info.removals, Some(156_761_859));
        assert_eq!(info.counters.len(), 15);
        assert_eq!(info.counters[0], ("match".to_string(), 473_002_784));
        assert!(info
            .counters
            .contains(&("state-mismatch".to_string(), 24_393)));
        // `Bytes In` rows of the interface block are not counters.
        assert!(!info.counters.iter().any(|(n, _)| n.starts_with("Bytes")));
    }

    #[test]
    fn short_uptime_fixture_and_metrics() {
        let info = parse_info(&fixture_text("freebsd/pfctl-si-short-uptime.txt"));
        assert_eq!(
            (info.states, info.searches, info.inserts, info.removals),
            (Some(2), Some(11325), Some(5), Some(3))
        );
        let mut sink = Sink::new();
        write(&mut sink, &info, &parse_limits(SM));
        assert_eq!(value(&sink, "nodewatch_pf_states", &[]), Some(2.0));
        assert_eq!(
            value(&sink, "nodewatch_pf_states_limit", &[]),
            Some(800_000.0)
        );
        assert_eq!(
            value(&sink, "nodewatch_pf_limit", &[("pool", "frags")]),
            Some(5000.0)
        );
        assert_eq!(
            value(&sink, "nodewatch_pf_state_searches_total", &[]),
            Some(11325.0)
        );
        assert_eq!(
            value(&sink, "nodewatch_pf_counter_total", &[("counter", "match")]),
            Some(11226.0)
        );
    }

    #[test]
    fn limit_counters_section() {
        let text = "Limit Counters\n  max states per rule                0            0.0/s\n  max-src-states                     3            0.0/s\n";
        let info = parse_info(text);
        assert_eq!(
            info.limit_counters,
            vec![
                ("max states per rule".to_string(), 0),
                ("max-src-states".to_string(), 3)
            ]
        );
    }

    struct Fake;
    impl CommandRunner for Fake {
        fn run(&self, _: &str, args: &[&str]) -> Result<Option<String>, CommandError> {
            Ok(Some(match args {
                ["-si"] => fixture_text("freebsd/pfctl-si-short-uptime.txt"),
                _ => SM.to_string(),
            }))
        }
    }

    struct Missing;
    impl CommandRunner for Missing {
        fn run(&self, _: &str, _: &[&str]) -> Result<Option<String>, CommandError> {
            Ok(None)
        }
    }

    #[test]
    fn collector() {
        let mut sink = Sink::new();
        PfCollector::new(Box::new(Fake)).collect(&mut sink).unwrap();
        assert_eq!(
            value(&sink, "nodewatch_pf_states_limit", &[]),
            Some(800_000.0)
        );
        let mut sink = Sink::new();
        PfCollector::new(Box::new(Missing))
            .collect(&mut sink)
            .unwrap();
        assert!(sink.samples.is_empty());
    }

    #[test]
    fn never_panics() {
        let seeds = [
            fixture_text("freebsd/pfctl-si-interface-stats.txt"),
            SM.to_string(),
        ];
        for input in fuzz_inputs(&seeds, 0xbf) {
            let info = parse_info(&input);
            let limits = parse_limits(&input);
            write(&mut Sink::new(), &info, &limits);
        }
    }
}
