//! bcache (SSD caching of block devices) from `/sys/fs/bcache/<uuid>`: the
//! cache set, its backing devices (`bdevN`) and cache devices (`cacheN`),
//! as `node_exporter`'s `bcache` collector with its defaults (the
//! `priority_stats` walk, off there by default, is not done).

use std::path::Path;

use crate::collector::{path_spec, CollectError, CollectorSpec, DirCollector, Sink};
use crate::collectors::{list_dir, read_trimmed};

pub const SPEC: CollectorSpec =
    path_spec!("bcache", DirCollector::boxed, sys, "fs/bcache", collect);

/// The kernel's human-readable sizes (`bch_hprint`): `512`, `427.5k`,
/// `20.4G`. Its one decimal is tenths of the unit rounded down from
/// 1024ths, which the procfs library reads back as that many hundreds of
/// the next smaller unit; so does this, to give the same numbers.
#[must_use]
pub fn dehumanize(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul): (&str, u64) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        'T' => (&s[..s.len() - 1], 1 << 40),
        'P' => (&s[..s.len() - 1], 1 << 50),
        'E' => (&s[..s.len() - 1], 1 << 60),
        c if c.is_ascii_digit() => (s, 1),
        _ => return None,
    };
    let (whole, frac) = num.split_once('.').unwrap_or((num, "0"));
    let whole: u64 = whole.parse().ok()?;
    let frac: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    whole
        .checked_mul(mul)?
        .checked_add(frac.checked_mul(100)?.checked_mul(mul / 1024)?)
}

/// `writeback_rate_debug`'s `rate`, `target`, `proportional`, `integral`
/// and `change`, in bytes (per second for rates).
#[must_use]
pub fn writeback_debug(text: &str) -> [Option<u64>; 5] {
    let mut out = [None; 5];
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let at = match k.trim() {
            "rate" => 0,
            "target" => 1,
            "proportional" => 2,
            "integral" => 3,
            "change" => 4,
            _ => continue,
        };
        out[at] = dehumanize(v.trim().trim_end_matches("/sec"));
    }
    out
}

fn human(p: &Path) -> Option<f64> {
    read_trimmed(p)
        .ok()
        .flatten()
        .and_then(|s| dehumanize(&s))
        .map(|v| v as f64)
}

/// One backing device's (`bdev<N>`) dirty data, IO counts and writeback
/// state, labelled `l`.
fn backing_device(sink: &mut Sink, db: &Path, l: &[(&str, &str)]) -> Result<(), CollectError> {
    if let Some(v) = human(&db.join("dirty_data")) {
        sink.gauge(
            "node_bcache_dirty_data_bytes",
            "Amount of dirty data for this backing device in the cache.",
            l,
            v,
        );
    }
    let stats: &[(&str, &str, &str)] = &[
        ("bypassed", "node_bcache_bypassed_bytes_total", "Amount of IO (both reads and writes) that has bypassed the cache."),
        ("cache_bypass_hits", "node_bcache_cache_bypass_hits_total", "Hits for IO intended to skip the cache."),
        ("cache_bypass_misses", "node_bcache_cache_bypass_misses_total", "Misses for IO intended to skip the cache."),
        ("cache_hits", "node_bcache_cache_hits_total", "Hits counted per individual IO as bcache sees them."),
        ("cache_miss_collisions", "node_bcache_cache_miss_collisions_total", "Instances where data insertion from cache miss raced with write (data already present)."),
        ("cache_misses", "node_bcache_cache_misses_total", "Misses counted per individual IO as bcache sees them."),
        ("cache_readaheads", "node_bcache_cache_readaheads_total", "Count of times readahead occurred."),
    ];
    for (file, name, help) in stats {
        if let Some(v) = human(&db.join("stats_total").join(file)) {
            sink.counter(name, help, l, v);
        }
    }
    if let Some(t) = read_trimmed(&db.join("writeback_rate_debug"))? {
        let w = writeback_debug(&t);
        let g: [(&str, &str); 5] = [
            (
                "node_bcache_writeback_rate",
                "Current writeback rate for this backing device in bytes.",
            ),
            (
                "node_bcache_dirty_target_bytes",
                "Current dirty data target threshold for this backing device in bytes.",
            ),
            (
                "node_bcache_writeback_rate_proportional_term",
                "Current result of proportional controller, part of writeback rate",
            ),
            (
                "node_bcache_writeback_rate_integral_term",
                "Current result of integral controller, part of writeback rate",
            ),
            (
                "node_bcache_writeback_change",
                "Last writeback rate change step for this backing device.",
            ),
        ];
        for ((name, help), v) in g.iter().zip(w) {
            if let Some(v) = v {
                sink.gauge(name, help, l, v as f64);
            }
        }
    }
    Ok(())
}

