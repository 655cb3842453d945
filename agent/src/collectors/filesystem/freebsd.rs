//! Mounted file systems on FreeBSD, filling [`MountStats`] for the writer in
//! [`super`], as node_exporter's
//! `collector/filesystem_freebsd.go`: `node_filesystem_{size,free,avail}_bytes`,
//! `node_filesystem_files`, `node_filesystem_files_free`,
//! `node_filesystem_readonly`, `node_filesystem_device_error` (always 0, as
//! there) with labels `device`, `fstype`, `mountpoint`, and
//! `node_filesystem_mount_info{device,mountpoint}` (node_exporter's `major`
//! and `minor` are empty on FreeBSD, which is the same as absent).
//!
//! The mounts come from `getfsstat(2)` with `MNT_NOWAIT`, which never waits
//! for a file system. node_exporter's defaults on FreeBSD drop mount points
//! under `/dev` (`^/(dev)($|/)`), the `devfs` type (`^devfs$`) and mounts
//! flagged `MNT_IGNORE`; so does [`write`]. A mount point listed twice with
//! the same device and type is reported once.
//!
//! `MNT_NOWAIT` returns the kernel's cached `statfs` of each mount, which is
//! refreshed only when something asks for it, so node_exporter's sizes go
//! stale on OPNsense until someone runs `df` (node_exporter issues 1498 and
//! 2800). Here every local mount (`MNT_LOCAL`: UFS, ZFS, tmpfs, …), whose
//! `statfs` answers from memory, is asked afresh with `statfs(2)`; network
//! mounts keep the cached figures, so a dead NFS server never blocks a
//! collection. A local file system can block too (a ZFS pool whose disks
//! went away suspends its I/O), so the refreshes run through the same
//! [`StatfsPool`](crate::sys::statfs_pool::StatfsPool) as on Linux: a
//! mount that does not answer within 5 s is reported as
//! `node_filesystem_device_error{device_error="mountpoint timeout"} 1`
//! without sizes, and not asked again until its call returns.

use super::{write_mount, FsStat, MountStats, TIMEOUT_ERROR};
use crate::collector::Sink;

/// `sys/mount.h` flags (`f_flags`).
pub const MNT_RDONLY: u64 = 0x0000_0001;
pub const MNT_LOCAL: u64 = 0x0000_1000;
pub const MNT_IGNORE: u64 = 0x0080_0000;

pub use crate::freebsd::sysctl::Statfs;

/// One mount as `getfsstat(2)` listed it, refreshed where it could be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountEntry {
    pub fs: Statfs,
    /// Its refresh did not answer in time: only `device_error` (labelled
    /// `mountpoint timeout`), `readonly` and `mount_info` are written.
    pub timed_out: bool,
}

impl From<Statfs> for MountEntry {
    fn from(fs: Statfs) -> Self {
        Self {
            fs,
            timed_out: false,
        }
    }
}

/// Whether node_exporter's FreeBSD defaults leave this mount out.
#[must_use]
pub fn excluded(m: &MountEntry) -> bool {
    let under_dev =
        m.fs.mountpoint
            .strip_prefix("/dev")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    under_dev || m.fs.fstype == "devfs" || m.fs.flags & MNT_IGNORE != 0
}

/// The mounts whose figures are worth asking `statfs(2)` for afresh: local,
/// reported, and the topmost of their mount point (a path names only the
/// last file system mounted on it, so an earlier one there cannot be asked).
#[must_use]
pub fn refresh_targets(mounts: &[MountEntry]) -> Vec<usize> {
    (0..mounts.len())
        .filter(|&i| {
            let m = &mounts[i];
            m.fs.flags & MNT_LOCAL != 0
                && !excluded(m)
                && !mounts[i + 1..]
                    .iter()
                    .any(|later| later.fs.mountpoint == m.fs.mountpoint)
        })
        .collect()
}

