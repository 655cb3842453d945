//! `/sys/class/dmi/id/*`: `node_dmi_info{bios_*,board_*,chassis_*,product_*,system_vendor}`,
//! as `node_exporter`'s `dmi` collector (files root cannot read, such as
//! serial numbers for other users, are left out).

use std::path::Path;

use crate::collector::{path_spec, CollectError, CollectorSpec, DirCollector, Sink};

pub const SPEC: CollectorSpec =
    path_spec!("dmi", DirCollector::boxed, sys, "class/dmi/id", collect);

/// (file, label)
const FIELDS: &[(&str, &str)] = &[
    ("bios_date", "bios_date"),
    ("bios_release", "bios_release"),
    ("bios_vendor", "bios_vendor"),
    ("bios_version", "bios_version"),
    ("board_asset_tag", "board_asset_tag"),
    ("board_name", "board_name"),
    ("board_serial", "board_serial"),
    ("board_vendor", "board_vendor"),
    ("board_version", "board_version"),
    ("chassis_asset_tag", "chassis_asset_tag"),
    ("chassis_serial", "chassis_serial"),
    ("chassis_vendor", "chassis_vendor"),
    ("chassis_version", "chassis_version"),
    ("product_family", "product_family"),
    ("product_name", "product_name"),
    ("product_serial", "product_serial"),
    ("product_sku", "product_sku"),
    ("product_uuid", "product_uuid"),
    ("product_version", "product_version"),
    ("sys_vendor", "system_vendor"),
];

#[allow(
    clippy::unnecessary_wraps,
    reason = "the signature every DirCollector's collect has"
)]
fn collect(dir: &Path, sink: &mut Sink) -> Result<(), CollectError> {
    // VMs without SMBIOS, and most ARM boards, have no DMI.
    if !dir.is_dir() {
        return Ok(());
    }
    let mut values = Vec::new();
    for (file, label) in FIELDS {
        // Firmware strings are not always UTF-8.
        if let Ok(b) = std::fs::read(dir.join(file)) {
            let s = String::from_utf8_lossy(&b);
            values.push((*label, s.trim_end_matches('\n').trim().to_string()));
        }
    }
    let labels: Vec<(&str, &str)> = values.iter().map(|(l, v)| (*l, v.as_str())).collect();
    sink.gauge(
        "node_dmi_info",
        "A metric with a constant '1' value labeled by bios_date, bios_release, bios_vendor, bios_version, board_asset_tag, board_name, board_serial, board_vendor, board_version, chassis_asset_tag, chassis_serial, chassis_vendor, chassis_version, product_family, product_name, product_serial, product_sku, product_uuid, product_version, system_vendor if provided by DMI.",
        &labels,
        1.0,
    );
    Ok(())
}
