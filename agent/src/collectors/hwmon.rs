//! `/sys/class/hwmon`: temperatures, fans, voltages, currents, power,
//! energy, humidity, PWM and alarms of every hardware monitoring chip
//! (`node_hwmon_*{chip,sensor}`), named as `node_exporter`'s `hwmon` collector
//! names them (units converted: millidegrees to °C, millivolts to V, µW to W).
//!
//! Each chip directory holds many one-value files (`temp1_input`,
//! `fan2_min`, …): the pure part ([`split_name`], [`samples`]) turns a chip's
//! `{sensor → {property → text}}` into samples; the IO part lists and reads.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::collector::{path_spec, read_cached, CollectError, CollectorSpec, DirCollector, Sink};
use crate::collectors::list_dir;

pub const SPEC: CollectorSpec =
    path_spec!("hwmon", DirCollector::boxed, sys, "class/hwmon", collect);

/// Sensor types whose files are read (others, e.g. `name`, `uevent`, are not).
const SENSOR_TYPES: &[&str] = &[
    "vrm",
    "beep_enable",
    "update_interval",
    "in",
    "cpu",
    "fan",
    "pwm",
    "temp",
    "curr",
    "power",
    "energy",
    "humidity",
    "intrusion",
    "freq",
];

/// Lower case, anything but `[a-z0-9:_]` to `_`, `_` trimmed at both ends.
#[must_use]
pub fn clean(name: &str) -> String {
    let s: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == ':' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.trim_matches('_').to_string()
}

/// `temp1_crit_alarm` → `("temp", 1, "crit_alarm")`; `beep_enable` →
/// `("beep_enable", 0, "")`. `None` for names that are not `type[N][_property]`.
#[must_use]
pub fn split_name(name: &str) -> Option<(&str, u64, &str)> {
    let type_end = name
        .find(|c: char| c.is_ascii_digit())
        .unwrap_or(name.len());
    if type_end == 0 {
        return None;
    }
    let rest = &name[type_end..];
    let id_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let id = if id_end == 0 {
        0
    } else {
        rest[..id_end].parse().ok()?
    };
    let prop = &rest[id_end..];
    let prop = if prop.is_empty() {
        ""
    } else {
        let p = prop.strip_prefix('_')?;
        if p.is_empty() {
            return None;
        }
        p
    };
    Some((&name[..type_end], id, prop))
}

/// A chip's readings: sensor (`temp1`) → property (`input`, `crit`, `""`) → text.
pub type ChipData = BTreeMap<String, BTreeMap<String, String>>;

/// Adds one file's value to a chip's readings (files of other types are ignored).
pub fn add_file(data: &mut ChipData, file: &str, value: &str) {
    let Some((kind, id, prop)) = split_name(file) else {
        return;
    };
    if SENSOR_TYPES.contains(&kind) {
        data.entry(format!("{kind}{id}"))
            .or_default()
            .insert(prop.to_string(), value.trim_end_matches('\n').to_string());
    }
}

/// The samples of one chip, as `node_exporter` writes them.
pub fn samples(chip: &str, data: &ChipData, sink: &mut Sink) {
    for (sensor, props) in data {
        let Some((kind, _, _)) = split_name(sensor) else {
            continue;
        };
        let labels = [("chip", chip), ("sensor", sensor.as_str())];
        if let Some(label) = props.get("label") {
            sink.gauge(
                "node_hwmon_sensor_label",
                "Label for given chip and sensor",
                &[("chip", chip), ("sensor", sensor), ("label", label)],
                1.0,
            );
        }
        if write_single_value(sink, kind, props, &labels) {
            continue;
        }
        let prefix = format!("node_hwmon_{kind}");
        for (element, value) in props {
            if element == "label" {
                continue;
            }
            let name = if element == "input" {
                if props.contains_key("") {
                    format!("{prefix}_input")
                } else {
                    prefix.clone()
                }
            } else if element.is_empty() {
                prefix.clone()
            } else {
                format!("{prefix}_{}", clean(element))
            };
            let Some(v) = value.trim().parse::<f64>().ok() else {
                continue;
            };
            write_element(
                sink,
                &Element {
                    chip,
                    kind,
                    props,
                    labels: &labels,
                    name: &name,
                },
                element,
                v,
            );
        }
    }
}

