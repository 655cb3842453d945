//! `nodewatch certs`: a CA and certificates for homelabs without cert-manager.
//!
//! ```text
//! nodewatch certs ca --dir pki                      # pki/ca.crt, pki/private/ca.key
//! nodewatch certs server --dir pki aggregator.lan   # pki/aggregator.crt, .key
//! nodewatch certs node --dir pki talos-1            # pki/node-talos-1.crt, .key
//! nodewatch certs operator --dir pki alice          # pki/operator-alice.crt, .key
//! nodewatch certs node-ca --dir pki                 # pki/node-ca.crt, .key (Bootstrap)
//! ```
//!
//! The CA key signs every identity, operators included, so it is kept apart
//! from the files that go to the aggregators and nodes: in `private/` (mode
//! 0700) or wherever `--ca-key` says. It belongs on the machine where
//! certificates are made, or offline, never on an aggregator. An aggregator
//! that issues node certificates itself (the Bootstrap RPC) gets the
//! node-issuing CA instead, which can make node identities only.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use nodewatch_proto::certs::{Ca, Leaf, DEFAULT_CA_VALIDITY, DEFAULT_LEAF_VALIDITY};
use nodewatch_proto::{Identity, NodeName};

#[derive(Args, Debug)]
pub struct CertsArgs {
    /// Directory holding ca.crt/ca.key and where new files are written.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Lifetime of the new certificate (e.g. 365d, 90d).
    #[arg(long)]
    pub validity: Option<String>,
    /// The CA's private key (default: <dir>/private/ca.key). Keep it off the
    /// aggregators and nodes; it is needed only to issue certificates.
    #[arg(long)]
    pub ca_key: Option<PathBuf>,
    #[command(subcommand)]
    pub what: What,
}

#[derive(Subcommand, Debug)]
pub enum What {
    /// A new CA: ca.crt, and its key in private/ca.key (or --ca-key). Refuses to overwrite an existing one.
    Ca,
    /// A node-issuing CA (node-ca.crt, node-ca.key) signed by the CA, for an
    /// aggregator's `bootstrap.ca_cert`/`ca_key`: the aggregator then
    /// accepts node certificates under it and operator certificates only
    /// from the CA itself, so its key can make node identities only.
    NodeCa,
    /// An aggregator (server) certificate for these DNS names / IP addresses.
    Server {
        #[arg(required = true)]
        names: Vec<String>,
        /// File stem (default: aggregator).
        #[arg(long, default_value = "aggregator")]
        out: String,
    },
    /// An agent certificate for one node (<spiffe://nodewatch/node>/<name>).
    Node { name: String },
    /// An operator certificate for the CLI (<spiffe://nodewatch/operator>/<who>).
    Operator { who: String },
}

pub fn run(a: &CertsArgs, out: &mut impl Write) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.dir)?;
    let validity = match &a.validity {
        Some(v) => nodewatch_proto::config::parse_duration(v)
            .map_err(|e| anyhow::anyhow!("--validity: {e}"))?,
        None => match a.what {
            What::Ca | What::NodeCa => DEFAULT_CA_VALIDITY,
            _ => DEFAULT_LEAF_VALIDITY,
        },
    };
    let (crt, key) = match &a.what {
        What::Ca => {
            let key = ca_key_path(a);
            for existing in [&key, &a.dir.join("ca.key")] {
                if existing.exists() {
                    anyhow::bail!("{} exists; refusing to overwrite a CA", existing.display());
                }
            }
            let pem = Ca::generate("nodewatch CA", validity)?.pem().clone();
            let key_dir = key.parent().unwrap_or(&a.dir).to_path_buf();
            std::fs::create_dir_all(&key_dir)?;
            #[cfg(unix)]
            if a.ca_key.is_none() {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&key_dir, std::fs::Permissions::from_mode(0o700))?;
            }
            let stem = key
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("ca")
                .to_string();
            let (_, written_key) = pem.write(&key_dir, &stem)?;
            // The certificate beside the key is a copy; the one to hand out is <dir>/ca.crt.
            let crt = a.dir.join("ca.crt");
            std::fs::write(&crt, &pem.cert)?;
            writeln!(
                out,
                "wrote {} and {}\n\
                 {} signs every identity, operators included: keep it off the aggregators \
                 and the nodes (on this machine, or offline), and pass it with --ca-key when \
                 you issue certificates. Hand out {} only. An aggregator that issues node \
                 certificates (Bootstrap) gets `nodewatch certs node-ca` instead.",
                crt.display(),
                written_key.display(),
                written_key.display(),
                crt.display()
            )?;
            return Ok(());
        }
        What::NodeCa => {
            let ca = load_ca(a)?;
            ca.issue_node_ca("nodewatch node CA", validity)?
                .pem()
                .write(&a.dir, "node-ca")?
        }
        What::Server { names, out } => issue(
            a,
            &Leaf::Server {
                names: names.clone(),
            },
            validity,
            out,
        )?,
        What::Node { name } => {
            let id = Identity::Node(NodeName::new(name.clone())?);
            issue(a, &Leaf::Client(id), validity, &format!("node-{name}"))?
        }
        What::Operator { who } => issue(
            a,
            &Leaf::Client(Identity::Operator(who.clone())),
            validity,
            &format!("operator-{who}"),
        )?,
    };
    writeln!(out, "wrote {} and {}", crt.display(), key.display())?;
    Ok(())
}

