//! Memory from `vm.stats.vm.*` and friends, under node_exporter's FreeBSD
//! names (`collector/memory_bsd.go`): `node_memory_active_bytes`,
//! `node_memory_free_bytes`, `node_memory_swap_in_bytes_total`, …
//! Page counts are multiplied by `vm.stats.vm.v_page_size`.
//!
//! Not through `sysinfo`, which the agent uses for load and host facts: it
//! gives total, used, free and available memory, not the page queues
//! (active, inactive, laundry, wired) and swap paging counters that
//! node_exporter's names carry.
//!
//! Not exported: `node_memory_swap_used_bytes`, which node_exporter reads
//! through libkvm (`kvm_getswapinfo`), not a sysctl.

use crate::collector::{MetricKind, Sink};

/// One exported value: node_exporter's name (after `node_memory_`), the
/// sysctl, its HELP, whether it counts pages, and its type.
struct MemStat {
    name: &'static str,
    mib: &'static str,
    help: &'static str,
    pages: bool,
    kind: MetricKind,
}

const fn stat(
    name: &'static str,
    mib: &'static str,
    help: &'static str,
    pages: bool,
    kind: MetricKind,
) -> MemStat {
    MemStat {
        name,
        mib,
        help,
        pages,
        kind,
    }
}

use MetricKind::{Counter as C, Gauge as G};

/// The page size sysctl.
pub const PAGE_SIZE_MIB: &str = "vm.stats.vm.v_page_size";

const STATS: &[MemStat] = &[
    stat(
        "active_bytes",
        "vm.stats.vm.v_active_count",
        "Recently used by userland",
        true,
        G,
    ),
    stat(
        "inactive_bytes",
        "vm.stats.vm.v_inactive_count",
        "Not recently used by userland",
        true,
        G,
    ),
    stat(
        "wired_bytes",
        "vm.stats.vm.v_wire_count",
        "Locked in memory by kernel, mlock, etc",
        true,
        G,
    ),
    stat(
        "user_wired_bytes",
        "vm.stats.vm.v_user_wire_count",
        "Locked in memory by user, mlock, etc",
        true,
        G,
    ),
    // Gone since FreeBSD 12 (the cache queue was removed); skipped when absent.
    stat(
        "cache_bytes",
        "vm.stats.vm.v_cache_count",
        "Almost free, backed by swap or files, available for re-allocation",
        true,
        G,
    ),
    stat(
        "buffer_bytes",
        "vfs.bufspace",
        "Disk IO Cache entries for non ZFS filesystems, only usable by kernel",
        false,
        G,
    ),
    stat(
        "free_bytes",
        "vm.stats.vm.v_free_count",
        "Unallocated, available for allocation",
        true,
        G,
    ),
    stat(
        "laundry_bytes",
        "vm.stats.vm.v_laundry_count",
        "Dirty not recently used by userland",
        true,
        G,
    ),
    stat(
        "size_bytes",
        "vm.stats.vm.v_page_count",
        "Total physical memory size",
        true,
        G,
    ),
    stat(
        "swap_size_bytes",
        "vm.swap_total",
        "Total swap memory size",
        false,
        G,
    ),
    stat(
        "swap_in_bytes_total",
        "vm.stats.vm.v_swappgsin",
        "Bytes paged in from swap devices",
        true,
        C,
    ),
    stat(
        "swap_out_bytes_total",
        "vm.stats.vm.v_swappgsout",
        "Bytes paged out to swap devices",
        true,
        C,
    ),
];

/// The sysctls this module reads (besides [`PAGE_SIZE_MIB`]).
pub fn sysctl_names() -> impl Iterator<Item = &'static str> {
    STATS.iter().map(|s| s.mib)
}

/// Writes every value `lookup` knows; nothing when the page size is unknown.
pub fn write(sink: &mut Sink, lookup: impl Fn(&str) -> Option<u64>) {
    let Some(page) = lookup(PAGE_SIZE_MIB).filter(|p| *p > 0) else {
        return;
    };
    for s in STATS {
        let Some(v) = lookup(s.mib) else { continue };
        let v = if s.pages {
            v as f64 * page as f64
        } else {
            v as f64
        };
        let name = format!("node_memory_{}", s.name);
        match s.kind {
            MetricKind::Counter => sink.counter(&name, s.help, &[], v),
            _ => sink.gauge(&name, s.help, &[], v),
        }
    }
}

#[cfg(target_os = "freebsd")]
pub use imp::SPEC;

#[cfg(target_os = "freebsd")]
mod imp {
    use crate::collector::{stateless_spec, CollectError, CollectorSpec, Sink};
    use crate::freebsd::sysctl;

    pub const SPEC: CollectorSpec = stateless_spec!("meminfo", collect);

    /// Reads the memory sysctls each collection.
    fn collect(sink: &mut Sink) -> Result<(), CollectError> {
        if sysctl::read_u64(super::PAGE_SIZE_MIB).is_err() {
            return Err(CollectError::Other(format!(
                "{} unreadable",
                super::PAGE_SIZE_MIB
            )));
        }
        super::write(sink, |mib| sysctl::read_u64(mib).ok());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::collectors::testutil::value;
    use crate::freebsd::sysctl::parse_sysctl_lines;

    /// `sysctl vm.stats.vm vfs.bufspace vm.swap_total` lines of a 2 GiB FreeBSD 14 VM
    /// (names from `sys/vm/vm_meter.c`; there is no v_cache_count since 12).
    const SYSCTL: &str = "\
vm.stats.vm.v_page_size: 4096
vm.stats.vm.v_page_count: 500000
vm.stats.vm.v_active_count: 10000
vm.stats.vm.v_inactive_count: 20000
vm.stats.vm.v_laundry_count: 30
vm.stats.vm.v_wire_count: 120000
vm.stats.vm.v_user_wire_count: 0
vm.stats.vm.v_free_count: 340000
vm.stats.vm.v_swappgsin: 7
vm.stats.vm.v_swappgsout: 9
vfs.bufspace: 52690944
vm.swap_total: 2147483648
";

    #[test]
    fn node_exporter_names() {
        let values: BTreeMap<String, u64> = parse_sysctl_lines(SYSCTL).into_iter().collect();
        let mut sink = Sink::new();
        write(&mut sink, |m| values.get(m).copied());
        assert_eq!(
            value(&sink, "node_memory_size_bytes", &[]),
            Some(500_000.0 * 4096.0)
        );
        assert_eq!(
            value(&sink, "node_memory_free_bytes", &[]),
            Some(340_000.0 * 4096.0)
        );
        assert_eq!(
            value(&sink, "node_memory_buffer_bytes", &[]),
            Some(52_690_944.0)
        );
        assert_eq!(
            value(&sink, "node_memory_swap_size_bytes", &[]),
            Some(2_147_483_648.0)
        );
        assert_eq!(
            value(&sink, "node_memory_swap_out_bytes_total", &[]),
            Some(9.0 * 4096.0)
        );
        assert_eq!(value(&sink, "node_memory_cache_bytes", &[]), None);
        assert_eq!(
            sink.families["node_memory_swap_in_bytes_total"].kind,
            MetricKind::Counter
        );
        assert_eq!(sink.samples.len(), 11);

        let mut sink = Sink::new();
        write(&mut sink, |_| None);
        assert!(sink.samples.is_empty());
        assert_eq!(sysctl_names().count(), 12);
    }
}
