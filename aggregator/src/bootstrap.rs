//! `Bootstrap.Issue`: per-node certificates for Kubernetes agents without
//! listing nodes. The agent presents its projected, audience-bound
//! ServiceAccount token; a `TokenReview` says whose it is and (Kubernetes
//! 1.30+) which pod and node it was issued to; the pod is then read from the
//! API to confirm it runs on that node with that uid; only then is the
//! agent's key certified as `spiffe://nodewatch/node/<node>`. A pod on node A
//! can never get node B's identity: the node comes from the API server, not
//! from anything the agent says.
//!
//! An agent off the cluster (the OPNsense firewall) has no pod. It presents
//! a long-lived, audience-bound token of a ServiceAccount listed in
//! `bootstrap.node_service_accounts`; the node it stands for is the
//! [`NODE_ANNOTATION`] on that ServiceAccount, read from the API server after
//! the TokenReview ([`BootstrapService::issue_for_service_account`]). Only a
//! cluster administrator can annotate it; the request never names the node.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use nodewatch_proto::certs::Ca;
use nodewatch_proto::v1::bootstrap_server::Bootstrap;
use nodewatch_proto::v1::{IssueRequest, IssueResponse};
use nodewatch_proto::{Identity, NodeName};
use serde_json::Value;
use tonic::{Request as GrpcRequest, Response, Status};
use tracing::{info, warn};

/// Where a pod finds its ServiceAccount token and the API server's CA.
pub const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const IN_CLUSTER_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// The token claims Kubernetes 1.30+ adds for a pod-bound token (`ServiceAccountTokenPodNodeInfo`).
pub const EXTRA_NODE: &str = "authentication.kubernetes.io/node-name";
pub const EXTRA_POD: &str = "authentication.kubernetes.io/pod-name";
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// The annotation on a ServiceAccount in `bootstrap.node_service_accounts`
/// that names the one node its tokens stand for (e.g. `opnsense`).
pub const NODE_ANNOTATION: &str = "nodewatch.io/node-name";
/// Timeout of one API server request.
const API_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest certificate request accepted.
const MAX_CSR_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("{url}: {msg}")]
    Request { url: String, msg: String },
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("{0}")]
    Bad(String),
}

/// The few API server calls the bootstrap needs.
pub struct KubeApi {
    pub base: Uri,
    pub token_file: PathBuf,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// What a successful TokenReview told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewed {
    pub username: String,
    pub node: String,
    pub pod: String,
    pub pod_uid: String,
}

/// Whose token it is, before asking which pod or node it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewedUser {
    /// `system:serviceaccount:<namespace>:<name>`.
    pub username: String,
    /// The ServiceAccount's uid (the API server fills `user.uid` for its tokens).
    pub uid: String,
    user: Value,
}

impl ReviewedUser {
    /// The pod and node a pod-bound token carries (Kubernetes 1.30+).
    pub fn pod_bound(&self) -> Result<Reviewed, KubeError> {
        let user = &self.user;
        let node = first_extra(user, EXTRA_NODE)
            .ok_or_else(|| KubeError::Bad(format!("token names no node ({EXTRA_NODE}); it must be a pod-bound token on Kubernetes 1.30+")))?;
        let pod = first_extra(user, EXTRA_POD)
            .ok_or_else(|| KubeError::Bad(format!("token names no pod ({EXTRA_POD})")))?;
        let pod_uid = first_extra(user, EXTRA_POD_UID)
            .ok_or_else(|| KubeError::Bad(format!("token names no pod uid ({EXTRA_POD_UID})")))?;
        Ok(Reviewed {
            username: self.username.clone(),
            node,
            pod,
            pod_uid,
        })
    }

    /// `(namespace, name)` of a ServiceAccount user name.
    #[must_use]
    pub fn service_account(&self) -> Option<(&str, &str)> {
        let mut parts = self.username.split(':');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("system"), Some("serviceaccount"), Some(ns), Some(name), None)
                if !ns.is_empty() && !name.is_empty() =>
            {
                Some((ns, name))
            }
            _ => None,
        }
    }
}

/// What the API server says of a ServiceAccount: its uid and annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountInfo {
    pub uid: String,
    /// The value of [`NODE_ANNOTATION`], if set.
    pub node: Option<String>,
}