/// Writes the node_exporter families for every mount [`excluded`] keeps.
pub fn write(sink: &mut Sink, mounts: &[MountEntry]) {
    let mut seen = std::collections::HashSet::new();
    for m in mounts {
        if excluded(m) || !seen.insert((&m.fs.device, &m.fs.mountpoint, &m.fs.fstype)) {
            continue;
        }
        write_mount(sink, &stats(m));
    }
}

/// One mount's figures (the sizes in units of `f_bsize`); a timed-out
/// refresh writes no sizes, but still `mount_info`, as node_exporter does.
fn stats(m: &MountEntry) -> MountStats<'_> {
    let bsize = m.fs.bsize as f64;
    MountStats {
        device: &m.fs.device,
        fstype: &m.fs.fstype,
        mountpoint: &m.fs.mountpoint,
        error: m.timed_out.then_some(TIMEOUT_ERROR),
        read_only: m.fs.flags & MNT_RDONLY != 0,
        sizes: (!m.timed_out).then_some(FsStat {
            size: m.fs.blocks as f64 * bsize,
            free: m.fs.bfree as f64 * bsize,
            avail: m.fs.bavail as f64 * bsize,
            files: m.fs.files as f64,
            files_free: m.fs.ffree as f64,
        }),
        mount_info: Some(None),
    }
}

#[cfg(target_os = "freebsd")]
pub use imp::{FilesystemCollector, SPEC};

#[cfg(target_os = "freebsd")]
mod imp {
    use std::path::{Path, PathBuf};

    use super::{MountEntry, Statfs};
    use crate::collector::{CollectError, Collector, CollectorSpec, Paths, Sink, Unavailable};
    use crate::freebsd::sysctl;
    use crate::sys::statfs_pool::{Answer, StatfsPool, MOUNT_TIMEOUT, STAT_WORKERS};

    // The flag values written out above (so the pure code builds everywhere)
    // are the target's.
    const _: () = {
        assert!(super::MNT_RDONLY == libc::MNT_RDONLY as u64);
        assert!(super::MNT_LOCAL == libc::MNT_LOCAL);
        assert!(super::MNT_IGNORE == libc::MNT_IGNORE);
    };

    pub const SPEC: CollectorSpec = CollectorSpec::new(
        "filesystem",
        |_: &Paths| -> Result<Box<dyn Collector>, Unavailable> {
            Ok(Box::new(FilesystemCollector {
                refresh: StatfsPool::new(refresh, MOUNT_TIMEOUT, STAT_WORKERS),
            }))
        },
    );

    /// What a fresh `statfs(2)` says about one mount (the figures only).
    fn refresh(path: &Path) -> Result<Statfs, String> {
        let s = nix::sys::statfs::statfs(path).map_err(|e| e.desc().to_string())?;
        Ok(Statfs {
            fstype: s.filesystem_type_name().to_string(),
            bsize: s.block_size(),
            blocks: s.blocks(),
            bfree: s.blocks_free(),
            bavail: s.blocks_available(),
            files: s.files(),
            ffree: s.files_free(),
            ..Statfs::default()
        })
    }

    /// Lists the mounts with `getfsstat` and refreshes the local ones each collection.
    pub struct FilesystemCollector {
        refresh: StatfsPool<Statfs>,
    }

