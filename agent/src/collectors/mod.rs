//! One module per signal; [`registry`] lists them all.
//!
//! A signal that both Linux and FreeBSD have is a directory, as
//! `node_exporter`'s `*_common.go` files: its `mod.rs` owns the metric names,
//! HELP texts and the writer, and `linux.rs` and `freebsd.rs` read the
//! figures (the FreeBSD parsers build and are tested on every OS). These are
//! [`cpu`], [`loadavg`], [`netdev`] and [`filesystem`]; the other Linux
//! sources are one file each, the other FreeBSD ones are in
//! [`freebsd`](crate::freebsd). Blocking calls and commands go through
//! [`sys`](crate::sys).
//!
//! Metric names, types, HELP texts, labels and units follow `node_exporter`'s
//! Linux collectors, so existing dashboards and alert rules work unchanged.
//! Each module splits IO (`collect`) from a pure parser that the tests call
//! directly on fixtures; parsers never panic on odd input.
//!
//! # Collectors
//! - [`stat`] ([`cpu`]'s Linux part; FreeBSD: `kern.cp_times`): `/proc/stat`: `node_cpu_seconds_total`, `node_cpu_guest_seconds_total`,
//!   `node_boot_time_seconds`, `node_context_switches_total`, `node_forks_total`,
//!   `node_intr_total`, `node_procs_running`, `node_procs_blocked` (`node_exporter`'s
//!   `cpu` and `stat` collectors).
//! - [`meminfo`]: `/proc/meminfo`: `node_memory_<Field>[_bytes]`.
//! - [`loadavg`]: `/proc/loadavg` (FreeBSD: `getloadavg(3)`): `node_load1`, `node_load5`, `node_load15`.
//! - [`pressure`]: `/proc/pressure/{cpu,io,memory,irq}`: `node_pressure_*_seconds_total`.
//! - [`diskstats`]: `/proc/diskstats`: `node_disk_*` per device.
//! - [`filesystem`]: mounts from `/proc/1/mountinfo` (FreeBSD: `getfsstat(2)`), `statfs(2)` on each:
//!   `node_filesystem_*` per mount point, with a timeout for hung mounts.
//! - [`netdev`]: `/proc/net/dev` (FreeBSD: `getifaddrs(3)`): `node_network_{receive,transmit}_*_total`.
//! - [`netclass`]: `/sys/class/net/<iface>/*`: `node_network_up`, `node_network_info`,
//!   `node_network_mtu_bytes`, `node_network_carrier`, `node_network_speed_bytes`, ….
//! - [`netstat`]: `/proc/net/{netstat,snmp,snmp6}`: `node_netstat_*` (filtered).
//! - [`sockstat`]: `/proc/net/sockstat{,6}`: `node_sockstat_*`.
//! - [`vmstat`]: `/proc/vmstat`: `node_vmstat_*` (filtered; includes `oom_kill`).
//! - [`conntrack`]: `/proc/sys/net/netfilter/nf_conntrack_{count,max}` and
//!   `/proc/net/stat/nf_conntrack`: `node_nf_conntrack_*`.

use std::path::Path;
use std::str::FromStr;

use crate::collector::{CollectError, CollectorSpec};

#[cfg(target_os = "linux")]
pub mod arp;
#[cfg(target_os = "linux")]
pub mod bcache;
#[cfg(target_os = "linux")]
pub mod bonding;
#[cfg(target_os = "linux")]
pub mod btrfs;
#[cfg(target_os = "linux")]
pub mod conntrack;
pub mod cpu;
#[cfg(target_os = "linux")]
pub mod cpu_sysfs;
#[cfg(target_os = "linux")]
pub mod cpufreq;
#[cfg(target_os = "linux")]
pub mod diskstats;
#[cfg(target_os = "linux")]
pub mod dmi;
#[cfg(target_os = "linux")]
pub mod edac;
#[cfg(target_os = "linux")]
pub mod entropy;
#[cfg(target_os = "linux")]
pub mod filefd;
pub mod filesystem;
#[cfg(target_os = "linux")]
pub mod hwmon;
#[cfg(target_os = "linux")]
pub mod ipvs;
pub mod loadavg;
#[cfg(target_os = "linux")]
pub mod mdadm;
#[cfg(target_os = "linux")]
pub mod meminfo;
#[cfg(target_os = "linux")]
pub mod netclass;
pub mod netdev;
#[cfg(target_os = "linux")]
pub mod netstat;
#[cfg(target_os = "linux")]
pub mod nfs;
#[cfg(target_os = "linux")]
pub mod nvme;
#[cfg(target_os = "linux")]
pub mod os;
#[cfg(target_os = "linux")]
pub mod power_supply;
#[cfg(target_os = "linux")]
pub mod pressure;
#[cfg(target_os = "linux")]
pub mod rapl;
#[cfg(target_os = "linux")]
pub mod schedstat;
#[cfg(target_os = "linux")]
pub mod selinux;
#[cfg(target_os = "linux")]
pub mod sockstat;
#[cfg(target_os = "linux")]
pub mod softnet;
/// The `stat` collector (`/proc/stat`), which writes the CPU times among others.
#[cfg(target_os = "linux")]
pub use cpu::linux as stat;
pub mod testseq;
#[cfg(target_os = "linux")]
pub mod textfile;
#[cfg(target_os = "linux")]
pub mod thermal_zone;
#[cfg(target_os = "linux")]
pub mod time;
#[cfg(target_os = "linux")]
pub mod timex;
#[cfg(target_os = "linux")]
pub mod udp_queues;
#[cfg(target_os = "linux")]
pub mod uname;
#[cfg(target_os = "linux")]
pub mod unsupported;
#[cfg(target_os = "linux")]
pub mod vmstat;
#[cfg(target_os = "linux")]
pub mod watchdog;
#[cfg(target_os = "linux")]
pub mod xfs;
pub mod zfs;
pub mod zpool;

