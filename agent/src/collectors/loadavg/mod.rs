//! Load averages: `node_load1`, `node_load5`, `node_load15`, as
//! `node_exporter`'s `collector/loadavg.go`.
//!
//! This module owns the names and HELP texts ([`write`]); each OS reads the
//! three averages:
//! - [`linux`] reads `/proc/loadavg`;
//! - [`freebsd`] calls `getloadavg(3)` through `sysinfo` (builds everywhere).

use crate::collector::Sink;

pub mod freebsd;
#[cfg(target_os = "linux")]
pub mod linux;

#[cfg(target_os = "linux")]
pub use linux::*;

/// Writes the three averages (1, 5 and 15 minutes).
pub fn write(sink: &mut Sink, load: [f64; 3]) {
    let [l1, l5, l15] = load;
    sink.gauge("node_load1", "1m load average.", &[], l1);
    sink.gauge("node_load5", "5m load average.", &[], l5);
    sink.gauge("node_load15", "15m load average.", &[], l15);
}
