//! Sends alerts to Alertmanager (API v2, `POST /api/v2/alerts`) the way
//! Prometheus does (`prometheus/notifier` and `rules.Group.sendAlerts`):
//!
//! - after each evaluation a group hands over firing alerts not sent for
//!   `resend_delay`, and alerts resolved since their last send
//!   ([`Group::alerts_to_send`](crate::rules::Group::alerts_to_send)); a resolved alert stays in its rule for 15
//!   minutes and is re-sent every `resend_delay` meanwhile;
//! - a firing alert's `endsAt` is `now + 4 × max(eval interval, resend
//!   delay)`, so Alertmanager resolves it by itself if Prometheus goes away;
//! - external labels are added to every alert (without overriding its own);
//! - alerts wait in one bounded queue (oldest dropped when full) and go out
//!   in batches of at most [`MAX_BATCH_SIZE`] to every Alertmanager at once;
//! - unlike Prometheus, a failed send is retried with exponential backoff a
//!   few times before the batch is given up for that Alertmanager (the next
//!   re-send covers it).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::promql::Labels;

/// Prometheus' `--rules.alert.resend-delay` default.
// `Duration::from_mins` is newer than the workspace's rust-version.
#[allow(clippy::duration_suboptimal_units)]
pub const DEFAULT_RESEND_DELAY: Duration = Duration::from_secs(60);
/// Prometheus' `--alertmanager.notification-queue-capacity` default.
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;
/// Alerts per request (`maxBatchSize` in prometheus/notifier).
pub const MAX_BATCH_SIZE: usize = 256;
/// Per-request timeout (`alertmanager_config.timeout` default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per batch and Alertmanager beyond the first: with the backoff
/// below a batch is retried for about 3.5 s, well inside a resend delay.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// First retry delay; doubled per attempt.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// Longest retry delay.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(10);

/// One alert as Alertmanager's API v2 takes it (`models.PostableAlert`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PostableAlert {
    /// Identifying labels, external labels included.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// When it started firing (RFC 3339).
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    /// When it resolved, or until when it is valid (RFC 3339).
    #[serde(rename = "endsAt")]
    pub ends_at: String,
    /// Link back to the expression.
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
}

/// One Alertmanager.
#[derive(Debug, Clone)]
pub struct AlertmanagerTarget {
    /// Base URL, e.g. `http://alertmanager:9093` (a path prefix is kept).
    pub url: Uri,
    /// TLS settings for an `https` URL.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Name the server certificate must carry, when not the URL's host.
    pub server_name: Option<String>,
    /// Credentials sent in the `Authorization` header.
    pub auth: Option<Authorization>,
}

impl AlertmanagerTarget {
    /// A target at `url` with no TLS settings and no credentials.
    #[must_use]
    pub fn new(url: Uri) -> Self {
        Self {
            url,
            tls: None,
            server_name: None,
            auth: None,
        }
    }
}

/// How requests to an Alertmanager authenticate. Secrets live in files that
/// are read on every request, as Prometheus does, so a rotated password or
/// token is used without a restart and never sits in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        /// User name.
        username: String,
        /// File holding the password (surrounding whitespace ignored).
        password_file: PathBuf,
    },
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// File holding the token (surrounding whitespace ignored).
        token_file: PathBuf,
    },
}

impl Authorization {
    /// The `Authorization` header value, reading the secret file now.
    pub fn header_value(&self) -> std::io::Result<http::HeaderValue> {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        let text = match self {
            Self::Basic {
                username,
                password_file,
            } => {
                let password = read(password_file)?;
                format!(
                    "Basic {}",
                    base64(format!("{username}:{}", password.trim()).as_bytes())
                )
            }
            Self::Bearer { token_file } => format!("Bearer {}", read(token_file)?.trim()),
        };
        let mut v = http::HeaderValue::from_str(&text).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "credentials contain characters not allowed in a header",
            )
        })?;
        v.set_sensitive(true);
        Ok(v)
    }
}

/// Standard base64 with padding (RFC 4648), for basic auth.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// TLS client settings for an Alertmanager: servers must chain to the CA
/// in `ca`; `cert_key` is presented when Alertmanager asks for a client
/// certificate. Unlike the agents' gRPC TLS this allows TLS 1.2 and offers
/// only HTTP/1.1, since Alertmanager is a Go HTTP server that may be set up
/// either way.
pub fn tls_client_config(
    ca: &Path,
    cert_key: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, nodewatch_proto::tls::TlsError> {
    use nodewatch_proto::tls::{load_certs, load_key, TlsError};
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert).map_err(|source| TlsError::BadCa {
            path: ca.to_path_buf(),
            source,
        })?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|source| TlsError::Rustls {
        what: "TLS versions",
        source,
    })?
    .with_root_certificates(roots);
    let mut config = match cert_key {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|source| TlsError::Rustls {
                what: "client certificate and key",
                source,
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Notifier settings; every tunable has Prometheus' default.
#[derive(Debug, Clone)]
pub struct NotifierConfig {
    /// Where to send.
    pub targets: Vec<AlertmanagerTarget>,
    /// Added to every alert.
    pub external_labels: Labels,
    /// Base of `generatorURL`.
    pub external_url: String,
    /// Re-send interval of firing alerts.
    pub resend_delay: Duration,
    /// Alerts held while Alertmanagers are slow.
    pub queue_capacity: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries of a failed batch per Alertmanager.
    pub max_retries: u32,
    /// First retry delay.
    pub retry_backoff: Duration,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            external_labels: Labels::new(),
            external_url: String::new(),
            resend_delay: DEFAULT_RESEND_DELAY,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            timeout: DEFAULT_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
        }
    }
}

