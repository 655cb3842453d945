//! `/proc/net/arp`: `node_arp_entries{device}`, the neighbour entries per
//! interface (`node_exporter`'s `arp` collector as in 1.5, which read this file).

use std::collections::BTreeMap;
use std::path::Path;

use crate::collector::{path_spec, CollectError, CollectorSpec, FileCollector, Sink};

pub const SPEC: CollectorSpec = path_spec!("arp", FileCollector::optional, proc, "net/arp", write);

/// Entries per device: the sixth column of every line after the header.
pub fn parse(path: &Path, text: &str) -> Result<BTreeMap<String, u64>, CollectError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let Some(dev) = line.split_whitespace().nth(5) else {
            return Err(CollectError::parse(path, i + 1, "expected 6 columns"));
        };
        *out.entry(dev.to_string()).or_insert(0) += 1;
    }
    Ok(out)
}

/// Writes what one read of the file holds.
fn write(path: &Path, text: &str, sink: &mut Sink) -> Result<(), CollectError> {
    for (dev, n) in parse(path, text)? {
        sink.gauge(
            "node_arp_entries",
            "ARP entries by device",
            &[("device", &dev)],
            n as f64,
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "values compared are exact")]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    const HEAD: &str =
        "IP address       HW type     Flags       HW address            Mask     Device\n";

    #[test]
    fn counts_per_device() {
        let p = Path::new("arp");
        let t = format!("{HEAD}10.0.0.1 0x1 0x2 aa:bb:cc:dd:ee:ff * eth0\n10.0.0.2 0x1 0x2 aa:bb:cc:dd:ee:00 * eth0\n10.0.1.1 0x1 0x2 aa:bb:cc:dd:ee:01 * br0\n");
        let m = parse(p, &t).unwrap();
        assert_eq!(m["eth0"], 2);
        assert_eq!(m["br0"], 1);
        assert!(parse(p, HEAD).unwrap().is_empty());
        assert!(parse(p, &format!("{HEAD}10.0.0.1 0x1\n")).is_err());
        testutil::assert_no_panic(&t, 31, |t| parse(p, t));
    }
}
