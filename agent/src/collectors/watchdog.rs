//! `/sys/class/watchdog/<watchdog>/*`: `node_watchdog_*{name}` and
//! `node_watchdog_info{name,options,identity,state,status,pretimeout_governor}`.

use std::path::Path;

use crate::collector::{path_spec, CollectError, CollectorSpec, DirCollector, Sink};
use crate::collectors::{list_dir, read_or_empty, read_trimmed};

pub const SPEC: CollectorSpec = path_spec!(
    "watchdog",
    DirCollector::boxed,
    sys,
    "class/watchdog",
    collect
);

/// (file, metric, HELP)
const VALUES: &[(&str, &str, &str)] = &[
    (
        "bootstatus",
        "node_watchdog_bootstatus",
        "Value of /sys/class/watchdog/<watchdog>/bootstatus",
    ),
    (
        "fw_version",
        "node_watchdog_fw_version",
        "Value of /sys/class/watchdog/<watchdog>/fw_version",
    ),
    (
        "nowayout",
        "node_watchdog_nowayout",
        "Value of /sys/class/watchdog/<watchdog>/nowayout",
    ),
    (
        "timeleft",
        "node_watchdog_timeleft_seconds",
        "Value of /sys/class/watchdog/<watchdog>/timeleft",
    ),
    (
        "timeout",
        "node_watchdog_timeout_seconds",
        "Value of /sys/class/watchdog/<watchdog>/timeout",
    ),
    (
        "pretimeout",
        "node_watchdog_pretimeout_seconds",
        "Value of /sys/class/watchdog/<watchdog>/pretimeout",
    ),
    (
        "access_cs0",
        "node_watchdog_access_cs0",
        "Value of /sys/class/watchdog/<watchdog>/access_cs0",
    ),
];

fn collect(dir: &Path, sink: &mut Sink) -> Result<(), CollectError> {
    for wd in list_dir(dir)? {
        let base = dir.join(&wd);
        let text = |f: &str| read_or_empty(&base.join(f));
        for (file, name, help) in VALUES {
            if let Some(v) = read_trimmed(&base.join(file))
                .ok()
                .flatten()
                .and_then(|s| s.parse::<i64>().ok())
            {
                sink.gauge(name, help, &[("name", &wd)], v as f64);
            }
        }
        sink.gauge(
            "node_watchdog_info",
            "Info of /sys/class/watchdog/<watchdog>",
            &[
                ("name", &wd),
                ("options", &text("options")),
                ("identity", &text("identity")),
                ("state", &text("state")),
                ("status", &text("status")),
                ("pretimeout_governor", &text("pretimeout_governor")),
            ],
            1.0,
        );
    }
    Ok(())
}
