//! TLS for every gRPC port: TLS 1.3 only, mutual authentication, rustls.
//!
//! The server does its own accept loop (rather than tonic's built-in TLS) so
//! that each connection carries a [`PeerInfo`] with the identity read from the
//! client certificate, and so that the configuration can be swapped when
//! cert-manager rotates the files: new handshakes use the new files, streams
//! already open keep going.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsConnector;
use tonic::transport::server::Connected;
use tracing::{info, warn};

use crate::identity::Identity;

/// How often certificate files are checked for changes. cert-manager renews
/// well before expiry (by default at 2/3 of the lifetime), so seconds are plenty.
pub const RELOAD_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// The three PEM files of one side of mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA bundle that peers' certificates must chain to.
    pub ca: PathBuf,
    /// This side's certificate chain.
    pub cert: PathBuf,
    /// This side's private key.
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no private key found (expected a PKCS#8, PKCS#1 or SEC1 PEM block)")]
    NoKey { path: PathBuf },
    #[error("{path}: bad PEM: {source}")]
    Pem { path: PathBuf, source: io::Error },
    #[error("{path}: certificate not usable as a CA: {source}")]
    BadCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{what}: {source}")]
    Rustls {
        what: &'static str,
        source: rustls::Error,
    },
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey {
            path: path.to_path_buf(),
        })
}

/// The CA certificates in the PEM file at `path`, as trust anchors.
pub fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in load_certs(path)? {
        store.add(cert).map_err(|source| TlsError::BadCa {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(store)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Turns a rustls error about `what` into ours.
fn rustls_error(what: &'static str) -> impl FnOnce(rustls::Error) -> TlsError {
    move |source| TlsError::Rustls { what, source }
}

/// Server side: TLS 1.3 only, a client certificate chaining to `files.ca` is required.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(files, false)
}

/// As [`server_config`]; with `allow_anonymous` a client may also connect
/// without a certificate (for the Bootstrap RPC only: every other service
/// refuses a peer without an identity). A certificate that is presented is
/// still verified.
pub fn server_config_with(
    files: &TlsFiles,
    allow_anonymous: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_verified_by(files, client_verifier(&files.ca, allow_anonymous)?)
}

/// Checks client certificates against the CAs in `ca`; with
/// `allow_anonymous` a client may also present none.
fn client_verifier(
    ca: &Path,
    allow_anonymous: bool,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider());
    let builder = if allow_anonymous {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))
}

