//! A small certificate authority for homelabs without cert-manager, for the
//! demo and for tests: a CA, server certificates, and node/operator client
//! certificates carrying the identity URI SAN (see [`crate::identity`]).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::identity::Identity;

/// The time type of [`Ca::issue_window`].
pub use time::{Duration as TimeDuration, OffsetDateTime};

/// Default lifetime of leaf certificates made here: a year, for homelab use
/// without rotation. cert-manager deployments use shorter ones.
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_hours(8760);

/// How far back certificates are dated so clocks a few minutes apart still agree.
pub const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Default lifetime of a CA made here.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_hours(87600);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0:?} is neither a DNS name nor an IP address")]
    BadName(String),
}

/// A PEM certificate and its PEM private key.
#[derive(Clone, Debug)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl Pem {
    /// Writes `<stem>.crt` and `<stem>.key` (mode 0600) into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), CertError> {
        let crt = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        write_file(&crt, &self.cert, 0o644)?;
        write_file(&key, &self.key, 0o600)?;
        Ok((crt, key))
    }
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    // The mode is set at creation, and on an existing file before anything
    // is written: a key is never readable by others, not even for a moment.
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let mut f = opts.open(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io)?;
    }
    std::io::Write::write_all(&mut f, contents.as_bytes()).map_err(io)?;
    Ok(())
}

/// What a leaf certificate is for.
#[derive(Clone, Debug)]
pub enum Leaf {
    /// A server (the aggregator): DNS names and IP addresses it is reached at.
    Server { names: Vec<String> },
    /// A client with a nodewatch identity (agent or operator).
    Client(Identity),
}

/// A certificate authority able to sign leaves.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: Pem,
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time_now();
    // Back-date a little so clocks a few minutes apart still agree.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::seconds(lifetime.as_secs() as i64);
}

/// A nodewatch CA's parameters: its name, how many CA levels may stand
/// below it, and its lifetime from now.
fn ca_params(common_name: &str, levels_below: u8, lifetime: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "nodewatch");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(levels_below));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, lifetime);
    params
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

impl Ca {
    /// Makes a new self-signed CA.
    pub fn generate(common_name: &str, lifetime: Duration) -> Result<Self, CertError> {
        let key = KeyPair::generate()?;
        // One level below: the node-issuing CA ([`Ca::issue_node_ca`]).
        let params = ca_params(common_name, 1, lifetime);
        let cert = params.self_signed(&key)?;
        Ok(Self::made(params, key, &cert))
    }