/// Why one request to an Alertmanager failed.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The target URL cannot be used.
    #[error("bad Alertmanager URL {url}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// TCP or TLS connection failed.
    #[error("connecting to {url}: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// The cause.
        source: std::io::Error,
    },
    /// HTTP protocol failure.
    #[error("sending to {url}: {source}")]
    Http {
        /// The URL.
        url: String,
        /// The cause.
        source: hyper::Error,
    },
    /// A non-2xx answer.
    #[error("{url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// The credentials file cannot be read.
    #[error("credentials for {url}: {source}")]
    Credentials {
        /// The URL.
        url: String,
        /// The cause.
        source: std::io::Error,
    },
    /// No answer within the timeout.
    #[error("{url} did not answer within {timeout:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
}

/// Counters for the aggregator's own metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotifierStats {
    /// Alerts delivered (per Alertmanager).
    pub sent: u64,
    /// Alerts given up after retries (per Alertmanager).
    pub failed: u64,
    /// Alerts dropped because the queue was full.
    pub dropped: u64,
    /// Alerts waiting.
    pub queued: usize,
}

struct Shared {
    queue: Mutex<VecDeque<PostableAlert>>,
    wake: Notify,
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// The handle rule evaluation uses; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    shared: Arc<Shared>,
    cfg: Arc<NotifierConfig>,
}

/// The sending task; run it with [`NotifierTask::run`] and cancel it with
/// its shutdown future.
pub struct NotifierTask {
    shared: Arc<Shared>,
    cfg: Arc<NotifierConfig>,
}

impl Notifier {
    /// A notifier and the task that sends for it.
    #[must_use]
    pub fn new(cfg: NotifierConfig) -> (Self, NotifierTask) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let cfg = Arc::new(cfg);
        (
            Self {
                shared: Arc::clone(&shared),
                cfg: Arc::clone(&cfg),
            },
            NotifierTask { shared, cfg },
        )
    }

    /// Queues alerts; when the queue is full the oldest are dropped, as
    /// Prometheus does, since newer state supersedes them.
    pub fn send(&self, alerts: impl IntoIterator<Item = PostableAlert>) {
        let mut q = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut any = false;
        for a in alerts {
            q.push_back(a);
            any = true;
        }
        let cap = self.cfg.queue_capacity.max(1);
        if q.len() > cap {
            let excess = q.len() - cap;
            q.drain(..excess);
            self.shared
                .dropped
                .fetch_add(excess as u64, Ordering::Relaxed);
            metrics::counter!("nodewatch_aggregator_notifications_dropped_total")
                .increment(excess as u64);
            tracing::warn!(
                dropped = excess,
                "Alert notification queue full, dropping alerts."
            );
        }
        drop(q);
        if any {
            self.shared.wake.notify_one();
        }
    }

    /// The settings it was made with.
    #[must_use]
    pub fn config(&self) -> &NotifierConfig {
        &self.cfg
    }

    /// Current counters.
    #[must_use]
    pub fn stats(&self) -> NotifierStats {
        NotifierStats {
            sent: self.shared.sent.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            queued: self
                .shared
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
        }
    }
}

