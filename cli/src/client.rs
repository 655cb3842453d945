//! How the CLI finds its aggregator and operator certificate, as kubectl
//! finds its kubeconfig: flags, then environment variables, then a config
//! file (`--config`, `$NODEWATCH_CONFIG`, or `~/.config/nodewatch/config.yaml`).
//! Relative paths in the file are relative to the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nodewatch_proto::config::{self, TlsConfig};
use nodewatch_proto::tls::{self, Reloadable, Target, TlsFiles};
use serde::{Deserialize, Serialize};

/// How long the CLI waits to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The CLI's config file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    /// Aggregator address, `host:port`.
    #[serde(default)]
    pub aggregator: Option<String>,
    /// Name expected in the aggregator's certificate (default: the host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Operator certificate, key and CA.
    #[serde(default)]
    pub tls: CliTls,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CliTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Connection options from flags and environment (clap fills both).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConnectArgs {
    /// Config file [default: ~/.config/nodewatch/config.yaml].
    #[arg(long, global = true, env = "NODEWATCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Aggregator address host:port.
    #[arg(long, global = true, env = "NODEWATCH_AGGREGATOR")]
    pub aggregator: Option<String>,
    /// CA bundle the aggregator's certificate chains to.
    #[arg(long, global = true, env = "NODEWATCH_CA")]
    pub ca: Option<PathBuf>,
    /// Operator certificate.
    #[arg(long, global = true, env = "NODEWATCH_CERT")]
    pub cert: Option<PathBuf>,
    /// Operator key.
    #[arg(long, global = true, env = "NODEWATCH_KEY")]
    pub key: Option<PathBuf>,
    /// Name expected in the aggregator's certificate.
    #[arg(long, global = true, env = "NODEWATCH_SERVER_NAME")]
    pub server_name: Option<String>,
}

fn default_config_path() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME") {
        return Some(PathBuf::from(x).join("nodewatch/config.yaml"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/nodewatch/config.yaml"))
}

fn relative_to(base: &Path, p: Option<PathBuf>) -> Option<PathBuf> {
    p.map(|p| if p.is_absolute() { p } else { base.join(p) })
}

/// Resolves flags, environment and config file into a channel.
pub fn connect(args: &ConnectArgs) -> anyhow::Result<tonic::transport::Channel> {
    let (file, base) = match &args.config {
        Some(p) => (
            config::load_yaml::<CliConfig>(p)?,
            p.parent().map(Path::to_path_buf).unwrap_or_default(),
        ),
        None => match default_config_path().filter(|p| p.exists()) {
            Some(p) => (
                config::load_yaml::<CliConfig>(&p)?,
                p.parent().map(Path::to_path_buf).unwrap_or_default(),
            ),
            None => (CliConfig::default(), PathBuf::new()),
        },
    };
    let aggregator = args.aggregator.clone().or(file.aggregator).ok_or_else(|| {
        anyhow::anyhow!("no aggregator address: pass --aggregator host:port, set NODEWATCH_AGGREGATOR, or write a config file (see --config)")
    })?;
    let target = Target::parse(&aggregator).map_err(|e| anyhow::anyhow!("aggregator: {e}"))?;
    let tls_cfg = TlsConfig {
        ca: args.ca.clone().or_else(|| relative_to(&base, file.tls.ca)),
        cert: args
            .cert
            .clone()
            .or_else(|| relative_to(&base, file.tls.cert)),
        key: args
            .key
            .clone()
            .or_else(|| relative_to(&base, file.tls.key)),
    };
    let mut problems = config::Problems::new(args.config.as_deref());
    let files: Option<TlsFiles> = tls_cfg.validate("tls", &mut problems);
    problems.into_result()?;
    let files = files.ok_or_else(|| anyhow::anyhow!("tls: incomplete"))?;
    let client = tls::client_config(&files)?;
    let server_name = args.server_name.clone().or(file.server_name);
    Ok(tls::channel(
        &target,
        Reloadable::new(Arc::clone(&client)),
        server_name,
        CONNECT_TIMEOUT,
    )?)
}

/// What the CLI says about a failed call. The TLS 1.3 handshake ends on
/// the client's side before the aggregator checks the client certificate,
/// so a refused certificate reaches the CLI as a cancelled call ("The
/// operation was cancelled") with the aggregator's TLS alert, when there is
/// one, among the error's sources: say it plainly, with the reason.
#[must_use]
pub fn explain(status: &tonic::Status) -> String {
    let mut chain = Vec::new();
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = src {
        let text = e.to_string();
        if !chain.contains(&text) {
            chain.push(text);
        }
        src = e.source();
    }
    let all = format!("{}: {}", status.message(), chain.join(": "));
    // rustls names the aggregator's alert: "received fatal alert: UnknownCA".
    let alert = all
        .split("received fatal alert: ")
        .nth(1)
        .map(|rest| rest.split([':', ' ', ',', ')']).next().unwrap_or(rest));
    let why = alert.map(|a| match a {
        // A certificate signed by another CA fails the signature check: DecryptError.
        "UnknownCA" | "DecryptError" => {
            format!("its CA is not one the aggregator trusts (TLS alert {a})")
        }
        "CertificateExpired" => format!("it has expired or is not valid yet (TLS alert {a})"),
        "BadCertificate" | "UnsupportedCertificate" => {
            format!("the aggregator found it malformed or untrusted (TLS alert {a})")
        }
        "CertificateRequired" => format!("no client certificate was sent (TLS alert {a})"),
        other => format!("TLS alert {other}"),
    });
    if let Some(a) = alert.filter(|a| {
        !matches!(
            *a,
            "UnknownCA"
                | "DecryptError"
                | "CertificateExpired"
                | "BadCertificate"
                | "UnsupportedCertificate"
                | "CertificateRequired"
        )
    }) {
        return format!("the aggregator refused the TLS connection: TLS alert {a}");
    }
    // In TLS 1.3 the client's handshake is done before the aggregator has
    // checked its certificate, so a refusal often reaches the client only as
    // the connection closing under its first request: cancelled, a broken
    // pipe or a reset, depending on timing.
    let cancelled = (status.code() == tonic::Code::Cancelled
        && status.message().contains("cancel"))
        || [
            "broken pipe",
            "connection reset",
            "stream closed because of",
        ]
        .iter()
        .any(|t| all.to_ascii_lowercase().contains(t));
    if let Some(why) = why {
        return format!("the aggregator refused this client certificate: {why}");
    }
    if cancelled {
        return "the aggregator refused this client certificate: most likely its CA is not one the aggregator trusts, or it has expired; the aggregator's log names the reason".to_string();
    }
    let mut msg = format!("{}: {}", status.code(), status.message());
    for text in chain {
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
    }
    msg
}
