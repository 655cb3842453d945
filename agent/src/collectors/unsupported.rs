//! `node_exporter` default collectors for hardware a Talos node, a Debian
//! homelab server or a VM does not have: InfiniBand (`/sys/class/infiniband`),
//! Fibre Channel HBAs (`/sys/class/fc_host`) and SCSI tape drives
//! (`/sys/class/scsi_tape`). They are registered so that the agent says at
//! start-up, once, why they stay off: no such device, or (should one be
//! there) that this agent does not read it.

use crate::collector::{Collector, CollectorSpec, Paths, Unavailable};

/// Why the collector for `class` stays off on this host.
fn off(paths: &Paths, class: &str, what: &str, upstream: &str) -> Unavailable {
    let dir = paths.sys(&format!("class/{class}"));
    let present = std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some());
    Unavailable(if present {
        format!(
            "{what} found in {}, but not read by this agent (node_exporter's {upstream} collector reads it)",
            dir.display()
        )
    } else {
        format!(
            "no {what} on this host ({} is absent or empty)",
            dir.display()
        )
    })
}

pub const INFINIBAND: CollectorSpec = CollectorSpec::new(
    "infiniband",
    |p| -> Result<Box<dyn Collector>, Unavailable> {
        Err(off(p, "infiniband", "InfiniBand adapter", "infiniband"))
    },
);

pub const FIBRECHANNEL: CollectorSpec = CollectorSpec::new(
    "fibrechannel",
    |p| -> Result<Box<dyn Collector>, Unavailable> {
        Err(off(
            p,
            "fc_host",
            "Fibre Channel host adapter",
            "fibrechannel",
        ))
    },
);

pub const TAPESTATS: CollectorSpec = CollectorSpec::new(
    "tapestats",
    |p| -> Result<Box<dyn Collector>, Unavailable> {
        Err(off(p, "scsi_tape", "SCSI tape drive", "tapestats"))
    },
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_why_it_stays_off() {
        let fixtures = Paths {
            sysfs: concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/linux/sys").into(),
            ..Paths::default()
        };
        let Err(Unavailable(why)) = (INFINIBAND.build)(&fixtures) else {
            unreachable!("never built")
        };
        assert!(
            why.contains("found in") && why.contains("infiniband"),
            "{why}"
        );
        let empty = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let none = Paths {
            sysfs: empty.path().into(),
            ..Paths::default()
        };
        let Err(Unavailable(why)) = (TAPESTATS.build)(&none) else {
            unreachable!("never built")
        };
        assert!(why.starts_with("no SCSI tape drive"), "{why}");
    }
}
