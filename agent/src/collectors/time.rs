//! `node_time_seconds`, `node_time_zone_offset_seconds{time_zone}` and the
//! clock sources from `/sys/devices/system/clocksource/clocksource<N>/`
//! (`node_time_clocksource_{available,current}_info{device,clocksource}`).

use std::path::PathBuf;

use crate::collector::{CollectError, Collector, CollectorSpec, Paths, Sink, Unavailable};
use crate::collectors::{list_dir, read_trimmed};

pub const SPEC: CollectorSpec = CollectorSpec::new("time", build);

pub fn build(paths: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
    Ok(Box::new(TimeCollector {
        clocksource: paths.sys("devices/system/clocksource"),
    }))
}

pub struct TimeCollector {
    clocksource: PathBuf,
}

impl TimeCollector {
    /// The clock sources of each `clocksource<N>` device.
    fn clocksources(&self, sink: &mut Sink) -> Result<(), CollectError> {
        for dir in list_dir(&self.clocksource)? {
            let Some(device) = dir.strip_prefix("clocksource") else {
                continue;
            };
            let base = self.clocksource.join(&dir);
            if let Some(avail) = read_trimmed(&base.join("available_clocksource"))? {
                for cs in avail.split_whitespace() {
                    sink.gauge(
                        "node_time_clocksource_available_info",
                        "Available clocksources read from '/sys/devices/system/clocksource'.",
                        &[("device", device), ("clocksource", cs)],
                        1.0,
                    );
                }
            }
            if let Some(cur) = read_trimmed(&base.join("current_clocksource"))? {
                sink.gauge(
                    "node_time_clocksource_current_info",
                    "Current clocksource read from '/sys/devices/system/clocksource'.",
                    &[("device", device), ("clocksource", &cur)],
                    1.0,
                );
            }
        }
        Ok(())
    }
}

/// The local zone's abbreviation and offset: `UTC` for a zero offset
/// without `TZ` (as Go reports a host without a zone file), otherwise the
/// offset as `+hh:mm` (the zone database is not read).
#[must_use]
pub fn zone() -> (String, i32) {
    let now = chrono::Local::now();
    let off = now.offset().local_minus_utc();
    let name = if off == 0 && std::env::var_os("TZ").is_none() {
        "UTC".to_string()
    } else {
        now.format("%:z").to_string()
    };
    (name, off)
}

impl Collector for TimeCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        sink.gauge(
            "node_time_seconds",
            "System time in seconds since epoch (1970).",
            &[],
            now,
        );
        let (name, off) = zone();
        sink.gauge(
            "node_time_zone_offset_seconds",
            "System time zone offset in seconds.",
            &[("time_zone", &name)],
            f64::from(off),
        );
        self.clocksources(sink)
    }
}