/// The server configuration: TLS 1.3 only, HTTP/2, `files`' certificate and
/// key, client certificates checked by `verifier`.
fn server_config_verified_by(
    files: &TlsFiles,
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_error("TLS 1.3"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(rustls_error("server certificate and key"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// As [`server_config_with`], with the trust split by role when `node_ca` is
/// given: a node certificate (`spiffe://nodewatch/node/…`) must chain to a
/// certificate in `node_ca` (the node-issuing CA whose key the Bootstrap
/// RPC holds), and every other client certificate, operators' included, must
/// be signed directly by a certificate in `files.ca`, with no intermediate
/// the client sends taken into account. Whoever holds only the node-issuing
/// key (a compromised aggregator) can then mint node identities, and nothing
/// else: an operator certificate it signs does not chain to `files.ca`
/// without that intermediate, which is ignored. Without `node_ca` every
/// role chains to `files.ca` as before.
pub fn server_config_split(
    files: &TlsFiles,
    node_ca: Option<&Path>,
    allow_anonymous: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let Some(node_ca) = node_ca else {
        return server_config_with(files, allow_anonymous);
    };
    let verifier = Arc::new(SplitVerifier::new(&files.ca, node_ca, allow_anonymous)?);
    server_config_verified_by(files, verifier)
}

/// The client certificate verifier of [`server_config_split`]: one webpki
/// verifier per role, chosen by the identity in the end-entity certificate.
#[derive(Debug)]
struct SplitVerifier {
    /// Operators and certificates without a node identity: `tls.ca`, direct issuance only.
    others: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    /// Node identities: the node-issuing CA.
    nodes: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    hints: Vec<rustls::DistinguishedName>,
    mandatory: bool,
}

impl SplitVerifier {
    fn new(ca: &Path, node_ca: &Path, allow_anonymous: bool) -> Result<Self, TlsError> {
        let others = client_verifier(ca, allow_anonymous)?;
        let nodes = client_verifier(node_ca, allow_anonymous)?;
        let mut hints = others.root_hint_subjects().to_vec();
        hints.extend_from_slice(nodes.root_hint_subjects());
        Ok(Self {
            others,
            nodes,
            hints,
            mandatory: !allow_anonymous,
        })
    }
}

impl rustls::server::danger::ClientCertVerifier for SplitVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        if let Ok(Identity::Node(_)) = Identity::from_cert_der(end_entity) {
            self.nodes
                .verify_client_cert(end_entity, intermediates, now)
        } else {
            // Presented intermediates are dropped: an operator certificate
            // must be signed by a trust anchor of `tls.ca` itself, so the
            // node-issuing CA (an intermediate under the same root) cannot
            // vouch for one.
            self.others.verify_client_cert(end_entity, &[], now)
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.others.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.others.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.others.supported_verify_schemes()
    }
}

/// Client side: TLS 1.3 only, presents `files.cert`, trusts servers chaining to `files.ca`.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = client_trusting(&files.ca)?
        .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(rustls_error("client certificate and key"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Client side without a certificate of its own (an agent bootstrapping its identity).
pub fn anonymous_client_config(ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = client_trusting(ca)?.with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration being built: TLS 1.3 only, trusting servers
/// chaining to `ca`.
fn client_trusting(
    ca: &Path,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_error("TLS 1.3"))?
        .with_root_certificates(roots(ca)?))
}

/// A client configuration being built for a server outside nodewatch
/// (the Kubernetes API server, an Alertmanager): TLS 1.2 and 1.3, as such
/// servers speak both, trusting the CAs in `ca`.
pub fn foreign_client_trusting(
    ca: &Path,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_error("TLS versions"))?
        .with_root_certificates(roots(ca)?))
}

/// A configuration that can be swapped while connections use the old one.
#[derive(Debug)]
pub struct Reloadable<T> {
    current: RwLock<Arc<T>>,
}

impl<T> Reloadable<T> {
    pub fn new(value: Arc<T>) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(value),
        })
    }

    /// The configuration new connections should use.
    pub fn get(&self) -> Arc<T> {
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn set(&self, value: Arc<T>) {
        match self.current.write() {
            Ok(mut g) => *g = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }
}

fn mtimes(files: &TlsFiles) -> [Option<SystemTime>; 3] {
    [&files.ca, &files.cert, &files.key]
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

/// Watches `files` and rebuilds the configuration with `build` when any of
/// them changes. A failed rebuild (a half-written file during rotation) keeps
/// the old configuration and is retried on the next change or poll.
pub fn spawn_reloader<T, F>(
    files: TlsFiles,
    target: Arc<Reloadable<T>>,
    build: F,
) -> tokio::task::JoinHandle<()>
where
    T: Send + Sync + 'static,
    F: Fn(&TlsFiles) -> Result<Arc<T>, TlsError> + Send + 'static,
{
    spawn_reloader_also(files, Vec::new(), target, build)
}

/// As [`spawn_reloader`], also watching `extra` files the configuration is
/// built from (the node-issuing CA of [`server_config_split`]).
pub fn spawn_reloader_also<T, F>(
    files: TlsFiles,
    extra: Vec<PathBuf>,
    target: Arc<Reloadable<T>>,
    build: F,
) -> tokio::task::JoinHandle<()>
where
    T: Send + Sync + 'static,
    F: Fn(&TlsFiles) -> Result<Arc<T>, TlsError> + Send + 'static,
{
    let stamp = move |files: &TlsFiles| {
        let mut all = mtimes(files).to_vec();
        all.extend(
            extra
                .iter()
                .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()),
        );
        all
    };
    tokio::spawn(async move {
        let mut seen = stamp(&files);
        let mut pending = false;
        loop {
            tokio::time::sleep(RELOAD_POLL_INTERVAL).await;
            let now = stamp(&files);
            if now == seen && !pending {
                continue;
            }
            seen = now;
            match build(&files) {
                Ok(cfg) => {
                    target.set(cfg);
                    pending = false;
                    info!(path = %files.cert.display(), "TLS certificates reloaded.");
                }
                Err(error) => {
                    pending = true;
                    warn!(%error, "TLS certificates changed but could not be loaded; keeping the previous ones.");
                }
            }
        }
    })
}

/// What the server knows about the peer of a connection.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote_addr: SocketAddr,
    /// The identity from the client certificate, or why there is none.
    pub identity: Result<Identity, String>,
}