#[cfg(test)]
pub(crate) mod testutil;

/// node_exporter 1.5's default Linux collectors (Debian 12's build;
/// `watchdog` came later), all of which the agent mirrors by default
/// (docs/collectors.md). The golden test and the benchmarks against
/// node_exporter take their collector set from here.
pub const NODE_EXPORTER_1_5_DEFAULTS: &[&str] = &[
    "arp",
    "bcache",
    "bonding",
    "btrfs",
    "conntrack",
    "cpu",
    "cpufreq",
    "diskstats",
    "dmi",
    "edac",
    "entropy",
    "fibrechannel",
    "filefd",
    "filesystem",
    "hwmon",
    "infiniband",
    "ipvs",
    "loadavg",
    "mdadm",
    "meminfo",
    "netclass",
    "netdev",
    "netstat",
    "nfs",
    "nfsd",
    "nvme",
    "os",
    "powersupplyclass",
    "pressure",
    "rapl",
    "schedstat",
    "selinux",
    "sockstat",
    "softnet",
    "stat",
    "tapestats",
    "textfile",
    "thermal_zone",
    "time",
    "timex",
    "udp_queues",
    "uname",
    "vmstat",
    "xfs",
    "zfs",
];

/// Every collector this build knows, in the order they run.
#[must_use]
#[allow(clippy::vec_init_then_push, reason = "entries are added per target OS")]
pub fn registry() -> Vec<CollectorSpec> {
    let mut specs = vec![];
    // These read Linux's procfs and sysfs, which other kernels do not have
    // (FreeBSD's procfs is a different, optional file system).
    #[cfg(target_os = "linux")]
    specs.extend([
        stat::SPEC,
        meminfo::SPEC,
        loadavg::SPEC,
        pressure::SPEC,
        diskstats::SPEC,
        filesystem::SPEC,
        netdev::SPEC,
        netclass::SPEC,
        netstat::SPEC,
        sockstat::SPEC,
        vmstat::SPEC,
        conntrack::SPEC,
        // ZFS kstats exist only on Linux (`/proc/spl`); FreeBSD has them as sysctls (`freebsd::arc`).
        zfs::SPEC,
        // node_exporter's other default collectors, in its order of importance
        // to node-mixin and the common dashboards (docs/collectors.md).
        time::SPEC,
        timex::SPEC,
        filefd::SPEC,
        uname::SPEC,
        os::SPEC,
        entropy::SPEC,
        arp::SPEC,
        softnet::SPEC,
        thermal_zone::SPEC,
        schedstat::SPEC,
        udp_queues::SPEC,
        selinux::SPEC,
        mdadm::SPEC,
        hwmon::SPEC,
        xfs::SPEC,
        textfile::SPEC,
        bonding::SPEC,
        cpu_sysfs::SPEC,
        cpufreq::SPEC,
        watchdog::SPEC,
        rapl::SPEC,
        edac::SPEC,
        dmi::SPEC,
        nvme::SPEC,
        power_supply::SPEC,
        ipvs::SPEC,
        btrfs::SPEC,
        nfs::NFS,
        nfs::NFSD,
        bcache::SPEC,
        unsupported::INFINIBAND,
        unsupported::FIBRECHANNEL,
        unsupported::TAPESTATS,
    ]);
    specs.push(zpool::SPEC);
    specs.push(testseq::SPEC);
    #[cfg(target_os = "freebsd")]
    specs.extend(crate::freebsd::specs());
    specs
}

