//! Bonded interfaces from `/sys/class/net/bonding_masters`:
//! `node_bonding_slaves{master}` and `node_bonding_active{master}` (slaves
//! whose MII status is up); node-mixin's `NodeBondingDegraded` reads them.

use std::path::PathBuf;

use crate::collector::{CollectError, Collector, CollectorSpec, Paths, Sink, Unavailable};
use crate::collectors::{read_optional, read_trimmed};

pub const SPEC: CollectorSpec = CollectorSpec::new("bonding", build);

pub fn build(paths: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
    Ok(Box::new(BondingCollector {
        net: paths.sys("class/net"),
    }))
}

pub struct BondingCollector {
    net: PathBuf,
}

impl BondingCollector {
    /// A slave's MII status, under its `lower_` link (older kernels: `slave_`).
    fn mii_status(&self, master: &str, slave: &str) -> Result<String, CollectError> {
        for prefix in ["lower_", "slave_"] {
            let p = self
                .net
                .join(master)
                .join(format!("{prefix}{slave}/bonding_slave/mii_status"));
            if let Some(s) = read_trimmed(&p)? {
                return Ok(s);
            }
        }
        Err(CollectError::Other(format!(
            "{}: no MII status for slave {slave}",
            self.net.join(master).display()
        )))
    }
}

impl Collector for BondingCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        // No bonding driver loaded: no file.
        let Some(masters) = read_optional(&self.net.join("bonding_masters"))? else {
            return Ok(());
        };
        for master in masters.split_whitespace() {
            let path = self.net.join(master).join("bonding/slaves");
            let slaves = read_optional(&path)?
                .ok_or_else(|| CollectError::Other(format!("{}: missing", path.display())))?;
            let (mut total, mut up) = (0u32, 0u32);
            for slave in slaves.split_whitespace() {
                total += 1;
                if self.mii_status(master, slave)? == "up" {
                    up += 1;
                }
            }
            sink.gauge(
                "node_bonding_slaves",
                "Number of configured slaves per bonding interface.",
                &[("master", master)],
                f64::from(total),
            );
            sink.gauge(
                "node_bonding_active",
                "Number of active slaves per bonding interface.",
                &[("master", master)],
                f64::from(up),
            );
        }
        Ok(())
    }
}
