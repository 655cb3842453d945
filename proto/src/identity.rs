//! Peer identity from certificates.
//!
//! Node and role are encoded in a URI SAN (SPIFFE-style):
//! `spiffe://nodewatch/node/<name>` for agents, which may only `Ingest` as that
//! node, and `spiffe://nodewatch/operator/<who>` for people and tools, which may
//! only `Query`. A certificate with no such SAN, or with more than one, has no
//! identity and is refused by every service.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Trust domain of every nodewatch SPIFFE id.
pub const TRUST_DOMAIN: &str = "nodewatch";

/// The longest node name accepted: a Kubernetes node name is a DNS subdomain (RFC 1123), at most 253 characters.
pub const MAX_NODE_NAME_LEN: usize = 253;

/// A validated node name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeName(String);

/// Why a name or certificate does not yield an identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("node name is empty")]
    EmptyName,
    #[error("node name {name:?} is longer than {MAX_NODE_NAME_LEN} characters")]
    NameTooLong { name: String },
    #[error(
        "node name {name:?} has character {ch:?}; allowed are letters, digits, '-', '.' and '_'"
    )]
    BadNameChar { name: String, ch: char },
    #[error("certificate could not be parsed: {0}")]
    BadCertificate(String),
    #[error("certificate has no URI SAN of the form spiffe://{TRUST_DOMAIN}/node/<name> or spiffe://{TRUST_DOMAIN}/operator/<who>")]
    NoIdentity,
    #[error("certificate names more than one nodewatch identity ({0} and {1})")]
    Ambiguous(String, String),
    #[error("{uri:?} is not a nodewatch identity: {why}")]
    BadUri { uri: String, why: &'static str },
}

impl NodeName {
    /// Validates `name`: 1 to 253 characters of `[A-Za-z0-9._-]`.
    pub fn new(name: impl Into<String>) -> Result<Self, IdentityError> {
        let name = name.into();
        if name.is_empty() {
            return Err(IdentityError::EmptyName);
        }
        if name.len() > MAX_NODE_NAME_LEN {
            return Err(IdentityError::NameTooLong { name });
        }
        if let Some(ch) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
        {
            return Err(IdentityError::BadNameChar { name, ch });
        }
        Ok(Self(name))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who is on the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// An agent speaking for this node.
    Node(NodeName),
    /// A person or tool allowed to query.
    Operator(String),
}

impl Identity {
    /// The URI SAN that encodes this identity.
    #[must_use]
    pub fn uri(&self) -> String {
        match self {
            Identity::Node(n) => format!("spiffe://{TRUST_DOMAIN}/node/{n}"),
            Identity::Operator(who) => format!("spiffe://{TRUST_DOMAIN}/operator/{who}"),
        }
    }

    /// Parses a URI SAN. `Ok(None)` for URIs outside the nodewatch trust domain.
    pub fn from_uri(uri: &str) -> Result<Option<Self>, IdentityError> {
        let Some(rest) = uri.strip_prefix("spiffe://") else {
            return Ok(None);
        };
        let Some(path) = rest
            .strip_prefix(TRUST_DOMAIN)
            .and_then(|p| p.strip_prefix('/'))
        else {
            return Ok(None);
        };
        let bad = |why| IdentityError::BadUri {
            uri: uri.to_string(),
            why,
        };
        let (kind, name) = path.split_once('/').ok_or_else(|| bad("no role segment"))?;
        match kind {
            "node" => Ok(Some(Identity::Node(NodeName::new(name)?))),
            "operator" => {
                // The operator name is free text for audit logs, but one path segment.
                if name.is_empty() || name.contains('/') {
                    return Err(bad("operator name must be one non-empty path segment"));
                }
                Ok(Some(Identity::Operator(name.to_string())))
            }
            _ => Err(bad("role must be 'node' or 'operator'")),
        }
    }

    /// Reads the identity from a DER certificate's subject alternative names.
    pub fn from_cert_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let mut found: Option<Identity> = None;
        for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
            if let GeneralName::URI(uri) = name {
                if let Some(id) = Identity::from_uri(uri)? {
                    if let Some(prev) = &found {
                        return Err(IdentityError::Ambiguous(prev.uri(), id.uri()));
                    }
                    found = Some(id);
                }
            }
        }
        found.ok_or(IdentityError::NoIdentity)
    }
}

/// A certificate's validity window, as Unix seconds `(not_before, not_after)`.
#[must_use]
pub fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Node(n) => write!(f, "node/{n}"),
            Identity::Operator(w) => write!(f, "operator/{w}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trip() {
        for id in [
            Identity::Node(NodeName::new("talos-1").unwrap()),
            Identity::Operator("alice".into()),
        ] {
            assert_eq!(Identity::from_uri(&id.uri()).unwrap(), Some(id));
        }
    }

    #[test]
    fn foreign_uris_are_ignored_and_bad_ones_refused() {
        assert_eq!(
            Identity::from_uri("spiffe://cluster.local/ns/x/sa/y").unwrap(),
            None
        );
        assert_eq!(Identity::from_uri("https://example.com").unwrap(), None);
        assert!(Identity::from_uri("spiffe://nodewatch/admin/x").is_err());
        assert!(Identity::from_uri("spiffe://nodewatch/node/").is_err());
        assert!(Identity::from_uri("spiffe://nodewatch/node/a/b").is_err());
        assert!(Identity::from_uri("spiffe://nodewatch/operator/").is_err());
    }

    #[test]
    fn node_names() {
        assert!(NodeName::new("k8s-node-1.lan").is_ok());
        assert!(NodeName::new("OPNsense").is_ok());
        assert_eq!(NodeName::new(""), Err(IdentityError::EmptyName));
        assert!(matches!(
            NodeName::new("a b"),
            Err(IdentityError::BadNameChar { ch: ' ', .. })
        ));
        assert!(NodeName::new("x".repeat(254)).is_err());
    }
}
