//! Mounted filesystems on Linux, filling [`MountStats`] for the writer in
//! [`super`].
//!
//! As `node_exporter`'s `filesystem` collector: mounts come from
//! `<procfs>/1/mountinfo` (the host's mount namespace when we run in a
//! container with `hostPID`), falling back to `<procfs>/self/mountinfo` where
//! `hidepid` hides PID 1; pseudo and container-internal filesystems are
//! dropped by its default mount point and type filters; each remaining mount
//! is measured with `statfs(2)` on `<rootfs>/<mount point>`.
//!
//! A `statfs` on a dead NFS server blocks in the kernel, possibly for ever.
//! So the calls go through a [`StatfsPool`], which waits at most
//! [`MOUNT_TIMEOUT`] for each; a mount that does not answer in time is
//! reported with `node_filesystem_device_error{device_error="mountpoint timeout"} 1`
//! and not asked again until the blocked call returns.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use regex::Regex;

use super::{write_mount, FsStat, MountStats, MOUNT_TIMEOUT, STAT_WORKERS};
use crate::collector::{
    CollectError, Collector, CollectorOptions, CollectorSpec, Paths, Sink, Unavailable,
};
use crate::collectors::parse_field;
use crate::sys::statfs_pool::{Answer, StatfsPool};

pub const SPEC: CollectorSpec = CollectorSpec::new("filesystem", build);

/// `node_exporter`'s default `--collector.filesystem.mount-points-exclude`.
pub const UPSTREAM_MOUNT_POINTS_EXCLUDE: &str =
    "^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)";

/// Our default `collectors.filesystem.mount_points_exclude`: `node_exporter`'s,
/// plus what kube-prometheus-stack passes to it (`var/lib/kubelet/.+`: pods'
/// volumes, projected tokens, CSI staging) and the container runtime's
/// per-pod mounts (`/run/containerd/.+`: sandbox `shm` tmpfs and task rootfs),
/// so a Kubernetes node has no series per pod and no churn as pods come and go.
pub const DEFAULT_MOUNT_POINTS_EXCLUDE: &str = "^/(dev|proc|run/credentials/.+|run/containerd/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+|var/lib/kubelet/.+)($|/)";

/// `node_exporter`'s default `--collector.filesystem.fs-types-exclude`, which
/// also covers every type kube-prometheus-stack's values exclude (and `erofs`).
pub const DEFAULT_FS_TYPES_EXCLUDE: &str = concat!(
    "^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs",
    "|iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs",
    "|squashfs|erofs|sysfs|tracefs)$"
);

pub fn build(paths: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
    let re = |p: &str| Regex::new(p).map_err(|e| Unavailable(format!("filesystem pattern: {e}")));
    Ok(Box::new(FilesystemCollector {
        procfs: paths.procfs.clone(),
        rootfs: paths.rootfs.clone(),
        mount_points_exclude: re(DEFAULT_MOUNT_POINTS_EXCLUDE)?,
        fs_types_exclude: re(DEFAULT_FS_TYPES_EXCLUDE)?,
        stat: StatfsPool::new(statfs, MOUNT_TIMEOUT, STAT_WORKERS),
    }))
}

/// One line of `mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub major: u32,
    pub minor: u32,
    /// With `\040` and `\011` decoded, as `node_exporter` does.
    pub mount_point: String,
    pub options: String,
    pub fs_type: String,
    pub source: String,
    pub super_options: String,
}

impl Mount {
    /// Read-only if the mount or the superblock says `ro`, or ext4 remounted
    /// itself `emergency_ro` after an error (`node_exporter` issue 3157).
    #[must_use]
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
            || self
                .super_options
                .split(',')
                .any(|o| o == "ro" || o == "emergency_ro")
    }
}

