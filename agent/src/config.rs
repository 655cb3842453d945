//! The agent's configuration file (YAML) and its validation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nodewatch_proto::config::{self, ConfigError, Problems, TlsConfig};
use nodewatch_proto::tls::{Target, TlsFiles};
use serde::Deserialize;

use crate::collector::{CollectorOptions, Paths};

/// Default collection interval: `node_exporter`'s usual scrape interval is
/// 15–30 s; 10 s keeps rates fresh at ~1,500 samples per node per interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// The shortest interval accepted; below this procfs reads dominate the CPU.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// This node's name. Defaults to the name in the agent's certificate
    /// (`spiffe://nodewatch/node/<name>`); if set, it must agree with it.
    #[serde(default)]
    pub node_name: Option<String>,
    /// Aggregators to stream to (`host:port`); each gets its own stream and cursor.
    #[serde(default)]
    pub aggregators: Vec<String>,
    /// Name expected in the aggregators' certificates (default: each target's host).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Client certificate, key, and the CA the aggregators' certificates chain to.
    #[serde(default)]
    pub tls: TlsConfig,
    /// How often every collector runs (e.g. `10s`; `1s` works).
    #[serde(default)]
    pub interval: Option<String>,
    /// Collectors to turn on (`true`) or off (`false`), or a map of a
    /// collector's options (`filesystem: {mount_points_exclude: "..."}`,
    /// with an optional `enabled`); others keep their default.
    #[serde(default)]
    pub collectors: BTreeMap<String, serde_yaml_ng::Value>,
    /// Roots of the host's pseudo file systems (for containers and tests).
    #[serde(default)]
    pub paths: PathsConfig,
    /// Where unacknowledged data waits while an aggregator is away.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// Local address for `/healthz` and `/readyz` (default `127.0.0.1:9465`; `""` turns them off).
    #[serde(default)]
    pub health_listen: Option<String>,
    /// Measure what each eBPF program costs (default `false`): turns on the
    /// kernel's BPF run-time statistics while the agent runs and exports
    /// `nodewatch_agent_ebpf_run_seconds_total{program}` and
    /// `nodewatch_agent_ebpf_run_count_total{program}`. Adds two clock reads
    /// (~20–40 ns) to every program run.
    #[serde(default)]
    pub ebpf_measure_cost: Option<bool>,
    /// Get (and renew) the node certificate from an aggregator with a
    /// Kubernetes ServiceAccount token, instead of a certificate file made by hand.
    #[serde(default)]
    pub bootstrap: Option<BootstrapConfig>,
    /// Pod names for OOM kills and the node's requests, limits, allocatable
    /// resources and image pull failures, read from the kubelet and the API
    /// server (Linux). Off when absent.
    #[serde(default)]
    pub kubernetes: Option<KubernetesConfig>,
    /// Log output: `{format: json}` for log pipelines (default `text`).
    #[serde(default)]
    pub log: nodewatch_proto::log::LogConfig,
}

/// Where the agent reads the node's pods and Node object. Every URL may name
/// environment variables as `${NAME}` (the DaemonSet sets `NODE_IP` from
/// `status.hostIP`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The kubelet's API, e.g. `https://${NODE_IP}:10250`; its `/pods` is
    /// this node's pod list. Unset: the pod list comes from the API server
    /// (`/api/v1/pods?fieldSelector=spec.nodeName=<node>`), which is also
    /// the fallback while the kubelet does not answer.
    #[serde(default)]
    pub kubelet_url: Option<String>,
    /// The API server (default `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`).
    #[serde(default)]
    pub api_server: Option<String>,
    /// The bearer token sent to both, re-read on every request because the
    /// kubelet rotates projected tokens (default: the pod's ServiceAccount token).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// CA bundle for the API server and the kubelet (default: the pod's
    /// ServiceAccount `ca.crt`). Kubelets with `serverTLSBootstrap` serve
    /// certificates from the cluster CA, so this one bundle verifies both.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any kubelet serving certificate (default `false`). Only for
    /// kubelets that serve their default self-signed certificate; the
    /// token is then sent to whoever answers at `kubelet_url`. Never applies
    /// to the API server.
    #[serde(default)]
    pub kubelet_insecure_skip_verify: Option<bool>,
    /// How often both are read (default `30s`).
    #[serde(default)]
    pub refresh: Option<String>,
    /// The Node object's name (default: the node the agent's certificate names).
    #[serde(default)]
    pub node_name: Option<String>,
}

