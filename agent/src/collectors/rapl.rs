//! Intel/AMD RAPL energy counters from `/sys/class/powercap/<zone>/energy_uj`:
//! `node_rapl_<zone>_joules_total{index,path}`, as `node_exporter`'s `rapl` collector.

use std::path::Path;

use crate::collector::{path_spec, CollectError, CollectorSpec, DirCollector, Sink};
use crate::collectors::{list_dir, read_trimmed};

pub const SPEC: CollectorSpec =
    path_spec!("rapl", DirCollector::boxed, sys, "class/powercap", collect);

/// `package-0` → (`package`, 0); `core` in zone `intel-rapl:0:0` → (`core`, 0).
#[must_use]
pub fn zone_name(name: &str, dir: &str) -> (String, u64) {
    if let Some((base, idx)) = name.rsplit_once('-') {
        if let Ok(i) = idx.parse() {
            return (base.to_string(), i);
        }
    }
    let idx = dir
        .rsplit(':')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (name.to_string(), idx)
}

/// A metric-name-safe form of a zone name (`psys`, `dram`, `uncore`).
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn collect(dir: &Path, sink: &mut Sink) -> Result<(), CollectError> {
    for zone in list_dir(dir)? {
        if !zone.contains(':') {
            continue;
        }
        let base = dir.join(&zone);
        let Some(name) = read_trimmed(&base.join("name"))? else {
            continue;
        };
        // energy_uj is root-only since 5.10 (CVE-2020-8694): without it, no data.
        let Some(uj) = read_trimmed(&base.join("energy_uj"))
            .ok()
            .flatten()
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        let (kind, index) = zone_name(&name, &zone);
        sink.counter(
            &format!("node_rapl_{}_joules_total", sanitize(&kind)),
            &format!("Current RAPL {kind} value in joules"),
            &[
                ("index", &index.to_string()),
                ("path", &base.to_string_lossy()),
            ],
            uj as f64 / 1e6,
        );
    }
    Ok(())
}
