//! `/sys/class/net/<iface>/*`: link state and properties per interface.
//!
//! As `node_exporter`'s `netclass` collector (sysfs mode, its default):
//! `node_network_up`, `node_network_info`, `node_network_mtu_bytes`,
//! `node_network_carrier`, `node_network_speed_bytes` and the other
//! per-attribute gauges and counters. An attribute the kernel refuses to
//! report (carrier or speed of a down link give `EINVAL`) or does not have is
//! left out, as the procfs library does; so is one that does not parse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::collector::{CollectError, Collector, CollectorSpec, Paths, Sink, Unavailable};

pub const SPEC: CollectorSpec = CollectorSpec::new("netclass", build);

pub fn build(paths: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
    Ok(Box::new(NetclassCollector {
        dir: paths.sys("class/net"),
    }))
}

/// `(sysfs attribute, metric stem, counter?)` for the numeric attributes, in
/// `node_exporter`'s order.
const NUMERIC: [(&str, &str, bool); 16] = [
    ("addr_assign_type", "address_assign_type", false),
    ("carrier", "carrier", false),
    ("carrier_changes", "carrier_changes_total", true),
    ("carrier_up_count", "carrier_up_changes_total", true),
    ("carrier_down_count", "carrier_down_changes_total", true),
    ("dev_id", "device_id", false),
    ("dormant", "dormant", false),
    ("flags", "flags", false),
    ("ifindex", "iface_id", false),
    ("iflink", "iface_link", false),
    ("link_mode", "iface_link_mode", false),
    ("mtu", "mtu_bytes", false),
    ("name_assign_type", "name_assign_type", false),
    ("netdev_group", "net_dev_group", false),
    ("tx_queue_len", "transmit_queue_length", false),
    ("type", "protocol_type", false),
];

/// Attributes read as text (labels of `node_network_info`, and `operstate`).
const TEXT: [&str; 5] = ["address", "broadcast", "duplex", "ifalias", "operstate"];

/// `IFF_UP` from `<linux/if.h>`: the administrative state in `flags`.
const IFF_UP: i64 = 0x1;

/// One interface's attributes, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Iface {
    pub numeric: BTreeMap<&'static str, i64>,
    pub text: BTreeMap<&'static str, String>,
    /// Mbit/s; `-1` when the driver does not know.
    pub speed: Option<i64>,
}

/// Parses an integer as Go's `strconv.ParseInt(s, 0, 64)` does for sysfs
/// values: `0x` hexadecimal (`flags`, `dev_id`), a leading `0` octal, else decimal.
#[must_use]
pub fn parse_int(s: &str) -> Option<i64> {
    let s = s.trim();
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    // `from_str_radix` would accept a second sign; only digits may follow.
    let number = |body: &str, radix: u32| {
        if body.is_empty() || !body.chars().all(|c| c.is_digit(radix)) {
            return None;
        }
        i64::from_str_radix(body, radix).ok()
    };
    let v = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        number(hex, 16)?
    } else if digits.len() > 1 && digits.starts_with('0') {
        number(&digits[1..], 8)?
    } else {
        number(digits, 10)?
    };
    Some(if neg { v.checked_neg()? } else { v })
}

/// Builds an interface from the attribute files that could be read
/// (`attribute name → content`).
#[must_use]
pub fn parse_iface(files: &BTreeMap<String, String>) -> Iface {
    let mut iface = Iface::default();
    for (attr, stem, _) in NUMERIC {
        if let Some(v) = files.get(attr).and_then(|s| parse_int(s)) {
            iface.numeric.insert(stem, v);
        }
    }
    for attr in TEXT {
        if let Some(v) = files.get(attr) {
            iface.text.insert(attr, v.trim().to_string());
        }
    }
    iface.speed = files.get("speed").and_then(|s| parse_int(s));
    iface
}

pub struct NetclassCollector {
    dir: PathBuf,
}

/// Reads the attributes of one interface directory. Unreadable attributes
/// (absent, `EINVAL` on a down link, `EOPNOTSUPP`, permission) are left out.
fn read_iface(dir: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let names = NUMERIC
        .iter()
        .map(|(a, _, _)| *a)
        .chain(TEXT)
        .chain(["speed"]);
    for attr in names {
        if let Ok(s) = crate::collector::read_cached(&dir.join(attr)) {
            files.insert(attr.to_string(), s);
        }
    }
    files
}

impl Collector for NetclassCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            // No sysfs network class (some containers): no data.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                return Ok(());
            }
            Err(e) => return Err(CollectError::io(&self.dir, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| CollectError::io(&self.dir, e))?;
            // Interfaces are symlinks to their device; plain files such as
            // `bonding_masters` are not interfaces.
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        for name in names {
            let iface = parse_iface(&read_iface(&self.dir.join(&name)));
            write(sink, &name, &iface);
        }
        Ok(())
    }
}

