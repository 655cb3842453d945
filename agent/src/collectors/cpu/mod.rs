//! CPU time: `node_cpu_seconds_total{cpu,mode}`, as `node_exporter`'s `cpu`
//! collector.
//!
//! This module owns the name and HELP text ([`write_seconds`]); each OS
//! reads the seconds per CPU and mode:
//! - [`linux`] reads `/proc/stat` (the `stat` collector, which also writes
//!   the guest time and the kernel's activity counters);
//! - [`freebsd`] reads `kern.cp_times` (the parsers build everywhere).

use crate::collector::Sink;

pub mod freebsd;
#[cfg(target_os = "linux")]
pub mod linux;

/// Writes one CPU's seconds in each mode.
pub fn write_seconds<'a>(
    sink: &mut Sink,
    cpu: &str,
    modes: impl IntoIterator<Item = (&'a str, f64)>,
) {
    for (mode, seconds) in modes {
        sink.counter(
            "node_cpu_seconds_total",
            "Seconds the CPUs spent in each mode.",
            &[("cpu", cpu), ("mode", mode)],
            seconds,
        );
    }
}