    impl Collector for FilesystemCollector {
        fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
            let mut mounts: Vec<MountEntry> = sysctl::mounts()
                .map_err(|e| CollectError::other("getfsstat", e))?
                .into_iter()
                .map(MountEntry::from)
                .collect();
            let targets = super::refresh_targets(&mounts);
            let jobs: Vec<(String, PathBuf)> = targets
                .iter()
                .filter_map(|&i| mounts.get(i))
                .map(|m| (m.fs.mountpoint.clone(), PathBuf::from(&m.fs.mountpoint)))
                .collect();
            let answers = self.refresh.stat_all(&jobs)?;
            for (&i, answer) in targets.iter().zip(answers) {
                let Some(m) = mounts.get_mut(i) else { continue };
                match answer {
                    Answer::Stat(s) if s.fstype == m.fs.fstype => {
                        m.fs = Statfs {
                            device: std::mem::take(&mut m.fs.device),
                            mountpoint: std::mem::take(&mut m.fs.mountpoint),
                            flags: m.fs.flags,
                            ..s
                        };
                    }
                    Answer::TimedOut => m.timed_out = true,
                    // Unmounted since the listing, or mounted over: keep the listing's figures.
                    Answer::Stat(_) | Answer::Error(_) => {}
                }
            }
            super::write(sink, &mounts);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil::value;

    fn mount(device: &str, fstype: &str, mountpoint: &str, flags: u64) -> MountEntry {
        MountEntry::from(Statfs {
            device: device.into(),
            fstype: fstype.into(),
            mountpoint: mountpoint.into(),
            flags,
            bsize: 4096,
            blocks: 1000,
            bfree: 600,
            bavail: 550,
            files: 200,
            ffree: 150,
        })
    }

    /// Mounts of the kinds an OPNsense install on ZFS has (root, EFI
    /// partition, datasets, the DHCP chroot's devfs, fdescfs, procfs, tmpfs),
    /// plus a CD and an NFS share, in mount order.
    fn opnsense() -> Vec<MountEntry> {
        const L: u64 = MNT_LOCAL;
        const NOATIME: u64 = 0x1000_0000;
        vec![
            mount("zroot/ROOT/default", "zfs", "/", L | NOATIME),
            mount("devfs", "devfs", "/dev", L | MNT_IGNORE),
            mount("/dev/gpt/efiboot0", "msdosfs", "/boot/efi", L),
            mount("zroot/tmp", "zfs", "/tmp", L),
            mount("zroot/var/log", "zfs", "/var/log", L),
            mount("devfs", "devfs", "/var/dhcpd/dev", L | MNT_IGNORE),
            mount("fdescfs", "fdescfs", "/dev/fd", 0),
            mount("procfs", "procfs", "/proc", L),
            mount("tmpfs", "tmpfs", "/var/unbound", L),
            mount("/dev/md0", "cd9660", "/mnt/cd", L | MNT_RDONLY),
            mount("nas:/backup", "nfs", "/mnt/backup", 0),
        ]
    }

    #[test]
    fn node_exporter_defaults_and_values() {
        let mut sink = Sink::new();
        write(&mut sink, &opnsense());
        let mps: Vec<&str> = sink
            .samples
            .iter()
            .filter(|s| s.name == "node_filesystem_size_bytes")
            .filter_map(|s| {
                s.labels
                    .iter()
                    .find(|(k, _)| k == "mountpoint")
                    .map(|(_, v)| v.as_str())
            })
            .collect();
        // devfs (by type, by /dev and by MNT_IGNORE) and /dev/fd are left out;
        // procfs, tmpfs and NFS stay, as in node_exporter.
        assert_eq!(
            mps,
            [
                "/",
                "/boot/efi",
                "/tmp",
                "/var/log",
                "/proc",
                "/var/unbound",
                "/mnt/cd",
                "/mnt/backup"
            ]
        );
        let root = [
            ("device", "zroot/ROOT/default"),
            ("fstype", "zfs"),
            ("mountpoint", "/"),
        ];
        assert_eq!(
            value(&sink, "node_filesystem_size_bytes", &root),
            Some(4_096_000.0)
        );
        assert_eq!(
            value(&sink, "node_filesystem_free_bytes", &root),
            Some(2_457_600.0)
        );
        assert_eq!(
            value(&sink, "node_filesystem_avail_bytes", &root),
            Some(2_252_800.0)
        );
        assert_eq!(value(&sink, "node_filesystem_files", &root), Some(200.0));
        assert_eq!(
            value(&sink, "node_filesystem_files_free", &root),
            Some(150.0)
        );
        assert_eq!(value(&sink, "node_filesystem_readonly", &root), Some(0.0));
        assert_eq!(
            value(&sink, "node_filesystem_device_error", &root),
            Some(0.0)
        );
        assert_eq!(
            value(
                &sink,
                "node_filesystem_mount_info",
                &[("device", "zroot/ROOT/default"), ("mountpoint", "/")]
            ),
            Some(1.0)
        );
        let cd = [
            ("device", "/dev/md0"),
            ("fstype", "cd9660"),
            ("mountpoint", "/mnt/cd"),
        ];
        assert_eq!(value(&sink, "node_filesystem_readonly", &cd), Some(1.0));
        // 8 mounts × 8 families.
        assert_eq!(sink.samples.len(), 64);
        assert!(sink
            .families
            .values()
            .all(|f| f.kind == crate::collector::MetricKind::Gauge));
    }

