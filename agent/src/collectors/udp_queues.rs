//! `/proc/net/udp{,6}`: `node_udp_queues{queue,ip}`, bytes queued in the
//! kernel for UDP sockets (the sums of the `tx_queue` and `rx_queue` columns).

use std::path::{Path, PathBuf};

use crate::collector::{CollectError, Collector, CollectorSpec, Paths, Sink, Unavailable};
use crate::collectors::read_optional;

pub const SPEC: CollectorSpec = CollectorSpec::new("udp_queues", build);

pub fn build(paths: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
    Ok(Box::new(UdpQueuesCollector {
        v4: paths.proc("net/udp"),
        v6: paths.proc("net/udp6"),
    }))
}

/// `(tx, rx)` summed over the sockets; the fifth column is `tx:rx` in hex.
pub fn parse(path: &Path, text: &str) -> Result<(u64, u64), CollectError> {
    let (mut tx, mut rx) = (0u64, 0u64);
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: &str| CollectError::parse(path, i + 1, msg.to_string());
        let q = line
            .split_whitespace()
            .nth(4)
            .ok_or_else(|| bad("expected a tx_queue:rx_queue column"))?;
        let (t, r) = q
            .split_once(':')
            .ok_or_else(|| bad("tx_queue:rx_queue without ':'"))?;
        let t = u64::from_str_radix(t, 16).map_err(|_| bad("tx_queue is not hex"))?;
        let r = u64::from_str_radix(r, 16).map_err(|_| bad("rx_queue is not hex"))?;
        tx = tx.saturating_add(t);
        rx = rx.saturating_add(r);
    }
    Ok((tx, rx))
}

pub struct UdpQueuesCollector {
    v4: PathBuf,
    v6: PathBuf,
}

impl Collector for UdpQueuesCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        for (path, ip) in [(&self.v4, "v4"), (&self.v6, "v6")] {
            // No IPv6 in the kernel: no v6 series, as node_exporter.
            let Some(text) = read_optional(path)? else {
                continue;
            };
            let (tx, rx) = parse(path, &text)?;
            let help = "Number of allocated memory in the kernel for UDP datagrams in bytes.";
            sink.gauge(
                "node_udp_queues",
                help,
                &[("queue", "tx"), ("ip", ip)],
                tx as f64,
            );
            sink.gauge(
                "node_udp_queues",
                help,
                &[("queue", "rx"), ("ip", ip)],
                rx as f64,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "values compared are exact")]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    const T: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:0016 00000000:0000 0A 00000015:00000000 00:00000000 00000000     0        0 2740 1 ffff88003d3af3c0 100 0 0 10 0\n   1: 00000000:0017 00000000:0000 0A 00000001:00000100 00:00000000 00000000     0        0 2741 1 ffff88003d3af3c0 100 0 0 10 0\n";

    #[test]
    fn sums_queues() {
        let p = Path::new("udp");
        assert_eq!(parse(p, T).unwrap(), (0x16, 0x100));
        assert!(parse(p, "head\n 0: a b c zz:1\n").is_err());
        testutil::assert_no_panic(T, 33, |t| parse(p, t));
    }
}
