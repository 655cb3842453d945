//! The agent's configuration file (YAML) and its validation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nodewatch_proto::config::{self, ConfigError, Problems, TlsConfig};
use nodewatch_proto::tls::{Target, TlsFiles};
use serde::Deserialize;

use crate::collector::Paths;

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
    /// Collectors to turn on (`true`) or off (`false`); others keep their default.
    #[serde(default)]
    pub collectors: BTreeMap<String, bool>,
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

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: Option<String>,
    pub aggregators: Vec<Target>,
    pub server_name: Option<String>,
    pub tls: Option<TlsFiles>,
    pub interval: Duration,
    pub collectors: BTreeMap<String, bool>,
    pub paths: Paths,
    pub spool: Spool,
    pub health_listen: Option<std::net::SocketAddr>,
    pub bootstrap: Option<BootstrapConfig>,
    pub ebpf_measure_cost: bool,
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
        let tls = if !streaming {
            None
        } else if let Some(b) = &self.bootstrap {
            // The certificate and key are written by the bootstrap: they need not exist yet.
            p.file("bootstrap.token", &b.token);
            if let Some(r) = b.renew_at {
                if !(0.1..=0.95).contains(&r) {
                    p.add("bootstrap.renew_at", format!("{r} is outside 0.1..=0.95"));
                }
            }
            if let (Some(ca), Some(cert), Some(key)) = (&self.tls.ca, &self.tls.cert, &self.tls.key)
            {
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
        } else {
            self.tls.validate("tls", &mut p)
        };
        let interval = match &self.interval {
            None => DEFAULT_INTERVAL,
            Some(s) => match config::parse_duration(s) {
                Ok(d) if d >= MIN_INTERVAL => d,
                Ok(_) => {
                    p.add(
                        "interval",
                        format!("{s:?} is shorter than the minimum of {MIN_INTERVAL:?}"),
                    );
                    DEFAULT_INTERVAL
                }
                Err(e) => {
                    p.add("interval", e);
                    DEFAULT_INTERVAL
                }
            },
        };
        for name in self.collectors.keys() {
            // `ebpf` is started apart from the registry: it needs the event channel.
            if name != "ebpf" && !known_collectors.contains(&name.as_str()) {
                p.add(
                    format!("collectors.{name}"),
                    format!("unknown collector; known: {}", known_collectors.join(", ")),
                );
            }
        }
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
        let max_bytes = match &self.spool.max_size {
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
        let retain_acked = match &self.spool.retain_acked {
            None => crate::spool::DEFAULT_RETAIN_ACKED,
            Some(v) => config::parse_duration(v)
                .map_err(|e| p.add("spool.retain_acked", e))
                .unwrap_or_default(),
        };
        let dir = match &self.spool.dir {
            None => Some(PathBuf::from(crate::spool::DEFAULT_DIR)),
            Some(d) if d.as_os_str().is_empty() => None,
            Some(d) => Some(d.clone()),
        };
        let health_listen = match self
            .health_listen
            .as_deref()
            .unwrap_or(DEFAULT_HEALTH_LISTEN)
        {
            "" => None,
            a => a
                .parse()
                .map_err(|e| p.add("health_listen", format!("{a:?}: {e}")))
                .ok(),
        };
        p.into_result()?;
        Ok(Config {
            bootstrap: self.bootstrap.clone(),
            health_listen,
            ebpf_measure_cost: self.ebpf_measure_cost.unwrap_or(false),
            spool: Spool {
                dir,
                max_bytes,
                retain_acked,
            },
            node_name: self.node_name.clone(),
            aggregators,
            server_name: self.server_name.clone(),
            tls,
            interval,
            collectors: self.collectors.clone(),
            paths,
        })
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
