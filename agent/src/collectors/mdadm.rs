//! Software RAID: `/proc/mdstat` (`node_md_state`, `node_md_disks`,
//! `node_md_disks_required`, `node_md_blocks`, `node_md_blocks_synced`) and
//! `/sys/block/md*/md/{raid_disks,degraded}` (`node_md_raid_disks`,
//! `node_md_degraded`), as `node_exporter`'s `mdadm` collector; node-mixin's
//! `NodeRAIDDegraded` and `NodeRAIDDiskFailure` read them.

use std::path::{Path, PathBuf};

use crate::collector::{CollectError, Collector, CollectorSpec, Paths, Sink, Unavailable};
use crate::collectors::{list_dir, read_optional, read_trimmed};

pub const SPEC: CollectorSpec = CollectorSpec::new("mdadm", build);

pub fn build(paths: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
    Ok(Box::new(MdadmCollector {
        mdstat: paths.proc("mdstat"),
        block: paths.sys("block"),
    }))
}

/// One array of `/proc/mdstat`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Array {
    pub name: String,
    /// `active`, `inactive`, `recovering`, `resyncing`, `checking`.
    pub state: String,
    pub disks_active: u64,
    pub disks_total: u64,
    pub disks_failed: u64,
    pub disks_spare: u64,
    pub blocks: u64,
    pub blocks_synced: u64,
}

/// The first run of digits after `from` in `s`.
fn number_after(s: &str, from: usize) -> Option<u64> {
    let rest = s.get(from..)?;
    let start = rest.find(|c: char| c.is_ascii_digit())?;
    let digits = &rest[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// `[total/active] [UU_]` of a status line: `(total, active)`.
fn disks_of_status(status: &str) -> Option<(u64, u64)> {
    // The last `[n/m]` before the `[U_]` map.
    let open = status.rfind('[')?;
    let map = status[open + 1..].strip_suffix(']')?;
    if map.is_empty() || !map.chars().all(|c| c == 'U' || c == '_') {
        return None;
    }
    let before = status[..open].trim_end();
    let inner = before.strip_suffix(']')?;
    let (total, active) = inner[inner.rfind('[')? + 1..].split_once('/')?;
    Some((total.parse().ok()?, active.parse().ok()?))
}

/// Parses `/proc/mdstat` as the procfs library does: an array's line
/// (`md0 : active raid1 sda1[0] sdb1[1](F)`), its status line (size in
/// blocks, `[n/m] [UU]`), an optional bitmap line, and a sync line when
/// recovering, resyncing or checking.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Array>, CollectError> {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty()
            || line.starts_with(' ')
            || line.starts_with('\t')
            || line.starts_with("Personalities")
            || line.starts_with("unused")
        {
            continue;
        }
        let bad = |msg: String| CollectError::parse(path, i + 1, msg);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, _, state, ..] = fields.as_slice() else {
            return Err(bad("expected `mdN : state ...`".into()));
        };
        let (Some(status), Some(third)) = (lines.get(i + 1), lines.get(i + 2)) else {
            return Err(bad(format!("{name}: too few lines")));
        };
        let failed = line.matches("(F)").count() as u64;
        let spare = line.matches("(S)").count() as u64;
        let blocks: u64 = status
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("{name}: no block count in {status:?}")))?;
        let (active, total) = if line.contains("raid0") || line.contains("linear") {
            let n = line.matches('[').count() as u64;
            (n, n)
        } else if line.contains("inactive") {
            (0, 0)
        } else {
            let (total, active) = disks_of_status(status)
                .ok_or_else(|| bad(format!("{name}: no [n/m] [U_] in {status:?}")))?;
            (active, total)
        };
        let sync = if third.contains("bitmap") {
            lines.get(i + 3).copied().unwrap_or("")
        } else {
            third
        };
        let mut state = (*state).to_string();
        let mut synced = blocks;
        let (recovering, resyncing, checking) = (
            sync.contains("recovery"),
            sync.contains("resync"),
            sync.contains("check"),
        );
        if recovering || resyncing || checking {
            state = if recovering {
                "recovering"
            } else if checking {
                "checking"
            } else {
                "resyncing"
            }
            .into();
            synced = if sync.contains("PENDING") || sync.contains("DELAYED") {
                0
            } else {
                sync.find('(')
                    .and_then(|at| number_after(sync, at))
                    .ok_or_else(|| bad(format!("{name}: no (synced/total) in {sync:?}")))?
            };
        }
        out.push(Array {
            name: (*name).to_string(),
            state,
            disks_active: active,
            disks_total: total,
            disks_failed: failed,
            disks_spare: spare,
            blocks,
            blocks_synced: synced,
        });
    }
    Ok(out)
}

