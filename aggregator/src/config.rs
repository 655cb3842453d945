//! The aggregator's configuration file (YAML) and its validation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nodewatch_proto::config::{self, ConfigError, Problems, TlsConfig};
use nodewatch_proto::tls::TlsFiles;
use serde::Deserialize;

/// Default gRPC listen address (Ingest and Query, mutual TLS): loopback,
/// so nothing is exposed until the configuration says where. Deployments
/// that serve other hosts set it (the Kubernetes manifests use `0.0.0.0`,
/// as a Pod is reached on its Pod IP).
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:7443";
/// Default HTTP listen address (`/metrics`, `/healthz`): loopback, as for gRPC.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9464";
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
    /// Prometheus' HTTP query API on the HTTP port (`/api/v1/...`).
    #[serde(default)]
    pub query_api: QueryApiFile,
    /// Access to `/metrics` (every node's data, OOM-killed process names
    /// included): open by default, like node_exporter's.
    #[serde(default)]
    pub metrics: MetricsFile,
    /// Server certificate, key, and the CA that client certificates must chain to.
    #[serde(default)]
    pub tls: TlsConfig,
    /// In-memory history.
    #[serde(default)]
    pub store: StoreConfig,
    /// Per-node limits.
    #[serde(default)]
    pub limits: Limits,
    /// Node liveness (`up{job="nodewatch-agent",node}`) and the known-nodes file.
    #[serde(default)]
    pub liveness: LivenessFile,
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
    /// Per-node certificates for Kubernetes agents (the `Bootstrap` RPC); off when absent.
    #[serde(default)]
    pub bootstrap: Option<BootstrapFile>,
    /// Log output: `{format: json}` for log pipelines (default `text`).
    #[serde(default)]
    pub log: nodewatch_proto::log::LogConfig,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BootstrapFile {
    /// CA certificate that signs node certificates (cert-manager's CA Secret `tls.crt`).
    pub ca_cert: PathBuf,
    /// Its key (`tls.key`).
    pub ca_key: PathBuf,
    /// Audience the agents' projected tokens are bound to (default `nodewatch`).
    #[serde(default)]
    pub audience: Option<String>,
    /// ServiceAccounts allowed to bootstrap, as `system:serviceaccount:<namespace>:<name>`.
    #[serde(default)]
    pub service_accounts: Vec<String>,
    /// ServiceAccounts that each stand for one node off the cluster (the
    /// firewall), as `system:serviceaccount:<namespace>:<name>`: their
    /// tokens are bound to no pod, and the node is the ServiceAccount's
    /// `nodewatch.io/node-name` annotation. A token of one without the
    /// annotation is refused.
    #[serde(default)]
    pub node_service_accounts: Vec<String>,
    /// Lifetime of issued certificates (default `24h`); agents renew at two thirds.
    #[serde(default)]
    pub validity: Option<String>,
    /// How to reach the API server (defaults: in-cluster).
    #[serde(default)]
    pub kubernetes: KubeFile,
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
pub struct KubeFile {
    /// API server URL (default `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`).
    pub api: Option<String>,
    /// Bearer token file (default the pod's ServiceAccount token).
    pub token_file: Option<PathBuf>,
    /// CA of the API server (default the pod's ServiceAccount `ca.crt`).
    pub ca_file: Option<PathBuf>,
}

/// `query_api:` as written.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QueryApiFile {
    /// Serve the API (default true).
    pub enabled: Option<bool>,
    /// A file holding the bearer token clients must send
    /// (`Authorization: Bearer …`); unset, the API is open like `/metrics`.
    pub bearer_token_file: Option<PathBuf>,
    /// Longest a query may run (default `2m`).
    pub timeout: Option<String>,
    /// Most samples one query may read (default 50,000,000).
    pub max_samples: Option<usize>,
}

/// `metrics:` as written.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsFile {
    /// A file holding the bearer token a scraper must send for `/metrics`
    /// (`Authorization: Bearer …`, Prometheus' `authorization:
    /// {credentials_file: …}`); unset, `/metrics` is open. `/healthz` and
    /// `/readyz` stay open either way, for the kubelet's probes.
    pub bearer_token_file: Option<PathBuf>,
}

