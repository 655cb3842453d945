//! `/proc/diskstats`: per block device I/O counters (`node_disk_*`).
//!
//! As `node_exporter`'s `diskstats` collector, from `/proc/diskstats` alone:
//! sectors become bytes (the kernel always counts 512-byte sectors, see
//! Documentation/admin-guide/iostats.rst), milliseconds become seconds, and the
//! discard (Linux 4.18+) and flush (5.5+) columns are exported when the line
//! has them. `node_exporter` exports discarded *sectors* unconverted; so do we.
//! Where the udev database exists (`<rootfs>/run/udev/data`), each device's
//! `b<major>:<minor>` entry gives `node_disk_info`'s labels (path, WWN,
//! model, serial, revision), `node_disk_filesystem_info`,
//! `node_disk_device_mapper_info` and `node_disk_ata_*`; `node_disk_info`
//! itself is always exported, with `rotational` from
//! `/sys/block/<dev>/queue/rotational`.
//! Lines are parsed with `procfs::DiskStat::from_line`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use procfs::DiskStat;
use regex::Regex;

use crate::collector::{
    read_file, CollectError, Collector, CollectorSpec, Paths, Sink, Unavailable,
};

pub const SPEC: CollectorSpec = CollectorSpec::new("diskstats", build);

/// `node_exporter`'s default `--collector.diskstats.device-exclude`: partitions
/// of whole disks already counted, RAM disks, loop devices and floppies.
pub const DEFAULT_DEVICE_EXCLUDE: &str = r"^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$";

/// The kernel's unit for `/proc/diskstats` sector counts, whatever the device's block size.
const SECTOR_BYTES: f64 = 512.0;

/// `/proc/diskstats` times are in milliseconds.
const SECONDS_PER_TICK: f64 = 1.0 / 1000.0;

pub fn build(paths: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
    let exclude = Regex::new(DEFAULT_DEVICE_EXCLUDE)
        .map_err(|e| Unavailable(format!("device exclude pattern: {e}")))?;
    Ok(Box::new(DiskstatsCollector {
        path: paths.proc("diskstats"),
        udev: paths.root("/run/udev/data"),
        block: paths.sys("block"),
        exclude,
    }))
}

/// The `E:KEY=VALUE` properties of a udev database entry (other lines skipped).
#[must_use]
pub fn parse_udev(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("E:"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Parses `/proc/diskstats`; empty lines are skipped, a malformed line is an error.
pub fn parse(path: &Path, text: &str) -> Result<Vec<DiskStat>, CollectError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let stat = DiskStat::from_line(line)
            .map_err(|e| CollectError::parse(path, i + 1, e.to_string()))?;
        out.push(stat);
    }
    Ok(out)
}

pub struct DiskstatsCollector {
    path: PathBuf,
    /// `<rootfs>/run/udev/data`: absent on hosts without udev.
    udev: PathBuf,
    block: PathBuf,
    exclude: Regex,
}

