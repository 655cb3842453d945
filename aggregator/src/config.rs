//! The aggregator's configuration file (YAML) and its validation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use nodewatch_proto::config::{self, ConfigError, Problems, TlsConfig};
use nodewatch_proto::tls::TlsFiles;
use serde::Deserialize;

/// Default gRPC listen address (Ingest and Query, mutual TLS).
pub const DEFAULT_GRPC_LISTEN: &str = "0.0.0.0:7443";
/// Default HTTP listen address (`/metrics`, `/healthz`).
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:9464";
/// Default history kept per series: enough for 5-minute rates with room to spare.
pub const DEFAULT_RETENTION: Duration = Duration::from_mins(15);
/// Default per-node series limit: a node exports ~1,500 series; 30× headroom
/// for many disks, interfaces and pods, while a runaway agent stays bounded.
pub const DEFAULT_MAX_SERIES_PER_NODE: usize = 50_000;
/// Default largest frame accepted, checked by the gRPC codec before decoding.
/// A 1,500-series batch with its definitions is ~100 KiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Where to listen.
    #[serde(default)]
    pub listen: Listen,
    /// Server certificate, key, and the CA that client certificates must chain to.
    #[serde(default)]
    pub tls: TlsConfig,
    /// In-memory history.
    #[serde(default)]
    pub store: StoreConfig,
    /// Per-node limits.
    #[serde(default)]
    pub limits: Limits,
    /// Prometheus rule files (globs), reloaded on SIGHUP and when they change.
    #[serde(default)]
    pub rule_files: Vec<String>,
    /// Interval of rule groups that set none (default `1s`).
    #[serde(default)]
    pub evaluation_interval: Option<String>,
    /// Labels added to every alert sent (as Prometheus' `global.external_labels`).
    #[serde(default)]
    pub external_labels: BTreeMap<String, String>,
    /// This aggregator's URL, for alerts' `generatorURL` and `$externalURL`.
    #[serde(default)]
    pub external_url: Option<String>,
    /// Where alerts go.
    #[serde(default)]
    pub alerting: Alerting,
    /// Prometheus remote-write 1.0 receivers every stored sample is sent to.
    #[serde(default)]
    pub remote_write: Vec<RemoteWrite>,
}

/// One remote-write receiver.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RemoteWrite {
    /// `http://host:port/api/v1/write`.
    pub url: String,
    #[serde(default)]
    pub queue: RemoteWriteQueue,
}

/// A receiver's queue (unset fields take Prometheus' defaults).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteQueue {
    /// Samples held while the receiver is slow or down; past it new ones are dropped.
    #[serde(default)]
    pub capacity: Option<usize>,
    /// Most samples in one request.
    #[serde(default)]
    pub max_samples_per_send: Option<usize>,
    /// Longest a sample waits for a request to fill (e.g. `5s`).
    #[serde(default)]
    pub batch_send_deadline: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Alerting {
    /// Alertmanager base URLs (`http://alertmanager:9093`); every alert goes to each.
    #[serde(default)]
    pub alertmanagers: Vec<String>,
    /// How often firing alerts are re-sent (default `1m`, as Prometheus).
    #[serde(default)]
    pub resend_delay: Option<String>,
}

/// Default interval of rule groups: one second, so node events alert at once.
pub const DEFAULT_EVALUATION_INTERVAL: Duration = Duration::from_secs(1);
/// Prometheus' default `--rules.alert.resend-delay`.
pub const DEFAULT_RESEND_DELAY: Duration = Duration::from_mins(1);

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// gRPC (Ingest, Query), always mutual TLS.
    #[serde(default = "default_grpc")]
    pub grpc: String,
    /// Plain HTTP for `/metrics` and `/healthz`.
    #[serde(default = "default_http")]
    pub http: String,
}