    /// The CA just made from `params`, `key` and its certificate.
    fn made(params: CertificateParams, key: KeyPair, cert: &rcgen::Certificate) -> Self {
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// Loads a CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            issuer,
            pem: Pem {
                cert: cert_pem.to_string(),
                key: key_pem.to_string(),
            },
        })
    }

    /// Loads a CA from `<dir>/ca.crt` and `<dir>/ca.key`.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        Self::load_files(&dir.join("ca.crt"), &dir.join("ca.key"))
    }

    /// Loads a CA from its PEM certificate and key files.
    pub fn load_files(cert: &Path, key: &Path) -> Result<Self, CertError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| CertError::Io {
                path: p.to_path_buf(),
                source,
            })
        };
        Self::from_pem(&read(cert)?, &read(key)?)
    }

    #[must_use]
    pub fn pem(&self) -> &Pem {
        &self.pem
    }

    /// Makes a node-issuing CA signed by this one: the CA an aggregator's
    /// Bootstrap RPC holds. The aggregator accepts node identities under it
    /// and operator certificates only when this (root) CA signed them
    /// itself, so the holder of the node-issuing key can mint node
    /// certificates and nothing else. It may sign leaves only (path length 0).
    pub fn issue_node_ca(&self, common_name: &str, lifetime: Duration) -> Result<Self, CertError> {
        let key = KeyPair::generate()?;
        let mut params = ca_params(common_name, 0, lifetime);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Self::made(params, key, &cert))
    }

    /// Signs a new leaf certificate with a fresh key, valid from five minutes ago for `lifetime`.
    pub fn issue(&self, leaf: &Leaf, lifetime: Duration) -> Result<Pem, CertError> {
        let now = time_now();
        self.issue_window(
            leaf,
            now - time::Duration::minutes(5),
            now + time::Duration::seconds(lifetime.as_secs() as i64),
        )
    }

    /// Signs a leaf valid from `not_before` to `not_after` (tests use this for expired certificates).
    pub fn issue_window(
        &self,
        leaf: &Leaf,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Result<Pem, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "nodewatch");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        match leaf {
            Leaf::Server { names } => {
                dn.push(
                    DnType::CommonName,
                    names.first().map_or("nodewatch-aggregator", String::as_str),
                );
                for n in names {
                    params.subject_alt_names.push(match n.parse::<IpAddr>() {
                        Ok(ip) => SanType::IpAddress(ip),
                        Err(_) => SanType::DnsName(
                            n.clone()
                                .try_into()
                                .map_err(|_| CertError::BadName(n.clone()))?,
                        ),
                    });
                }
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
            Leaf::Client(id) => {
                dn.push(DnType::CommonName, id.to_string());
                params
                    .subject_alt_names
                    .push(SanType::URI(id.uri().try_into()?));
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        params.distinguished_name = dn;
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// A new private key and a certificate request for it (PEM), for bootstrapping.
pub fn key_and_csr(node: &crate::identity::NodeName) -> Result<(String, String), CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, node.as_str());
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

impl Ca {
    /// Signs a client certificate for `identity` with the public key of a
    /// PEM certificate request. Only the request's key is used: its names are
    /// ignored, the identity is the caller's decision.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<Pem, CertError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "nodewatch");
        dn.push(DnType::CommonName, identity.to_string());
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params
            .subject_alt_names
            .push(SanType::URI(identity.uri().try_into()?));
        params.use_authority_key_identifier_extension = true;
        let now = time_now();
        // Back-dated for clocks a little apart, by at most a tenth of the
        // lifetime: renewal at two thirds of notBefore..notAfter must stay
        // ahead of now, whatever the lifetime.
        let skew = (lifetime / 10).min(CLOCK_SKEW);
        params.not_before = now - time::Duration::seconds(skew.as_secs() as i64);
        params.not_after = now + time::Duration::seconds(lifetime.as_secs() as i64);
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: String::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeName;

    #[test]
    fn client_certificate_carries_identity() {
        let ca = Ca::generate("test", DEFAULT_CA_VALIDITY).unwrap();
        let id = Identity::Node(NodeName::new("n1").unwrap());
        let pem = ca
            .issue(&Leaf::Client(id.clone()), DEFAULT_LEAF_VALIDITY)
            .unwrap();
        let der = rustls_pemfile::certs(&mut pem.cert.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(Identity::from_cert_der(&der).unwrap(), id);
        let server = ca
            .issue(
                &Leaf::Server {
                    names: vec!["localhost".into(), "127.0.0.1".into()],
                },
                DEFAULT_LEAF_VALIDITY,
            )
            .unwrap();
        let der = rustls_pemfile::certs(&mut server.cert.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert!(Identity::from_cert_der(&der).is_err());
        // Reloading the CA from PEM still signs certificates.
        // A certificate request is signed for the identity chosen by the CA, not the request's names.
        let other = NodeName::new("n2").unwrap();
        let (_key, csr) = key_and_csr(&other).unwrap();
        let signed = ca.sign_request(&csr, &id, DEFAULT_LEAF_VALIDITY).unwrap();
        let der = rustls_pemfile::certs(&mut signed.cert.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(Identity::from_cert_der(&der).unwrap(), id);
        let again = Ca::from_pem(&ca.pem().cert, &ca.pem().key).unwrap();
        again
            .issue(
                &Leaf::Client(Identity::Operator("me".into())),
                DEFAULT_LEAF_VALIDITY,
            )
            .unwrap();
    }
}