impl DiskstatsCollector {
    /// `node_disk_info` and, from udev's entry, the filesystem, device mapper and ATA families.
    fn udev_families(&self, stat: &DiskStat, have_udev: bool, sink: &mut Sink) {
        let dev = stat.name.as_str();
        let info = if have_udev {
            std::fs::read(self.udev.join(format!("b{}:{}", stat.major, stat.minor)))
                .map(|b| parse_udev(&String::from_utf8_lossy(&b)))
                .unwrap_or_default()
        } else {
            HashMap::new()
        };
        let get = |k: &str| info.get(k).map_or("", String::as_str);
        // The serial on the disk's label, else udev's short serial, else the full one (virtio).
        let serial = [
            get("SCSI_IDENT_SERIAL"),
            get("ID_SERIAL_SHORT"),
            get("ID_SERIAL"),
        ]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or("");
        let rotational =
            match crate::collectors::read_trimmed(&self.block.join(dev).join("queue/rotational")) {
                Ok(Some(r)) if r == "1" => "1",
                _ => "0",
            };
        let (major, minor) = (stat.major.to_string(), stat.minor.to_string());
        sink.gauge(
            "node_disk_info",
            "Info of /sys/block/<block_device>.",
            &[
                ("device", dev),
                ("major", &major),
                ("minor", &minor),
                ("path", get("ID_PATH")),
                ("wwn", get("ID_WWN")),
                ("model", get("ID_MODEL")),
                ("serial", serial),
                ("revision", get("ID_REVISION")),
                ("rotational", rotational),
            ],
            1.0,
        );
        if !get("ID_FS_TYPE").is_empty() {
            sink.gauge(
                "node_disk_filesystem_info",
                "Info about disk filesystem.",
                &[
                    ("device", dev),
                    ("type", get("ID_FS_TYPE")),
                    ("usage", get("ID_FS_USAGE")),
                    ("uuid", get("ID_FS_UUID")),
                    ("version", get("ID_FS_VERSION")),
                ],
                1.0,
            );
        }
        if !get("DM_NAME").is_empty() {
            sink.gauge(
                "node_disk_device_mapper_info",
                "Info about disk device mapper.",
                &[
                    ("device", dev),
                    ("name", get("DM_NAME")),
                    ("uuid", get("DM_UUID")),
                    ("vg_name", get("DM_VG_NAME")),
                    ("lv_name", get("DM_LV_NAME")),
                    ("lv_layer", get("DM_LV_LAYER")),
                ],
                1.0,
            );
        }
        if !get("ID_ATA").is_empty() {
            for (key, name, help) in [
                (
                    "ID_ATA_WRITE_CACHE",
                    "node_disk_ata_write_cache",
                    "ATA disk has a write cache.",
                ),
                (
                    "ID_ATA_WRITE_CACHE_ENABLED",
                    "node_disk_ata_write_cache_enabled",
                    "ATA disk has its write cache enabled.",
                ),
                (
                    "ID_ATA_ROTATION_RATE_RPM",
                    "node_disk_ata_rotation_rate_rpm",
                    "ATA disk rotation rate in RPMs (0 for SSDs).",
                ),
            ] {
                if let Some(v) = info.get(key).and_then(|v| v.parse::<f64>().ok()) {
                    sink.gauge(name, help, &[("device", dev)], v);
                }
            }
        }
    }
}

/// Name, HELP, type (true = counter) and value of each exported column.
type Column = (&'static str, &'static str, bool, Option<f64>);

#[allow(
    clippy::too_many_lines,
    reason = "a table: one row per /proc/diskstats column, in node_exporter's order"
)]
fn columns(s: &DiskStat) -> [Column; 17] {
    let f = |v: u64| Some(v as f64);
    let secs = |v: u64| Some(v as f64 * SECONDS_PER_TICK);
    [
        (
            "node_disk_reads_completed_total",
            "The total number of reads completed successfully.",
            true,
            f(s.reads),
        ),
        (
            "node_disk_reads_merged_total",
            "The total number of reads merged.",
            true,
            f(s.merged),
        ),
        (
            "node_disk_read_bytes_total",
            "The total number of bytes read successfully.",
            true,
            Some(s.sectors_read as f64 * SECTOR_BYTES),
        ),
        (
            "node_disk_read_time_seconds_total",
            "The total number of seconds spent by all reads.",
            true,
            secs(s.time_reading),
        ),
        (
            "node_disk_writes_completed_total",
            "The total number of writes completed successfully.",
            true,
            f(s.writes),
        ),
        (
            "node_disk_writes_merged_total",
            "The number of writes merged.",
            true,
            f(s.writes_merged),
        ),
        (
            "node_disk_written_bytes_total",
            "The total number of bytes written successfully.",
            true,
            Some(s.sectors_written as f64 * SECTOR_BYTES),
        ),
        (
            "node_disk_write_time_seconds_total",
            "This is the total number of seconds spent by all writes.",
            true,
            secs(s.time_writing),
        ),
        (
            "node_disk_io_now",
            "The number of I/Os currently in progress.",
            false,
            f(s.in_progress),
        ),
        (
            "node_disk_io_time_seconds_total",
            "Total seconds spent doing I/Os.",
            true,
            secs(s.time_in_progress),
        ),
        (
            "node_disk_io_time_weighted_seconds_total",
            "The weighted # of seconds spent doing I/Os.",
            true,
            secs(s.weighted_time_in_progress),
        ),
        (
            "node_disk_discards_completed_total",
            "The total number of discards completed successfully.",
            true,
            s.discards.map(|v| v as f64),
        ),
        (
            "node_disk_discards_merged_total",
            "The total number of discards merged.",
            true,
            s.discards_merged.map(|v| v as f64),
        ),
        (
            "node_disk_discarded_sectors_total",
            "The total number of sectors discarded successfully.",
            true,
            s.sectors_discarded.map(|v| v as f64),
        ),
        (
            "node_disk_discard_time_seconds_total",
            "This is the total number of seconds spent by all discards.",
            true,
            s.time_discarding.map(|v| v as f64 * SECONDS_PER_TICK),
        ),
        (
            "node_disk_flush_requests_total",
            "The total number of flush requests completed successfully",
            true,
            s.flushes.map(|v| v as f64),
        ),
        (
            "node_disk_flush_requests_time_seconds_total",
            "This is the total number of seconds spent by all flush requests.",
            true,
            s.time_flushing.map(|v| v as f64 * SECONDS_PER_TICK),
        ),
    ]
}