impl NotifierTask {
    /// Sends queued alerts until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                () = self.shared.wake.notified() => {}
            }
            loop {
                let batch: Vec<PostableAlert> = {
                    let mut q = self
                        .shared
                        .queue
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    let n = q.len().min(MAX_BATCH_SIZE);
                    q.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                // Shutdown also interrupts a batch stuck in retries.
                tokio::select! {
                    () = &mut shutdown => return,
                    () = self.send_batch(&batch) => {}
                }
            }
        }
    }

    async fn send_batch(&self, batch: &[PostableAlert]) {
        let body = match serde_json::to_vec(batch) {
            Ok(b) => Bytes::from(b),
            Err(error) => {
                tracing::error!(%error, "Cannot encode alerts.");
                return;
            }
        };
        let n = batch.len() as u64;
        let sends = self.cfg.targets.iter().map(|t| {
            let body = body.clone();
            async move {
                let mut delay = self.cfg.retry_backoff;
                for attempt in 0..=self.cfg.max_retries {
                    match post(t, body.clone(), self.cfg.timeout).await {
                        Ok(()) => {
                            self.shared.sent.fetch_add(n, Ordering::Relaxed);
                            // Prometheus' `prometheus_notifications_sent_total` under our prefix.
                            metrics::counter!("nodewatch_aggregator_notifications_sent_total", "alertmanager" => t.url.to_string()).increment(n);
                            return;
                        }
                        Err(error) => {
                            metrics::counter!("nodewatch_aggregator_notifications_errors_total", "alertmanager" => t.url.to_string()).increment(1);
                            tracing::warn!(peer = %t.url, %error, attempt, "Alertmanager send failed.");
                        }
                    }
                    if attempt < self.cfg.max_retries {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(MAX_RETRY_BACKOFF);
                    }
                }
                self.shared.failed.fetch_add(n, Ordering::Relaxed);
            }
        });
        futures::future::join_all(sends).await;
    }
}

/// One `POST /api/v2/alerts` on a fresh connection.
async fn post(
    target: &AlertmanagerTarget,
    body: Bytes,
    timeout: Duration,
) -> Result<(), NotifyError> {
    let url = target.url.to_string();
    match tokio::time::timeout(timeout, post_inner(target, body, &url)).await {
        Ok(r) => r,
        Err(_) => Err(NotifyError::Timeout { url, timeout }),
    }
}

async fn post_inner(
    target: &AlertmanagerTarget,
    body: Bytes,
    url: &str,
) -> Result<(), NotifyError> {
    let bad = |reason| NotifyError::BadUrl {
        url: url.to_string(),
        reason,
    };
    let uri = &target.url;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad("scheme must be http or https")),
    };
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = format!("{}/api/v2/alerts", uri.path().trim_end_matches('/'));
    let authority = uri.authority().map_or(host, http::uri::Authority::as_str);
    let mut req = Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "nodewatch-aggregator");
    if let Some(auth) = &target.auth {
        let value = auth
            .header_value()
            .map_err(|source| NotifyError::Credentials {
                url: url.to_string(),
                source,
            })?;
        req = req.header(http::header::AUTHORIZATION, value);
    }
    let req = req
        .body(Full::new(body))
        .map_err(|_| bad("cannot build a request"))?;
    let connect_err = |source| NotifyError::Connect {
        url: url.to_string(),
        source,
    };
    let tcp = TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
        .await
        .map_err(connect_err)?;
    if https {
        let cfg = target
            .tls
            .clone()
            .ok_or_else(|| bad("https needs a TLS configuration"))?;
        let name = target.server_name.as_deref().unwrap_or(host);
        let name = rustls_pki_types::ServerName::try_from(name.to_string())
            .map_err(|_| bad("host is not a valid TLS server name"))?;
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(connect_err)?;
        exchange(TokioIo::new(tls), req, url).await
    } else {
        exchange(TokioIo::new(tcp), req, url).await
    }
}

async fn exchange<T>(
    io: TokioIo<T>,
    req: Request<Full<Bytes>>,
    url: &str,
) -> Result<(), NotifyError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http_err = |source| NotifyError::Http {
        url: url.to_string(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(http_err)?;
    // The connection is driven here, next to the request, rather than in a
    // spawned task: it lives exactly as long as this one exchange.
    let request = async move {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        drop(sender);
        Ok::<_, hyper::Error>(status)
    };
    let (status, conn_result) = tokio::join!(request, conn);
    let status = status.map_err(http_err)?;
    if let Err(e) = conn_result {
        tracing::debug!(peer = url, error = %e, "Alertmanager connection closed with an error.");
    }
    if status.is_success() {
        Ok(())
    } else {
        Err(NotifyError::Status {
            url: url.to_string(),
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o, "{i:?}");
        }
    }

    #[test]
    fn authorization_header_reads_the_secret_file_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "open sesame\n").unwrap();
        let basic = Authorization::Basic {
            username: "aladdin".into(),
            password_file: pw.clone(),
        };
        // RFC 7617's example, the trailing newline of the file ignored.
        assert_eq!(
            basic.header_value().unwrap(),
            "Basic YWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert!(basic.header_value().unwrap().is_sensitive());
        std::fs::write(&pw, "rotated").unwrap();
        assert_eq!(
            basic.header_value().unwrap(),
            format!("Basic {}", base64(b"aladdin:rotated"))
        );
        let tok = dir.path().join("tok");
        std::fs::write(&tok, " abc.def \n").unwrap();
        let bearer = Authorization::Bearer { token_file: tok };
        assert_eq!(bearer.header_value().unwrap(), "Bearer abc.def");
        let gone = Authorization::Bearer {
            token_file: dir.path().join("missing"),
        };
        let err = gone.header_value().unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