    #[test]
    fn negative_avail_duplicates_and_dev_prefix() {
        let mut over = mount("/dev/ada0p2", "ufs", "/", MNT_LOCAL);
        over.fs.bavail = -10;
        let mounts = vec![
            over.clone(),
            over,
            // `/devices` is not below `/dev`.
            mount("tank/devices", "zfs", "/devices", MNT_LOCAL),
        ];
        let mut sink = Sink::new();
        write(&mut sink, &mounts);
        let l = [
            ("device", "/dev/ada0p2"),
            ("fstype", "ufs"),
            ("mountpoint", "/"),
        ];
        assert_eq!(
            value(&sink, "node_filesystem_avail_bytes", &l),
            Some(-40_960.0)
        );
        assert_eq!(sink.samples.len(), 16);
    }

    #[test]
    fn a_mount_whose_refresh_timed_out_reports_the_error_and_no_sizes() {
        let mut hung = mount("tank", "zfs", "/tank", MNT_LOCAL);
        hung.timed_out = true;
        let mut sink = Sink::new();
        write(&mut sink, &[hung, mount("zroot", "zfs", "/", MNT_LOCAL)]);
        let l = [
            ("device", "tank"),
            ("fstype", "zfs"),
            ("mountpoint", "/tank"),
            ("device_error", TIMEOUT_ERROR),
        ];
        assert_eq!(value(&sink, "node_filesystem_device_error", &l), Some(1.0));
        assert_eq!(value(&sink, "node_filesystem_readonly", &l), Some(0.0));
        let tank: Vec<&str> = sink
            .samples
            .iter()
            .filter(|s| s.labels.iter().any(|(_, v)| v == "/tank"))
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(
            tank,
            [
                "node_filesystem_device_error",
                "node_filesystem_readonly",
                "node_filesystem_mount_info"
            ]
        );
        let root = [("device", "zroot"), ("fstype", "zfs"), ("mountpoint", "/")];
        assert_eq!(
            value(&sink, "node_filesystem_device_error", &root),
            Some(0.0)
        );
        assert!(value(&sink, "node_filesystem_size_bytes", &root).is_some());
    }

    #[test]
    fn refreshes_local_topmost_mounts_only() {
        let mut m = opnsense();
        // A second file system mounted over /tmp: only the upper one can be asked.
        m.push(mount("tmpfs", "tmpfs", "/tmp", MNT_LOCAL));
        let t = refresh_targets(&m);
        let mps: Vec<&str> = t.iter().map(|&i| m[i].fs.mountpoint.as_str()).collect();
        assert_eq!(
            mps,
            [
                "/",
                "/boot/efi",
                "/var/log",
                "/proc",
                "/var/unbound",
                "/mnt/cd",
                "/tmp"
            ]
        );
        assert_eq!(t.last(), Some(&(m.len() - 1)));
        assert!(refresh_targets(&[]).is_empty());
    }
}
