//! `/sys/devices/system/cpu/cpu*/cpufreq`: `node_cpu_frequency_{,min_,max_}hertz`
//! (hardware), `node_cpu_scaling_frequency_{,min_,max_}hertz` and
//! `node_cpu_scaling_governor{cpu,governor}`, as `node_exporter`'s `cpufreq` collector.

use std::path::Path;

use crate::collector::{path_spec, CollectError, CollectorSpec, DirCollector, Sink};
use crate::collectors::{list_dir, read_or_empty, read_trimmed};

pub const SPEC: CollectorSpec = path_spec!(
    "cpufreq",
    DirCollector::boxed,
    sys,
    "devices/system/cpu",
    collect
);

/// (file in kHz, metric, HELP)
const FREQS: &[(&str, &str, &str)] = &[
    (
        "cpuinfo_cur_freq",
        "node_cpu_frequency_hertz",
        "Current CPU thread frequency in hertz.",
    ),
    (
        "cpuinfo_avg_freq",
        "node_cpu_frequency_avg_hertz",
        "Average CPU thread frequency in hertz.",
    ),
    (
        "cpuinfo_min_freq",
        "node_cpu_frequency_min_hertz",
        "Minimum CPU thread frequency in hertz.",
    ),
    (
        "cpuinfo_max_freq",
        "node_cpu_frequency_max_hertz",
        "Maximum CPU thread frequency in hertz.",
    ),
    (
        "scaling_cur_freq",
        "node_cpu_scaling_frequency_hertz",
        "Current scaled CPU thread frequency in hertz.",
    ),
    (
        "scaling_min_freq",
        "node_cpu_scaling_frequency_min_hertz",
        "Minimum scaled CPU thread frequency in hertz.",
    ),
    (
        "scaling_max_freq",
        "node_cpu_scaling_frequency_max_hertz",
        "Maximum scaled CPU thread frequency in hertz.",
    ),
];

fn collect(dir: &Path, sink: &mut Sink) -> Result<(), CollectError> {
    for cpu in list_dir(dir)? {
        let Some(n) = cpu
            .strip_prefix("cpu")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let base = dir.join(&cpu).join("cpufreq");
        if !base.is_dir() {
            continue;
        }
        for (file, name, help) in FREQS {
            // cpuinfo_cur_freq is readable by root only; unreadable or garbled costs that value.
            if let Some(khz) = read_trimmed(&base.join(file))
                .ok()
                .flatten()
                .and_then(|s| s.parse::<u64>().ok())
            {
                sink.gauge(name, help, &[("cpu", n)], khz as f64 * 1000.0);
            }
        }
        let governor = read_or_empty(&base.join("scaling_governor"));
        if !governor.is_empty() {
            let avail = read_or_empty(&base.join("scaling_available_governors"));
            for g in avail.split(' ') {
                let v = if g == governor { 1.0 } else { 0.0 };
                sink.gauge(
                    "node_cpu_scaling_governor",
                    "Current enabled CPU frequency governor.",
                    &[("cpu", n), ("governor", g)],
                    v,
                );
            }
        }
    }
    Ok(())
}