fn first_extra(user: &Value, key: &str) -> Option<String> {
    user["extra"][key]
        .get(0)
        .and_then(Value::as_str)
        .map(str::to_string)
}

impl KubeApi {
    /// `GET path`, its JSON answer.
    async fn get(&self, path: &str) -> Result<Value, KubeError> {
        self.call(Method::GET, path, None).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Value, KubeError> {
        let url = format!("{}{}", self.base.to_string().trim_end_matches('/'), path);
        let req_err = |msg: String| KubeError::Request {
            url: url.clone(),
            msg,
        };
        let token = std::fs::read_to_string(&self.token_file)
            .map_err(|e| req_err(format!("{}: {e}", self.token_file.display())))?;
        let https = self.base.scheme_str() == Some("https");
        let host = self
            .base
            .host()
            .ok_or_else(|| req_err("no host".into()))?
            .to_string();
        let port = self.base.port_u16().unwrap_or(if https { 443 } else { 80 });
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(
                http::header::HOST,
                self.base
                    .authority()
                    .map_or(host.as_str(), http::uri::Authority::as_str),
            )
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| req_err(e.to_string()))?;
        let run = async {
            let tcp = tokio::net::TcpStream::connect((
                host.trim_start_matches('[').trim_end_matches(']'),
                port,
            ))
            .await
            .map_err(|e| req_err(e.to_string()))?;
            if https {
                let cfg = self
                    .tls
                    .clone()
                    .ok_or_else(|| req_err("https needs the API server's CA".into()))?;
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| req_err(e.to_string()))?;
                let tls = tokio_rustls::TlsConnector::from(cfg)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| req_err(e.to_string()))?;
                exchange(TokioIo::new(tls), req).await.map_err(req_err)
            } else {
                exchange(TokioIo::new(tcp), req).await.map_err(req_err)
            }
        };
        let (status, body) = tokio::time::timeout(API_TIMEOUT, run)
            .await
            .map_err(|_| req_err("timed out".into()))??;
        if !status.is_success() {
            return Err(KubeError::Status {
                url,
                status,
                body: String::from_utf8_lossy(&body).chars().take(300).collect(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| KubeError::Bad(format!("{url}: not JSON: {e}")))
    }

    /// `POST /apis/authentication.k8s.io/v1/tokenreviews`: whether the token
    /// is valid for `audience`, and whose it is.
    pub async fn review_user(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<ReviewedUser, KubeError> {
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]},
        });
        let v = self
            .call(
                Method::POST,
                "/apis/authentication.k8s.io/v1/tokenreviews",
                Some(body.to_string().into_bytes()),
            )
            .await?;
        let st = &v["status"];
        if st["authenticated"] != Value::Bool(true) {
            let why = st["error"].as_str().unwrap_or("not authenticated");
            return Err(KubeError::Bad(format!(
                "token refused by the API server: {why}"
            )));
        }
        // An audience-bound review answers with the audiences it matched.
        let audiences = st["audiences"].as_array().cloned().unwrap_or_default();
        if !audiences.iter().any(|a| a.as_str() == Some(audience)) {
            return Err(KubeError::Bad(format!(
                "token is not for audience {audience:?}"
            )));
        }
        let user = st["user"].clone();
        Ok(ReviewedUser {
            username: user["username"].as_str().unwrap_or_default().to_string(),
            uid: user["uid"].as_str().unwrap_or_default().to_string(),
            user,
        })
    }

    /// A pod-bound token's review: whose it is, its pod and that pod's node.
    pub async fn review(&self, token: &str, audience: &str) -> Result<Reviewed, KubeError> {
        self.review_user(token, audience).await?.pod_bound()
    }

    /// `GET` a ServiceAccount: its uid and [`NODE_ANNOTATION`].
    pub async fn service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<ServiceAccountInfo, KubeError> {
        let v = self
            .get(&format!(
                "/api/v1/namespaces/{namespace}/serviceaccounts/{name}"
            ))
            .await?;
        Ok(ServiceAccountInfo {
            uid: v["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            node: v["metadata"]["annotations"][NODE_ANNOTATION]
                .as_str()
                .map(str::to_string),
        })
    }

    /// The node a pod is scheduled on and its uid.
    pub async fn pod(&self, namespace: &str, name: &str) -> Result<(String, String), KubeError> {
        let v = self
            .get(&format!("/api/v1/namespaces/{namespace}/pods/{name}"))
            .await?;
        let node = v["spec"]["nodeName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let uid = v["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Ok((node, uid))
    }
}

async fn exchange<T>(
    io: TokioIo<T>,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let request = async move {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        drop(sender);
        Ok::<_, hyper::Error>((status, body))
    };
    let (r, _conn) = tokio::join!(request, conn);
    r.map_err(|e| e.to_string())
}

/// Largest ServiceAccount token accepted. Kubernetes tokens are JWTs of
/// 1–2 KB (a projected token with its pod and node claims ~1.5 KB); 16 KiB
/// leaves room for long names and new claims while bounding what one
/// anonymous call can make the aggregator send to the API server (the
/// probe in issue 16 sent 1 MiB tokens, 210 MB in under a second).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Calls per second one source address may make, sustained, and its burst:
/// an agent bootstraps once per certificate lifetime and renews at two
/// thirds of it; a crash-looping pod retries a few times a minute.
pub const PER_SOURCE_RATE: f64 = 0.5;
pub const PER_SOURCE_BURST: f64 = 10.0;
/// Calls per second from all sources together, and the burst: a whole
/// homelab's agents (tens of nodes) starting at once after a rollout.
pub const TOTAL_RATE: f64 = 10.0;
pub const TOTAL_BURST: f64 = 50.0;
/// Source addresses tracked at most; past this, idle ones are forgotten
/// (a full bucket is the same as no bucket).
const MAX_SOURCES: usize = 4096;

/// A token bucket.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: std::time::Instant,
}