fn collect(dir: &Path, sink: &mut Sink) -> Result<(), CollectError> {
    for uuid in list_dir(dir)? {
        let base = dir.join(&uuid);
        // `register`, `register_quiet` and `pendings_cleanup` are files.
        if !base.is_dir() {
            continue;
        }
        let u = [("uuid", uuid.as_str())];
        let set: &[(&str, &str, &str, f64)] = &[
            ("average_key_size", "node_bcache_average_key_size_sectors", "Average data per key in the btree (sectors).", 1.0),
            ("btree_cache_size", "node_bcache_btree_cache_size_bytes", "Amount of memory currently used by the btree cache.", 1.0),
            ("cache_available_percent", "node_bcache_cache_available_percent", "Percentage of cache device without dirty data, usable for writeback (may contain clean cached data).", 1.0),
            ("congested", "node_bcache_congested", "Congestion.", 1.0),
            ("root_usage_percent", "node_bcache_root_usage_percent", "Percentage of the root btree node in use (tree depth increases if too high).", 1.0),
            ("tree_depth", "node_bcache_tree_depth", "Depth of the btree.", 1.0),
            ("internal/active_journal_entries", "node_bcache_active_journal_entries", "Number of journal entries that are newer than the index.", 1.0),
            ("internal/btree_nodes", "node_bcache_btree_nodes", "Total nodes in the btree.", 1.0),
            // node_exporter scales this file's microseconds by 1e-9.
            ("internal/btree_read_average_duration_us", "node_bcache_btree_read_average_duration_seconds", "Average btree read duration.", 1e-9),
        ];
        for (file, name, help, scale) in set {
            if let Some(v) = human(&base.join(file)) {
                sink.gauge(name, help, &u, v * scale);
            }
        }
        if let Some(v) = human(&base.join("internal/cache_read_races")) {
            sink.counter("node_bcache_cache_read_races_total", "Counts instances where while data was being read from the cache, the bucket was reused and invalidated - i.e. where the pointer was stale after the read completed.", &u, v);
        }
        for dev in list_dir(&base)? {
            let db = base.join(&dev);
            if dev.starts_with("bdev") {
                let l = [("backing_device", dev.as_str()), ("uuid", uuid.as_str())];
                backing_device(sink, &db, &l)?;
            } else if dev.starts_with("cache")
                && dev[5..].bytes().all(|b| b.is_ascii_digit())
                && dev.len() > 5
            {
                let l = [("cache_device", dev.as_str()), ("uuid", uuid.as_str())];
                if let Some(v) = human(&db.join("io_errors")) {
                    sink.gauge(
                        "node_bcache_io_errors",
                        "Number of errors that have occurred, decayed by io_error_halflife.",
                        &l,
                        v,
                    );
                }
                if let Some(v) = human(&db.join("metadata_written")) {
                    sink.counter(
                        "node_bcache_metadata_written_bytes_total",
                        "Sum of all non data writes (btree writes and all other metadata).",
                        &l,
                        v,
                    );
                }
                if let Some(v) = human(&db.join("written")) {
                    sink.counter(
                        "node_bcache_written_bytes_total",
                        "Sum of all data that has been written to the cache.",
                        &l,
                        v,
                    );
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes_as_the_procfs_library_reads_them() {
        assert_eq!(dehumanize("512"), Some(512));
        assert_eq!(dehumanize("1.1M"), Some(1_150_976));
        assert_eq!(dehumanize("427.5k"), Some(437_748));
        assert_eq!(dehumanize("20.4G"), Some(21_894_266_880));
        assert_eq!(dehumanize("x"), None);
        assert_eq!(dehumanize(""), None);
        assert_eq!(dehumanize("99999999999E"), None, "overflow is refused");
        let w = writeback_debug("rate:\t\t1.1M/sec\ndirty:\t\t20.4G\ntarget:\t\t20.4G\nchange:\t\t321.5k/sec\nnext io:\t17ms\n");
        assert_eq!(
            w,
            [
                Some(1_150_976),
                Some(21_894_266_880),
                None,
                None,
                Some(329_204)
            ]
        );
    }
}
