//! Memory controller errors from `/sys/devices/system/edac/mc/mc*`:
//! `node_edac_{,un}correctable_errors_total{controller}`, per csrow and per
//! channel, as `node_exporter`'s `edac` collector.

use std::path::Path;

use crate::collector::{path_spec, CollectError, CollectorSpec, DirCollector, Sink};
use crate::collectors::{list_dir, read_trimmed};

pub const SPEC: CollectorSpec = path_spec!(
    "edac",
    DirCollector::boxed,
    sys,
    "devices/system/edac/mc",
    collect
);

fn numbered<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    name.strip_prefix(prefix)
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn count(p: &Path) -> Result<f64, CollectError> {
    let s =
        read_trimmed(p)?.ok_or_else(|| CollectError::Other(format!("{}: missing", p.display())))?;
    s.parse::<u64>()
        .map(|v| v as f64)
        .map_err(|_| CollectError::parse(p, 1, format!("not a count: {s:?}")))
}

/// The two kinds of error, with their files' prefix.
const KINDS: [(&str, &str); 2] = [("correctable", "ce"), ("uncorrectable", "ue")];

/// `node_edac_csrow_<kind>_errors_total` of one csrow of controller `c`.
fn csrow(sink: &mut Sink, kind: &str, c: &str, row: &str, value: f64) {
    sink.counter(
        &format!("node_edac_csrow_{kind}_errors_total"),
        &format!("Total {kind} memory errors for this csrow."),
        &[("controller", c), ("csrow", row)],
        value,
    );
}

fn collect(dir: &Path, sink: &mut Sink) -> Result<(), CollectError> {
    for mc in list_dir(dir)? {
        let Some(c) = numbered(&mc, "mc") else {
            continue;
        };
        let base = dir.join(&mc);
        for (kind, file) in KINDS {
            sink.counter(
                &format!("node_edac_{kind}_errors_total"),
                &format!("Total {kind} memory errors."),
                &[("controller", c)],
                count(&base.join(format!("{file}_count")))?,
            );
            csrow(
                sink,
                kind,
                c,
                "unknown",
                count(&base.join(format!("{file}_noinfo_count")))?,
            );
        }
        for row in list_dir(&base)? {
            let Some(r) = numbered(&row, "csrow") else {
                continue;
            };
            let rb = base.join(&row);
            for (kind, file) in KINDS {
                csrow(sink, kind, c, r, count(&rb.join(format!("{file}_count")))?);
            }
            for f in list_dir(&rb)? {
                let Some(ch) = f
                    .strip_prefix("ch")
                    .and_then(|s| s.strip_suffix("_ce_count"))
                    .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                else {
                    continue;
                };
                // As node_exporter: `mc0csrow0channel0` → `mc0_csrow0_channel0`.
                let label = read_trimmed(&rb.join(format!("ch{ch}_dimm_label")))
                    .ok()
                    .flatten()
                    .map_or_else(
                        || "unknown".to_string(),
                        |l| {
                            l.replace('#', "")
                                .replace("csrow", "_csrow")
                                .replace("channel", "_channel")
                        },
                    );
                let l = [
                    ("controller", c),
                    ("csrow", r),
                    ("channel", ch),
                    ("dimm_label", label.as_str()),
                ];
                sink.counter(
                    "node_edac_channel_correctable_errors_total",
                    "Total correctable memory errors for this channel.",
                    &l,
                    count(&rb.join(&f))?,
                );
                if let Ok(v) = count(&rb.join(format!("ch{ch}_ue_count"))) {
                    sink.counter(
                        "node_edac_channel_uncorrectable_errors_total",
                        "Total uncorrectable memory errors for this channel.",
                        &l,
                        v,
                    );
                }
            }
        }
    }
    Ok(())
}
