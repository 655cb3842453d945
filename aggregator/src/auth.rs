//! Roles from the client certificate: a node certificate may only Ingest, as
//! the node it names; an operator certificate may only Query. The identity is
//! read from the TLS session, never from the payload.

use nodewatch_proto::tls::{count_auth_failure, AuthFailure, PeerInfo};
use nodewatch_proto::{Identity, NodeName};
use tonic::{Request, Status};
use tracing::warn;

/// Counts and logs one refusal after a successful handshake; the handshake
/// refusals themselves are counted in the TLS accept loop.
fn refuse(p: &PeerInfo, reason: AuthFailure, status: Status) -> Status {
    count_auth_failure(reason.as_str());
    // Rate-limited: a probe repeating a refused call must not fill the log.
    if let Some(suppressed) = crate::throttle::warnings().check(reason.as_str()) {
        warn!(peer = %p.remote_addr, reason = reason.as_str(), error = %status.message(), suppressed, "Call refused.");
    }
    status
}

fn peer<T>(req: &Request<T>) -> Result<&PeerInfo, Status> {
    req.extensions()
        .get::<PeerInfo>()
        .ok_or_else(|| Status::unauthenticated("no TLS peer information on this connection"))
}

/// Refuses a certificate of the other role for `rpc` (`ingest`, `query`).
fn wrong_role(p: &PeerInfo, rpc: &'static str, message: String) -> Status {
    metrics::counter!("nodewatch_aggregator_denied_total", "rpc" => rpc).increment(1);
    refuse(p, AuthFailure::Role, Status::permission_denied(message))
}

/// Refuses a certificate that names no nodewatch identity.
fn no_identity(p: &PeerInfo, e: &impl std::fmt::Display) -> Status {
    refuse(
        p,
        AuthFailure::NoIdentity,
        Status::permission_denied(format!("client certificate has no nodewatch identity: {e}")),
    )
}

/// The node an Ingest caller speaks for.
pub fn require_node<T>(req: &Request<T>) -> Result<(NodeName, PeerInfo), Status> {
    let p = peer(req)?;
    match &p.identity {
        Ok(Identity::Node(n)) => Ok((n.clone(), p.clone())),
        Ok(Identity::Operator(who)) => Err(wrong_role(p, "ingest", format!(
            "operator certificate ({who}) may not Ingest: only spiffe://nodewatch/node/<name> certificates may"
        ))),
        Err(e) => Err(no_identity(p, e)),
    }
}

/// The operator calling Query.
pub fn require_operator<T>(req: &Request<T>) -> Result<String, Status> {
    let p = peer(req)?;
    match &p.identity {
        Ok(Identity::Operator(who)) => Ok(who.clone()),
        Ok(Identity::Node(n)) => Err(wrong_role(p, "query", format!(
            "node certificate ({n}) may not Query: only spiffe://nodewatch/operator/<who> certificates may"
        ))),
        Err(e) => Err(no_identity(p, e)),
    }
}
