//! `nodewatch certs`: a CA and certificates for homelabs without cert-manager.
//!
//! ```text
//! nodewatch certs ca --dir pki                      # pki/ca.crt, pki/ca.key
//! nodewatch certs server --dir pki aggregator.lan   # pki/aggregator.crt, .key
//! nodewatch certs node --dir pki talos-1            # pki/node-talos-1.crt, .key
//! nodewatch certs operator --dir pki alice          # pki/operator-alice.crt, .key
//! ```

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
    #[command(subcommand)]
    pub what: What,
}

#[derive(Subcommand, Debug)]
pub enum What {
    /// A new CA (ca.crt, ca.key). Refuses to overwrite an existing one.
    Ca,
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
            What::Ca => DEFAULT_CA_VALIDITY,
            _ => DEFAULT_LEAF_VALIDITY,
        },
    };
    let (crt, key) = match &a.what {
        What::Ca => {
            if a.dir.join("ca.key").exists() {
                anyhow::bail!(
                    "{} exists; refusing to overwrite a CA",
                    a.dir.join("ca.key").display()
                );
            }
            Ca::generate("nodewatch CA", validity)?
                .pem()
                .write(&a.dir, "ca")?
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

fn issue(
    a: &CertsArgs,
    leaf: &Leaf,
    validity: Duration,
    stem: &str,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let ca = Ca::load(&a.dir).map_err(|e| {
        anyhow::anyhow!(
            "{e} (make one with `nodewatch certs --dir {} ca`)",
            a.dir.display()
        )
    })?;
    Ok(ca.issue(leaf, validity)?.write(&a.dir, stem)?)
}
