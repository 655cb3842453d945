//! `/sys/class/nvme/<device>`: `node_nvme_info` and per namespace
//! `node_nvme_namespace_{info,size_bytes,used_bytes,capacity_bytes,logical_block_size_bytes}`.

use std::path::Path;

use crate::collector::{path_spec, CollectError, CollectorSpec, DirCollector, Sink};
use crate::collectors::{list_dir, read_or_empty, read_trimmed};

pub const SPEC: CollectorSpec = path_spec!("nvme", DirCollector::boxed, sys, "class/nvme", collect);

fn collect(dir: &Path, sink: &mut Sink) -> Result<(), CollectError> {
    for dev in list_dir(dir)? {
        let base = dir.join(&dev);
        let text = |f: &str| read_or_empty(&base.join(f));
        sink.gauge(
            "node_nvme_info",
            "Non-numeric data from /sys/class/nvme/<device>, value is always 1.",
            &[
                ("device", &dev),
                ("firmware_revision", &text("firmware_rev")),
                ("model", &text("model")),
                ("serial", &text("serial")),
                ("state", &text("state")),
                ("cntlid", &text("cntlid")),
            ],
            1.0,
        );
        for ns in list_dir(&base)? {
            // Namespaces are `<device>n<nsid>` (`nvme0n1`).
            let Some(nsid) = ns
                .strip_prefix(dev.as_str())
                .and_then(|r| r.strip_prefix('n'))
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let nb = base.join(&ns);
            let num = |f: &str| {
                read_trimmed(&nb.join(f))
                    .ok()
                    .flatten()
                    .and_then(|s| s.parse::<f64>().ok())
            };
            let (Some(size), Some(lbs)) = (num("size"), num("queue/logical_block_size")) else {
                continue;
            };
            let ana = read_or_empty(&nb.join("ana_state"));
            let l = [("device", dev.as_str()), ("nsid", nsid)];
            sink.gauge(
                "node_nvme_namespace_info",
                "Information about NVMe namespaces. Value is always 1",
                &[("device", &dev), ("nsid", nsid), ("ana_state", &ana)],
                1.0,
            );
            sink.gauge("node_nvme_namespace_capacity_bytes", "Capacity of the NVMe namespace in bytes. Computed as namespace_size * namespace_logical_block_size", &l, size * lbs);
            sink.gauge("node_nvme_namespace_size_bytes", "Size of the NVMe namespace in bytes. Available in /sys/class/nvme/<device>/<namespace>/size", &l, size * lbs);
            if let Some(used) = num("nuse") {
                sink.gauge("node_nvme_namespace_used_bytes", "Used space of the NVMe namespace in bytes. Available in /sys/class/nvme/<device>/<namespace>/nuse", &l, used * lbs);
            }
            sink.gauge("node_nvme_namespace_logical_block_size_bytes", "Logical block size of the NVMe namespace in bytes. Usually 4Kb. Available in /sys/class/nvme/<device>/<namespace>/queue/logical_block_size", &l, lbs);
        }
    }
    Ok(())
}