fn write(sink: &mut Sink, device: &str, iface: &Iface) {
    let text = |k: &str| iface.text.get(k).map_or("", String::as_str);
    let operstate = text("operstate");
    sink.gauge(
        "node_network_up",
        "Value is 1 if operstate is 'up', 0 otherwise.",
        &[("device", device)],
        if operstate == "up" { 1.0 } else { 0.0 },
    );
    let adminstate = match iface.numeric.get("flags") {
        None => "unknown",
        Some(f) if f & IFF_UP != 0 => "up",
        Some(_) => "down",
    };
    sink.gauge(
        "node_network_info",
        "Non-numeric data from /sys/class/net/<iface>, value is always 1.",
        &[
            ("device", device),
            ("address", text("address")),
            ("broadcast", text("broadcast")),
            ("duplex", text("duplex")),
            ("operstate", operstate),
            ("adminstate", adminstate),
            ("ifalias", text("ifalias")),
        ],
        1.0,
    );
    for (_, stem, counter) in NUMERIC {
        let Some(v) = iface.numeric.get(stem) else {
            continue;
        };
        let name = format!("node_network_{stem}");
        let help = format!("Network device property: {stem}");
        if counter {
            sink.counter(&name, &help, &[("device", device)], *v as f64);
        } else {
            sink.gauge(&name, &help, &[("device", device)], *v as f64);
        }
    }
    // Mbit/s to bytes/s in integer arithmetic, as node_exporter. A driver's
    // -1 ("unknown") is exported as is by default upstream
    // (`--collector.netclass.ignore-invalid-speed` drops it).
    if let Some(mbit) = iface.speed {
        let bytes = mbit.saturating_mul(1000 * 1000) / 8;
        sink.gauge(
            "node_network_speed_bytes",
            "Network device property: speed_bytes",
            &[("device", device)],
            bytes as f64,
        );
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "values compared are exact")]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    const DIR: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/linux/sys/class/net"
    );

    #[test]
    fn parses_fixture_interfaces() {
        let bond0 = parse_iface(&read_iface(&Path::new(DIR).join("bond0")));
        assert_eq!(bond0.numeric["flags"], 0x1303);
        assert_eq!(bond0.numeric["device_id"], 0x20);
        assert_eq!(bond0.numeric["mtu_bytes"], 1500);
        assert_eq!(bond0.speed, Some(-1));
        assert_eq!(bond0.text["operstate"], "up");
        assert_eq!(bond0.text["ifalias"], "");
        let eth0 = parse_iface(&read_iface(&Path::new(DIR).join("eth0")));
        assert_eq!(eth0.speed, Some(1000));
    }

    #[test]
    fn collects_interfaces_not_plain_files() {
        let paths = Paths {
            sysfs: format!("{DIR}/../..").into(),
            ..Paths::default()
        };
        let mut sink = Sink::new();
        build(&paths).unwrap().collect(&mut sink).unwrap();
        let up: Vec<&str> = sink
            .samples
            .iter()
            .filter(|s| s.name == "node_network_up")
            .map(|s| s.labels[0].1.as_str())
            .collect();
        assert_eq!(up, ["bond0", "dmz", "eth0", "int"]);
        let speed = sink
            .samples
            .iter()
            .find(|s| s.name == "node_network_speed_bytes" && s.labels[0].1 == "eth0")
            .unwrap();
        assert_eq!(speed.value, 125_000_000.0);
    }

    #[test]
    fn go_style_integers() {
        assert_eq!(parse_int("0x1303\n"), Some(4867));
        assert_eq!(parse_int("-1"), Some(-1));
        assert_eq!(parse_int("010"), Some(8));
        assert_eq!(parse_int("0"), Some(0));
        assert_eq!(parse_int("1500"), Some(1500));
        for bad in [
            "",
            "0x",
            "0x-1",
            "--1",
            "+-1",
            "1.5",
            "08",
            "99999999999999999999",
            "x",
        ] {
            assert_eq!(parse_int(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn fuzz_no_panic() {
        testutil::assert_no_panic("0x1303\n", 17, |t| parse_int(t).ok_or(()));
        testutil::assert_no_panic("-1\n", 18, |t| {
            let files: BTreeMap<String, String> = ["speed", "flags", "mtu", "operstate"]
                .iter()
                .map(|a| ((*a).to_string(), t.to_string()))
                .collect();
            let iface = parse_iface(&files);
            let mut sink = Sink::new();
            write(&mut sink, "x", &iface);
            Ok::<_, ()>(())
        });
    }
}
