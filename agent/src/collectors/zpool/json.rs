//! `zpool status -j -p` (JSON, OpenZFS 2.3+, format in `man/man8/zpool-status.8`).

use super::text::{parse_count, parse_zpool_time};
use super::{PoolStatus, Scan, ScanFunction, ScanState, Vdev};

/// A JSON number or a string holding one (`zpool status -j` prints counts as
/// strings unless `--json-int`).
pub(super) fn json_u64(v: Option<&serde_json::Value>) -> Option<u64> {
    match v? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => parse_count(s),
        _ => None,
    }
}

pub(super) fn json_str(v: Option<&serde_json::Value>) -> Option<&str> {
    v?.as_str()
}

/// Walks a JSON vdev tree. `root` is `Some((pool, state))` for the main
/// tree, whose top entry is the pool's root vdev: it is named after the pool,
/// takes the pool state (the JSON root has none), and its children are
/// named without it, as in the text form.
pub(super) fn json_vdevs(
    prefix: &str,
    root: Option<(&str, &str)>,
    map: &serde_json::Map<String, serde_json::Value>,
    out: &mut Vec<Vdev>,
) {
    for (key, v) in map {
        let name = json_str(v.get("name")).unwrap_or(key);
        let is_root = root.is_some_and(|(pool, _)| pool == name);
        let path = if is_root || prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        let state = json_str(v.get("state")).or(root.filter(|_| is_root).map(|(_, s)| s));
        if let Some(state) = state {
            out.push(Vdev {
                path: path.clone(),
                state: state.to_string(),
                read: json_u64(v.get("read_errors")),
                write: json_u64(v.get("write_errors")),
                checksum: json_u64(v.get("checksum_errors")),
            });
        }
        if let Some(children) = v.get("vdevs").and_then(|c| c.as_object()) {
            json_vdevs(if is_root { "" } else { &path }, None, children, out);
        }
    }
}

pub(super) fn json_scan(v: &serde_json::Value) -> Scan {
    let function = match json_str(v.get("function"))
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        Some("SCRUB") => ScanFunction::Scrub,
        Some("RESILVER") => ScanFunction::Resilver,
        Some("NONE") | None => ScanFunction::None,
        Some(_) => ScanFunction::Unknown,
    };
    let state = match json_str(v.get("state"))
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        Some("SCANNING") => {
            if json_u64(v.get("scrub_pause")).is_some_and(|p| p > 0) {
                ScanState::Paused
            } else {
                ScanState::InProgress
            }
        }
        Some("FINISHED") => ScanState::Finished,
        Some("CANCELED") => ScanState::Canceled,
        Some("NONE") | None => ScanState::None,
        Some(_) => ScanState::Unknown,
    };
    let progress = if state == ScanState::InProgress {
        match (json_u64(v.get("issued")), json_u64(v.get("to_examine"))) {
            (Some(done), Some(total)) if total > 0 => Some((done as f64 / total as f64).min(1.0)),
            _ => None,
        }
    } else {
        None
    };
    let (end_time, end_epoch) = if state == ScanState::Finished {
        match v.get("end_time") {
            Some(serde_json::Value::Number(n)) => (None, n.as_i64()),
            Some(serde_json::Value::String(s)) => match s.parse::<i64>() {
                Ok(e) => (None, Some(e)),
                Err(_) => (parse_zpool_time(s), None),
            },
            _ => (None, None),
        }
    } else {
        (None, None)
    };
    Scan {
        function,
        state,
        progress,
        errors: if state == ScanState::Finished {
            json_u64(v.get("errors"))
        } else {
            None
        },
        end_time,
        end_epoch,
    }
}

/// Parses `zpool status -j` (OpenZFS 2.3+, `output_version` 0.1). `Err` when
/// the text is not JSON of that shape, so the caller can fall back to text.
pub fn parse_status_json(text: &str) -> Result<Vec<PoolStatus>, String> {
    let root: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let pools = root
        .get("pools")
        .and_then(|p| p.as_object())
        .ok_or("no \"pools\" object")?;
    let mut out = Vec::new();
    for (key, p) in pools {
        let name = json_str(p.get("name")).unwrap_or(key).to_string();
        let Some(state) = json_str(p.get("state")) else {
            continue;
        };
        let mut vdevs = Vec::new();
        if let Some(tree) = p.get("vdevs").and_then(|v| v.as_object()) {
            json_vdevs("", Some((&name, state)), tree, &mut vdevs);
        }
        // Auxiliary classes print as their own trees, like the text sections.
        for class in ["logs", "dedup", "special", "l2cache", "spares"] {
            if let Some(tree) = p.get(class).and_then(|v| v.as_object()) {
                json_vdevs(class, None, tree, &mut vdevs);
            }
        }
        out.push(PoolStatus {
            name,
            state: state.to_string(),
            scan: p.get("scan_stats").map(json_scan),
            vdevs,
            data_errors: json_u64(p.get("error_count")),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
