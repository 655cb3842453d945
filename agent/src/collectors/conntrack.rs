//! Netfilter connection tracking: `node_nf_conntrack_entries`,
//! `node_nf_conntrack_entries_limit` and the `node_nf_conntrack_stat_*` sums.
//!
//! As `node_exporter`'s `conntrack` collector. Without the `nf_conntrack`
//! module the files do not exist: no data, not an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::collector::{CollectError, Collector, CollectorSpec, Paths, Sink, Unavailable};
use crate::collectors::{parse_field, read_optional};

pub const SPEC: CollectorSpec = CollectorSpec::new("conntrack", build);

pub fn build(paths: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
    Ok(Box::new(ConntrackCollector {
        count: paths.proc("sys/net/netfilter/nf_conntrack_count"),
        max: paths.proc("sys/net/netfilter/nf_conntrack_max"),
        stat: paths.proc("net/stat/nf_conntrack"),
    }))
}

/// The `/proc/net/stat/nf_conntrack` columns `node_exporter` exports, with HELP.
/// It types these running totals as gauges; we keep its types so that
/// existing recording rules see the same metadata.
const STAT_COLUMNS: [(&str, &str); 8] = [
    ("found", "Number of searched entries which were successful."),
    ("invalid", "Number of packets seen which can not be tracked."),
    ("ignore", "Number of packets seen which are already connected to a conntrack entry."),
    ("insert", "Number of entries inserted into the list."),
    ("insert_failed", "Number of entries for which list insertion was attempted but failed."),
    ("drop", "Number of packets dropped due to conntrack failure."),
    ("early_drop", "Number of dropped conntrack entries to make room for new ones, if maximum table size was reached."),
    ("search_restart", "Number of conntrack table lookups which had to be restarted due to hashtable resizes."),
];

/// Parses a one-number sysctl file such as `nf_conntrack_count`.
pub fn parse_number(path: &Path, text: &str) -> Result<u64, CollectError> {
    parse_field(path, 1, "value", text.trim())
}

/// Parses `/proc/net/stat/nf_conntrack`: a header naming the columns, then
/// one row of hexadecimal counters per CPU. Returns each column summed over
/// CPUs (wrapping on overflow, as the Go sum would).
pub fn parse_stat(path: &Path, text: &str) -> Result<BTreeMap<String, u64>, CollectError> {
    let mut lines = text.lines().enumerate();
    let Some((_, header)) = lines.next() else {
        return Err(CollectError::parse(path, 1, "empty file"));
    };
    let names: Vec<&str> = header.split_whitespace().collect();
    let mut sums: BTreeMap<String, u64> = names.iter().map(|n| ((*n).to_string(), 0)).collect();
    for (i, line) in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        if fields.len() != names.len() {
            return Err(CollectError::parse(
                path,
                i + 1,
                "column count differs from header",
            ));
        }
        for (name, f) in names.iter().zip(fields) {
            let v = u64::from_str_radix(f, 16).map_err(|_| {
                CollectError::parse(path, i + 1, format!("{name}: cannot parse {f:?} as hex"))
            })?;
            if let Some(sum) = sums.get_mut(*name) {
                *sum = sum.wrapping_add(v);
            }
        }
    }
    Ok(sums)
}

pub struct ConntrackCollector {
    count: PathBuf,
    max: PathBuf,
    stat: PathBuf,
}

impl Collector for ConntrackCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        // An absent file (module not loaded): no data from there on.
        for (path, name, help) in [
            (
                &self.count,
                "node_nf_conntrack_entries",
                "Number of currently allocated flow entries for connection tracking.",
            ),
            (
                &self.max,
                "node_nf_conntrack_entries_limit",
                "Maximum size of connection tracking table.",
            ),
        ] {
            let Some(text) = read_optional(path)? else {
                return Ok(());
            };
            sink.gauge(name, help, &[], parse_number(path, &text)? as f64);
        }
        let Some(stat) = read_optional(&self.stat)? else {
            return Ok(());
        };
        let sums = parse_stat(&self.stat, &stat)?;
        for (col, help) in STAT_COLUMNS {
            // An older kernel without a column: that series is absent.
            if let Some(v) = sums.get(col) {
                sink.gauge(
                    &format!("node_nf_conntrack_stat_{col}"),
                    help,
                    &[],
                    *v as f64,
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    const STAT: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/linux/proc/net/stat/nf_conntrack"
    ));

    #[test]
    fn sums_per_cpu_rows() {
        let s = parse_stat(Path::new("nf_conntrack"), STAT).unwrap();
        assert_eq!(s["invalid"], 3 + 2 + 1 + 0x2f);
        assert_eq!(s["ignore"], 0x588a + 0x56a4 + 0x58d4 + 0x5688);
        assert_eq!(s["search_restart"], 7);
    }

    #[test]
    fn rejects_garbled() {
        let p = Path::new("x");
        assert!(parse_stat(p, "").is_err());
        assert!(parse_stat(p, "a b\n1\n").is_err());
        assert!(parse_stat(p, "a b\n1 zz\n").is_err());
        assert!(parse_number(p, "12x\n").is_err());
        assert_eq!(parse_number(p, " 42\n").unwrap(), 42);
    }

    #[test]
    fn absent_module_is_no_data() {
        let dir = tempfile::tempdir().unwrap();
        let sink = crate::collectors::testutil::collect_with_procfs(dir.path(), build);
        assert!(sink.samples.is_empty());
    }

    #[test]
    fn fuzz_no_panic() {
        testutil::assert_no_panic(STAT, 14, |t| parse_stat(Path::new("nf_conntrack"), t));
        testutil::assert_no_panic("65536\n", 15, |t| parse_number(Path::new("max"), t));
    }
}