impl Bucket {
    fn full(burst: f64, now: std::time::Instant) -> Self {
        Self {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: std::time::Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.at = now;
    }
}

/// Request admission for Bootstrap, before any TokenReview: the token's
/// size and the call rate per source address and overall. Each TokenReview
/// costs the API server work done with the aggregator's own credentials, so
/// an anonymous caller must not be able to make many, or large ones.
pub struct Admission {
    buckets: std::sync::Mutex<(Bucket, std::collections::HashMap<std::net::IpAddr, Bucket>)>,
}

impl Default for Admission {
    fn default() -> Self {
        let now = std::time::Instant::now();
        Self {
            buckets: std::sync::Mutex::new((
                Bucket::full(TOTAL_BURST, now),
                std::collections::HashMap::new(),
            )),
        }
    }
}

impl Admission {
    /// Takes one call from `source`'s bucket and the total one, or says which is empty.
    fn take(
        &self,
        source: Option<std::net::IpAddr>,
        now: std::time::Instant,
    ) -> Result<(), &'static str> {
        let mut guard = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (total, sources) = &mut *guard;
        total.refill(TOTAL_RATE, TOTAL_BURST, now);
        let mine = match source {
            Some(ip) => {
                if sources.len() >= MAX_SOURCES && !sources.contains_key(&ip) {
                    sources.retain(|_, b| {
                        b.refill(PER_SOURCE_RATE, PER_SOURCE_BURST, now);
                        b.tokens < PER_SOURCE_BURST
                    });
                }
                let b = sources
                    .entry(ip)
                    .or_insert_with(|| Bucket::full(PER_SOURCE_BURST, now));
                b.refill(PER_SOURCE_RATE, PER_SOURCE_BURST, now);
                Some(b)
            }
            None => None,
        };
        if mine.as_ref().is_some_and(|b| b.tokens < 1.0) {
            return Err("per_source");
        }
        if total.tokens < 1.0 {
            return Err("total");
        }
        total.tokens -= 1.0;
        if let Some(b) = mine {
            b.tokens -= 1.0;
        }
        Ok(())
    }

    /// Admits a Bootstrap call or refuses it (counted, logged at most once
    /// per reason per interval) before anything is sent to the API server.
    pub fn admit(&self, req: &GrpcRequest<IssueRequest>) -> Result<(), Status> {
        let source = req
            .extensions()
            .get::<nodewatch_proto::tls::PeerInfo>()
            .map(|p| p.remote_addr.ip());
        let token = req.get_ref().token.len();
        if token > MAX_TOKEN_BYTES {
            return Err(refuse_throttled(
                "token_too_large",
                Status::invalid_argument(format!(
                    "token: {token} bytes, more than the {MAX_TOKEN_BYTES} a ServiceAccount token may have"
                )),
            ));
        }
        if let Err(limit) = self.take(source, std::time::Instant::now()) {
            let why = if limit == "per_source" {
                format!("more than {PER_SOURCE_BURST} calls at once or {PER_SOURCE_RATE} a second from one address")
            } else {
                format!("more than {TOTAL_BURST} calls at once or {TOTAL_RATE} a second in all")
            };
            return Err(refuse_throttled(
                "rate_limited",
                Status::resource_exhausted(format!("bootstrap rate limit: {why}; retry later")),
            ));
        }
        Ok(())
    }
}