impl Collector for DiskstatsCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        let text = read_file(&self.path)?;
        let have_udev = self.udev.is_dir();
        for stat in parse(&self.path, &text)? {
            if self.exclude.is_match(&stat.name) {
                continue;
            }
            self.udev_families(&stat, have_udev, sink);
            let labels = [("device", stat.name.as_str())];
            // A column the kernel does not print ends the row, as in
            // `node_exporter` (it stops at the line's field count).
            for (name, help, counter, value) in columns(&stat) {
                let Some(value) = value else { break };
                if counter {
                    sink.counter(name, help, &labels, value);
                } else {
                    sink.gauge(name, help, &labels, value);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    const FIXTURE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/linux/proc/diskstats"
    ));

    #[test]
    fn parses_fixture() {
        let d = parse(Path::new("diskstats"), FIXTURE).unwrap();
        assert_eq!(d.len(), 51);
        let sdb = d.iter().find(|s| s.name == "sdb").unwrap();
        assert_eq!(sdb.discards, Some(68851));
        let sda = d.iter().find(|s| s.name == "sda").unwrap();
        assert_eq!(sda.discards, None);
    }

    #[test]
    fn default_exclusion_matches_node_exporter() {
        let re = Regex::new(DEFAULT_DEVICE_EXCLUDE).unwrap();
        for dev in [
            "ram0",
            "zram1",
            "loop7",
            "fd0",
            "sda1",
            "vda2",
            "xvda1",
            "nvme0n1p1",
        ] {
            assert!(re.is_match(dev), "{dev} should be excluded");
        }
        for dev in [
            "sda",
            "nvme0n1",
            "dm-0",
            "mmcblk0",
            "mmcblk0p1",
            "sr0",
            "md0",
        ] {
            assert!(!re.is_match(dev), "{dev} should be kept");
        }
    }

    #[test]
    fn writes_units_and_stops_at_missing_columns() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("diskstats"),
            "   8       0 sda 10 0 4 20 1 0 2 3000 0 5 6\n 259 0 nvme0n1 1 1 1 1 1 1 1 1 1 1 1 7 0 9 1500 4 250\n",
        )
        .unwrap();
        let sink = crate::collectors::testutil::collect_with_procfs(dir.path(), build);
        let get = |name: &str, dev: &str| {
            sink.samples
                .iter()
                .find(|s| s.name == name && s.labels[0].1 == dev)
                .map(|s| s.value)
        };
        assert_eq!(get("node_disk_read_bytes_total", "sda"), Some(2048.0));
        assert_eq!(get("node_disk_write_time_seconds_total", "sda"), Some(3.0));
        assert_eq!(get("node_disk_discards_completed_total", "sda"), None);
        assert_eq!(
            get("node_disk_discarded_sectors_total", "nvme0n1"),
            Some(9.0)
        );
        assert_eq!(
            get("node_disk_discard_time_seconds_total", "nvme0n1"),
            Some(1.5)
        );
        assert_eq!(
            get("node_disk_flush_requests_time_seconds_total", "nvme0n1"),
            Some(0.25)
        );
    }

    #[test]
    fn fuzz_no_panic() {
        testutil::assert_no_panic(FIXTURE, 8, |t| parse(Path::new("diskstats"), t));
    }
}