/// Where the CA key is: `--ca-key`, else `<dir>/private/ca.key`.
fn ca_key_path(a: &CertsArgs) -> PathBuf {
    a.ca_key
        .clone()
        .unwrap_or_else(|| a.dir.join("private").join("ca.key"))
}

fn load_ca(a: &CertsArgs) -> anyhow::Result<Ca> {
    let mut key = ca_key_path(a);
    // Folders made before the key moved to private/ keep it beside ca.crt.
    let legacy = a.dir.join("ca.key");
    if a.ca_key.is_none() && !key.exists() && legacy.exists() {
        eprintln!(
            "note: {} is beside the files that go to aggregators and nodes; move it to {} (or keep it elsewhere and pass --ca-key)",
            legacy.display(),
            key.display()
        );
        key = legacy;
    }
    Ca::load_files(&a.dir.join("ca.crt"), &key).map_err(|e| {
        anyhow::anyhow!(
            "{e} (make a CA with `nodewatch certs --dir {} ca`, or name its key with --ca-key)",
            a.dir.display()
        )
    })
}

fn issue(
    a: &CertsArgs,
    leaf: &Leaf,
    validity: Duration,
    stem: &str,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    Ok(load_ca(a)?.issue(leaf, validity)?.write(&a.dir, stem)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &std::path::Path, what: What) -> CertsArgs {
        CertsArgs {
            dir: dir.to_path_buf(),
            validity: None,
            ca_key: None,
            what,
        }
    }

    #[test]
    fn the_ca_key_stays_apart_from_what_is_handed_out() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut out = Vec::new();
        run(&args(dir, What::Ca), &mut out).unwrap();
        let said = String::from_utf8(out).unwrap();
        assert!(dir.join("ca.crt").is_file());
        assert!(
            !dir.join("ca.key").exists(),
            "the CA key is not beside ca.crt"
        );
        let key = dir.join("private").join("ca.key");
        assert!(key.is_file());
        assert!(said.contains("keep it off the aggregators"), "{said}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode =
                |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir.join("private")), 0o700);
            assert_eq!(mode(&key), 0o600);
        }
        // A second CA is refused; leaves and the node-issuing CA use the key from private/.
        assert!(run(&args(dir, What::Ca), &mut Vec::new()).is_err());
        run(
            &args(dir, What::Operator { who: "me".into() }),
            &mut Vec::new(),
        )
        .unwrap();
        run(&args(dir, What::NodeCa), &mut Vec::new()).unwrap();
        let node_ca = Ca::load_files(&dir.join("node-ca.crt"), &dir.join("node-ca.key")).unwrap();
        node_ca
            .issue(
                &Leaf::Client(Identity::Node(NodeName::new("fw").unwrap())),
                DEFAULT_LEAF_VALIDITY,
            )
            .unwrap();
        // Elsewhere with --ca-key.
        let other = tempfile::tempdir().unwrap();
        let mut a = args(other.path(), What::Ca);
        a.ca_key = Some(other.path().join("offline").join("root.key"));
        run(&a, &mut Vec::new()).unwrap();
        assert!(other.path().join("offline").join("root.key").is_file());
        a.what = What::Node { name: "n1".into() };
        run(&a, &mut Vec::new()).unwrap();
        assert!(other.path().join("node-n1.crt").is_file());
    }
}
