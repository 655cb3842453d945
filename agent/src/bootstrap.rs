//! Getting and renewing this node's certificate with a Kubernetes
//! ServiceAccount token (the aggregator's `Bootstrap.Issue`), so no one lists
//! nodes or copies certificates by hand. The key never leaves the node: the
//! agent sends a certificate request; the aggregator decides the name.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nodewatch_proto::tls::{self, Reloadable, Target, TlsFiles};
use nodewatch_proto::v1::bootstrap_client::BootstrapClient;
use nodewatch_proto::v1::IssueRequest;
use tracing::{info, warn};

use crate::collector::now_ms;
use crate::config::{BootstrapConfig, Config};

/// cert-manager's default renewal point: two thirds of the lifetime.
pub const DEFAULT_RENEW_AT: f64 = 0.66;
/// How often the certificate's age is checked at most.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// The shortest wait between two checks, so a certificate whose renewal
/// point has passed does not spin the loop.
const MIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("certificate request: {0}")]
    Csr(String),
    #[error("no aggregator issued a certificate: {0}")]
    Refused(String),
}

/// Whether the certificate at `cert` is missing, unreadable, or past `renew_at` of its lifetime.
#[must_use]
pub fn due(cert: &Path, renew_at: f64) -> bool {
    let Ok(certs) = tls::load_certs(cert) else {
        return true;
    };
    let Some((nb, na)) = certs
        .first()
        .and_then(|c| nodewatch_proto::identity::validity(c))
    else {
        return true;
    };
    let now = now_ms() / 1000;
    now >= nb + ((na - nb) as f64 * renew_at) as i64 || now < nb
}

fn write_atomic(path: &Path, data: &str, mode: u32) -> Result<(), BootstrapError> {
    let io = |source| BootstrapError::Io {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    {
        // Created with its mode (and a leftover file narrowed before
        // anything is written): a key is never readable by others.
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io)?;
        f.write_all(data.as_bytes()).map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// How long until the certificate at `cert` is due for renewal (zero when it is already due).
#[must_use]
pub fn until_due(cert: &Path, renew_at: f64) -> Duration {
    let Ok(certs) = tls::load_certs(cert) else {
        return Duration::ZERO;
    };
    let Some((nb, na)) = certs
        .first()
        .and_then(|c| nodewatch_proto::identity::validity(c))
    else {
        return Duration::ZERO;
    };
    let due_at = nb + ((na - nb) as f64 * renew_at) as i64;
    let now = now_ms() / 1000;
    if now < nb {
        return Duration::ZERO;
    }
    Duration::from_secs(u64::try_from(due_at - now).unwrap_or(0))
}

/// Gets a certificate if there is none or it is due; returns whether one was issued.
pub async fn ensure(
    cfg: &Config,
    files: &TlsFiles,
    bs: &BootstrapConfig,
) -> Result<bool, BootstrapError> {
    if !due(&files.cert, bs.renew_at.unwrap_or(DEFAULT_RENEW_AT)) {
        return Ok(false);
    }
    let token = std::fs::read_to_string(&bs.token).map_err(|source| BootstrapError::Io {
        path: bs.token.display().to_string(),
        source,
    })?;
    // The name in the request is only a hint for humans: the aggregator names the node.
    let hint = cfg
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .unwrap_or_else(crate::hostinfo::hostname);
    let hint = nodewatch_proto::NodeName::new(hint)
        .or_else(|_| nodewatch_proto::NodeName::new("node"))
        .map_err(|e| BootstrapError::Csr(e.to_string()))?;
    let (key_pem, csr_pem) = nodewatch_proto::certs::key_and_csr(&hint)
        .map_err(|e| BootstrapError::Csr(e.to_string()))?;
    let anon = tls::anonymous_client_config(&files.ca)
        .map_err(|e| BootstrapError::Refused(e.to_string()))?;
    let mut errors = Vec::new();
    for target in &cfg.aggregators {
        match issue(
            target,
            cfg.server_name.clone(),
            Arc::clone(&anon),
            token.trim(),
            &csr_pem,
        )
        .await
        {
            Ok(resp) => {
                write_atomic(&files.key, &key_pem, 0o600)?;
                write_atomic(&files.cert, &resp.cert_pem, 0o644)?;
                info!(node = %resp.node, aggregator = %target, not_after_ms = resp.not_after_ms, "Node certificate issued.");
                return Ok(true);
            }
            Err(e) => errors.push(format!("{target}: {e}")),
        }
    }
    Err(BootstrapError::Refused(errors.join("; ")))
}

async fn issue(
    target: &Target,
    server_name: Option<String>,
    anon: Arc<rustls::ClientConfig>,
    token: &str,
    csr_pem: &str,
) -> Result<nodewatch_proto::v1::IssueResponse, String> {
    let channel = tls::channel(target, Reloadable::new(anon), server_name, ATTEMPT_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let mut client = BootstrapClient::new(channel);
    let req = IssueRequest {
        token: token.to_string(),
        csr_pem: csr_pem.to_string(),
    };
    match tokio::time::timeout(ATTEMPT_TIMEOUT, client.issue(req)).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(format!("{}: {}", s.code(), s.message())),
        Err(_) => Err("timed out".into()),
    }
}

/// Renews the certificate in the background; the TLS reloader picks up the
/// new files. It wakes at the renewal point or every [`CHECK_INTERVAL`],
/// whichever is sooner (a certificate replaced by hand is noticed too), and
/// after a failure retries every [`CHECK_INTERVAL`].
#[must_use]
pub fn spawn_renewal(
    cfg: Config,
    files: TlsFiles,
    bs: BootstrapConfig,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let renew_at = bs.renew_at.unwrap_or(DEFAULT_RENEW_AT);
        loop {
            let next = until_due(&files.cert, renew_at).clamp(MIN_CHECK_INTERVAL, CHECK_INTERVAL);
            tokio::time::sleep(next).await;
            if let Err(error) = ensure(&cfg, &files, &bs).await {
                warn!(%error, "Certificate renewal failed; retrying in a minute.");
                // The certificate is still due: wait the full interval, not the minimum.
                tokio::time::sleep(CHECK_INTERVAL).await;
            }
        }
    })
}
