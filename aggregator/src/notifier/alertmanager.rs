//! One Alertmanager: where it is, how to reach it (TLS, credentials), and
//! one `POST /api/v2/alerts` to it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

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

/// One `POST /api/v2/alerts` on a fresh connection.
pub(super) async fn post(
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
