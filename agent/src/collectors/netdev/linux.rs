//! Interface counters on Linux, from `/proc/net/dev`.
//!
//! Names and values are `node_exporter`'s `netdev` collector with its default
//! (legacy) metric names, as it produced them from `/proc/net/dev` before
//! v1.4 switched to netlink (`--no-collector.netdev.netlink` still does). The
//! kernel's `/proc/net/dev` columns already fold the detailed error counters
//! the way `node_exporter`'s netlink path does (`drop` = dropped + missed,
//! `frame` = length + over + crc + frame, `carrier` = carrier + aborted +
//! window + heartbeat), so values agree with either. Only netlink has
//! `receive_nohandler`, which is not exported here.
//!
//! Hand-parsed: `procfs::DeviceStatus` splits on whitespace and so fails on
//! lines where a long counter touches the colon (`eth0:68210035552 …`).

use std::path::Path;

use crate::collector::{path_spec, CollectError, CollectorSpec, FileCollector, Sink};
use crate::collectors::parse_field;

pub const SPEC: CollectorSpec =
    path_spec!("netdev", FileCollector::required, proc, "net/dev", write);

/// Metric stems of the 16 `/proc/net/dev` columns, in file order.
pub const COLUMNS: [&str; 16] = [
    "receive_bytes",
    "receive_packets",
    "receive_errs",
    "receive_drop",
    "receive_fifo",
    "receive_frame",
    "receive_compressed",
    "receive_multicast",
    "transmit_bytes",
    "transmit_packets",
    "transmit_errs",
    "transmit_drop",
    "transmit_fifo",
    "transmit_colls",
    "transmit_carrier",
    "transmit_compressed",
];

/// One interface's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub counters: [u64; 16],
}

/// Parses `/proc/net/dev`: two header lines, then `name: 16 counters`. The
/// name is everything before the last `:` (aliases such as `ibr10:30`
/// contain one), trimmed, as in the procfs library `node_exporter` uses.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Device>, CollectError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(2) {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let Some((name, rest)) = line.rsplit_once(':') else {
            return Err(CollectError::parse(
                path,
                n,
                "no ':' after the interface name",
            ));
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(CollectError::parse(path, n, "empty interface name"));
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() != COLUMNS.len() {
            return Err(CollectError::parse(
                path,
                n,
                format!(
                    "{name}: {} columns, expected {}",
                    fields.len(),
                    COLUMNS.len()
                ),
            ));
        }
        let mut counters = [0u64; 16];
        for ((slot, f), col) in counters.iter_mut().zip(&fields).zip(COLUMNS) {
            *slot = parse_field(path, n, col, f)?;
        }
        out.push(Device {
            name: name.to_string(),
            counters,
        });
    }
    Ok(out)
}

/// Writes what one read of the file holds.
fn write(path: &Path, text: &str, sink: &mut Sink) -> Result<(), CollectError> {
    for dev in parse(path, text)? {
        super::write_device(sink, &dev.name, COLUMNS.into_iter().zip(dev.counters));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    const FIXTURE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/linux/proc/net/dev"
    ));

    #[test]
    fn parses_fixture_with_awkward_names() {
        let d = parse(Path::new("dev"), FIXTURE).unwrap();
        let names: Vec<&str> = d.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "tun0",
                "veth4B09XN",
                "lo",
                "eth0",
                "lxcbr0",
                "wlan0",
                "docker0",
                "ibr10:30",
                "flannel.1",
                "💩0"
            ]
        );
        let eth0 = &d[3];
        assert_eq!(eth0.counters[0], 68_210_035_552);
        assert_eq!(eth0.counters[8], 9_315_587_528);
        assert_eq!(d[8].counters[11], 64);
    }

    #[test]
    fn rejects_garbled_lines() {
        let p = Path::new("dev");
        let h = "h1\nh2\n";
        assert!(parse(p, &format!("{h}eth0 1 2 3\n")).is_err());
        assert!(parse(p, &format!("{h}eth0: 1 2 3\n")).is_err());
        assert!(parse(p, &format!("{h}: {}\n", "0 ".repeat(16))).is_err());
        assert!(parse(p, &format!("{h}eth0: {}-1\n", "0 ".repeat(15))).is_err());
        assert_eq!(
            parse(p, &format!("{h}eth0: {}\n", "7 ".repeat(16))).unwrap()[0].counters,
            [7; 16]
        );
    }

    #[test]
    fn fuzz_no_panic() {
        testutil::assert_no_panic(FIXTURE, 13, |t| parse(Path::new("dev"), t));
    }
}
