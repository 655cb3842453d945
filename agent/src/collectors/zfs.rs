//! ZFS kstats on Linux: `/proc/spl/kstat/zfs`.
//!
//! Names, types and HELP texts follow node_exporter's `collector/zfs_linux.go`
//! exactly, so existing dashboards keep working:
//!
//! - global kstats (`arcstats`, `abdstats`, …): `node_zfs_<subsystem>_<stat>`,
//!   untyped, HELP `kstat.zfs.misc.<file>.<stat>`, `-` in a stat name becomes `_`;
//!   only `KSTAT_DATA_INT64` (3) and `KSTAT_DATA_UINT64` (4) rows are read;
//! - per pool `io` (a raw kstat: one header row, one value row):
//!   `node_zfs_zpool_<field>{zpool}`;
//! - per pool `objset-*`: `node_zfs_zpool_dataset_<stat>{zpool,dataset}`;
//! - per pool `state`: `node_zfs_zpool_state{zpool,state}`, a gauge with one
//!   series per known state, 1 for the current one.
//!
//! Newer OpenZFS (2.2+) dropped the pool `io` kstat in favour of `iostats` and
//! names object sets `objset-0x<hex>`; both layouts are read, and a pool
//! without `io` simply has no `node_zfs_zpool_<io field>` series.

#![allow(
    clippy::doc_markdown,
    reason = "project and tool names (OpenZFS, node_exporter, ZoL) are prose here, not code"
)]

use std::path::{Path, PathBuf};

use crate::collector::{CollectError, Collector, CollectorSpec, Paths, Sink, Unavailable};

/// Directory of the ZFS kstats below procfs (created by the `spl` module).
pub const KSTAT_DIR: &str = "spl/kstat/zfs";

/// Prometheus subsystem and kstat file of each global kstat node_exporter reads
/// (`linuxPathMap` in `zfs_linux.go`).
const SUBSYSTEMS: &[(&str, &str)] = &[
    ("zfs_abd", "abdstats"),
    ("zfs_arc", "arcstats"),
    ("zfs_dbuf", "dbufstats"),
    ("zfs_dmu_tx", "dmu_tx"),
    ("zfs_dnode", "dnodestats"),
    ("zfs_fm", "fm"),
    // vdev_cache was removed in OpenZFS 2.2; absent files are skipped.
    ("zfs_vdev_cache", "vdev_cache_stats"),
    ("zfs_vdev_mirror", "vdev_mirror_stats"),
    // XUIO is gone from OpenZFS 2.0 on; kept for older hosts.
    ("zfs_xuio", "xuio_stats"),
    ("zfs_zfetch", "zfetchstats"),
    ("zfs_zil", "zil"),
];

/// Pool states node_exporter enumerates (`zfsPoolStatesName`), in its order.
pub const POOL_STATES: &[&str] = &[
    "online",
    "degraded",
    "faulted",
    "offline",
    "removed",
    "unavail",
    "suspended",
];

/// `KSTAT_DATA_INT64` and `KSTAT_DATA_UINT64` from OpenZFS `lib/libspl/include/sys/kstat.h`.
const KSTAT_DATA_INT64: &str = "3";
const KSTAT_DATA_UINT64: &str = "4";

/// Registry entry.
pub const SPEC: CollectorSpec = CollectorSpec::new("zfs", build);

fn build(paths: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
    let dir = paths.proc(KSTAT_DIR);
    if !dir.is_dir() {
        return Err(Unavailable(format!(
            "{} does not exist (zfs module not loaded)",
            dir.display()
        )));
    }
    Ok(Box::new(ZfsCollector { dir }))
}

/// Reads the ZFS kstat tree.
pub struct ZfsCollector {
    dir: PathBuf,
}

impl ZfsCollector {
    /// A collector reading the kstat tree at `dir` (normally `/proc/spl/kstat/zfs`).
    #[must_use]
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
}

/// One named-kstat row: stat name and value.
#[derive(Debug, Clone, PartialEq)]
pub struct KstatValue {
    pub name: String,
    pub value: f64,
}

