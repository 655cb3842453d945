//! `/sys/class/thermal`: `node_thermal_zone_temp{zone,type}` (°C) and
//! `node_cooling_device_{cur,max}_state{name,type}`.

use std::path::Path;

use crate::collector::{path_spec, CollectError, CollectorSpec, DirCollector, Sink};
use crate::collectors::{list_dir, read_or_empty, read_trimmed};

pub const SPEC: CollectorSpec = path_spec!(
    "thermal_zone",
    DirCollector::boxed,
    sys,
    "class/thermal",
    collect
);

/// An integer attribute; `None` when absent, unreadable (some drivers
/// answer EINVAL or EIO while a sensor sleeps) or not a number.
fn int(path: &Path) -> Option<i64> {
    read_trimmed(path).ok().flatten()?.parse().ok()
}

fn collect(dir: &Path, sink: &mut Sink) -> Result<(), CollectError> {
    for entry in list_dir(dir)? {
        let base = dir.join(&entry);
        let kind = read_or_empty(&base.join("type"));
        if let Some(zone) = entry.strip_prefix("thermal_zone") {
            if let Some(t) = int(&base.join("temp")) {
                sink.gauge(
                    "node_thermal_zone_temp",
                    "Zone temperature in Celsius",
                    &[("zone", zone), ("type", &kind)],
                    t as f64 / 1000.0,
                );
            }
        } else if let Some(name) = entry.strip_prefix("cooling_device") {
            let (Some(cur), Some(max)) =
                (int(&base.join("cur_state")), int(&base.join("max_state")))
            else {
                continue;
            };
            sink.gauge(
                "node_cooling_device_cur_state",
                "Current throttle state of the cooling device",
                &[("name", name), ("type", &kind)],
                cur as f64,
            );
            sink.gauge(
                "node_cooling_device_max_state",
                "Maximum throttle state of the cooling device",
                &[("name", name), ("type", &kind)],
                max as f64,
            );
        }
    }
    Ok(())
}