/// Validated `metrics:`.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub bearer_token: Option<String>,
}

/// The token in `file` (surrounding white space trimmed); an empty or
/// unreadable file is a problem named under `key`.
fn read_token(file: &Path, key: &str, p: &mut Problems) -> Option<String> {
    match std::fs::read_to_string(file) {
        Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
        Ok(_) => {
            p.add(key, format!("{}: empty", file.display()));
            None
        }
        Err(e) => {
            p.add(key, format!("{}: {e}", file.display()));
            None
        }
    }
}

/// `value` as a duration, `default` when unset or (a problem named under
/// `key`) not a duration.
fn optional_duration(
    value: Option<&str>,
    key: &str,
    default: Duration,
    p: &mut Problems,
) -> Duration {
    match value {
        None => default,
        Some(v) => config::parse_duration(v)
            .map_err(|e| p.add(key, e))
            .unwrap_or(default),
    }
}

/// Validated `query_api:`.
#[derive(Clone, Debug)]
pub struct QueryApi {
    pub enabled: bool,
    pub bearer_token: Option<String>,
    pub timeout: Duration,
    pub max_samples: usize,
}

impl QueryApiFile {
    fn validate(&self, p: &mut Problems) -> QueryApi {
        let timeout = optional_duration(
            self.timeout.as_deref(),
            "query_api.timeout",
            Duration::from_secs(120),
            p,
        );
        let bearer_token = self
            .bearer_token_file
            .as_ref()
            .and_then(|f| read_token(f, "query_api.bearer_token_file", p));
        if self.max_samples == Some(0) {
            p.add("query_api.max_samples", "must be at least 1");
        }
        QueryApi {
            enabled: self.enabled.unwrap_or(true),
            bearer_token,
            timeout,
            max_samples: self.max_samples.unwrap_or(50_000_000),
        }
    }
}

/// Validated bootstrap settings.
#[derive(Clone, Debug)]
pub struct Bootstrap {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub audience: String,
    pub service_accounts: Vec<String>,
    pub node_service_accounts: Vec<String>,
    pub validity: Duration,
    pub api: String,
    pub token_file: PathBuf,
    pub ca_file: Option<PathBuf>,
}

/// Default lifetime of bootstrapped node certificates.
pub const DEFAULT_BOOTSTRAP_VALIDITY: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Alerting {
    /// Alertmanagers; every alert goes to each. An entry is a base URL
    /// (`http://alertmanager:9093`) or an object with credentials and TLS.
    #[serde(default)]
    pub alertmanagers: Vec<AlertmanagerEntry>,
    /// How often firing alerts are re-sent (default `1m`, as Prometheus).
    #[serde(default)]
    pub resend_delay: Option<String>,
}

impl Alerting {
    /// The Alertmanagers that are sound, and the resend delay.
    fn validate(&self, p: &mut Problems) -> (Vec<AlertmanagerConfig>, Duration) {
        let resend_delay = optional_duration(
            self.resend_delay.as_deref(),
            "alerting.resend_delay",
            DEFAULT_RESEND_DELAY,
            p,
        );
        let alertmanagers = self
            .alertmanagers
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.validate(&format!("alerting.alertmanagers[{i}]"), p))
            .collect();
        (alertmanagers, resend_delay)
    }
}

/// One `alerting.alertmanagers` entry: a URL, or `{url, basic_auth,
/// bearer_token_file, tls}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlertmanagerEntry {
    /// Just the base URL.
    Url(String),
    /// The URL with how to reach it.
    Full(AlertmanagerSpec),
}