/// Counts a refusal and logs it at most once per reason per interval.
fn refuse_throttled(reason: &'static str, status: Status) -> Status {
    metrics::counter!("nodewatch_aggregator_bootstrap_total", "result" => reason).increment(1);
    if let Some(suppressed) = crate::throttle::warnings().check(reason) {
        warn!(reason, error = %status.message(), suppressed, "Bootstrap refused.");
    }
    status
}

/// The running bootstrap service.
pub struct BootstrapService {
    /// Size and rate limits checked before any TokenReview.
    pub admission: Admission,
    pub ca: Arc<Ca>,
    pub audience: String,
    /// `system:serviceaccount:<namespace>:<name>` allowed to bootstrap.
    pub service_accounts: Vec<String>,
    /// ServiceAccounts that each stand for one node off the cluster, named
    /// by their [`NODE_ANNOTATION`] (their tokens are bound to no pod).
    pub node_service_accounts: Vec<String>,
    pub validity: Duration,
    pub kube: KubeApi,
}

fn refuse(reason: &'static str, msg: String) -> Status {
    refuse_throttled(reason, Status::permission_denied(msg))
}

#[tonic::async_trait]
impl Bootstrap for BootstrapService {
    async fn issue(
        &self,
        req: GrpcRequest<IssueRequest>,
    ) -> Result<Response<IssueResponse>, Status> {
        self.admission.admit(&req)?;
        let r = req.into_inner();
        if r.token.is_empty() {
            return Err(Status::invalid_argument("token: empty"));
        }
        if r.csr_pem.is_empty() || r.csr_pem.len() > MAX_CSR_BYTES {
            return Err(Status::invalid_argument(format!(
                "csr_pem: must be 1..={MAX_CSR_BYTES} bytes of PEM"
            )));
        }
        let user = match self.kube.review_user(&r.token, &self.audience).await {
            Ok(v) => v,
            Err(KubeError::Bad(msg)) => return Err(refuse("token", msg)),
            Err(e) => {
                metrics::counter!("nodewatch_aggregator_bootstrap_total", "result" => "api_error")
                    .increment(1);
                return Err(Status::unavailable(format!("cannot check the token: {e}")));
            }
        };
        if self.node_service_accounts.contains(&user.username) {
            return self.issue_for_service_account(&user, &r.csr_pem).await;
        }
        let review = user
            .pod_bound()
            .map_err(|e| refuse("token", e.to_string()))?;
        if !self.service_accounts.contains(&review.username) {
            return Err(refuse(
                "service_account",
                format!(
                    "{} may not bootstrap (allowed: {})",
                    review.username,
                    self.service_accounts.join(", ")
                ),
            ));
        }
        let namespace = review
            .username
            .split(':')
            .nth(2)
            .unwrap_or_default()
            .to_string();
        let (pod_node, pod_uid) = match self.kube.pod(&namespace, &review.pod).await {
            Ok(p) => p,
            Err(e) => {
                metrics::counter!("nodewatch_aggregator_bootstrap_total", "result" => "api_error")
                    .increment(1);
                return Err(Status::unavailable(format!(
                    "cannot read pod {namespace}/{}: {e}",
                    review.pod
                )));
            }
        };
        // The token is bound to a pod; the pod must still be that pod, on that node.
        if pod_uid != review.pod_uid {
            return Err(refuse(
                "pod_uid",
                format!(
                    "pod {namespace}/{} has uid {pod_uid}, the token was issued to {}",
                    review.pod, review.pod_uid
                ),
            ));
        }
        if pod_node != review.node {
            return Err(refuse(
                "node",
                format!(
                    "pod {namespace}/{} runs on {pod_node:?}, the token names node {:?}",
                    review.pod, review.node
                ),
            ));
        }
        let node = NodeName::new(pod_node).map_err(|e| refuse("node", e.to_string()))?;
        let issued = self.sign(&r.csr_pem, &node)?;
        info!(%node, pod = %review.pod, "Issued a node certificate.");
        Ok(Response::new(issued))
    }
}