/// Sensors that are a single value (`beep_enable`, `vrm`,
/// `update_interval`): written here, `true`; any other kind, `false`.
fn write_single_value(
    sink: &mut Sink,
    kind: &str,
    props: &BTreeMap<String, String>,
    labels: &[(&str, &str)],
) -> bool {
    let num = |s: &str| s.trim().parse::<f64>().ok();
    match kind {
        "beep_enable" => {
            let v = if props.get("").map(String::as_str) == Some("1") {
                1.0
            } else {
                0.0
            };
            sink.gauge(
                "node_hwmon_beep_enabled",
                "Hardware beep enabled",
                labels,
                v,
            );
            true
        }
        "vrm" => {
            if let Some(v) = props.get("").and_then(|s| num(s)) {
                sink.gauge(
                    "node_hwmon_voltage_regulator_version",
                    "Hardware voltage regulator",
                    labels,
                    v,
                );
            }
            true
        }
        "update_interval" => {
            if let Some(v) = props.get("").and_then(|s| num(s)) {
                sink.gauge(
                    "node_hwmon_update_interval_seconds",
                    "Hardware monitor update interval",
                    labels,
                    v * 0.001,
                );
            }
            true
        }
        _ => false,
    }
}

/// What the writer of one sensor element needs to know about its sensor.
struct Element<'a> {
    chip: &'a str,
    kind: &'a str,
    props: &'a BTreeMap<String, String>,
    labels: &'a [(&'a str, &'a str)],
    /// The family name stem for this element.
    name: &'a str,
}

/// Writes one element (`input`, `max`, `alarm`, …) of a sensor, named and
/// scaled by the sensor's kind as `node_exporter` does.
#[allow(
    clippy::too_many_lines,
    reason = "one branch per sensor kind and element, in node_exporter's order of its naming rules"
)]
fn write_element(sink: &mut Sink, s: &Element<'_>, e: &str, v: f64) {
    let Element {
        chip,
        kind,
        props,
        labels,
        name,
    } = *s;
    if e == "fault" || e == "alarm" {
        sink.gauge(
            name,
            &format!("Hardware sensor {e} status ({kind})"),
            labels,
            v,
        );
    } else if e == "beep" {
        sink.gauge(
            &format!("{name}_enabled"),
            "Hardware monitor sensor has beeping enabled",
            labels,
            v,
        );
    } else if kind == "in" || kind == "cpu" {
        sink.gauge(
            &format!("{name}_volts"),
            &format!("Hardware monitor for voltage ({e})"),
            labels,
            v * 0.001,
        );
    } else if kind == "temp" && e != "type" {
        let e = if e.is_empty() { "input" } else { e };
        sink.gauge(
            &format!("{name}_celsius"),
            &format!("Hardware monitor for temperature ({e})"),
            labels,
            v * 0.001,
        );
    } else if kind == "curr" {
        sink.gauge(
            &format!("{name}_amps"),
            &format!("Hardware monitor for current ({e})"),
            labels,
            v * 0.001,
        );
    } else if kind == "energy" {
        sink.counter(
            &format!("{name}_joule_total"),
            &format!("Hardware monitor for joules used so far ({e})"),
            labels,
            v / 1e6,
        );
    } else if kind == "power" && e == "accuracy" {
        sink.gauge(
            name,
            "Hardware monitor power meter accuracy, as a ratio",
            labels,
            v / 1e6,
        );
    } else if kind == "power"
        && matches!(
            e,
            "average_interval" | "average_interval_min" | "average_interval_max"
        )
    {
        sink.gauge(
            &format!("{name}_seconds"),
            &format!("Hardware monitor power usage update interval ({e})"),
            labels,
            v * 0.001,
        );
    } else if kind == "power" {
        sink.gauge(
            &format!("{name}_watt"),
            &format!("Hardware monitor for power usage in watts ({e})"),
            labels,
            v / 1e6,
        );
    } else if kind == "humidity" {
        sink.gauge(name, &format!("Hardware monitor for humidity, as a ratio (multiply with 100.0 to get the humidity as a percentage) ({e})"), labels, v / 1e6);
    } else if kind == "fan" && matches!(e, "input" | "min" | "max" | "target") {
        sink.gauge(
            &format!("{name}_rpm"),
            &format!("Hardware monitor for fan revolutions per minute ({e})"),
            labels,
            v,
        );
    } else if kind == "freq" {
        if e == "input" {
            if let Some(label) = props.get("label") {
                let l = clean(label);
                sink.gauge(
                    &format!("{name}_freq_mhz"),
                    "Hardware monitor for GPU frequency in MHz",
                    &[("chip", chip), ("sensor", &l)],
                    v / 1e6,
                );
            }
        }
    } else {
        sink.gauge(
            name,
            &format!("Hardware monitor {kind} element {e}"),
            labels,
            v,
        );
    }
}

