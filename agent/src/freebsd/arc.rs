//! ZFS ARC statistics on FreeBSD: the `kstat.zfs.misc.{arcstats,abdstats,zfetchstats}.*`
//! sysctls, under node_exporter's FreeBSD names (`collector/zfs_freebsd.go`:
//! `node_zfs_arcstats_size_bytes`, `node_zfs_arcstats_hits_total`, …), so the
//! same dashboards work for OPNsense hosts. The Linux kstat names
//! (`node_zfs_arc_*`) differ upstream; we keep each OS's upstream name.

use crate::collector::MetricKind;
use crate::collector::Sink;

/// One exported sysctl: node_exporter's name (after `node_zfs_`), the
/// sysctl, its HELP text and type. From `zfs_freebsd.go` `NewZfsCollector`.
struct ArcStat {
    name: &'static str,
    mib: &'static str,
    help: &'static str,
    kind: MetricKind,
}

const fn stat(
    name: &'static str,
    mib: &'static str,
    help: &'static str,
    kind: MetricKind,
) -> ArcStat {
    ArcStat {
        name,
        mib,
        help,
        kind,
    }
}

use MetricKind::{Counter as C, Gauge as G};

const STATS: &[ArcStat] = &[
    stat(
        "abdstats_linear_count_total",
        "kstat.zfs.misc.abdstats.linear_cnt",
        "ZFS ARC buffer data linear count",
        C,
    ),
    stat(
        "abdstats_linear_data_bytes",
        "kstat.zfs.misc.abdstats.linear_data_size",
        "ZFS ARC buffer data linear data size",
        G,
    ),
    stat(
        "abdstats_scatter_chunk_waste_bytes",
        "kstat.zfs.misc.abdstats.scatter_chunk_waste",
        "ZFS ARC buffer data scatter chunk waste",
        G,
    ),
    stat(
        "abdstats_scatter_count_total",
        "kstat.zfs.misc.abdstats.scatter_cnt",
        "ZFS ARC buffer data scatter count",
        C,
    ),
    stat(
        "abdstats_scatter_data_bytes",
        "kstat.zfs.misc.abdstats.scatter_data_size",
        "ZFS ARC buffer data scatter data size",
        G,
    ),
    stat(
        "abdstats_struct_bytes",
        "kstat.zfs.misc.abdstats.struct_size",
        "ZFS ARC buffer data struct size",
        G,
    ),
    stat(
        "arcstats_anon_bytes",
        "kstat.zfs.misc.arcstats.anon_size",
        "ZFS ARC anon size",
        G,
    ),
    stat(
        "arcstats_c_bytes",
        "kstat.zfs.misc.arcstats.c",
        "ZFS ARC target size",
        G,
    ),
    stat(
        "arcstats_c_max_bytes",
        "kstat.zfs.misc.arcstats.c_max",
        "ZFS ARC maximum size",
        G,
    ),
    stat(
        "arcstats_c_min_bytes",
        "kstat.zfs.misc.arcstats.c_min",
        "ZFS ARC minimum size",
        G,
    ),
    stat(
        "arcstats_data_bytes",
        "kstat.zfs.misc.arcstats.data_size",
        "ZFS ARC data size",
        G,
    ),
    stat(
        "arcstats_demand_data_hits_total",
        "kstat.zfs.misc.arcstats.demand_data_hits",
        "ZFS ARC demand data hits",
        C,
    ),
    stat(
        "arcstats_demand_data_misses_total",
        "kstat.zfs.misc.arcstats.demand_data_misses",
        "ZFS ARC demand data misses",
        C,
    ),
    stat(
        "arcstats_demand_metadata_hits_total",
        "kstat.zfs.misc.arcstats.demand_metadata_hits",
        "ZFS ARC demand metadata hits",
        C,
    ),
    stat(
        "arcstats_demand_metadata_misses_total",
        "kstat.zfs.misc.arcstats.demand_metadata_misses",
        "ZFS ARC demand metadata misses",
        C,
    ),
    stat(
        "arcstats_hdr_bytes",
        "kstat.zfs.misc.arcstats.hdr_size",
        "ZFS ARC header size",
        G,
    ),
    stat(
        "arcstats_hits_total",
        "kstat.zfs.misc.arcstats.hits",
        "ZFS ARC hits",
        C,
    ),
    stat(
        "arcstats_misses_total",
        "kstat.zfs.misc.arcstats.misses",
        "ZFS ARC misses",
        C,
    ),
    stat(
        "arcstats_mfu_ghost_hits_total",
        "kstat.zfs.misc.arcstats.mfu_ghost_hits",
        "ZFS ARC MFU ghost hits",
        C,
    ),
    stat(
        "arcstats_mfu_ghost_size",
        "kstat.zfs.misc.arcstats.mfu_ghost_size",
        "ZFS ARC MFU ghost size",
        G,
    ),
    stat(
        "arcstats_mfu_bytes",
        "kstat.zfs.misc.arcstats.mfu_size",
        "ZFS ARC MFU size",
        G,
    ),
    stat(
        "arcstats_mru_ghost_hits_total",
        "kstat.zfs.misc.arcstats.mru_ghost_hits",
        "ZFS ARC MRU ghost hits",
        C,
    ),
    stat(
        "arcstats_mru_ghost_bytes",
        "kstat.zfs.misc.arcstats.mru_ghost_size",
        "ZFS ARC MRU ghost size",
        G,
    ),
    stat(
        "arcstats_mru_bytes",
        "kstat.zfs.misc.arcstats.mru_size",
        "ZFS ARC MRU size",
        G,
    ),
    stat(
        "arcstats_other_bytes",
        "kstat.zfs.misc.arcstats.other_size",
        "ZFS ARC other size",
        G,
    ),
    // `p` was removed with the ARC rework in OpenZFS 2.2 (FreeBSD 14); absent sysctls are skipped.
    stat(
        "arcstats_p_bytes",
        "kstat.zfs.misc.arcstats.p",
        "ZFS ARC MRU target size",
        G,
    ),
    stat(
        "arcstats_size_bytes",
        "kstat.zfs.misc.arcstats.size",
        "ZFS ARC size",
        G,
    ),
    stat(
        "zfetchstats_hits_total",
        "kstat.zfs.misc.zfetchstats.hits",
        "ZFS cache fetch hits",
        C,
    ),
    stat(
        "zfetchstats_misses_total",
        "kstat.zfs.misc.zfetchstats.misses",
        "ZFS cache fetch misses",
        C,
    ),
];