impl BootstrapService {
    /// The off-cluster path: the node is the annotation on the token's
    /// ServiceAccount, read now from the API server (so removing or changing
    /// the annotation takes effect at the next renewal). A ServiceAccount
    /// without it is refused and counted (`result="no_node_annotation"`).
    pub async fn issue_for_service_account(
        &self,
        user: &ReviewedUser,
        csr_pem: &str,
    ) -> Result<Response<IssueResponse>, Status> {
        let Some((namespace, name)) = user.service_account() else {
            return Err(refuse(
                "service_account",
                format!("{} is not a ServiceAccount", user.username),
            ));
        };
        let sa = match self.kube.service_account(namespace, name).await {
            Ok(sa) => sa,
            Err(e) => {
                metrics::counter!("nodewatch_aggregator_bootstrap_total", "result" => "api_error")
                    .increment(1);
                return Err(Status::unavailable(format!(
                    "cannot read ServiceAccount {namespace}/{name}: {e}"
                )));
            }
        };
        // A ServiceAccount deleted and made again under the same name is
        // another account: tokens of the old one must not name the new one's node.
        if !user.uid.is_empty() && sa.uid != user.uid {
            return Err(refuse(
                "service_account",
                format!(
                    "ServiceAccount {namespace}/{name} has uid {}, the token was issued to {}",
                    sa.uid, user.uid
                ),
            ));
        }
        let Some(node) = sa.node else {
            return Err(refuse(
                "no_node_annotation",
                format!(
                    "ServiceAccount {namespace}/{name} has no {NODE_ANNOTATION} annotation naming the node its tokens stand for"
                ),
            ));
        };
        let node = NodeName::new(node).map_err(|e| {
            refuse(
                "no_node_annotation",
                format!("ServiceAccount {namespace}/{name}: {NODE_ANNOTATION}: {e}"),
            )
        })?;
        let issued = self.sign(csr_pem, &node)?;
        info!(%node, service_account = %user.username, "Issued a node certificate.");
        Ok(Response::new(issued))
    }

    /// Signs the request as `node`'s certificate, counting it issued.
    fn sign(&self, csr_pem: &str, node: &NodeName) -> Result<IssueResponse, Status> {
        let pem = self
            .ca
            .sign_request(csr_pem, &Identity::Node(node.clone()), self.validity)
            .map_err(|e| Status::invalid_argument(format!("csr_pem: {e}")))?;
        metrics::counter!("nodewatch_aggregator_bootstrap_total", "result" => "issued")
            .increment(1);
        let not_after_ms = crate::store::now_ms() + self.validity.as_millis() as i64;
        Ok(IssueResponse {
            cert_pem: pem.cert,
            ca_pem: self.ca.pem().cert.clone(),
            not_after_ms,
            node: node.to_string(),
        })
    }
}

/// A TLS client configuration trusting the API server's CA (TLS 1.2 and 1.3, as API servers speak both).
pub fn api_tls(
    ca: &std::path::Path,
) -> Result<Arc<rustls::ClientConfig>, nodewatch_proto::tls::TlsError> {
    let cfg = nodewatch_proto::tls::foreign_client_trusting(ca)?.with_no_client_auth();
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod admission_tests {
    use super::*;

    #[test]
    fn per_source_and_total_buckets() {
        let a = Admission::default();
        let t0 = std::time::Instant::now();
        let one: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..PER_SOURCE_BURST as usize {
            assert_eq!(a.take(Some(one), t0), Ok(()));
        }
        assert_eq!(a.take(Some(one), t0), Err("per_source"));
        // Two seconds later it has one more.
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(a.take(Some(one), t1), Ok(()));
        assert_eq!(a.take(Some(one), t1), Err("per_source"));
        // Many addresses: the total runs out.
        let mut admitted = 0;
        for i in 0..200u8 {
            if a.take(Some(std::net::IpAddr::from([10, 1, 0, i])), t1)
                .is_ok()
            {
                admitted += 1;
            }
        }
        assert!(admitted < TOTAL_BURST as usize, "{admitted}");
    }
}
