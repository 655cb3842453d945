//! XFS statistics per filesystem from `/sys/fs/xfs/<device>/stats/stats`:
//! `node_xfs_*{device}`, as `node_exporter`'s `xfs` collector (Talos' EPHEMERAL
//! partition is XFS).

use std::path::Path;

use crate::collector::{path_spec, read_file, CollectError, CollectorSpec, DirCollector, Sink};
use crate::collectors::{list_dir, parse_field};

pub const SPEC: CollectorSpec = path_spec!("xfs", DirCollector::boxed, sys, "fs/xfs", collect);

/// Exported values: (stats line, column, metric name without `node_xfs_`, HELP).
const FIELDS: &[(&str, usize, &str, &str)] = &[
    ("extent_alloc", 0, "extent_allocation_extents_allocated_total", "Number of extents allocated for a filesystem."),
    ("extent_alloc", 1, "extent_allocation_blocks_allocated_total", "Number of blocks allocated for a filesystem."),
    ("extent_alloc", 2, "extent_allocation_extents_freed_total", "Number of extents freed for a filesystem."),
    ("extent_alloc", 3, "extent_allocation_blocks_freed_total", "Number of blocks freed for a filesystem."),
    ("abt", 0, "allocation_btree_lookups_total", "Number of allocation B-tree lookups for a filesystem."),
    ("abt", 1, "allocation_btree_compares_total", "Number of allocation B-tree compares for a filesystem."),
    ("abt", 2, "allocation_btree_records_inserted_total", "Number of allocation B-tree records inserted for a filesystem."),
    ("abt", 3, "allocation_btree_records_deleted_total", "Number of allocation B-tree records deleted for a filesystem."),
    ("blk_map", 0, "block_mapping_reads_total", "Number of block map for read operations for a filesystem."),
    ("blk_map", 1, "block_mapping_writes_total", "Number of block map for write operations for a filesystem."),
    ("blk_map", 2, "block_mapping_unmaps_total", "Number of block unmaps (deletes) for a filesystem."),
    ("blk_map", 3, "block_mapping_extent_list_insertions_total", "Number of extent list insertions for a filesystem."),
    ("blk_map", 4, "block_mapping_extent_list_deletions_total", "Number of extent list deletions for a filesystem."),
    ("blk_map", 5, "block_mapping_extent_list_lookups_total", "Number of extent list lookups for a filesystem."),
    ("blk_map", 6, "block_mapping_extent_list_compares_total", "Number of extent list compares for a filesystem."),
    ("bmbt", 0, "block_map_btree_lookups_total", "Number of block map B-tree lookups for a filesystem."),
    ("bmbt", 1, "block_map_btree_compares_total", "Number of block map B-tree compares for a filesystem."),
    ("bmbt", 2, "block_map_btree_records_inserted_total", "Number of block map B-tree records inserted for a filesystem."),
    ("bmbt", 3, "block_map_btree_records_deleted_total", "Number of block map B-tree records deleted for a filesystem."),
    ("dir", 0, "directory_operation_lookup_total", "Number of file name directory lookups which miss the operating systems directory name lookup cache."),
    ("dir", 1, "directory_operation_create_total", "Number of times a new directory entry was created for a filesystem."),
    ("dir", 2, "directory_operation_remove_total", "Number of times an existing directory entry was created for a filesystem."),
    ("dir", 3, "directory_operation_getdents_total", "Number of times the directory getdents operation was performed for a filesystem."),
    ("ig", 0, "inode_operation_attempts_total", "Number of times the OS looked for an XFS inode in the inode cache."),
    ("ig", 1, "inode_operation_found_total", "Number of times the OS looked for and found an XFS inode in the inode cache."),
    ("ig", 2, "inode_operation_recycled_total", "Number of times the OS found an XFS inode in the cache, but could not use it as it was being recycled."),
    ("ig", 3, "inode_operation_missed_total", "Number of times the OS looked for an XFS inode in the cache, but did not find it."),
    ("ig", 4, "inode_operation_duplicates_total", "Number of times the OS tried to add a missing XFS inode to the inode cache, but found it had already been added by another process."),
    ("ig", 5, "inode_operation_reclaims_total", "Number of times the OS reclaimed an XFS inode from the inode cache to free memory for another purpose."),
    ("ig", 6, "inode_operation_attribute_changes_total", "Number of times the OS explicitly changed the attributes of an XFS inode."),
    // The kernel writes xs_write_calls first.
    ("rw", 1, "read_calls_total", "Number of read(2) system calls made to files in a filesystem."),
    ("rw", 0, "write_calls_total", "Number of write(2) system calls made to files in a filesystem."),
    ("vnodes", 0, "vnode_active_total", "Number of vnodes not on free lists for a filesystem."),
    ("vnodes", 1, "vnode_allocate_total", "Number of times vn_alloc called for a filesystem."),
    ("vnodes", 2, "vnode_get_total", "Number of times vn_get called for a filesystem."),
    ("vnodes", 3, "vnode_hold_total", "Number of times vn_hold called for a filesystem."),
    ("vnodes", 4, "vnode_release_total", "Number of times vn_rele called for a filesystem."),
    ("vnodes", 5, "vnode_reclaim_total", "Number of times vn_reclaim called for a filesystem."),
    ("vnodes", 6, "vnode_remove_total", "Number of times vn_remove called for a filesystem."),
];

/// The exported values of one `stats` file, in [`FIELDS`] order; a known
/// line with too few or garbled columns is an error, unknown lines are skipped.
pub fn parse(path: &Path, text: &str) -> Result<Vec<u64>, CollectError> {
    let mut out = vec![0u64; FIELDS.len()];
    for (i, line) in text.lines().enumerate() {
        let mut cols = line.split_whitespace();
        let Some(key) = cols.next() else {
            continue;
        };
        if !FIELDS.iter().any(|f| f.0 == key) {
            continue;
        }
        let vals: Vec<&str> = cols.collect();
        for (slot, (k, col, name, _)) in out.iter_mut().zip(FIELDS) {
            if *k != key {
                continue;
            }
            let v = vals.get(*col).ok_or_else(|| {
                CollectError::parse(path, i + 1, format!("{key}: too few values for {name}"))
            })?;
            *slot = parse_field(path, i + 1, name, v)?;
        }
    }
    Ok(out)
}

fn collect(dir: &Path, sink: &mut Sink) -> Result<(), CollectError> {
    for dev in list_dir(dir)? {
        let path = dir.join(&dev).join("stats/stats");
        // `/sys/fs/xfs/stats` is the sum over all; devices have their own folder.
        if dev == "stats" || !path.is_file() {
            continue;
        }
        let vals = parse(&path, &read_file(&path)?)?;
        for ((_, _, name, help), v) in FIELDS.iter().zip(vals) {
            sink.counter(
                &format!("node_xfs_{name}"),
                help,
                &[("device", &dev)],
                v as f64,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "values compared are exact")]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    const FIXTURE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/linux/sys/fs/xfs/sda1/stats/stats"
    ));

    #[test]
    fn parses_and_rejects() {
        let p = Path::new("stats");
        let v = parse(p, FIXTURE).unwrap();
        assert_eq!(v[1], 872, "extent_alloc blocks");
        assert_eq!(v[32], 4, "vnodes active");
        assert!(parse(p, "rw 1\n").is_err());
        assert!(parse(p, "rw 1 x\n").is_err());
        assert_eq!(parse(p, "newline 1 2 3\n").unwrap(), vec![0; FIELDS.len()]);
        testutil::assert_no_panic(FIXTURE, 42, |t| parse(p, t));
    }
}