/// In-cluster defaults of the ServiceAccount files.
pub const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const IN_CLUSTER_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// Default refresh of the kubelet and API reads: the kubelet's own status
/// sync runs every 10 s, and OOM kills name pods from whatever was read last,
/// so a new pod is named at most this late.
pub const DEFAULT_KUBE_REFRESH: Duration = Duration::from_secs(30);
/// Shortest refresh accepted: every agent of a cluster reads the API server.
pub const MIN_KUBE_REFRESH: Duration = Duration::from_secs(1);

/// The validated `kubernetes:` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kubernetes {
    /// Base URL of the kubelet (`None`: the API server's pod list only).
    pub kubelet: Option<http::Uri>,
    /// Base URL of the API server (`None`: not in a cluster and none named).
    pub api_server: Option<http::Uri>,
    pub token_file: PathBuf,
    /// `None` when the in-cluster default does not exist (not in a cluster).
    pub ca_file: Option<PathBuf>,
    pub kubelet_insecure_skip_verify: bool,
    pub refresh: Duration,
    pub node_name: Option<String>,
}

/// Replaces every `${NAME}` with the variable's value; an unset or empty
/// variable is an error naming it.
pub fn expand_env(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("{s:?}: unterminated ${{"))?;
        let name = &after[..end];
        match env(name).filter(|v| !v.is_empty()) {
            Some(v) => out.push_str(&v),
            None => return Err(format!("{s:?}: environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// An `https://host[:port]` base URL (no path: the agent appends its own).
fn https_base(s: &str) -> Result<http::Uri, String> {
    let u: http::Uri = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if u.scheme_str() != Some("https") {
        return Err(format!(
            "{s:?}: must be https:// (the bearer token is never sent in clear)"
        ));
    }
    if u.host().is_none_or(str::is_empty) {
        return Err(format!("{s:?}: no host"));
    }
    if !matches!(u.path(), "" | "/") || u.query().is_some() {
        return Err(format!("{s:?}: give scheme, host and port only"));
    }
    Ok(u)
}

/// `value` as a duration of at least `min`; `default` when unset or (a
/// problem named under `key`) not such a duration.
fn duration_at_least(
    value: Option<&str>,
    key: &str,
    min: Duration,
    default: Duration,
    p: &mut Problems,
) -> Duration {
    let Some(s) = value else {
        return default;
    };
    match config::parse_duration(s) {
        Ok(d) if d >= min => d,
        Ok(_) => {
            p.add(key, format!("{s:?} is shorter than the minimum of {min:?}"));
            default
        }
        Err(e) => {
            p.add(key, e);
            default
        }
    }
}

impl KubernetesConfig {
    /// Validates the section, reading `${…}` and the in-cluster variables
    /// through `env` (the process environment outside tests).
    pub fn validate(&self, env: &dyn Fn(&str) -> Option<String>, p: &mut Problems) -> Kubernetes {
        let url = |key: &str, v: &str, p: &mut Problems| {
            expand_env(v, env)
                .and_then(|v| https_base(&v))
                .map_err(|e| p.add(format!("kubernetes.{key}"), e))
                .ok()
        };
        let kubelet = match self.kubelet_url.as_deref() {
            None | Some("") => None,
            Some(v) => url("kubelet_url", v, p),
        };
        let api_server = match self.api_server.as_deref() {
            Some(v) if !v.is_empty() => url("api_server", v, p),
            _ => in_cluster_api_server(env).and_then(|v| url("api_server", &v, p)),
        };
        let token_file = match &self.token_file {
            Some(t) => {
                p.file("kubernetes.token_file", t);
                t.clone()
            }
            None => PathBuf::from(IN_CLUSTER_TOKEN),
        };
        let ca_file = match &self.ca_file {
            Some(c) => {
                p.file("kubernetes.ca_file", c);
                Some(c.clone())
            }
            None => Some(PathBuf::from(IN_CLUSTER_CA)).filter(|c| c.is_file()),
        };
        let refresh = duration_at_least(
            self.refresh.as_deref(),
            "kubernetes.refresh",
            MIN_KUBE_REFRESH,
            DEFAULT_KUBE_REFRESH,
            p,
        );
        let node_name = match self.node_name.as_deref() {
            None | Some("") => None,
            Some(n) => match expand_env(n, env) {
                Ok(n) => Some(n),
                Err(e) => {
                    p.add("kubernetes.node_name", e);
                    None
                }
            },
        };
        Kubernetes {
            kubelet,
            api_server,
            token_file,
            ca_file,
            kubelet_insecure_skip_verify: self.kubelet_insecure_skip_verify.unwrap_or(false),
            refresh,
            node_name,
        }
    }
}

/// The API server as the in-cluster variables give it, as client-go's
/// `rest.InClusterConfig` builds it.
fn in_cluster_api_server(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    match (
        env("KUBERNETES_SERVICE_HOST"),
        env("KUBERNETES_SERVICE_PORT"),
    ) {
        (Some(host), port) if !host.is_empty() => {
            // An IPv6 service address needs brackets in a URL.
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            let port = port.filter(|p| !p.is_empty()).unwrap_or("443".into());
            Some(format!("https://{host}:{port}"))
        }
        _ => None,
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BootstrapConfig {
    /// The projected ServiceAccount token (audience `nodewatch`).
    pub token: PathBuf,
    /// Share of the certificate's lifetime after which it is renewed (default 0.66, as cert-manager).
    #[serde(default)]
    pub renew_at: Option<f64>,
}

/// Default address of the agent's health endpoints: loopback (the DaemonSet
/// uses the host network, so the kubelet's probes reach it there).
pub const DEFAULT_HEALTH_LISTEN: &str = "127.0.0.1:9465";

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Folder of the on-disk spool (default `/var/lib/nodewatch/spool`); `""` keeps it in memory only.
    pub dir: Option<PathBuf>,
    /// Cap on its size, e.g. `64MiB` (default); past it the oldest samples go first, events last.
    pub max_size: Option<String>,
    /// How long acknowledged data stays for an aggregator that restarts (default `15m`).
    pub retain_acked: Option<String>,
}

/// The validated spool settings.
#[derive(Clone, Debug)]
pub struct Spool {
    pub dir: Option<PathBuf>,
    pub max_bytes: u64,
    pub retain_acked: Duration,
}

/// Parses `64MiB`, `512KiB`, `1GiB`, `1000000` (bytes).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = [
        ("GiB", 1u64 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("KB", 1000),
        ("B", 1),
    ]
    .iter()
    .find_map(|(suf, m)| t.strip_suffix(suf).map(|n| (n.trim(), *m)))
    .unwrap_or((t, 1));
    num.parse::<u64>()
        .map(|n| n.saturating_mul(mult))
        .map_err(|_| format!("bad size {s:?} (e.g. 64MiB)"))
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PathsConfig {
    /// procfs mount point (default `/proc`).
    pub procfs: Option<PathBuf>,
    /// sysfs mount point (default `/sys`).
    pub sysfs: Option<PathBuf>,
    /// The host's root file system (default `/`), for filesystem statistics.
    pub rootfs: Option<PathBuf>,
}

/// Options every collector takes in its map form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainCollectorOptions {
    #[serde(default)]
    enabled: Option<bool>,
}

/// `collectors.filesystem` in its map form (`node_exporter`'s
/// `--collector.filesystem.{mount-points-exclude,fs-types-exclude}`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilesystemOptions {
    #[serde(default)]
    enabled: Option<bool>,
    /// Regex of mount points not reported (replaces the default).
    #[serde(default)]
    mount_points_exclude: Option<String>,
    /// Regex of filesystem types not reported (replaces the default).
    #[serde(default)]
    fs_types_exclude: Option<String>,
}

/// `collectors.textfile` in its map form (`--collector.textfile.directory`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextfileOptions {
    #[serde(default)]
    enabled: Option<bool>,
    /// Folder (or glob of folders) whose `*.prom` files are exported.
    #[serde(default)]
    directory: Option<PathBuf>,
}

/// Splits `collectors:` into on/off switches and per-collector options,
/// naming the key path of every problem (`collectors.filesystem.fs_types_exclude: ...`).
fn validate_collectors(
    raw: &BTreeMap<String, serde_yaml_ng::Value>,
    known: &[&str],
    p: &mut Problems,
) -> (BTreeMap<String, bool>, CollectorOptions) {
    use serde_yaml_ng::Value;
    fn options<T: serde::de::DeserializeOwned>(
        name: &str,
        v: &Value,
        p: &mut Problems,
    ) -> Option<T> {
        serde_yaml_ng::from_value(v.clone())
            .map_err(|e| p.add(format!("collectors.{name}"), e.to_string()))
            .ok()
    }
    let mut enabled = BTreeMap::new();
    let mut opts = CollectorOptions::default();
    for (name, v) in raw {
        // `ebpf` is started apart from the registry: it needs the event channel.
        if name != "ebpf" && !known.contains(&name.as_str()) {
            p.add(
                format!("collectors.{name}"),
                format!("unknown collector; known: {}", known.join(", ")),
            );
            continue;
        }
        let on = match v {
            Value::Bool(b) => Some(*b),
            Value::Mapping(_) => match name.as_str() {
                "filesystem" => options::<FilesystemOptions>(name, v, p).and_then(|o| {
                    for (key, re, slot) in [
                        (
                            "mount_points_exclude",
                            o.mount_points_exclude,
                            &mut opts.filesystem_mount_points_exclude,
                        ),
                        (
                            "fs_types_exclude",
                            o.fs_types_exclude,
                            &mut opts.filesystem_fs_types_exclude,
                        ),
                    ] {
                        if let Some(re) = re {
                            match regex::Regex::new(&re) {
                                Ok(_) => *slot = Some(re),
                                Err(e) => p.add(
                                    format!("collectors.filesystem.{key}"),
                                    format!("{re:?}: {e}"),
                                ),
                            }
                        }
                    }
                    o.enabled
                }),
                "textfile" => options::<TextfileOptions>(name, v, p).and_then(|o| {
                    if let Some(d) = o.directory.filter(|d| !d.as_os_str().is_empty()) {
                        opts.textfile_directory = Some(d);
                    }
                    o.enabled
                }),
                _ => options::<PlainCollectorOptions>(name, v, p).and_then(|o| o.enabled),
            },
            other => {
                p.add(
                    format!("collectors.{name}"),
                    format!("expected true, false or a map of options, got {other:?}"),
                );
                None
            }
        };
        if let Some(on) = on {
            enabled.insert(name.clone(), on);
        }
    }
    (enabled, opts)
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: Option<String>,
    pub aggregators: Vec<Target>,
    pub server_name: Option<String>,
    pub tls: Option<TlsFiles>,
    pub interval: Duration,
    pub collectors: BTreeMap<String, bool>,
    /// Options of single collectors (`collectors.<name>.<option>`).
    pub collector_options: CollectorOptions,
    pub paths: Paths,
    pub spool: Spool,
    pub health_listen: Option<std::net::SocketAddr>,
    pub bootstrap: Option<BootstrapConfig>,
    pub ebpf_measure_cost: bool,
    pub kubernetes: Option<Kubernetes>,
}

impl File {
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(p) => config::load_yaml(p),
            None => Ok(Self::default()),
        }
    }

    /// Checks everything at once. `streaming` is false for `--once`, which
    /// needs neither aggregators nor certificates.
    pub fn validate(
        &self,
        source: Option<&Path>,
        known_collectors: &[&str],
        streaming: bool,
    ) -> Result<Config, ConfigError> {
        let mut p = Problems::new(source);
        let aggregators = self.validate_aggregators(streaming, &mut p);
        let tls = if streaming {
            self.validate_tls(&mut p)
        } else {
            None
        };
        let interval = duration_at_least(
            self.interval.as_deref(),
            "interval",
            MIN_INTERVAL,
            DEFAULT_INTERVAL,
            &mut p,
        );
        let (collectors, collector_options) =
            validate_collectors(&self.collectors, known_collectors, &mut p);
        if let Some(n) = &self.node_name {
            if let Err(e) = nodewatch_proto::NodeName::new(n.clone()) {
                p.add("node_name", e.to_string());
            }
        }
        let d = Paths::default();
        let paths = Paths {
            procfs: self.paths.procfs.clone().unwrap_or(d.procfs),
            sysfs: self.paths.sysfs.clone().unwrap_or(d.sysfs),
            rootfs: self.paths.rootfs.clone().unwrap_or(d.rootfs),
        };
        let spool = self.spool.validate(&mut p);
        let health_listen = self.validate_health_listen(&mut p);
        let env = |k: &str| std::env::var(k).ok();
        let kubernetes = self.kubernetes.as_ref().map(|k| k.validate(&env, &mut p));
        p.into_result()?;
        Ok(Config {
            kubernetes,
            bootstrap: self.bootstrap.clone(),
            health_listen,
            ebpf_measure_cost: self.ebpf_measure_cost.unwrap_or(false),
            spool,
            node_name: self.node_name.clone(),
            aggregators,
            server_name: self.server_name.clone(),
            tls,
            interval,
            collectors,
            collector_options,
            paths,
        })
    }

    /// The aggregators to stream to; at least one when streaming.
    fn validate_aggregators(&self, streaming: bool, p: &mut Problems) -> Vec<Target> {
        let mut aggregators = Vec::new();
        if streaming && self.aggregators.is_empty() {
            p.add(
                "aggregators",
                "at least one aggregator address (host:port) is required",
            );
        }
        for (i, a) in self.aggregators.iter().enumerate() {
            match Target::parse(a) {
                Ok(t) => aggregators.push(t),
                Err(e) => p.add(format!("aggregators[{i}]"), e),
            }
        }
        aggregators
    }

    /// The client certificate files, given or to be written by the bootstrap.
    fn validate_tls(&self, p: &mut Problems) -> Option<TlsFiles> {
        let Some(b) = &self.bootstrap else {
            return self.tls.validate("tls", p);
        };
        // The certificate and key are written by the bootstrap: they need not exist yet.
        p.file("bootstrap.token", &b.token);
        if let Some(r) = b.renew_at {
            if !(0.1..=0.95).contains(&r) {
                p.add("bootstrap.renew_at", format!("{r} is outside 0.1..=0.95"));
            }
        }
        if let (Some(ca), Some(cert), Some(key)) = (&self.tls.ca, &self.tls.cert, &self.tls.key) {
            p.file("tls.ca", ca);
            Some(TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            })
        } else {
            p.add("tls", "with bootstrap, tls.ca must exist and tls.cert/tls.key name where the issued certificate goes");
            None
        }
    }

    /// The health endpoints' address; `""` turns them off.
    fn validate_health_listen(&self, p: &mut Problems) -> Option<std::net::SocketAddr> {
        match self
            .health_listen
            .as_deref()
            .unwrap_or(DEFAULT_HEALTH_LISTEN)
        {
            "" => None,
            a => a
                .parse()
                .map_err(|e| p.add("health_listen", format!("{a:?}: {e}")))
                .ok(),
        }
    }
}