/// Parses a named kstat file (`<header>\nname type data\n<name> <type> <data>...`).
///
/// Only integer rows (types 3 and 4) are returned; other types (strings,
/// e.g. `dataset_name`) are skipped as node_exporter does. A value that is
/// not a number is an error naming the 1-based line.
pub fn parse_named_kstat(text: &str) -> Result<Vec<KstatValue>, (usize, String)> {
    let mut out = Vec::new();
    let rows = body_rows(text).ok_or_else(|| (0, "no \"name type data\" header".to_string()))?;
    for (n, _, parts) in rows {
        let value = match parts[1] {
            KSTAT_DATA_UINT64 => parts[2].parse::<u64>().map(|v| v as f64).ok(),
            KSTAT_DATA_INT64 => parts[2].parse::<i64>().map(|v| v as f64).ok(),
            _ => continue,
        };
        let Some(value) = value else {
            return Err((n, format!("{}: not an integer: {:?}", parts[0], parts[2])));
        };
        out.push(KstatValue {
            name: parts[0].to_string(),
            value,
        });
    }
    Ok(out)
}

/// The rows after a kstat's `name type data` header that have at least
/// three fields, as (1-based line number, line, fields); `None` without a header.
fn body_rows(text: &str) -> Option<impl Iterator<Item = (usize, &str, Vec<&str>)>> {
    let mut lines = text.lines().enumerate();
    lines
        .by_ref()
        .find(|(_, l)| l.split_whitespace().eq(["name", "type", "data"]))?;
    Some(
        lines
            .map(|(i, l)| (i + 1, l, l.split_whitespace().collect::<Vec<_>>()))
            .filter(|(_, _, parts)| parts.len() >= 3),
    )
}

/// Parses a pool `io` kstat (`KSTAT_TYPE_IO`): a header row starting with
/// `nread` (12 columns on every ZoL release that has it) and one value row.
/// Returns no values when the header never appears.
pub fn parse_pool_io(text: &str) -> Result<Vec<KstatValue>, (usize, String)> {
    let mut fields: Option<Vec<&str>> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match &fields {
            None => {
                if parts.len() >= 12 && parts[0] == "nread" {
                    fields = Some(parts);
                }
            }
            Some(names) => {
                if parts.is_empty() {
                    continue;
                }
                for (j, name) in names.iter().enumerate() {
                    let raw = parts.get(j).copied().unwrap_or("");
                    let value = raw
                        .parse::<u64>()
                        .map_err(|_| (i + 1, format!("{name}: not an integer: {raw:?}")))?;
                    out.push(KstatValue {
                        name: (*name).to_string(),
                        value: value as f64,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// One object set (dataset) kstat: its name and its integer stats.
#[derive(Debug, Clone, PartialEq)]
pub struct Objset {
    pub dataset: String,
    pub values: Vec<KstatValue>,
}

/// Parses a pool `objset-*` kstat. `dataset_name` (type 7) may contain
/// spaces (`pool3/dataset with  space`), so it is taken as the rest of the
/// line after the type column, not as a whitespace-split field. Only
/// `KSTAT_DATA_UINT64` rows are values here, as in node_exporter.
pub fn parse_objset(text: &str) -> Result<Objset, (usize, String)> {
    let mut dataset = None;
    let mut values = Vec::new();
    let no_dataset = || (0, "no dataset_name row".to_string());
    for (n, line, parts) in body_rows(text).ok_or_else(no_dataset)? {
        if parts[0] == "dataset_name" {
            dataset = Some(rest_after_fields(line, 2).to_string());
            continue;
        }
        if parts[1] == KSTAT_DATA_UINT64 {
            let value = parts[2]
                .parse::<u64>()
                .map_err(|_| (n, format!("{}: not an integer: {:?}", parts[0], parts[2])))?;
            values.push(KstatValue {
                name: parts[0].to_string(),
                value: value as f64,
            });
        }
    }
    let dataset = dataset.ok_or_else(no_dataset)?;
    Ok(Objset { dataset, values })
}

/// The text after the first `n` whitespace-separated fields, without the
/// whitespace that separates it from them (inner runs of spaces are kept).
fn rest_after_fields(line: &str, n: usize) -> &str {
    let mut rest = line.trim_start();
    for _ in 0..n {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        rest = rest[end..].trim_start();
    }
    rest.trim_end()
}

/// The pool state as node_exporter reports it: the first line, lowercased.
#[must_use]
pub fn parse_pool_state(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_lowercase()
}

/// node_exporter's metric name for a kstat: `-` becomes `_`.
fn metric_suffix(stat: &str) -> String {
    stat.replace('-', "_")
}

fn parse_err(path: &Path, (line, msg): (usize, String)) -> CollectError {
    CollectError::parse(path, line, msg)
}

/// Reads a file that may disappear between listing and reading (a pool being
/// exported): `Ok(None)` when it is gone.
fn read_optional(path: &Path) -> Result<Option<String>, CollectError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CollectError::io(path, e)),
    }
}

/// Pool directories below the kstat dir, sorted by name. A pool directory is
/// any directory; global kstats are plain files.
fn pool_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, CollectError> {
    let mut pools = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(pools),
        Err(e) => return Err(CollectError::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| CollectError::io(dir, e))?;
        let path = entry.path();
        if path.is_dir() {
            if let Some(name) = entry.file_name().to_str() {
                pools.push((name.to_string(), path));
            }
        }
    }
    pools.sort();
    Ok(pools)
}

impl Collector for ZfsCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        if !self.dir.is_dir() {
            // The module was unloaded since start-up: no data, not an error.
            return Ok(());
        }
        for (subsystem, file) in SUBSYSTEMS {
            let path = self.dir.join(file);
            // Kstat files come and go with ZFS features and versions.
            let Some(text) = read_optional(&path)? else {
                continue;
            };
            for kv in parse_named_kstat(&text).map_err(|e| parse_err(&path, e))? {
                let name = format!("node_{subsystem}_{}", metric_suffix(&kv.name));
                let help = format!("kstat.zfs.misc.{file}.{}", kv.name);
                sink.untyped(&name, &help, &[], kv.value);
            }
        }

        for (pool, pool_dir) in pool_dirs(&self.dir)? {
            Self::collect_pool(sink, &pool, &pool_dir)?;
        }
        Ok(())
    }
}