/// Parses `/proc/<pid>/mountinfo` (proc(5)):
/// `id parent major:minor root mountpoint options [optional…] - fstype source superoptions`.
/// Fields are split on single spaces as the kernel writes them (spaces in
/// names are escaped as `\040`), and the fixed tail is taken from the end,
/// as the procfs library `node_exporter` uses does.
pub fn parse_mountinfo(path: &Path, text: &str) -> Result<Vec<Mount>, CollectError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(' ').collect();
        // Six leading fields, any number of optional ones, then `- fstype source superoptions`.
        let [_id, _parent, majmin, _root, mount_point, options, rest @ ..] = f.as_slice() else {
            return Err(CollectError::parse(path, n, "fewer than 10 fields"));
        };
        let [.., sep, fs_type, source, super_options] = rest else {
            return Err(CollectError::parse(path, n, "fewer than 10 fields"));
        };
        if *sep != "-" {
            return Err(CollectError::parse(
                path,
                n,
                "no '-' separator before fstype",
            ));
        }
        let Some((major, minor)) = majmin.split_once(':') else {
            return Err(CollectError::parse(
                path,
                n,
                format!("malformed major:minor {majmin:?}"),
            ));
        };
        out.push(Mount {
            major: parse_field(path, n, "major", major)?,
            minor: parse_field(path, n, "minor", minor)?,
            mount_point: mount_point.replace("\\040", " ").replace("\\011", "\t"),
            options: (*options).to_string(),
            fs_type: (*fs_type).to_string(),
            source: (*source).to_string(),
            super_options: (*super_options).to_string(),
        });
    }
    Ok(out)
}

/// `statfs(2)`; sizes use `f_bsize` as `node_exporter` does. The error is
/// the errno's text with a lower-case first letter, as Go prints it.
fn statfs(path: &Path) -> Result<FsStat, String> {
    match nix::sys::statfs::statfs(path) {
        Ok(s) => {
            let bsize = s.block_size() as f64;
            Ok(FsStat {
                size: s.blocks() as f64 * bsize,
                free: s.blocks_free() as f64 * bsize,
                avail: s.blocks_available() as f64 * bsize,
                files: s.files() as f64,
                files_free: s.files_free() as f64,
            })
        }
        Err(errno) => {
            let desc = errno.desc();
            let mut chars = desc.chars();
            Err(chars.next().map_or_else(String::new, |c| {
                c.to_lowercase().chain(chars).collect::<String>()
            }))
        }
    }
}

pub struct FilesystemCollector {
    procfs: PathBuf,
    rootfs: PathBuf,
    mount_points_exclude: Regex,
    fs_types_exclude: Regex,
    stat: StatfsPool<FsStat>,
}

impl FilesystemCollector {
    fn read_mounts(&self) -> Result<Vec<Mount>, CollectError> {
        let primary = self.procfs.join("1/mountinfo");
        let (path, bytes) = match std::fs::read(&primary) {
            Ok(b) => (primary, b),
            // hidepid=1/2 hides other users' PIDs, PID 1 included.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                let fallback = self.procfs.join("self/mountinfo");
                let b = std::fs::read(&fallback).map_err(|e| CollectError::io(&fallback, e))?;
                (fallback, b)
            }
            Err(e) => return Err(CollectError::io(&primary, e)),
        };
        // Labels must be UTF-8; node_exporter replaces invalid bytes with U+FFFD too.
        parse_mountinfo(&path, &String::from_utf8_lossy(&bytes))
    }

    /// The mount point as the host sees it: a rootfs prefix (the host's `/`
    /// mounted at, say, `/host`) is stripped, as `node_exporter`'s `rootfsStripPrefix`.
    fn host_mount_point(&self, mp: &str) -> String {
        let root = self.rootfs.to_string_lossy();
        if root == "/" {
            return mp.to_string();
        }
        // Unlike a plain prefix trim, `/hostname` is not below `/host`.
        match mp.strip_prefix(root.trim_end_matches('/')) {
            Some("") => "/".to_string(),
            Some(rest) if rest.starts_with('/') => rest.to_string(),
            _ => mp.to_string(),
        }
    }
}

