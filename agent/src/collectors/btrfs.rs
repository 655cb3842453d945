//! Btrfs filesystems from `/sys/fs/btrfs/<uuid>`: allocation per block group
//! type and RAID profile (`node_btrfs_{size,used,reserved}_bytes`,
//! `node_btrfs_allocation_ratio`), devices, global reserve, commit statistics
//! and `node_btrfs_info{label,uuid}`, as `node_exporter`'s `btrfs` collector
//! (its per-device error counters need an ioctl on the mount point and are
//! not read).

use std::path::Path;

use crate::collector::{path_spec, CollectError, CollectorSpec, DirCollector, Sink};
use crate::collectors::{list_dir, read_trimmed};

pub const SPEC: CollectorSpec = path_spec!("btrfs", DirCollector::boxed, sys, "fs/btrfs", collect);

/// How many bytes of disk one byte of data takes under a RAID profile on `n` devices.
#[must_use]
pub fn ratio(profile: &str, n: usize) -> f64 {
    let n = n as f64;
    match profile {
        "single" | "raid0" => 1.0,
        "dup" | "raid1" | "raid10" => 2.0,
        "raid1c3" => 3.0,
        "raid1c4" => 4.0,
        "raid5" if n > 1.0 => n / (n - 1.0),
        "raid6" if n > 2.0 => n / (n - 2.0),
        _ => 0.0,
    }
}

/// `key value` lines of `commit_stats`.
#[must_use]
pub fn commit_stats(text: &str) -> [u64; 4] {
    let mut out = [0u64; 4];
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(k), Some(v)) = (f.next(), f.next().and_then(|v| v.parse().ok())) else {
            continue;
        };
        let at = match k {
            "commits" => 0,
            "last_commit_ms" => 1,
            "max_commit_ms" => 2,
            "total_commit_ms" => 3,
            _ => continue,
        };
        out[at] = v;
    }
    out
}

fn uint(p: &Path) -> Option<u64> {
    read_trimmed(p).ok().flatten()?.parse().ok()
}

fn collect(dir: &Path, sink: &mut Sink) -> Result<(), CollectError> {
    for uuid in list_dir(dir)? {
        let base = dir.join(&uuid);
        // `features` and friends are not filesystems.
        if !base.join("allocation").is_dir() {
            continue;
        }
        let label = read_trimmed(&base.join("label"))?.unwrap_or_default();
        sink.gauge(
            "node_btrfs_info",
            "Filesystem information",
            &[("label", &label), ("uuid", &uuid)],
            1.0,
        );
        let devices = list_dir(&base.join("devices"))?;
        for dev in &devices {
            if let Some(sectors) = uint(&base.join("devices").join(dev).join("size")) {
                sink.gauge(
                    "node_btrfs_device_size_bytes",
                    "Size of a device that is part of the filesystem.",
                    &[("device", dev), ("uuid", &uuid)],
                    (sectors * 512) as f64,
                );
            }
        }
        if let Some(v) = uint(&base.join("allocation/global_rsv_size")) {
            sink.gauge(
                "node_btrfs_global_rsv_size_bytes",
                "Size of global reserve.",
                &[("uuid", &uuid)],
                v as f64,
            );
        }
        write_allocation(sink, &base, &uuid, devices.len())?;
        let c = read_trimmed(&base.join("commit_stats"))?.map_or([0; 4], |t| commit_stats(&t));
        let u = [("uuid", uuid.as_str())];
        sink.counter(
            "node_btrfs_commits_total",
            "The total number of commits that have occurred.",
            &u,
            c[0] as f64,
        );
        sink.gauge(
            "node_btrfs_last_commit_seconds",
            "Duration of the most recent commit, in seconds.",
            &u,
            c[1] as f64 / 1000.0,
        );
        sink.gauge(
            "node_btrfs_max_commit_seconds",
            "Duration of the slowest commit, in seconds.",
            &u,
            c[2] as f64 / 1000.0,
        );
        sink.counter(
            "node_btrfs_commit_seconds_total",
            "Sum of the duration of all commits, in seconds.",
            &u,
            c[3] as f64 / 1000.0,
        );
    }
    Ok(())
}

/// Space per block group type (`data`, `metadata`, `system`) and profile.
fn write_allocation(
    sink: &mut Sink,
    base: &Path,
    uuid: &str,
    devices: usize,
) -> Result<(), CollectError> {
    for kind in ["data", "metadata", "system"] {
        let kb = base.join("allocation").join(kind);
        if !kb.is_dir() {
            continue;
        }
        if let Some(v) = uint(&kb.join("bytes_reserved")) {
            sink.gauge(
                "node_btrfs_reserved_bytes",
                "Amount of space reserved for a data type",
                &[("block_group_type", kind), ("uuid", uuid)],
                v as f64,
            );
        }
        for profile in list_dir(&kb)? {
            let pb = kb.join(&profile);
            if !pb.is_dir() {
                continue;
            }
            let l = [
                ("block_group_type", kind),
                ("mode", profile.as_str()),
                ("uuid", uuid),
            ];
            if let Some(v) = uint(&pb.join("total_bytes")) {
                sink.gauge(
                    "node_btrfs_size_bytes",
                    "Amount of space allocated for a layout/data type",
                    &l,
                    v as f64,
                );
            }
            if let Some(v) = uint(&pb.join("used_bytes")) {
                sink.gauge(
                    "node_btrfs_used_bytes",
                    "Amount of used space by a layout/data type",
                    &l,
                    v as f64,
                );
            }
            sink.gauge(
                "node_btrfs_allocation_ratio",
                "Data allocation ratio for a layout/data type",
                &l,
                ratio(&profile, devices),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "values compared are exact")]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_commit_stats() {
        assert_eq!(ratio("raid6", 4), 2.0);
        assert_eq!(ratio("raid5", 1), 0.0, "no division by zero");
        assert_eq!(
            commit_stats("commits 3\nmax_commit_ms x\ntotal_commit_ms 9\n"),
            [3, 0, 0, 9]
        );
    }
}