fn default_grpc() -> String {
    DEFAULT_GRPC_LISTEN.into()
}
fn default_http() -> String {
    DEFAULT_HTTP_LISTEN.into()
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            grpc: default_grpc(),
            http: default_http(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// How long samples are kept per series (e.g. `15m`).
    #[serde(default = "default_retention")]
    pub retention: String,
}

fn default_retention() -> String {
    "15m".into()
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            retention: default_retention(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most series one node may define.
    #[serde(default = "default_max_series")]
    pub max_series_per_node: usize,
    /// Largest frame (bytes) accepted from an agent.
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: usize,
    /// Samples per second one node may send, averaged over a minute (bursts
    /// such as a backfill after an outage may use a minute's worth at once).
    #[serde(default = "default_max_sps")]
    pub max_samples_per_second_per_node: u64,
}

fn default_max_sps() -> u64 {
    DEFAULT_MAX_SAMPLES_PER_SECOND
}

/// Default per-node sample rate: a node sends ~1,500 series every 10 s
/// (150/s, 1,500/s at a 1 s interval); 100 k/s leaves room for backfills
/// while one broken agent cannot take an aggregator's whole ingest budget.
pub const DEFAULT_MAX_SAMPLES_PER_SECOND: u64 = 100_000;

fn default_max_series() -> usize {
    DEFAULT_MAX_SERIES_PER_NODE
}
fn default_max_frame() -> usize {
    DEFAULT_MAX_FRAME_BYTES
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_series_per_node: default_max_series(),
            max_frame_bytes: default_max_frame(),
            max_samples_per_second_per_node: default_max_sps(),
        }
    }
}

/// The validated configuration the server runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub tls: TlsFiles,
    pub retention: Duration,
    pub limits: Limits,
    pub rule_files: Vec<String>,
    pub evaluation_interval: Duration,
    pub external_labels: BTreeMap<String, String>,
    pub external_url: String,
    pub alertmanagers: Vec<String>,
    pub resend_delay: Duration,
    pub remote_write: Vec<crate::remote_write::Target>,
}

