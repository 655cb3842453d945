//! `/sys/class/power_supply/<supply>`: batteries and mains adapters,
//! `node_power_supply_*{power_supply}` and `node_power_supply_info`, as
//! `node_exporter`'s `powersupplyclass` collector (µV, µA, µWh, µW to base
//! units; tenths of °C to °C).

use std::path::Path;

use crate::collector::{path_spec, CollectError, CollectorSpec, DirCollector, Sink};
use crate::collectors::list_dir;

pub const SPEC: CollectorSpec = path_spec!(
    "powersupplyclass",
    DirCollector::boxed,
    sys,
    "class/power_supply",
    collect
);

/// (file, metric suffix, divisor)
const NUMBERS: &[(&str, &str, f64)] = &[
    ("authentic", "authentic", 1.0),
    ("calibrate", "calibrate", 1.0),
    ("capacity", "capacity", 1.0),
    ("capacity_alert_max", "capacity_alert_max", 1.0),
    ("capacity_alert_min", "capacity_alert_min", 1.0),
    ("cycle_count", "cyclecount", 1.0),
    ("online", "online", 1.0),
    ("present", "present", 1.0),
    ("time_to_empty_now", "time_to_empty_seconds", 1.0),
    ("time_to_full_now", "time_to_full_seconds", 1.0),
    ("current_boot", "current_boot", 1e6),
    ("current_max", "current_max", 1e6),
    ("current_now", "current_ampere", 1e6),
    ("energy_empty", "energy_empty", 1e6),
    ("energy_empty_design", "energy_empty_design", 1e6),
    ("energy_full", "energy_full", 1e6),
    ("energy_full_design", "energy_full_design", 1e6),
    ("energy_now", "energy_watthour", 1e6),
    ("voltage_boot", "voltage_boot", 1e6),
    ("voltage_max", "voltage_max", 1e6),
    ("voltage_max_design", "voltage_max_design", 1e6),
    ("voltage_min", "voltage_min", 1e6),
    ("voltage_min_design", "voltage_min_design", 1e6),
    ("voltage_now", "voltage_volt", 1e6),
    ("voltage_ocv", "voltage_ocv", 1e6),
    ("charge_control_limit", "charge_control_limit", 1e6),
    ("charge_control_limit_max", "charge_control_limit_max", 1e6),
    ("charge_counter", "charge_counter", 1e6),
    ("charge_empty", "charge_empty", 1e6),
    ("charge_empty_design", "charge_empty_design", 1e6),
    ("charge_full", "charge_full", 1e6),
    ("charge_full_design", "charge_full_design", 1e6),
    ("charge_now", "charge_ampere", 1e6),
    ("charge_term_current", "charge_term_current", 1e6),
    ("constant_charge_current", "constant_charge_current", 1e6),
    (
        "constant_charge_current_max",
        "constant_charge_current_max",
        1e6,
    ),
    ("constant_charge_voltage", "constant_charge_voltage", 1e6),
    (
        "constant_charge_voltage_max",
        "constant_charge_voltage_max",
        1e6,
    ),
    ("precharge_current", "precharge_current", 1e6),
    ("input_current_limit", "input_current_limit", 1e6),
    ("power_now", "power_watt", 1e6),
    ("temp", "temp_celsius", 10.0),
    ("temp_alert_max", "temp_alert_max_celsius", 10.0),
    ("temp_alert_min", "temp_alert_min_celsius", 10.0),
    ("temp_ambient", "temp_ambient_celsius", 10.0),
    ("temp_ambient_max", "temp_ambient_max_celsius", 10.0),
    ("temp_ambient_min", "temp_ambient_min_celsius", 10.0),
    ("temp_max", "temp_max_celsius", 10.0),
    ("temp_min", "temp_min_celsius", 10.0),
];

/// Text attributes, labels of `node_power_supply_info`.
const TEXTS: &[&str] = &[
    "capacity_level",
    "charge_type",
    "health",
    "manufacturer",
    "model_name",
    "serial_number",
    "status",
    "technology",
    "type",
    "usb_type",
    "scope",
];

/// An attribute's text (firmware strings need not be UTF-8); `None` if unreadable.
fn text(p: &Path) -> Option<String> {
    let b = std::fs::read(p).ok()?;
    Some(String::from_utf8_lossy(&b).trim().to_string())
}

fn collect(dir: &Path, sink: &mut Sink) -> Result<(), CollectError> {
    for ps in list_dir(dir)? {
        let base = dir.join(&ps);
        for (file, name, div) in NUMBERS {
            // Some drivers answer ENODATA for an attribute they list: that value is skipped.
            if let Some(v) = text(&base.join(file)).and_then(|s| s.parse::<i64>().ok()) {
                sink.gauge(
                    &format!("node_power_supply_{name}"),
                    &format!("{name} value of /sys/class/power_supply/<power_supply>."),
                    &[("power_supply", &ps)],
                    v as f64 / div,
                );
            }
        }
        let values: Vec<(&str, String)> = TEXTS
            .iter()
            .filter_map(|t| {
                text(&base.join(t))
                    .filter(|v| !v.is_empty())
                    .map(|v| (*t, v))
            })
            .collect();
        let mut labels: Vec<(&str, &str)> = vec![("power_supply", ps.as_str())];
        labels.extend(values.iter().map(|(k, v)| (*k, v.as_str())));
        sink.gauge(
            "node_power_supply_info",
            "info of /sys/class/power_supply/<power_supply>.",
            &labels,
            1.0,
        );
    }
    Ok(())
}
