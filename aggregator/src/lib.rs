//! nodewatch aggregator: receives agent streams, keeps recent history,
//! exposes it to Prometheus and answers operators' queries.
//!
//! # Layout
//! - [`config`]: the YAML configuration and its validation.
//! - [`accept`]: TLS handshakes on the gRPC port, with limits per source address.
//! - [`auth`]: roles from the client certificate.
//! - [`bootstrap`]: per-node certificates for Kubernetes agents (TokenReview).
//! - [`ingest`]: the `Ingest.Stream` service (agent → store).
//! - [`store`]: per-series recent samples, family metadata.
//! - [`chunk`]: Gorilla-compressed sample chunks the store keeps.
//! - [`remote_write`]: Prometheus remote-write 1.0 sender.
//! - [`nodes`]: per-node Hello, streams, delivery cursors, series counts.
//! - [`liveness`]: per-node `up` and batch counters in the store, the known-nodes file.
//! - [`events`]: recent events and the live feed.
//! - [`expose`]: `/metrics` (gzip when asked), `/healthz`.
//! - [`api`]: Prometheus' HTTP query API (`/api/v1/*`) for Grafana and promtool.
//! - [`own_metrics`]: the aggregator's own metrics and their help texts.
//! - [`query`]: the `Query` service (nodes, instant queries, events).
//! - [`promql`]: the `PromQL` evaluator over a `Storage` trait.
//! - [`rules`]: Prometheus rule files, groups, recording and alerting rules, the
//!   manager that runs them on their intervals and at once on events, and
//!   `promtool test rules` compatibility.
//! - [`template`]: Go templates of alert labels and annotations.
//! - [`notifier`]: sends alerts to Alertmanager.
//! - [`server`]: wiring and shutdown.
//! - [`throttle`]: rate-limited repeated warnings.

pub mod accept;
pub mod api;
pub mod auth;
pub mod bootstrap;
pub mod chunk;
pub mod config;
pub mod events;
pub mod expose;
pub mod ingest;
pub mod liveness;
pub mod nodes;
pub mod notifier;
pub mod own_metrics;
pub mod promql;
pub mod query;
pub mod remote_write;
pub mod rules;
pub mod server;
pub mod store;
pub mod template;
pub mod throttle;
