//! The aggregator's integration tests, one binary of modules (each module
//! was once a binary of its own; one link instead of eight). None touches
//! host-wide state: they run real promtool and prometheus processes on
//! loopback at most, so their tests may run side by side.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod notifier;
mod promql_differential;
mod promql_eval;
mod promqltest;
mod promtool_alert_differential;
mod promtool_compat;
mod promtool_differential;
mod rule_files;