// Written out rather than `#[serde(untagged)]`: untagged hides the object's
// own error ("data did not match any variant"), while this keeps serde's
// message with its line, e.g. an unknown key under an Alertmanager.
impl<'de> Deserialize<'de> for AlertmanagerEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = AlertmanagerEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an Alertmanager URL or {url, basic_auth, bearer_token_file, tls}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(AlertmanagerEntry::Url(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                AlertmanagerSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(AlertmanagerEntry::Full)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// An Alertmanager with credentials and TLS settings.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerSpec {
    /// Base URL.
    pub url: String,
    /// HTTP basic authentication.
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    /// File holding a bearer token.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// TLS settings for an `https://` URL.
    #[serde(default)]
    pub tls: Option<AlertmanagerTls>,
}

/// `basic_auth` of an Alertmanager; the password stays in its own file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// User name.
    pub username: String,
    /// File holding the password.
    pub password_file: PathBuf,
}

/// `tls` of an Alertmanager.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerTls {
    /// CA bundle the server's certificate must chain to.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate, when Alertmanager asks for one.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its key.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Name expected in the server's certificate, when not the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// A validated Alertmanager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertmanagerConfig {
    /// Base URL without a trailing slash.
    pub url: String,
    /// Credentials, if any.
    pub auth: Option<crate::notifier::Authorization>,
    /// TLS files, for `https://` URLs.
    pub tls: Option<AlertmanagerTlsFiles>,
}

/// A validated Alertmanager `tls` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertmanagerTlsFiles {
    /// CA bundle.
    pub ca: PathBuf,
    /// Client certificate and key.
    pub cert_key: Option<(PathBuf, PathBuf)>,
    /// Name expected in the server's certificate.
    pub server_name: Option<String>,
}

impl AlertmanagerEntry {
    /// Checks the entry, recording problems under `key`.
    fn validate(&self, key: &str, problems: &mut Problems) -> Option<AlertmanagerConfig> {
        let mut probs = Counted { p: problems, n: 0 };
        let spec = match self {
            Self::Url(u) => AlertmanagerSpec {
                url: u.clone(),
                basic_auth: None,
                bearer_token_file: None,
                tls: None,
            },
            Self::Full(s) => s.clone(),
        };
        let url = &spec.url;
        let https = url.starts_with("https://");
        self.check_url(url, key, &mut probs);
        let auth = spec.authorization(key, &mut probs);
        let tls = match (&spec.tls, https) {
            (Some(_), false) => {
                probs.add(format!("{key}.tls"), "only used with an https:// URL");
                None
            }
            (None, true) => {
                // No system trust store is bundled: the CA is always explicit.
                probs.add(self.field(key, "tls.ca"), "required for an https:// URL");
                None
            }
            (None, false) => None,
            (Some(t), true) => t.validate(key, &mut probs),
        };
        (probs.n == 0).then(|| AlertmanagerConfig {
            url: url.trim_end_matches('/').to_string(),
            auth,
            tls,
        })
    }

    /// The key of field `f` under `key`: keys name the object's fields only
    /// where there is an object.
    fn field(&self, key: &str, f: &str) -> String {
        match self {
            Self::Url(_) => key.to_string(),
            Self::Full(_) => format!("{key}.{f}"),
        }
    }

    /// An `http://` or `https://` URL with a host.
    fn check_url(&self, url: &str, key: &str, probs: &mut Counted<'_>) {
        if url.starts_with("http://") || url.starts_with("https://") {
            match url.parse::<http::Uri>() {
                Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => {}
                Ok(_) => probs.add(self.field(key, "url"), format!("{url:?}: no host")),
                Err(e) => probs.add(self.field(key, "url"), format!("{url:?}: {e}")),
            }
        } else {
            probs.add(
                self.field(key, "url"),
                format!("{url:?}: expected an http:// or https:// URL"),
            );
        }
    }
}