#[cfg_attr(
    not(target_os = "linux"),
    allow(dead_code, reason = "used by the Linux collectors")
)]
/// Parses one field, naming the field and the 1-based line in the error.
pub(crate) fn parse_field<T: FromStr>(
    path: &Path,
    line: usize,
    what: &str,
    s: &str,
) -> Result<T, CollectError> {
    s.parse()
        .map_err(|_| CollectError::parse(path, line, format!("{what}: cannot parse {s:?}")))
}

#[cfg_attr(
    not(target_os = "linux"),
    allow(dead_code, reason = "used by the Linux collectors")
)]
/// Reads a file that may legitimately be absent (a kernel feature not built
/// or not loaded): `Ok(None)` then, as `node_exporter`'s `ErrNoData`.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, CollectError> {
    match crate::collector::read_cached(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CollectError::io(path, e)),
    }
}

#[cfg_attr(
    not(target_os = "linux"),
    allow(dead_code, reason = "used by the Linux collectors")
)]
/// A small sysfs/procfs attribute, trimmed; `Ok(None)` when the file is absent.
pub(crate) fn read_trimmed(path: &Path) -> Result<Option<String>, CollectError> {
    Ok(read_optional(path)?.map(|s| s.trim().to_string()))
}

#[cfg_attr(
    not(target_os = "linux"),
    allow(dead_code, reason = "used by the Linux collectors")
)]
/// A sysfs attribute for a label, trimmed; empty when it is absent or cannot
/// be read.
pub(crate) fn read_or_empty(path: &Path) -> String {
    read_trimmed(path).ok().flatten().unwrap_or_default()
}

#[cfg_attr(
    not(target_os = "linux"),
    allow(dead_code, reason = "used by the Linux collectors")
)]
/// The names in a directory, sorted; empty when the directory is absent
/// (the kernel feature is not there), an error when it cannot be read.
pub(crate) fn list_dir(path: &Path) -> Result<Vec<String>, CollectError> {
    let rd = match std::fs::read_dir(path) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CollectError::io(path, e)),
    };
    let mut names: Vec<String> = rd
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::float_cmp, reason = "values compared are exact")]
mod tests {
    use crate::collector::{Paths, Running, Sink};

    /// A malformed file costs its own collector's series, reported in
    /// `nodewatch_agent_collector_success`; a missing one costs nothing; other
    /// collectors are not affected.
    #[test]
    fn bad_input_costs_only_its_own_collector() {
        let root = tempfile::Builder::new()
            .prefix("nodewatch-parity-bad-")
            .tempdir()
            .unwrap();
        let proc = root.path().join("proc");
        std::fs::create_dir_all(proc.join("sys/fs")).unwrap();
        std::fs::create_dir_all(proc.join("net")).unwrap();
        std::fs::write(
            proc.join("mdstat"),
            "md0 : active raid1 sda[0]\n   lots of blocks\n\n",
        )
        .unwrap();
        std::fs::write(proc.join("net/softnet_stat"), "").unwrap();
        std::fs::write(proc.join("sys/fs/file-nr"), "1024\t0\t1631329\n").unwrap();
        let paths = Paths {
            procfs: proc,
            sysfs: root.path().join("sys"),
            rootfs: root.path().into(),
        };
        let mut sink = Sink::new();
        for spec in [
            super::mdadm::SPEC,
            super::filefd::SPEC,
            super::softnet::SPEC,
            super::schedstat::SPEC,
            super::xfs::SPEC,
        ] {
            Running::new(spec.name, (spec.build)(&paths).unwrap()).run(&mut sink);
        }
        let success = |c: &str| {
            sink.samples
                .iter()
                .find(|s| {
                    s.name == "nodewatch_agent_collector_success"
                        && s.labels.iter().any(|l| l.1 == c)
                })
                .unwrap()
                .value
        };
        assert_eq!(success("mdadm"), 0.0, "garbled mdstat");
        assert!(sink.samples.iter().all(|s| !s.name.starts_with("node_md_")));
        assert_eq!(success("filefd"), 1.0);
        assert!(sink.samples.iter().any(|s| s.name == "node_filefd_maximum"));
        assert_eq!(
            success("softnet"),
            1.0,
            "an empty file is no CPU, not an error"
        );
        assert_eq!(success("schedstat"), 1.0, "a missing file is no data");
        assert_eq!(success("xfs"), 1.0, "no /sys/fs/xfs: no XFS mounted");
    }
}