impl ZfsCollector {
    fn collect_pool(sink: &mut Sink, pool: &str, dir: &Path) -> Result<(), CollectError> {
        let io = dir.join("io");
        if let Some(text) = read_optional(&io)? {
            for kv in parse_pool_io(&text).map_err(|e| parse_err(&io, e))? {
                sink.untyped(
                    &format!("node_zfs_zpool_{}", metric_suffix(&kv.name)),
                    &format!("kstat.zfs.misc.io.{}", kv.name),
                    &[("zpool", pool)],
                    kv.value,
                );
            }
        }

        let mut objsets: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.starts_with("objset-"))
                })
                .map(|e| e.path())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(CollectError::io(dir, e)),
        };
        objsets.sort();
        for path in objsets {
            let Some(text) = read_optional(&path)? else {
                continue;
            };
            let objset = parse_objset(&text).map_err(|e| parse_err(&path, e))?;
            for kv in &objset.values {
                sink.untyped(
                    &format!("node_zfs_zpool_dataset_{}", metric_suffix(&kv.name)),
                    &format!("kstat.zfs.misc.objset.{}", kv.name),
                    &[("zpool", pool), ("dataset", &objset.dataset)],
                    kv.value,
                );
            }
        }

        let state_path = dir.join("state");
        if let Some(text) = read_optional(&state_path)? {
            let state = parse_pool_state(&text);
            for s in POOL_STATES {
                sink.gauge(
                    "node_zfs_zpool_state",
                    "kstat.zfs.misc.state",
                    &[("zpool", pool), ("state", s)],
                    if *s == state { 1.0 } else { 0.0 },
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil::{expected_families, fixture, fuzz_inputs, samples_by_key};

    fn collect(dir: &str) -> Sink {
        let mut sink = Sink::new();
        let mut c = ZfsCollector::new(fixture(dir));
        c.collect(&mut sink).unwrap();
        sink
    }

    #[test]
    fn golden_against_node_exporter_e2e_output() {
        let sink = collect("linux/proc/spl/kstat/zfs");
        let expected = expected_families(
            &fixture("linux/expected/node_exporter-e2e-output.txt"),
            "node_zfs_",
        );
        assert!(expected.families.len() > 250, "{}", expected.families.len());
        // Every family, its HELP and TYPE, and every series with its value.
        for (name, (help, kind)) in &expected.families {
            let fam = sink
                .families
                .get(name)
                .unwrap_or_else(|| panic!("missing family {name}"));
            assert_eq!(&fam.help, help, "{name}");
            assert_eq!(fam.kind.as_str(), kind, "{name}");
        }
        let got = samples_by_key(&sink, "node_zfs_");
        assert_eq!(got.len(), expected.samples.len());
        for (key, want) in &expected.samples {
            let have = got.get(key).unwrap_or_else(|| panic!("missing {key}"));
            assert!(
                (have - want).abs() <= want.abs() * 1e-12,
                "{key}: {have} != {want}"
            );
        }
        for name in sink.families.keys() {
            assert!(expected.families.contains_key(name), "extra family {name}");
        }
    }

    #[test]
    fn newer_openzfs_layout_does_not_fail() {
        let sink = collect("linux/openzfs-2.3-telegraf/proc/spl/kstat/zfs");
        let text = sink.render_text();
        assert!(text.contains("node_zfs_zpool_state{state=\"online\",zpool=\"store\"} 1\n"));
        assert!(text.contains("node_zfs_zpool_state{state=\"online\",zpool=\"zroot-nas\"} 1\n"));
        // No `io` kstat in this layout: no pool io series.
        assert!(!text.contains("node_zfs_zpool_nread{"));
        assert!(text.contains(
            "node_zfs_zpool_dataset_nread{dataset=\"store/010101\",zpool=\"store\"} 0\n"
        ));
        assert!(text.contains("node_zfs_zil_zil_commit_count 52922839\n"));
        assert!(sink.samples.iter().any(|s| s.name == "node_zfs_arc_size"));
    }

    #[test]
    fn missing_tree_is_no_data() {
        let mut sink = Sink::new();
        let mut c = ZfsCollector::new("/nonexistent/spl/kstat/zfs".into());
        c.collect(&mut sink).unwrap();
        assert!(sink.samples.is_empty());
        assert!(build(&Paths {
            procfs: "/nonexistent".into(),
            ..Paths::default()
        })
        .is_err());
    }

    #[test]
    fn objset_name_keeps_inner_spaces() {
        let text =
            std::fs::read_to_string(fixture("linux/proc/spl/kstat/zfs/pool3/objset-2")).unwrap();
        let o = parse_objset(&text).unwrap();
        assert_eq!(o.dataset, "pool3/dataset with  space");
        assert_eq!(o.values.len(), 6);
    }

    #[test]
    fn bad_value_is_an_error_with_line() {
        let err = parse_named_kstat("1 2\nname type data\nhits 4 x\n").unwrap_err();
        assert_eq!(err.0, 3);
        assert!(parse_named_kstat("hits 4 1\n").is_err());
        assert_eq!(
            parse_named_kstat("x\nname type data\nneg 3 -5\n").unwrap(),
            vec![KstatValue {
                name: "neg".into(),
                value: -5.0
            }]
        );
    }

    #[test]
    fn parsers_never_panic() {
        let seeds = [
            std::fs::read_to_string(fixture("linux/proc/spl/kstat/zfs/arcstats")).unwrap(),
            std::fs::read_to_string(fixture("linux/proc/spl/kstat/zfs/pool1/io")).unwrap(),
            std::fs::read_to_string(fixture("linux/proc/spl/kstat/zfs/pool3/objset-2")).unwrap(),
            std::fs::read_to_string(fixture("linux/proc/spl/kstat/zfs/poolz1/state")).unwrap(),
        ];
        for input in fuzz_inputs(&seeds, 0x2f5) {
            let _ = parse_named_kstat(&input);
            let _ = parse_pool_io(&input);
            let _ = parse_objset(&input);
            let _ = parse_pool_state(&input);
        }
    }
}
