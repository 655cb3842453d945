//! A throwaway PKI made at test time: a CA, the aggregator's serving
//! certificate, node and operator client certificates.

use std::path::PathBuf;
use std::time::Duration;

use nodewatch_proto::certs::{Ca, Leaf, Pem, DEFAULT_CA_VALIDITY, DEFAULT_LEAF_VALIDITY};
use nodewatch_proto::tls::TlsFiles;
use nodewatch_proto::{Identity, NodeName};

/// A throwaway PKI in a temporary folder.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    #[must_use]
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("test CA", DEFAULT_CA_VALIDITY).unwrap();
        ca.pem().write(dir.path(), "ca").unwrap();
        let pki = Self { dir, ca };
        let _ = pki.issue(
            "aggregator",
            &Leaf::Server {
                names: vec!["localhost".into(), "127.0.0.1".into()],
            },
        );
        pki
    }

    #[must_use]
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Issues `<stem>.crt/.key`.
    #[must_use]
    pub fn issue(&self, stem: &str, leaf: &Leaf) -> TlsFiles {
        self.issue_for(stem, leaf, DEFAULT_LEAF_VALIDITY)
    }

    #[must_use]
    pub fn issue_for(&self, stem: &str, leaf: &Leaf, validity: Duration) -> TlsFiles {
        self.write(stem, &self.ca.issue(leaf, validity).unwrap())
    }

    /// Issues `<stem>.crt/.key` valid only from `not_before` to `not_after` (e.g. already expired).
    #[must_use]
    pub fn issue_expired(
        &self,
        stem: &str,
        leaf: &Leaf,
        not_before: nodewatch_proto::certs::OffsetDateTime,
        not_after: nodewatch_proto::certs::OffsetDateTime,
    ) -> TlsFiles {
        self.write(
            stem,
            &self.ca.issue_window(leaf, not_before, not_after).unwrap(),
        )
    }

    /// Writes `pem` as `<stem>.crt/.key` beside the CA.
    fn write(&self, stem: &str, pem: &Pem) -> TlsFiles {
        let (cert, key) = pem.write(self.dir.path(), stem).unwrap();
        TlsFiles {
            ca: self.path("ca.crt"),
            cert,
            key,
        }
    }

    /// A node certificate (`node-<name>`).
    #[must_use]
    pub fn node(&self, name: &str) -> TlsFiles {
        self.issue(
            &format!("node-{name}"),
            &Leaf::Client(Identity::Node(NodeName::new(name).unwrap())),
        )
    }

    /// An operator certificate (`operator-<who>`).
    #[must_use]
    pub fn operator(&self, who: &str) -> TlsFiles {
        self.issue(
            &format!("operator-{who}"),
            &Leaf::Client(Identity::Operator(who.into())),
        )
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}