/// A server-side TLS connection with its peer's identity attached.
pub struct TlsConn {
    io: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl TlsConn {
    /// A connection whose handshake finished, and who is at the other end.
    #[must_use]
    pub fn new(io: TlsStream<TcpStream>, info: PeerInfo) -> Self {
        Self { io, info }
    }
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Why a connection or a call was refused: the `reason` label of
/// `nodewatch_aggregator_auth_failures_total` and the `reason` field of the
/// log line, so an operator can tell a rotation gone wrong (expired, unknown
/// CA) from a misconfigured client (protocol version, plaintext) at a glance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// The client certificate does not chain to the configured CA.
    UnknownCa,
    /// The client certificate's notAfter has passed.
    Expired,
    /// The client certificate's notBefore is still ahead (or the clocks disagree).
    NotYetValid,
    /// Any other problem with the client certificate (bad signature, usage, encoding).
    BadCertificate,
    /// The client sent no certificate.
    NoClientCert,
    /// The client offered no TLS version the server accepts (only 1.3 is).
    ProtocolVersion,
    /// The client speaks TLS but nothing in common was found (ciphers, groups, ALPN).
    Incompatible,
    /// The first bytes were not a TLS handshake record (HTTP, gRPC without TLS).
    Plaintext,
    /// The client aborted the handshake with an alert (usually: it does not trust our certificate).
    ClientAlert,
    /// The connection closed or broke during the handshake.
    Disconnected,
    /// The handshake did not finish within the server's handshake deadline.
    Timeout,
    /// The certificate is valid but its role may not call this service.
    Role,
    /// The certificate is valid but carries no nodewatch identity (URI SAN).
    NoIdentity,
    /// A node's Hello named another node than its certificate.
    HelloIdentity,
    /// Anything else rustls refused.
    Other,
}

impl AuthFailure {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadCertificate => "bad_certificate",
            Self::NoClientCert => "no_client_cert",
            Self::ProtocolVersion => "protocol_version",
            Self::Incompatible => "incompatible",
            Self::Plaintext => "plaintext",
            Self::ClientAlert => "client_alert",
            Self::Disconnected => "disconnected",
            Self::Timeout => "timeout",
            Self::Role => "role",
            Self::NoIdentity => "no_identity",
            Self::HelloIdentity => "hello_identity",
            Self::Other => "other",
        }
    }
}

/// Counts one refusal under `nodewatch_aggregator_auth_failures_total{reason}`.
/// The older unlabelled handshake counter is kept for existing dashboards.
pub fn count_auth_failure(reason: &'static str) {
    metrics::counter!("nodewatch_aggregator_auth_failures_total", "reason" => reason).increment(1);
    if !matches!(reason, "role" | "no_identity" | "hello_identity") {
        metrics::counter!("nodewatch_tls_handshake_failures_total").increment(1);
    }
}

/// Classifies a failed server handshake. `first` is the first byte the
/// client sent, if any.
#[must_use]
pub fn handshake_failure_reason(first: Option<u8>, error: &io::Error) -> &'static str {
    const TLS_HANDSHAKE_RECORD: u8 = 0x16;
    if first.is_some_and(|b| b != TLS_HANDSHAKE_RECORD) {
        return AuthFailure::Plaintext.as_str();
    }
    let Some(tls) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return match error.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => AuthFailure::Disconnected,
            _ => AuthFailure::Other,
        }
        .as_str();
    };
    rustls_failure(tls).as_str()
}