/// A value file as `node_exporter` reads it (one read of at most 128 bytes);
/// `None` when unreadable (a sleeping sensor answers EIO or EAGAIN).
fn value(path: &Path) -> Option<String> {
    let mut s = read_cached(path).ok()?;
    s.truncate(s.floor_char_boundary(128));
    Some(s)
}

fn read_chip(dir: &Path, data: &mut ChipData) {
    for name in list_dir(dir).unwrap_or_default() {
        if split_name(&name).is_some_and(|(k, _, _)| SENSOR_TYPES.contains(&k)) {
            if let Some(v) = value(&dir.join(&name)) {
                add_file(data, &name, &v);
            }
        }
    }
}

/// The chip's base name: `<bus>_<device>` of the `device` link's target
/// (`platform_coretemp_0`), else its `name` file, else the directory's name.
fn base_name(dir: &Path) -> Option<String> {
    if let Ok(target) = std::fs::canonicalize(dir.join("device")) {
        let dev = target
            .file_name()
            .map(|n| clean(&n.to_string_lossy()))
            .unwrap_or_default();
        let bus = target
            .parent()
            .and_then(Path::file_name)
            .map(|n| clean(&n.to_string_lossy()))
            .unwrap_or_default();
        if !bus.is_empty() && !dev.is_empty() {
            return Some(format!("{bus}_{dev}"));
        }
        if !dev.is_empty() {
            return Some(dev);
        }
    }
    if let Ok(n) = std::fs::read_to_string(dir.join("name")) {
        let c = clean(&n);
        if !c.is_empty() {
            return Some(c);
        }
    }
    let real = std::fs::canonicalize(dir).ok()?;
    let c = clean(&real.file_name()?.to_string_lossy());
    (!c.is_empty()).then_some(c)
}