impl Collector for FilesystemCollector {
    fn configure(&mut self, options: &CollectorOptions) -> Result<(), Unavailable> {
        let re = |key: &str, p: &str| {
            Regex::new(p).map_err(|e| Unavailable(format!("collectors.filesystem.{key}: {e}")))
        };
        if let Some(p) = &options.filesystem_mount_points_exclude {
            self.mount_points_exclude = re("mount_points_exclude", p)?;
        }
        if let Some(p) = &options.filesystem_fs_types_exclude {
            self.fs_types_exclude = re("fs_types_exclude", p)?;
        }
        Ok(())
    }

    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        let mut seen = HashSet::new();
        let mut mounts = Vec::new();
        for m in self.read_mounts()? {
            let mp = self.host_mount_point(&m.mount_point);
            if self.mount_points_exclude.is_match(&mp) || self.fs_types_exclude.is_match(&m.fs_type)
            {
                continue;
            }
            // A mount point mounted over with the same device is reported once.
            if seen.insert((
                m.source.clone(),
                mp.clone(),
                m.fs_type.clone(),
                m.major,
                m.minor,
            )) {
                mounts.push((mp, m));
            }
        }

        let jobs: Vec<(String, PathBuf)> = mounts
            .iter()
            .map(|(mp, _)| (mp.clone(), self.rootfs.join(mp.trim_start_matches('/'))))
            .collect();
        let answers = self.stat.stat_all(&jobs)?;
        for ((mp, m), answer) in mounts.iter().zip(&answers) {
            write_mount(sink, &stats(mp, m, answer));
        }
        Ok(())
    }
}