pub struct MdadmCollector {
    mdstat: PathBuf,
    block: PathBuf,
}

impl Collector for MdadmCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        // No md driver loaded: no file, no data.
        let Some(text) = read_optional(&self.mdstat)? else {
            return Ok(());
        };
        for a in parse(&self.mdstat, &text)? {
            let d = a.name.as_str();
            sink.gauge(
                "node_md_disks_required",
                "Total number of disks of device.",
                &[("device", d)],
                a.disks_total as f64,
            );
            for (state, n) in [
                ("active", a.disks_active),
                ("failed", a.disks_failed),
                ("spare", a.disks_spare),
            ] {
                sink.gauge(
                    "node_md_disks",
                    "Number of active/failed/spare disks of device.",
                    &[("device", d), ("state", state)],
                    n as f64,
                );
            }
            for (label, state) in [
                ("active", "active"),
                ("inactive", "inactive"),
                ("recovering", "recovering"),
                ("resync", "resyncing"),
                ("check", "checking"),
            ] {
                let v = if a.state == state { 1.0 } else { 0.0 };
                sink.gauge(
                    "node_md_state",
                    "Indicates the state of md-device.",
                    &[("device", d), ("state", label)],
                    v,
                );
            }
            sink.gauge(
                "node_md_blocks",
                "Total number of blocks on device.",
                &[("device", d)],
                a.blocks as f64,
            );
            sink.gauge(
                "node_md_blocks_synced",
                "Number of blocks synced on device.",
                &[("device", d)],
                a.blocks_synced as f64,
            );
        }
        for dev in list_dir(&self.block)? {
            if !dev.starts_with("md") {
                continue;
            }
            let md = self.block.join(&dev).join("md");
            if !md.is_dir() {
                continue;
            }
            let int =
                |f: &str| -> Option<u64> { read_trimmed(&md.join(f)).ok().flatten()?.parse().ok() };
            if let Some(n) = int("raid_disks") {
                sink.gauge(
                    "node_md_raid_disks",
                    "Number of raid disks on device.",
                    &[("device", &dev)],
                    n as f64,
                );
            }
            sink.gauge(
                "node_md_degraded",
                "Number of degraded disks on device.",
                &[("device", &dev)],
                int("degraded").unwrap_or(0) as f64,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "values compared are exact")]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    const FIXTURE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/linux/proc/mdstat"
    ));

    #[test]
    fn parses_fixture() {
        let a = parse(Path::new("mdstat"), FIXTURE).unwrap();
        let md6 = a.iter().find(|a| a.name == "md6").unwrap();
        assert_eq!(
            (
                md6.state.as_str(),
                md6.disks_active,
                md6.disks_total,
                md6.disks_failed,
                md6.disks_spare
            ),
            ("recovering", 1, 2, 1, 1)
        );
        assert_eq!(md6.blocks_synced, 16_775_552);
        let md11 = a.iter().find(|a| a.name == "md11").unwrap();
        assert_eq!((md11.state.as_str(), md11.blocks_synced), ("resyncing", 0));
    }

    #[test]
    fn a_degraded_array_after_a_disk_failed() {
        let t = "Personalities : [raid1]\nmd0 : active raid1 sdb1[1](F) sda1[0]\n      1046528 blocks super 1.2 [2/1] [U_]\n\nunused devices: <none>\n";
        let a = parse(Path::new("mdstat"), t).unwrap();
        assert_eq!(
            a[0],
            Array {
                name: "md0".into(),
                state: "active".into(),
                disks_active: 1,
                disks_total: 2,
                disks_failed: 1,
                disks_spare: 0,
                blocks: 1_046_528,
                blocks_synced: 1_046_528
            }
        );
        assert!(parse(
            Path::new("mdstat"),
            "md0 : active raid1 sda[0]\n  x blocks\n\n"
        )
        .is_err());
        assert!(parse(Path::new("mdstat"), "md0 : active raid1 sda[0]\n").is_err());
    }

    #[test]
    fn fuzz_no_panic() {
        testutil::assert_no_panic(FIXTURE, 40, |t| parse(Path::new("mdstat"), t));
    }
}