impl AlertmanagerSpec {
    /// Basic authentication or a bearer token, at most one.
    fn authorization(
        &self,
        key: &str,
        probs: &mut Counted<'_>,
    ) -> Option<crate::notifier::Authorization> {
        use crate::notifier::Authorization;
        match (&self.basic_auth, &self.bearer_token_file) {
            (Some(_), Some(_)) => {
                probs.add(
                    key,
                    "basic_auth and bearer_token_file are exclusive: set one",
                );
                None
            }
            (Some(b), None) => {
                if b.username.is_empty() {
                    probs.add(format!("{key}.basic_auth.username"), "must not be empty");
                }
                probs.file(&format!("{key}.basic_auth.password_file"), &b.password_file);
                Some(Authorization::Basic {
                    username: b.username.clone(),
                    password_file: b.password_file.clone(),
                })
            }
            (None, Some(f)) => {
                probs.file(&format!("{key}.bearer_token_file"), f);
                Some(Authorization::Bearer {
                    token_file: f.clone(),
                })
            }
            (None, None) => None,
        }
    }
}

impl AlertmanagerTls {
    /// The `tls` block of an `https://` Alertmanager.
    fn validate(&self, key: &str, probs: &mut Counted<'_>) -> Option<AlertmanagerTlsFiles> {
        let ca = self.ca.clone();
        match &ca {
            Some(ca) => probs.file(&format!("{key}.tls.ca"), ca),
            None => probs.add(format!("{key}.tls.ca"), "required for an https:// URL"),
        }
        let cert_key = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                probs.file(&format!("{key}.tls.cert"), c);
                probs.file(&format!("{key}.tls.key"), k);
                Some((c.clone(), k.clone()))
            }
            (Some(_), None) => {
                probs.add(format!("{key}.tls.key"), "required with tls.cert");
                None
            }
            (None, Some(_)) => {
                probs.add(format!("{key}.tls.cert"), "required with tls.key");
                None
            }
            (None, None) => None,
        };
        if let Some(n) = &self.server_name {
            if rustls_pki_types::ServerName::try_from(n.as_str()).is_err() {
                probs.add(
                    format!("{key}.tls.server_name"),
                    format!("{n:?}: not a DNS name or IP address"),
                );
            }
        }
        ca.map(|ca| AlertmanagerTlsFiles {
            ca,
            cert_key,
            server_name: self.server_name.clone(),
        })
    }
}

/// Problems, counting those of one entry so it is returned only when sound.
struct Counted<'a> {
    p: &'a mut Problems,
    n: usize,
}

impl Counted<'_> {
    fn add(&mut self, key: impl Into<String>, msg: impl Into<String>) {
        self.n += 1;
        self.p.add(key, msg);
    }

    fn file(&mut self, key: &str, path: &Path) {
        if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
            self.n += 1;
            self.p.file(key, path);
        }
    }
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

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LivenessFile {
    /// File where the aggregator keeps the nodes it knows (name, last seen),
    /// so a node that never comes back after an aggregator restart still
    /// counts as down (`up` 0). Unset: known nodes are held in memory only.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// How long a node without a stream is remembered, its `up` at 0
    /// (default `24h`).
    #[serde(default)]
    pub forget_after: Option<String>,
}

