//! Mounted filesystems: `node_filesystem_*` per mount point, as
//! `node_exporter`'s `filesystem_common.go`.
//!
//! This module owns the metric names, HELP texts and labels and writes them
//! ([`write_mount`]); each OS fills a [`MountStats`] per mount:
//! - [`linux`] lists mounts from `<procfs>/1/mountinfo`, `statfs(2)` on each,
//!   with a timeout for hung mounts.
//! - [`freebsd`] lists mounts from `getfsstat(2)`, local ones refreshed with
//!   `statfs(2)` (the pure parts build and are tested everywhere).
//!
//! Labels are `device`, `fstype`, `mountpoint`, plus `device_error` with the
//! error text when the figures could not be read. `node_exporter` v1.9+
//! writes `device_error=""` on healthy mounts; an empty label is the same as
//! no label in Prometheus, so the series are identical.

use crate::collector::Sink;

pub mod freebsd;
#[cfg(target_os = "linux")]
pub mod linux;

#[cfg(target_os = "linux")]
pub use linux::*;

pub use crate::sys::statfs_pool::{MOUNT_TIMEOUT, STAT_WORKERS, TIMEOUT_ERROR};

/// What `statfs` says about one mount, in bytes and inodes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FsStat {
    pub size: f64,
    pub free: f64,
    pub avail: f64,
    pub files: f64,
    pub files_free: f64,
}

/// One mount as an OS collector found it, ready to be written.
#[derive(Clone, Debug, PartialEq)]
pub struct MountStats<'a> {
    pub device: &'a str,
    pub fstype: &'a str,
    pub mountpoint: &'a str,
    /// Why the figures could not be read (the `statfs` error, or
    /// [`TIMEOUT_ERROR`]): written as `device_error` with value 1.
    pub error: Option<&'a str>,
    pub read_only: bool,
    /// The sizes; `None` writes no size families.
    pub sizes: Option<FsStat>,
    /// Whether `node_filesystem_mount_info` is written, and with which
    /// `major`/`minor` (Linux has them; `node_exporter` leaves them empty on
    /// FreeBSD, which is the same as absent).
    pub mount_info: Option<Option<(u32, u32)>>,
}

/// Writes the `node_filesystem_*` families of one mount.
pub fn write_mount(sink: &mut Sink, m: &MountStats<'_>) {
    let mut labels = vec![
        ("device", m.device),
        ("fstype", m.fstype),
        ("mountpoint", m.mountpoint),
    ];
    if let Some(e) = m.error {
        labels.push(("device_error", e));
    }
    sink.gauge(
        "node_filesystem_device_error",
        "Whether an error occurred while getting statistics for the given device.",
        &labels,
        if m.error.is_some() { 1.0 } else { 0.0 },
    );
    sink.gauge(
        "node_filesystem_readonly",
        "Filesystem read-only status.",
        &labels,
        if m.read_only { 1.0 } else { 0.0 },
    );
    if let Some(s) = &m.sizes {
        for (name, help, v) in [
            (
                "node_filesystem_size_bytes",
                "Filesystem size in bytes.",
                s.size,
            ),
            (
                "node_filesystem_free_bytes",
                "Filesystem free space in bytes.",
                s.free,
            ),
            (
                "node_filesystem_avail_bytes",
                "Filesystem space available to non-root users in bytes.",
                s.avail,
            ),
            (
                "node_filesystem_files",
                "Filesystem total file nodes.",
                s.files,
            ),
            (
                "node_filesystem_files_free",
                "Filesystem total free file nodes.",
                s.files_free,
            ),
        ] {
            sink.gauge(name, help, &labels, v);
        }
    }
    let Some(dev_numbers) = m.mount_info else {
        return;
    };
    let numbers = dev_numbers.map(|(major, minor)| (major.to_string(), minor.to_string()));
    let mut info = vec![("device", m.device)];
    if let Some((major, minor)) = &numbers {
        info.push(("major", major));
        info.push(("minor", minor));
    }
    info.push(("mountpoint", m.mountpoint));
    sink.gauge(
        "node_filesystem_mount_info",
        "Filesystem mount information.",
        &info,
        1.0,
    );
}