impl SpoolConfig {
    fn validate(&self, p: &mut Problems) -> Spool {
        let max_bytes = match &self.max_size {
            None => crate::spool::DEFAULT_CAP_BYTES,
            Some(v) => parse_size(v)
                .map_err(|e| p.add("spool.max_size", e))
                .unwrap_or(crate::spool::DEFAULT_CAP_BYTES),
        };
        if max_bytes < crate::spool::SEGMENT_BYTES * 2 {
            p.add(
                "spool.max_size",
                format!(
                    "must be at least {} bytes (two segments)",
                    crate::spool::SEGMENT_BYTES * 2
                ),
            );
        }
        let retain_acked = match &self.retain_acked {
            None => crate::spool::DEFAULT_RETAIN_ACKED,
            Some(v) => config::parse_duration(v)
                .map_err(|e| p.add("spool.retain_acked", e))
                .unwrap_or_default(),
        };
        let dir = match &self.dir {
            None => Some(PathBuf::from(crate::spool::DEFAULT_DIR)),
            Some(d) if d.as_os_str().is_empty() => None,
            Some(d) => Some(d.clone()),
        };
        Spool {
            dir,
            max_bytes,
            retain_acked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_problems_at_once() {
        let f: File = config::parse_yaml(
            "aggregators: ['nohost']\ninterval: 1ms\ncollectors: {nope: true}\ntls: {ca: /no/ca}\n",
            Path::new("agent.yaml"),
        )
        .unwrap();
        let msg = f
            .validate(Some(Path::new("agent.yaml")), &["stat"], true)
            .unwrap_err()
            .to_string();
        for want in [
            "aggregators[0]",
            "interval",
            "collectors.nope: unknown collector; known: stat",
            "tls.ca: file not found",
            "tls.cert: required",
        ] {
            assert!(msg.contains(want), "missing {want:?} in {msg}");
        }
    }

    #[test]
    fn kubernetes_section() {
        let env = |k: &str| match k {
            "NODE_IP" => Some("10.0.0.5".to_string()),
            "KUBERNETES_SERVICE_HOST" => Some("fd00::1".to_string()),
            "KUBERNETES_SERVICE_PORT" => Some("6443".to_string()),
            _ => None,
        };
        let mut p = Problems::new(None);
        let k = KubernetesConfig {
            kubelet_url: Some("https://${NODE_IP}:10250".into()),
            ..KubernetesConfig::default()
        }
        .validate(&env, &mut p);
        assert!(p.is_empty(), "{p}");
        assert_eq!(k.kubelet.unwrap().to_string(), "https://10.0.0.5:10250/");
        assert_eq!(k.api_server.unwrap().to_string(), "https://[fd00::1]:6443/");
        assert_eq!(k.token_file, PathBuf::from(IN_CLUSTER_TOKEN));
        assert_eq!(k.refresh, DEFAULT_KUBE_REFRESH);
        assert!(!k.kubelet_insecure_skip_verify);

        // Not in a cluster and nothing named: valid, and off at run time.
        let k = KubernetesConfig::default().validate(&|_| None, &mut p);
        assert!(p.is_empty() && k.kubelet.is_none() && k.api_server.is_none());
    }

    #[test]
    fn kubernetes_problems_all_at_once() {
        let f: File = config::parse_yaml(
            "kubernetes:\n  kubelet_url: http://${NO_SUCH_VAR_FOR_TEST}:10250\n  api_server: http://api:6443\n  token_file: /no/token\n  refresh: 10ms\n",
            Path::new("agent.yaml"),
        )
        .unwrap();
        let msg = f.validate(None, &[], false).unwrap_err().to_string();
        for want in [
            "kubernetes.kubelet_url: \"http://${NO_SUCH_VAR_FOR_TEST}:10250\": environment variable NO_SUCH_VAR_FOR_TEST is not set",
            "kubernetes.api_server: \"http://api:6443\": must be https://",
            "kubernetes.token_file: file not found: /no/token",
            "kubernetes.refresh",
        ] {
            assert!(msg.contains(want), "missing {want:?} in {msg}");
        }
        let bad: Result<File, _> =
            config::parse_yaml("kubernetes: {kubelet: x}\n", Path::new("agent.yaml"));
        assert!(bad
            .unwrap_err()
            .to_string()
            .contains("unknown field `kubelet`"));
        assert!(expand_env("https://${X", &|_| Some("y".into())).is_err());
        assert_eq!(
            expand_env("a${X}b${X}", &|_| Some("y".into())).unwrap(),
            "ayby"
        );
        assert!(https_base("https://h:1/path").is_err());
    }

    #[test]
    fn collectors_take_switches_or_options() {
        let f: File = config::parse_yaml(
            "collectors:\n  zfs: false\n  filesystem:\n    mount_points_exclude: '^/(proc|sys)($|/)'\n    fs_types_exclude: '^tmpfs$'\n  textfile: {directory: /var/lib/node_exporter}\n  stat: {enabled: false}\n",
            Path::new("agent.yaml"),
        )
        .unwrap();
        let known = ["zfs", "filesystem", "textfile", "stat"];
        let c = f.validate(None, &known, false).unwrap();
        assert_eq!(c.collectors.get("zfs"), Some(&false));
        assert_eq!(c.collectors.get("stat"), Some(&false));
        assert_eq!(
            c.collectors.get("filesystem"),
            None,
            "options alone keep the default"
        );
        assert_eq!(
            c.collector_options
                .filesystem_mount_points_exclude
                .as_deref(),
            Some("^/(proc|sys)($|/)")
        );
        assert_eq!(
            c.collector_options.filesystem_fs_types_exclude.as_deref(),
            Some("^tmpfs$")
        );
        assert_eq!(
            c.collector_options.textfile_directory,
            Some(PathBuf::from("/var/lib/node_exporter"))
        );

        let f: File = config::parse_yaml(
            "collectors:\n  filesystem: {mount_points_exclude: '(', colour: red}\n  textfile: {directory: /x, fields: 1}\n  stat: 3\n  zfs: {mount_points_exclude: x}\n",
            Path::new("agent.yaml"),
        )
        .unwrap();
        let msg = f.validate(None, &known, false).unwrap_err().to_string();
        for want in [
            "collectors.filesystem: unknown field `colour`",
            "collectors.textfile: unknown field `fields`",
            "collectors.stat: expected true, false or a map of options",
            "collectors.zfs: unknown field `mount_points_exclude`",
        ] {
            assert!(msg.contains(want), "missing {want:?} in {msg}");
        }
        let f: File = config::parse_yaml(
            "collectors:\n  filesystem: {fs_types_exclude: '^(tmpfs'}\n",
            Path::new("agent.yaml"),
        )
        .unwrap();
        let msg = f.validate(None, &known, false).unwrap_err().to_string();
        assert!(
            msg.contains("collectors.filesystem.fs_types_exclude: \"^(tmpfs\""),
            "{msg}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn once_needs_no_tls() {
        let f = File::default();
        let c = f.validate(None, &[], false).unwrap();
        assert_eq!(c.interval, DEFAULT_INTERVAL);
        assert_eq!(c.paths, Paths::default());
    }
}