/// One mount's figures: sizes when `statfs` answered, else its error (and,
/// as `node_exporter` on Linux, no `mount_info`).
fn stats<'a>(mp: &'a str, m: &'a Mount, answer: &'a Answer<FsStat>) -> MountStats<'a> {
    let sizes = match answer {
        Answer::Stat(s) => Some(*s),
        Answer::Error(_) | Answer::TimedOut => None,
    };
    MountStats {
        device: &m.source,
        fstype: &m.fs_type,
        mountpoint: mp,
        error: answer.error(),
        read_only: m.read_only(),
        mount_info: sizes.map(|_| Some((m.major, m.minor))),
        sizes,
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "values compared are exact")]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/linux");
    const MOUNTINFO: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/linux/proc/1/mountinfo"
    ));

    const VSPHERE: &str =
        "/var/lib/kubelet/plugins/kubernetes.io/vsphere-volume/mounts/[vsanDatastore]";
    const PVC: &str = "bafb9e5a-8856-7e6c-699c-801844e77a4a/kubernetes-dynamic-pvc-3eba5bba-48a3-11e8-89ab-005056b92113.vmdk";

    #[test]
    fn parses_fixture_mount_points_like_node_exporter() {
        let m = parse_mountinfo(Path::new("mountinfo"), MOUNTINFO).unwrap();
        let mps: HashSet<String> = m.iter().map(|m| m.mount_point.clone()).collect();
        // node_exporter's TestMountPointDetails.
        let mut want: HashSet<String> = [
            "/",
            "/sys",
            "/proc",
            "/dev",
            "/dev/pts",
            "/run",
            "/sys/kernel/security",
            "/dev/shm",
            "/run/lock",
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/systemd",
            "/sys/fs/pstore",
            "/sys/fs/cgroup/cpuset",
            "/sys/fs/cgroup/cpu,cpuacct",
            "/sys/fs/cgroup/devices",
            "/sys/fs/cgroup/freezer",
            "/sys/fs/cgroup/net_cls,net_prio",
            "/sys/fs/cgroup/blkio",
            "/sys/fs/cgroup/perf_event",
            "/proc/sys/fs/binfmt_misc",
            "/dev/mqueue",
            "/sys/kernel/debug",
            "/dev/hugepages",
            "/sys/fs/fuse/connections",
            "/boot",
            "/run/rpc_pipefs",
            "/run/user/1000",
            "/run/user/1000/gvfs",
            "/var/lib/containers/storage/overlay",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        want.insert(format!("{VSPHERE} {PVC}"));
        want.insert(format!("{VSPHERE}\t{PVC}"));
        assert_eq!(mps, want);

        let root = m.iter().find(|m| m.mount_point == "/").unwrap();
        assert_eq!((root.major, root.minor), (259, 2));
        assert_eq!(root.fs_type, "ext4");
        assert_eq!(root.source, "/dev/dm-2");
        assert!(!root.read_only());
        let cg = m
            .iter()
            .find(|m| m.mount_point == "/sys/fs/cgroup")
            .unwrap();
        assert!(cg.read_only());
    }

    #[test]
    fn read_only_rules() {
        let m = |o: &str, s: &str| Mount {
            major: 0,
            minor: 0,
            mount_point: "/".into(),
            options: o.into(),
            fs_type: "ext4".into(),
            source: "/dev/x".into(),
            super_options: s.into(),
        };
        assert!(!m("rw,nosuid,nodev,noexec,relatime", "rw,devices").read_only());
        assert!(m("ro,relatime", "rw,fd=22").read_only());
        assert!(m("rw,user_id=1000", "ro").read_only());
        assert!(m("rw", "emergency_ro").read_only());
        assert!(!m("rw,errors=remount-ro", "rw,rootcontext=ro").read_only());
    }

    #[test]
    fn rejects_garbled_lines() {
        let p = Path::new("mountinfo");
        assert!(parse_mountinfo(p, "1 2 8:1 / / rw - ext4 /dev/sda1\n").is_err());
        assert!(parse_mountinfo(p, "1 2 nope / / rw shared:1 - ext4 /dev/sda1 rw\n").is_err());
        assert!(parse_mountinfo(p, "1 2 8:1 / / rw shared:1 x ext4 /dev/sda1 rw\n").is_err());
        assert!(parse_mountinfo(p, "1 2 8:x / / rw shared:1 - ext4 /dev/sda1 rw\n").is_err());
        assert_eq!(
            parse_mountinfo(p, "1 2 8:1 / /a\\040b rw - ext4 /dev/sda1 rw\n").unwrap()[0]
                .mount_point,
            "/a b"
        );
    }

    use crate::collectors::filesystem::TIMEOUT_ERROR;
    use crate::sys::statfs_pool::StatFn;
    use std::time::{Duration, Instant};

    fn collector(rootfs: &Path, stat: StatFn<FsStat>, timeout: Duration) -> FilesystemCollector {
        let re = |p: &str| Regex::new(p).unwrap();
        FilesystemCollector {
            procfs: format!("{FIXTURES}/proc").into(),
            rootfs: rootfs.into(),
            // node_exporter's own filters, so the fixture's kubelet mounts show.
            mount_points_exclude: re(UPSTREAM_MOUNT_POINTS_EXCLUDE),
            fs_types_exclude: re(DEFAULT_FS_TYPES_EXCLUDE),
            stat: StatfsPool::new(stat, timeout, STAT_WORKERS),
        }
    }

    fn mount_points(sink: &Sink, family: &str) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = sink
            .samples
            .iter()
            .filter(|s| s.name == family)
            .map(|s| {
                let mp = s.labels.iter().find(|(k, _)| k == "mountpoint").unwrap();
                (mp.1.clone(), s.value)
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn default_filters_and_device_errors_on_fixture() {
        let root = tempfile::tempdir().unwrap();
        // Only `/` and `/boot` exist below this rootfs; the rest fail with ENOENT.
        std::fs::create_dir(root.path().join("boot")).unwrap();
        let mut c = collector(root.path(), statfs, MOUNT_TIMEOUT);
        let mut sink = Sink::new();
        c.collect(&mut sink).unwrap();
        let errs = mount_points(&sink, "node_filesystem_device_error");
        let kept: Vec<&str> = errs.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(
            kept,
            [
                "/",
                "/boot",
                "/run",
                "/run/lock",
                "/run/user/1000",
                "/run/user/1000/gvfs",
                &format!("{VSPHERE}\t{PVC}"),
                &format!("{VSPHERE} {PVC}"),
            ]
        );
        assert_eq!(errs[0].1, 0.0);
        assert_eq!(errs[2].1, 1.0);
        let sizes = mount_points(&sink, "node_filesystem_size_bytes");
        assert_eq!(sizes.len(), 2);
        assert!(sizes.iter().all(|(_, v)| *v > 0.0));
        let failing = sink
            .samples
            .iter()
            .find(|s| s.name == "node_filesystem_device_error" && s.value == 1.0)
            .unwrap();
        assert!(failing
            .labels
            .contains(&("device_error".into(), "no such file or directory".into())));
        assert_eq!(mount_points(&sink, "node_filesystem_mount_info").len(), 2);
    }

    #[allow(clippy::unnecessary_wraps, reason = "must match StatFn")]
    fn slow_stat(path: &Path) -> Result<FsStat, String> {
        if path.ends_with("boot") {
            std::thread::sleep(Duration::from_millis(600));
        }
        Ok(FsStat {
            size: 1.0,
            ..FsStat::default()
        })
    }

    #[test]
    fn hung_mount_times_out_is_skipped_then_recovers() {
        let root = tempfile::tempdir().unwrap();
        let mut c = collector(root.path(), slow_stat, Duration::from_millis(100));
        let t = Instant::now();
        let mut sink = Sink::new();
        c.collect(&mut sink).unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "collect waited for the hung mount"
        );
        let boot = sink
            .samples
            .iter()
            .find(|s| {
                s.name == "node_filesystem_device_error" && s.labels.iter().any(|l| l.1 == "/boot")
            })
            .unwrap();
        assert_eq!(boot.value, 1.0);
        assert!(boot
            .labels
            .contains(&("device_error".into(), TIMEOUT_ERROR.into())));
        assert_eq!(mount_points(&sink, "node_filesystem_size_bytes").len(), 7);

        // Still blocked: skipped at once, no second thread on it.
        let t = Instant::now();
        let mut sink = Sink::new();
        c.collect(&mut sink).unwrap();
        assert!(t.elapsed() < Duration::from_millis(100));
        assert!(c.stat.is_stuck("/boot"));

        // Once the call returns the mount is asked again.
        std::thread::sleep(Duration::from_millis(700));
        assert!(!c.stat.is_stuck("/boot"));
        c.stat.timeout = Duration::from_secs(5);
        let mut sink = Sink::new();
        c.collect(&mut sink).unwrap();
        assert_eq!(mount_points(&sink, "node_filesystem_size_bytes").len(), 8);
    }

    #[test]
    fn rootfs_prefix_is_stripped() {
        let c = collector(Path::new("/host"), statfs, MOUNT_TIMEOUT);
        assert_eq!(c.host_mount_point("/host"), "/");
        assert_eq!(c.host_mount_point("/host/boot"), "/boot");
        assert_eq!(c.host_mount_point("/etc/hosts"), "/etc/hosts");
        assert_eq!(c.host_mount_point("/hostname"), "/hostname");
    }

    #[test]
    fn fuzz_no_panic() {
        testutil::assert_no_panic(MOUNTINFO, 16, |t| {
            parse_mountinfo(Path::new("mountinfo"), t)
        });
    }

    #[test]
    fn kubelet_and_runtime_mounts_are_left_out_by_default() {
        let c = |mp: &str, fs: &str| {
            let re = |p: &str| Regex::new(p).unwrap();
            re(DEFAULT_MOUNT_POINTS_EXCLUDE).is_match(mp)
                || re(DEFAULT_FS_TYPES_EXCLUDE).is_match(fs)
        };
        assert!(c(
            "/var/lib/kubelet/pods/0c6f/volumes/kubernetes.io~projected/kube-api-access-x",
            "tmpfs"
        ));
        assert!(c(
            "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/ab12/shm",
            "tmpfs"
        ));
        assert!(c(
            "/run/containerd/io.containerd.runtime.v2.task/k8s.io/ab12/rootfs",
            "overlay"
        ));
        assert!(
            !c("/var/lib/kubelet", "xfs"),
            "the kubelet's own volume is kept"
        );
        assert!(!c("/run", "tmpfs") && !c("/var", "xfs") && !c("/", "ext4"));
    }

    /// Unmounts what a test mounted, innermost first, on every way out.
    struct Mounted(Vec<PathBuf>);

    impl Drop for Mounted {
        fn drop(&mut self) {
            for dir in self.0.iter().rev() {
                let _ = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }

    /// Mounts real tmpfs file systems below a temporary root laid out as a
    /// node's: the kubelet's own volume, and for each of `PODS` pods two
    /// volumes under `/var/lib/kubelet/pods/<uid>/volumes` plus containerd's
    /// sandbox `shm`. With that root as the rootfs (as the DaemonSet mounts
    /// the host's `/` at `/host`), the defaults report the kubelet volume and
    /// no per-pod mount; the exclusion replaced through the options reports all.
    #[test]
    fn node_with_40_pods_has_no_per_pod_filesystem_series() {
        const PODS: usize = 40;
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "mounting tmpfs needs root"
            );
            eprintln!("skipping: mounting tmpfs needs root");
            return;
        }
        let root = tempfile::Builder::new()
            .prefix("nodewatch-parity-fs-")
            .tempdir()
            .unwrap();
        // Our own mount table, whatever mount namespace PID 1 is in.
        let procfs = tempfile::Builder::new()
            .prefix("nodewatch-parity-proc-")
            .tempdir()
            .unwrap();
        std::os::unix::fs::symlink("/proc/self", procfs.path().join("1")).unwrap();
        let mut mounted = Mounted(Vec::new());
        let mut mount = |rel: String| {
            let dir = root.path().join(rel);
            std::fs::create_dir_all(&dir).unwrap();
            nix::mount::mount(
                Some("tmpfs"),
                &dir,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some("size=64k"),
            )
            .unwrap();
            mounted.0.push(dir);
        };
        mount("var/lib/kubelet".into());
        for i in 0..PODS {
            let uid = format!("0c6f{i:04}-7a5e-4c1e-9d2b-5b1e3f0a{i:04}");
            mount(format!(
                "var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~projected/kube-api-access-x"
            ));
            mount(format!(
                "var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~empty-dir/cache"
            ));
            mount(format!(
                "run/containerd/io.containerd.grpc.v1.cri/sandboxes/{uid}/shm"
            ));
        }
        let paths = Paths {
            procfs: procfs.path().into(),
            rootfs: root.path().into(),
            ..Paths::default()
        };
        let node_mounts = |c: &mut Box<dyn Collector>| {
            let mut sink = Sink::new();
            c.collect(&mut sink).unwrap();
            let mut v: Vec<String> = sink
                .samples
                .iter()
                .filter(|s| s.name == "node_filesystem_size_bytes")
                .filter_map(|s| s.labels.iter().find(|(k, _)| k == "mountpoint"))
                .map(|l| l.1.clone())
                .filter(|mp| {
                    mp.starts_with("/var/lib/kubelet") || mp.starts_with("/run/containerd")
                })
                .collect();
            v.sort();
            v
        };

        let mut defaults = build(&paths).unwrap();
        assert_eq!(node_mounts(&mut defaults), ["/var/lib/kubelet"]);

        let mut all = build(&paths).unwrap();
        all.configure(&CollectorOptions {
            filesystem_mount_points_exclude: Some("^/(dev|proc|sys)($|/)".into()),
            ..CollectorOptions::default()
        })
        .unwrap();
        let got = node_mounts(&mut all);
        assert_eq!(got.len(), 1 + 3 * PODS, "{got:?}");
        assert!(got.iter().any(|m| m.ends_with("/shm")));

        // A types filter replaces the default too: tmpfs out, everything here goes.
        let mut no_tmpfs = build(&paths).unwrap();
        no_tmpfs
            .configure(&CollectorOptions {
                filesystem_mount_points_exclude: Some("^/(dev|proc|sys)($|/)".into()),
                filesystem_fs_types_exclude: Some("^tmpfs$".into()),
                ..CollectorOptions::default()
            })
            .unwrap();
        assert!(node_mounts(&mut no_tmpfs).is_empty());
        drop(mounted);
    }
}