impl LivenessFile {
    fn validate(&self, p: &mut Problems) -> crate::liveness::Options {
        let forget_after = match &self.forget_after {
            None => crate::liveness::DEFAULT_FORGET_AFTER,
            Some(v) => match config::parse_duration(v) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    p.add("liveness.forget_after", "must be more than 0");
                    crate::liveness::DEFAULT_FORGET_AFTER
                }
                Err(e) => {
                    p.add("liveness.forget_after", e);
                    crate::liveness::DEFAULT_FORGET_AFTER
                }
            },
        };
        crate::liveness::Options {
            state_file: self.state_file.clone(),
            forget_after,
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

impl Limits {
    fn validate(&self, p: &mut Problems) {
        if self.max_series_per_node == 0 {
            p.add("limits.max_series_per_node", "must be at least 1");
        }
        if self.max_frame_bytes < 4096 {
            p.add("limits.max_frame_bytes", "must be at least 4096");
        }
    }
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
    pub alertmanagers: Vec<AlertmanagerConfig>,
    pub resend_delay: Duration,
    pub bootstrap: Option<Bootstrap>,
    pub remote_write: Vec<crate::remote_write::Target>,
    pub query_api: QueryApi,
    pub metrics: Metrics,
    pub liveness: crate::liveness::Options,
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
        let (grpc_listen, http_listen) = self.validate_listen(&mut p);
        let tls = self.tls.validate("tls", &mut p);
        let retention = config::parse_duration(&self.store.retention)
            .map_err(|e| p.add("store.retention", e))
            .ok();
        self.limits.validate(&mut p);
        let evaluation_interval = optional_duration(
            self.evaluation_interval.as_deref(),
            "evaluation_interval",
            DEFAULT_EVALUATION_INTERVAL,
            &mut p,
        );
        let (alertmanagers, resend_delay) = self.alerting.validate(&mut p);
        self.validate_rule_settings(&mut p);
        let bootstrap = self
            .bootstrap
            .as_ref()
            .and_then(|b| validate_bootstrap(b, &mut p));
        let remote_write = self.validate_remote_write(&mut p);
        let query_api = self.query_api.validate(&mut p);
        let metrics = Metrics {
            bearer_token: self
                .metrics
                .bearer_token_file
                .as_ref()
                .and_then(|f| read_token(f, "metrics.bearer_token_file", &mut p)),
        };
        let liveness = self.liveness.validate(&mut p);
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
                alertmanagers,
                resend_delay,
                bootstrap,
                remote_write,
                query_api,
                metrics,
                liveness,
            }),
            _ => Err(ConfigError::Invalid(Problems::new(source))),
        }
    }

    /// The gRPC and HTTP listen addresses.
    fn validate_listen(&self, p: &mut Problems) -> (Option<SocketAddr>, Option<SocketAddr>) {
        let address = |key: &str, value: &str, p: &mut Problems| {
            value
                .parse()
                .map_err(|e| p.add(key, format!("{value:?}: {e}")))
                .ok()
        };
        (
            address("listen.grpc", &self.listen.grpc, p),
            address("listen.http", &self.listen.http, p),
        )
    }

    /// Rule file globs and the external labels of alerts.
    fn validate_rule_settings(&self, p: &mut Problems) {
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

fn validate_bootstrap(b: &BootstrapFile, p: &mut Problems) -> Option<Bootstrap> {
    p.file("bootstrap.ca_cert", &b.ca_cert);
    p.file("bootstrap.ca_key", &b.ca_key);
    if b.service_accounts.is_empty() && b.node_service_accounts.is_empty() {
        p.add(
            "bootstrap.service_accounts",
            "list at least one system:serviceaccount:<namespace>:<name> (here or in bootstrap.node_service_accounts)",
        );
    }
    for (key, list) in [
        ("service_accounts", &b.service_accounts),
        ("node_service_accounts", &b.node_service_accounts),
    ] {
        for (i, sa) in list.iter().enumerate() {
            let parts: Vec<&str> = sa.split(':').collect();
            if parts.len() != 4
                || parts[0] != "system"
                || parts[1] != "serviceaccount"
                || parts[2].is_empty()
                || parts[3].is_empty()
            {
                p.add(
                    format!("bootstrap.{key}[{i}]"),
                    format!("{sa:?}: expected system:serviceaccount:<namespace>:<name>"),
                );
            }
        }
    }
    for sa in &b.node_service_accounts {
        if b.service_accounts.contains(sa) {
            p.add(
                "bootstrap.node_service_accounts",
                format!("{sa:?} is also in bootstrap.service_accounts: a ServiceAccount either runs agent pods or stands for one node"),
            );
        }
    }
    let validity = match &b.validity {
        None => DEFAULT_BOOTSTRAP_VALIDITY,
        Some(v) => config::parse_duration(v)
            .map_err(|e| p.add("bootstrap.validity", e))
            .unwrap_or(DEFAULT_BOOTSTRAP_VALIDITY),
    };
    let api = b.kubernetes.api.clone().or_else(|| {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        Some(if host.contains(':') {
            format!("https://[{host}]:{port}")
        } else {
            format!("https://{host}:{port}")
        })
    });
    let Some(api) = api else {
        p.add(
            "bootstrap.kubernetes.api",
            "not set, and KUBERNETES_SERVICE_HOST is not set (not running in a cluster)",
        );
        return None;
    };
    if !(api.starts_with("https://") || api.starts_with("http://"))
        || api.parse::<http::Uri>().is_err()
    {
        p.add(
            "bootstrap.kubernetes.api",
            format!("{api:?}: expected an https:// URL"),
        );
    }
    let token_file = b
        .kubernetes
        .token_file
        .clone()
        .unwrap_or_else(|| crate::bootstrap::IN_CLUSTER_TOKEN.into());
    p.file("bootstrap.kubernetes.token_file", &token_file);
    let ca_file = match &b.kubernetes.ca_file {
        Some(f) => {
            p.file("bootstrap.kubernetes.ca_file", f);
            Some(f.clone())
        }
        None if api.starts_with("https://") => Some(crate::bootstrap::IN_CLUSTER_CA.into()),
        None => None,
    };
    Some(Bootstrap {
        ca_cert: b.ca_cert.clone(),
        ca_key: b.ca_key.clone(),
        audience: b.audience.clone().unwrap_or_else(|| "nodewatch".into()),
        service_accounts: b.service_accounts.clone(),
        node_service_accounts: b.node_service_accounts.clone(),
        validity,
        api,
        token_file,
        ca_file,
    })
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

    fn alerting(yaml: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in ["ca.crt", "tls.crt", "tls.key", "pw", "token"] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        let text = format!(
            "tls: {{ca: {0}/ca.crt, cert: {0}/tls.crt, key: {0}/tls.key}}\nalerting:\n{1}",
            d.display(),
            yaml.replace("$D", &d.display().to_string())
        );
        let f: File =
            config::parse_yaml(&text, Path::new("agg.yaml")).map_err(|e| e.to_string())?;
        f.validate(Some(Path::new("agg.yaml")))
            .map_err(|e| e.to_string())
    }

    /// A config with `bootstrap:` (`$D` is a folder holding the files it names).
    fn with_bootstrap(yaml: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in ["ca.crt", "tls.crt", "tls.key", "token"] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        let text = format!(
            "tls: {{ca: {0}/ca.crt, cert: {0}/tls.crt, key: {0}/tls.key}}\nbootstrap:\n  ca_cert: {0}/ca.crt\n  ca_key: {0}/tls.key\n  kubernetes: {{api: 'http://127.0.0.1:1', token_file: {0}/token}}\n{1}",
            d.display(),
            yaml
        );
        let f: File =
            config::parse_yaml(&text, Path::new("agg.yaml")).map_err(|e| e.to_string())?;
        f.validate(Some(Path::new("agg.yaml")))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn node_service_accounts_are_checked_like_service_accounts() {
        let fw = "system:serviceaccount:nodewatch:nodewatch-firewall";
        let c = with_bootstrap(&format!("  node_service_accounts: ['{fw}']\n")).unwrap();
        let b = c.bootstrap.unwrap();
        assert_eq!(b.node_service_accounts, [fw]);
        assert!(b.service_accounts.is_empty());
        let err = with_bootstrap("  node_service_accounts: ['nodewatch-firewall']\n").unwrap_err();
        assert!(err.contains("bootstrap.node_service_accounts[0]"), "{err}");
        let err = with_bootstrap(&format!(
            "  service_accounts: ['{fw}']\n  node_service_accounts: ['{fw}']\n"
        ))
        .unwrap_err();
        assert!(err.contains("also in bootstrap.service_accounts"), "{err}");
        let err = with_bootstrap("").unwrap_err();
        assert!(err.contains("bootstrap.service_accounts"), "{err}");
    }

    #[test]
    fn alertmanagers_are_urls_or_objects_with_credentials_and_tls() {
        use crate::notifier::Authorization;
        let c = alerting(
            "  alertmanagers:\n    - http://am1:9093/\n    - url: https://am2:9093\n      basic_auth: {username: nw, password_file: $D/pw}\n      tls: {ca: $D/ca.crt, cert: $D/tls.crt, key: $D/tls.key, server_name: am.lan}\n    - {url: 'http://am3', bearer_token_file: $D/token}\n",
        )
        .unwrap();
        let am = &c.alertmanagers;
        assert_eq!(am.len(), 3);
        assert_eq!(am[0].url, "http://am1:9093");
        assert_eq!((&am[0].auth, &am[0].tls), (&None, &None));
        assert!(
            matches!(&am[1].auth, Some(Authorization::Basic { username, .. }) if username == "nw")
        );
        let tls = am[1].tls.as_ref().unwrap();
        assert!(tls.cert_key.is_some());
        assert_eq!(tls.server_name.as_deref(), Some("am.lan"));
        assert!(
            matches!(&am[2].auth, Some(Authorization::Bearer { token_file }) if token_file.ends_with("token"))
        );
    }

    #[test]
    fn every_alertmanager_problem_is_reported_with_its_key() {
        let err = alerting(
            "  alertmanagers:\n    - ftp://x\n    - url: https://am\n      basic_auth: {username: '', password_file: /no/pw}\n      tls: {cert: $D/tls.crt, server_name: 'bad name!'}\n    - url: http://am\n      basic_auth: {username: a, password_file: $D/pw}\n      bearer_token_file: /no/token\n      tls: {ca: $D/ca.crt}\n    - https://am4\n",
        )
        .unwrap_err();
        for want in [
            "alerting.alertmanagers[0]: \"ftp://x\": expected an http:// or https:// URL",
            "alerting.alertmanagers[1].basic_auth.username: must not be empty",
            "alerting.alertmanagers[1].basic_auth.password_file: file not found: /no/pw",
            "alerting.alertmanagers[1].tls.ca: required for an https:// URL",
            "alerting.alertmanagers[1].tls.key: required with tls.cert",
            "alerting.alertmanagers[1].tls.server_name",
            "alerting.alertmanagers[2]: basic_auth and bearer_token_file are exclusive",
            "alerting.alertmanagers[2].tls: only used with an https:// URL",
            "alerting.alertmanagers[3]: required for an https:// URL",
        ] {
            assert!(err.contains(want), "missing {want:?} in {err}");
        }
    }

    #[test]
    fn unknown_key_under_an_alertmanager_is_refused_with_its_line() {
        let err = alerting("  alertmanagers:\n    - url: http://am\n      pasword_file: x\n")
            .unwrap_err();
        assert!(err.contains("pasword_file"), "{err}");
        assert!(err.contains("line") || err.contains(":3"), "{err}");
    }

    #[test]
    fn liveness_is_validated_and_defaults_to_memory_only() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca", "crt", "key"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let d = dir.path().display();
        let tls = format!("tls: {{ca: {d}/ca, cert: {d}/crt, key: {d}/key}}\n");
        let tls = tls.as_str();
        let f: File = config::parse_yaml(tls, Path::new("agg.yaml")).unwrap();
        let c = f.validate(None).unwrap();
        assert_eq!(c.liveness.state_file, None);
        assert_eq!(
            c.liveness.forget_after,
            crate::liveness::DEFAULT_FORGET_AFTER
        );
        let f: File = config::parse_yaml(
            &format!("{tls}liveness:\n  state_file: /var/lib/x/known\n  forget_after: 2h\n"),
            Path::new("agg.yaml"),
        )
        .unwrap();
        let c = f.validate(None).unwrap();
        assert_eq!(
            c.liveness.state_file.as_deref(),
            Some(Path::new("/var/lib/x/known"))
        );
        assert_eq!(c.liveness.forget_after, Duration::from_hours(2));
        for bad in ["0s", "soon"] {
            let f: File = config::parse_yaml(
                &format!("{tls}liveness:\n  forget_after: {bad}\n"),
                Path::new("agg.yaml"),
            )
            .unwrap();
            let msg = f.validate(None).unwrap_err().to_string();
            assert!(msg.contains("liveness.forget_after"), "{msg}");
        }
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
