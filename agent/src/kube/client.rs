//! Read-only HTTPS GETs to the kubelet and the API server with the
//! ServiceAccount bearer token: hyper's HTTP/1.1 client over rustls (both
//! already in the agent through tonic), one connection per request. A
//! request every 30 s gains nothing from pooling, and a fresh connection
//! always sees the current token, CA and kubelet certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Time for one request, connection and TLS included.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read: a kubelet's `/pods` with 110 pods is 1–3 MiB; a
/// runaway answer must not take the agent's memory with it.
pub const MAX_BODY: usize = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {msg}")]
    Request { url: String, msg: String },
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
}

/// One HTTPS server (kubelet or API server) and how to reach it.
#[derive(Clone)]
pub struct Endpoint {
    pub base: Uri,
    pub tls: Arc<rustls::ClientConfig>,
    pub token_file: PathBuf,
}

impl Endpoint {
    /// `GET base + path_and_query` with the bearer token; the body on 2xx.
    pub async fn get(&self, path_and_query: &str) -> Result<Bytes, FetchError> {
        let url = format!(
            "{}{path_and_query}",
            self.base.to_string().trim_end_matches('/')
        );
        let err = |msg: String| FetchError::Request {
            url: url.clone(),
            msg,
        };
        // Re-read on every request: projected tokens are rotated by the kubelet.
        let token = std::fs::read_to_string(&self.token_file)
            .map_err(|e| err(format!("token {}: {e}", self.token_file.display())))?;
        let host = self.base.host().ok_or_else(|| err("no host".into()))?;
        let port = self.base.port_u16().unwrap_or(443);
        let authority = self
            .base
            .authority()
            .map_or(host, http::uri::Authority::as_str);
        let req = Request::get(path_and_query)
            .header(http::header::HOST, authority)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            )
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("nodewatch-agent/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| err(e.to_string()))?;
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tls = Arc::clone(&self.tls);
        let run = async move {
            let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let name = ServerName::try_from(bare).map_err(|e| e.to_string())?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            let request = async move {
                let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
                let status = resp.status();
                let body = Limited::new(resp.into_body(), MAX_BODY)
                    .collect()
                    .await
                    .map_err(|e| format!("reading the answer: {e}"))?
                    .to_bytes();
                drop(sender);
                Ok::<_, String>((status, body))
            };
            let (r, _) = tokio::join!(request, conn);
            r
        };
        let (status, body) = tokio::time::timeout(TIMEOUT, run)
            .await
            .map_err(|_| err(format!("no answer within {TIMEOUT:?}")))?
            .map_err(err)?;
        if !status.is_success() {
            return Err(FetchError::Status {
                url,
                status,
                body: String::from_utf8_lossy(&body).chars().take(200).collect(),
            });
        }
        Ok(body)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting the CA bundle at `ca` (TLS 1.2 and 1.3:
/// kubelets and API servers speak both).
pub fn verified(ca: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = nodewatch_proto::tls::load_certs(ca).map_err(|e| e.to_string())?;
    for c in certs {
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// A client configuration accepting any server certificate, for kubelets
/// serving their default self-signed one (which names the host, not the IP
/// the agent dials, and is signed by no CA the pod has). The handshake's
/// signatures are still checked, so the peer must hold the key of the
/// certificate it shows; only who that is goes unchecked.
pub fn unverified() -> Result<Arc<rustls::ClientConfig>, String> {
    let p = provider();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::clone(&p))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(p)))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
