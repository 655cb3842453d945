//! Interface counters: `node_network_{receive,transmit}_*_total{device}`, as
//! `node_exporter`'s `netdev` collector.
//!
//! This module owns the names and HELP texts ([`write_device`]); each OS
//! reads the counters of each interface:
//! - [`linux`] reads the 16 columns of `/proc/net/dev`;
//! - [`freebsd`] reads the `if_data` of `getifaddrs(3)` (the writer builds everywhere).

use crate::collector::Sink;

pub mod freebsd;
#[cfg(target_os = "linux")]
pub mod linux;

#[cfg(target_os = "linux")]
pub use linux::*;

/// Writes one interface's counters, each `(stat, value)` as
/// `node_network_<stat>_total{device}`.
pub fn write_device<'a>(
    sink: &mut Sink,
    device: &str,
    counters: impl IntoIterator<Item = (&'a str, u64)>,
) {
    for (stat, v) in counters {
        // node_exporter's HELP: "Network device statistic <stat>."
        sink.counter(
            &format!("node_network_{stat}_total"),
            &format!("Network device statistic {stat}."),
            &[("device", device)],
            v as f64,
        );
    }
}