/// The sysctl names this module reads.
pub fn sysctl_names() -> impl Iterator<Item = &'static str> {
    STATS.iter().map(|s| s.mib)
}

/// Writes every stat `lookup` knows. Returns how many were written, so the
/// collector can tell "no ZFS loaded" (0) from data.
pub fn write_arc(sink: &mut Sink, lookup: impl Fn(&str) -> Option<u64>) -> usize {
    let mut n = 0;
    for s in STATS {
        let Some(v) = lookup(s.mib) else { continue };
        let name = format!("node_zfs_{}", s.name);
        match s.kind {
            MetricKind::Counter => sink.counter(&name, s.help, &[], v as f64),
            _ => sink.gauge(&name, s.help, &[], v as f64),
        }
        n += 1;
    }
    n
}

#[cfg(target_os = "freebsd")]
pub use imp::SPEC;

#[cfg(target_os = "freebsd")]
mod imp {
    use crate::collector::{
        CollectError, Collector, CollectorSpec, Paths, Sink, Stateless, Unavailable,
    };
    use crate::freebsd::sysctl;

    pub const SPEC: CollectorSpec = CollectorSpec::new("zfs_arc", build);

    fn build(_: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
        // The kstat tree exists once zfs.ko is loaded.
        if sysctl::read_u64("kstat.zfs.misc.arcstats.size").is_err() {
            return Err(Unavailable(
                "no kstat.zfs.misc.arcstats sysctls (zfs.ko not loaded)".into(),
            ));
        }
        Ok(Box::new(Stateless { collect }))
    }

    /// Reads the ARC sysctls once per collection.
    #[allow(clippy::unnecessary_wraps)] // the collector's signature
    fn collect(sink: &mut Sink) -> Result<(), CollectError> {
        super::write_arc(sink, |mib| sysctl::read_u64(mib).ok());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::collectors::testutil::{fixture_text, value};
    use crate::freebsd::sysctl::parse_sysctl_lines;

    #[test]
    fn freebsd14_fixture() {
        let mut values: BTreeMap<String, u64> = BTreeMap::new();
        for f in [
            "freebsd/sysctl-kstat.zfs.misc.arcstats-freebsd14.txt",
            "freebsd/sysctl-kstat.zfs.misc.zfetchstats-freebsd14.txt",
        ] {
            values.extend(parse_sysctl_lines(&fixture_text(f)));
        }
        let mut sink = Sink::new();
        let n = write_arc(&mut sink, |m| values.get(m).copied());
        // No abdstats in the capture, no `p` on FreeBSD 14: 29 - 6 - 1.
        assert_eq!(n, 22);
        assert_eq!(
            value(&sink, "node_zfs_arcstats_size_bytes", &[]),
            Some(137_512_848.0)
        );
        assert_eq!(
            value(&sink, "node_zfs_arcstats_hits_total", &[]),
            Some(1_473_806.0)
        );
        assert_eq!(
            value(&sink, "node_zfs_arcstats_misses_total", &[]),
            Some(63_001.0)
        );
        assert_eq!(
            value(&sink, "node_zfs_arcstats_c_max_bytes", &[]),
            Some(3_178_811_392.0)
        );
        assert_eq!(
            value(&sink, "node_zfs_arcstats_mfu_ghost_size", &[]),
            Some(67_011_584.0)
        );
        assert_eq!(
            sink.families["node_zfs_arcstats_hits_total"].kind,
            MetricKind::Counter
        );
        assert!(value(&sink, "node_zfs_zfetchstats_hits_total", &[]).is_some());
        assert_eq!(sysctl_names().count(), STATS.len());
    }
}
