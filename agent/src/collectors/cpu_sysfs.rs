//! The sysfs half of `node_exporter`'s `cpu` collector (the `/proc/stat` half
//! is [`super::stat`]): thermal throttling per core and package
//! (`node_cpu_core_throttles_total{package,core}`,
//! `node_cpu_package_throttles_total{package}`) and isolated CPUs
//! (`node_cpu_isolated{cpu}`).

use std::collections::BTreeMap;
use std::path::Path;

use crate::collector::{path_spec, CollectError, CollectorSpec, DirCollector, Sink};
use crate::collectors::{list_dir, read_trimmed};

pub const SPEC: CollectorSpec = path_spec!(
    "cpu_sysfs",
    DirCollector::boxed,
    sys,
    "devices/system/cpu",
    collect
);

/// A CPU list as the kernel writes it (`1,3-5,9`); `None` if garbled.
#[must_use]
pub fn parse_cpu_list(s: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 65536 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

fn uint(p: &Path) -> Option<u64> {
    read_trimmed(p).ok().flatten()?.parse().ok()
}

fn collect(dir: &Path, sink: &mut Sink) -> Result<(), CollectError> {
    let mut packages: BTreeMap<String, u64> = BTreeMap::new();
    let mut cores: BTreeMap<(String, String), u64> = BTreeMap::new();
    for cpu in list_dir(dir)? {
        if !cpu
            .strip_prefix("cpu")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let base = dir.join(&cpu);
        let (Some(pkg), Some(core)) = (
            read_trimmed(&base.join("topology/physical_package_id"))?,
            read_trimmed(&base.join("topology/core_id"))?,
        ) else {
            continue;
        };
        // Hyper-threads share their core's and package's counters: the first is kept.
        if let Some(n) = uint(&base.join("thermal_throttle/package_throttle_count")) {
            packages.entry(pkg.clone()).or_insert(n);
        }
        if let Some(n) = uint(&base.join("thermal_throttle/core_throttle_count")) {
            cores.entry((pkg, core)).or_insert(n);
        }
    }
    for ((pkg, core), n) in &cores {
        sink.counter(
            "node_cpu_core_throttles_total",
            "Number of times this CPU core has been throttled.",
            &[("package", pkg), ("core", core)],
            *n as f64,
        );
    }
    for (pkg, n) in &packages {
        sink.counter(
            "node_cpu_package_throttles_total",
            "Number of times this CPU package has been throttled.",
            &[("package", pkg)],
            *n as f64,
        );
    }
    let path = dir.join("isolated");
    if let Some(list) = read_trimmed(&path)? {
        let cpus = parse_cpu_list(&list)
            .ok_or_else(|| CollectError::parse(&path, 1, format!("not a CPU list: {list:?}")))?;
        for cpu in cpus {
            sink.gauge(
                "node_cpu_isolated",
                "Whether each core is isolated, information from /sys/devices/system/cpu/isolated.",
                &[("cpu", &cpu.to_string())],
                1.0,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("1,3-5,9\n"), Some(vec![1, 3, 4, 5, 9]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("5-3"), None);
        assert_eq!(parse_cpu_list("0-4294967295"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }
}