fn rustls_failure(error: &rustls::Error) -> AuthFailure {
    use rustls::{CertificateError as C, Error as E, PeerIncompatible as P};
    match error {
        E::InvalidCertificate(c) => match c {
            // A certificate from another CA with the same subject name as
            // ours (every throwaway "nodewatch CA" looks alike) finds our CA
            // as its issuer and then fails the signature check: for the
            // operator it is the same mistake as an unknown issuer.
            C::UnknownIssuer | C::BadSignature => AuthFailure::UnknownCa,
            C::Expired | C::ExpiredContext { .. } => AuthFailure::Expired,
            C::NotValidYet | C::NotValidYetContext { .. } => AuthFailure::NotYetValid,
            _ => AuthFailure::BadCertificate,
        },
        E::NoCertificatesPresented => AuthFailure::NoClientCert,
        E::PeerIncompatible(
            P::Tls12NotOffered
            | P::Tls12NotOfferedOrEnabled
            | P::SupportedVersionsExtensionRequired
            | P::ServerDoesNotSupportTls12Or13,
        ) => AuthFailure::ProtocolVersion,
        E::PeerIncompatible(_) | E::NoApplicationProtocol => AuthFailure::Incompatible,
        E::AlertReceived(_) => AuthFailure::ClientAlert,
        _ => AuthFailure::Other,
    }
}

/// Where a client connects: `host:port`, optionally with an `https://` prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl Target {
    pub fn parse(s: &str) -> Result<Self, String> {
        let rest = s.strip_prefix("https://").unwrap_or(s);
        let rest = rest.trim_end_matches('/');
        if rest.contains("://") {
            return Err(format!("{s:?}: only https:// (or no scheme) is supported"));
        }
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: expected host:port"))?;
        let port = port
            .parse()
            .map_err(|_| format!("{s:?}: bad port {port:?}"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(format!("{s:?}: empty host"));
        }
        Ok(Self { host, port })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Opens a lazy gRPC channel to `target` over mutual TLS. The client
/// configuration is read at every (re)connect, so rotated certificates apply
/// to the next connection. `server_name` overrides the name checked in the
/// server's certificate (default: the target's host).
pub fn channel(
    target: &Target,
    config: Arc<Reloadable<ClientConfig>>,
    server_name: Option<String>,
    connect_timeout: Duration,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    // The scheme is http because TLS happens in the connector below; tonic's
    // own TLS would otherwise refuse an https URI without its TLS feature.
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{target}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let target = target.clone();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let config = config.get();
        let target = target.clone();
        let server_name = server_name.clone();
        async move {
            let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
            tcp.set_nodelay(true)?;
            let name = server_name.unwrap_or_else(|| target.host.clone());
            let name = ServerName::try_from(name)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tls = TlsConnector::from(config).connect(name, tcp).await?;
            Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("https://agg:7443").unwrap(),
            Target {
                host: "agg".into(),
                port: 7443
            }
        );
        assert_eq!(Target::parse("[::1]:1").unwrap().host, "::1");
        assert_eq!(Target::parse("[::1]:1").unwrap().to_string(), "[::1]:1");
        assert!(Target::parse("http://x:1").is_err());
        assert!(Target::parse("x").is_err());
        assert!(Target::parse("x:y").is_err());
    }

    #[test]
    fn handshake_failures_are_classified() {
        let wrap = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let cert = |c| wrap(rustls::Error::InvalidCertificate(c));
        let tls = Some(0x16);
        for (first, error, reason) in [
            (
                Some(b'G'),
                wrap(rustls::Error::General(String::new())),
                "plaintext",
            ),
            (
                tls,
                cert(rustls::CertificateError::UnknownIssuer),
                "unknown_ca",
            ),
            (tls, cert(rustls::CertificateError::Expired), "expired"),
            (
                tls,
                cert(rustls::CertificateError::NotValidYet),
                "not_yet_valid",
            ),
            (
                tls,
                wrap(rustls::Error::NoCertificatesPresented),
                "no_client_cert",
            ),
            (
                tls,
                wrap(rustls::Error::PeerIncompatible(
                    rustls::PeerIncompatible::SupportedVersionsExtensionRequired,
                )),
                "protocol_version",
            ),
            (
                None,
                io::Error::from(io::ErrorKind::UnexpectedEof),
                "disconnected",
            ),
        ] {
            assert_eq!(handshake_failure_reason(first, &error), reason, "{error}");
        }
    }
}