fn collect(dir: &Path, sink: &mut Sink) -> Result<(), CollectError> {
    // (directory, base name, `name` file)
    let mut chips = Vec::new();
    let mut base_counts: HashMap<String, usize> = HashMap::new();
    let mut name_counts: HashMap<(String, String), usize> = HashMap::new();
    for entry in list_dir(dir)? {
        let dir = dir.join(&entry);
        if !dir.is_dir() {
            continue;
        }
        let Some(base) = base_name(&dir) else {
            continue;
        };
        let name_file = std::fs::read_to_string(dir.join("name"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        *base_counts.entry(base.clone()).or_default() += 1;
        *name_counts
            .entry((base.clone(), name_file.clone()))
            .or_default() += 1;
        chips.push((dir, entry, base, name_file));
    }
    for (dir, entry, base, name_file) in chips {
        // Two chips on one device (amdgpu, nvme) are told apart by their
        // `name`, or by the hwmonN directory when that is the same too.
        let chip = if base_counts[&base] > 1 {
            let mut suffix = clean(&name_file);
            if suffix.is_empty() || name_counts[&(base.clone(), name_file.clone())] > 1 {
                suffix = clean(&entry);
            }
            format!("{base}_{suffix}")
        } else {
            base
        };
        let mut data = ChipData::new();
        read_chip(&dir, &mut data);
        let device = dir.join("device");
        if device.is_dir() {
            read_chip(&device, &mut data);
        }
        if !name_file.is_empty() || dir.join("name").exists() {
            if let Ok(n) = std::fs::read_to_string(dir.join("name")) {
                let c = clean(&n);
                if !c.is_empty() {
                    sink.gauge(
                        "node_hwmon_chip_names",
                        "Annotation metric for human-readable chip names",
                        &[("chip", &chip), ("chip_name", &c)],
                        1.0,
                    );
                }
            }
        }
        samples(&chip, &data, sink);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "values compared are exact")]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    #[test]
    fn names_split_as_node_exporter_splits_them() {
        assert_eq!(
            split_name("temp1_crit_alarm"),
            Some(("temp", 1, "crit_alarm"))
        );
        assert_eq!(split_name("in0_input"), Some(("in", 0, "input")));
        assert_eq!(
            split_name("intrusion0_alarm"),
            Some(("intrusion", 0, "alarm"))
        );
        assert_eq!(split_name("pwm1"), Some(("pwm", 1, "")));
        assert_eq!(split_name("beep_enable"), Some(("beep_enable", 0, "")));
        assert_eq!(split_name("temp1x"), None);
        assert_eq!(split_name("1temp"), None);
        assert_eq!(clean("Core 0"), "core_0");
        assert_eq!(clean("-Package id 0-"), "package_id_0");
    }

    #[test]
    fn units_and_bad_values() {
        let mut d = ChipData::new();
        for (f, v) in [
            ("temp1_input", "42500\n"),
            ("temp1_label", "Core 0\n"),
            ("fan1_input", "1200"),
            ("in0_input", "1200"),
            ("power1_average", "2500000"),
            ("temp2_input", "garbage"),
            ("name", "x"),
        ] {
            add_file(&mut d, f, v);
        }
        let mut sink = Sink::new();
        samples("platform_coretemp_0", &d, &mut sink);
        let v = |n: &str| sink.samples.iter().find(|s| s.name == n).map(|s| s.value);
        assert_eq!(v("node_hwmon_temp_celsius"), Some(42.5));
        assert_eq!(v("node_hwmon_fan_rpm"), Some(1200.0));
        assert_eq!(v("node_hwmon_in_volts"), Some(1.2));
        assert_eq!(v("node_hwmon_power_average_watt"), Some(2.5));
        assert_eq!(
            sink.samples
                .iter()
                .filter(|s| s.name == "node_hwmon_temp_celsius")
                .count(),
            1,
            "the garbled temp2 costs only itself"
        );
        assert!(sink
            .samples
            .iter()
            .any(|s| s.name == "node_hwmon_sensor_label"
                && s.labels.contains(&("label".into(), "Core 0".into()))));
    }

    #[test]
    fn fuzz_no_panic() {
        // File name and contents pairs, one per line: `name value`.
        let t = "temp1_input 42500\nfan1_input 1200\nin0_max 3300\npwm1_enable 2\nfreq1_input 1000000\nfreq1_label sclk\nbeep_enable 1\n";
        testutil::assert_no_panic(t, 41, |t| {
            let mut d = ChipData::new();
            for l in t.lines() {
                let (f, v) = l.split_once(' ').unwrap_or((l, ""));
                add_file(&mut d, f, v);
            }
            let mut sink = Sink::new();
            samples("chip", &d, &mut sink);
            Ok::<_, ()>(())
        });
    }
}