impl File {
    /// Loads `path` (or defaults when `None`).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(p) => config::load_yaml(p),
            None => config::parse_yaml("", Path::new("<defaults>")),
        }
    }

    /// Checks everything, reporting every problem at once.
    pub fn validate(&self, source: Option<&Path>) -> Result<Config, ConfigError> {
        let mut p = Problems::new(source);
        let grpc_listen = self
            .listen
            .grpc
            .parse()
            .map_err(|e| p.add("listen.grpc", format!("{:?}: {e}", self.listen.grpc)))
            .ok();
        let http_listen = self
            .listen
            .http
            .parse()
            .map_err(|e| p.add("listen.http", format!("{:?}: {e}", self.listen.http)))
            .ok();
        let tls = self.tls.validate("tls", &mut p);
        let retention = config::parse_duration(&self.store.retention)
            .map_err(|e| p.add("store.retention", e))
            .ok();
        if self.limits.max_series_per_node == 0 {
            p.add("limits.max_series_per_node", "must be at least 1");
        }
        if self.limits.max_frame_bytes < 4096 {
            p.add("limits.max_frame_bytes", "must be at least 4096");
        }
        let evaluation_interval = match &self.evaluation_interval {
            None => DEFAULT_EVALUATION_INTERVAL,
            Some(v) => config::parse_duration(v)
                .map_err(|e| p.add("evaluation_interval", e))
                .unwrap_or(DEFAULT_EVALUATION_INTERVAL),
        };
        let resend_delay = match &self.alerting.resend_delay {
            None => DEFAULT_RESEND_DELAY,
            Some(v) => config::parse_duration(v)
                .map_err(|e| p.add("alerting.resend_delay", e))
                .unwrap_or(DEFAULT_RESEND_DELAY),
        };
        for (i, u) in self.alerting.alertmanagers.iter().enumerate() {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                p.add(
                    format!("alerting.alertmanagers[{i}]"),
                    format!("{u:?}: expected an http:// or https:// URL"),
                );
            }
        }
        for (i, g) in self.rule_files.iter().enumerate() {
            if let Err(e) = glob::Pattern::new(g) {
                p.add(format!("rule_files[{i}]"), format!("{g:?}: {e}"));
            }
        }
        for k in self.external_labels.keys() {
            if k.is_empty()
                || k.starts_with("__")
                || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                p.add(format!("external_labels.{k}"), "not a valid label name");
            }
        }
        let remote_write = self.validate_remote_write(&mut p);
        p.into_result()?;
        match (grpc_listen, http_listen, tls, retention) {
            (Some(grpc_listen), Some(http_listen), Some(tls), Some(retention)) => Ok(Config {
                grpc_listen,
                http_listen,
                tls,
                retention,
                limits: self.limits.clone(),
                rule_files: self.rule_files.clone(),
                evaluation_interval,
                external_labels: self.external_labels.clone(),
                external_url: self
                    .external_url
                    .clone()
                    .unwrap_or_else(|| format!("http://{http_listen}")),
                alertmanagers: self
                    .alerting
                    .alertmanagers
                    .iter()
                    .map(|u| u.trim_end_matches('/').to_string())
                    .collect(),
                resend_delay,
                remote_write,
            }),
            _ => Err(ConfigError::Invalid(Problems::new(source))),
        }
    }

    fn validate_remote_write(&self, p: &mut Problems) -> Vec<crate::remote_write::Target> {
        let mut out = Vec::new();
        for (i, rw) in self.remote_write.iter().enumerate() {
            let key = format!("remote_write[{i}]");
            if let Err(e) = crate::remote_write::HttpSender::new(&rw.url) {
                p.add(format!("{key}.url"), e.to_string());
            }
            let mut queue = crate::remote_write::QueueConfig::default();
            if let Some(c) = rw.queue.capacity {
                queue.capacity = c;
            }
            if let Some(m) = rw.queue.max_samples_per_send {
                queue.max_samples_per_send = m;
            }
            if let Some(d) = &rw.queue.batch_send_deadline {
                match config::parse_duration(d) {
                    Ok(d) if !d.is_zero() => queue.batch_send_deadline = d,
                    Ok(_) => p.add(
                        format!("{key}.queue.batch_send_deadline"),
                        "must be more than 0",
                    ),
                    Err(e) => p.add(format!("{key}.queue.batch_send_deadline"), e),
                }
            }
            if queue.max_samples_per_send == 0 {
                p.add(
                    format!("{key}.queue.max_samples_per_send"),
                    "must be at least 1",
                );
            }
            if queue.capacity < queue.max_samples_per_send {
                p.add(
                    format!("{key}.queue.capacity"),
                    format!(
                        "{} is less than max_samples_per_send ({})",
                        queue.capacity, queue.max_samples_per_send
                    ),
                );
            }
            out.push(crate::remote_write::Target {
                url: rw.url.clone(),
                queue,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_all_problems_with_paths() {
        let f: File = config::parse_yaml(
            "listen: {grpc: 'nope'}\ntls: {ca: /no/ca.crt}\nstore: {retention: forever}\n",
            Path::new("agg.yaml"),
        )
        .unwrap();
        let msg = f
            .validate(Some(Path::new("agg.yaml")))
            .unwrap_err()
            .to_string();
        for want in [
            "listen.grpc",
            "tls.ca: file not found: /no/ca.crt",
            "tls.cert: required",
            "store.retention",
        ] {
            assert!(msg.contains(want), "missing {want:?} in {msg}");
        }
    }

    #[test]
    fn unknown_key_is_refused() {
        let err = config::parse_yaml::<File>("limits:\n  max_series: 3\n", Path::new("agg.yaml"))
            .unwrap_err();
        assert!(err.to_string().contains("max_series"), "{err}");
    }

    #[test]
    fn remote_write_is_validated() {
        let f: File = config::parse_yaml(
            "remote_write:\n  - url: ftp://x\n  - url: http://p:9090/api/v1/write\n    queue: {capacity: 10, max_samples_per_send: 20, batch_send_deadline: soon}\n",
            Path::new("agg.yaml"),
        )
        .unwrap();
        let msg = f.validate(None).unwrap_err().to_string();
        for want in [
            "remote_write[0].url",
            "remote_write[1].queue.capacity",
            "remote_write[1].queue.batch_send_deadline",
        ] {
            assert!(msg.contains(want), "missing {want:?} in {msg}");
        }
        let err = config::parse_yaml::<File>(
            "remote_write:\n  - url: http://p/\n    queue: {size: 3}\n",
            Path::new("agg.yaml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("size"), "{err}");
    }
}
