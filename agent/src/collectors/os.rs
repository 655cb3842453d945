//! `/etc/os-release` (else `/usr/lib/os-release`) below the rootfs:
//! `node_os_info{...}` and `node_os_version{id,id_like,name}`.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::collector::{CollectError, Collector, CollectorSpec, Paths, Sink, Unavailable};
use crate::collectors::read_optional;

pub const SPEC: CollectorSpec = CollectorSpec::new("os", build);

pub fn build(paths: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
    Ok(Box::new(OsCollector {
        files: vec![
            paths.root("/etc/os-release"),
            paths.root("/usr/lib/os-release"),
        ],
    }))
}

/// The `KEY=value` pairs of an os-release file (shell-style quoting and
/// backslash escapes inside double quotes, comments and blank lines
/// skipped). Lines that are not assignments are ignored, as systemd does.
#[must_use]
pub fn parse(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        let v = if let Some(inner) = v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            let mut s = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        s.push(n);
                    }
                } else {
                    s.push(c);
                }
            }
            s
        } else if let Some(inner) = v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
            inner.to_string()
        } else {
            v.to_string()
        };
        out.insert(k.trim().to_string(), v);
    }
    out
}

/// The `major.minor` part of `VERSION_ID` (`20.04`, `12`), if it starts with one.
#[must_use]
pub fn version(id: &str) -> Option<f64> {
    let end = id.find(|c: char| !c.is_ascii_digit()).unwrap_or(id.len());
    if end == 0 {
        return None;
    }
    let rest = &id[end..];
    let minor = rest
        .strip_prefix('.')
        .map(|r| &r[..r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len())]);
    let s = match minor {
        Some(m) if !m.is_empty() => format!("{}.{m}", &id[..end]),
        _ => id[..end].to_string(),
    };
    s.parse().ok()
}

pub struct OsCollector {
    files: Vec<PathBuf>,
}

impl Collector for OsCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        let mut text = None;
        for f in &self.files {
            if let Some(t) = read_optional(f)? {
                text = Some(t);
                break;
            }
        }
        let Some(text) = text else {
            return Ok(());
        };
        let env = parse(&text);
        let get = |k: &str| env.get(k).map_or("", String::as_str);
        sink.gauge(
            "node_os_info",
            "A metric with a constant '1' value labeled by build_id, id, id_like, image_id, image_version, name, pretty_name, variant, variant_id, version, version_codename, version_id.",
            &[
                ("build_id", get("BUILD_ID")),
                ("id", get("ID")),
                ("id_like", get("ID_LIKE")),
                ("image_id", get("IMAGE_ID")),
                ("image_version", get("IMAGE_VERSION")),
                ("name", get("NAME")),
                ("pretty_name", get("PRETTY_NAME")),
                ("variant", get("VARIANT")),
                ("variant_id", get("VARIANT_ID")),
                ("version", get("VERSION")),
                ("version_codename", get("VERSION_CODENAME")),
                ("version_id", get("VERSION_ID")),
            ],
            1.0,
        );
        if let Some(v) = version(get("VERSION_ID")) {
            sink.gauge(
                "node_os_version",
                "Metric containing the major.minor part of the OS version.",
                &[
                    ("id", get("ID")),
                    ("id_like", get("ID_LIKE")),
                    ("name", get("NAME")),
                ],
                v,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "values compared are exact")]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    #[test]
    fn parses_quoting_and_versions() {
        let e = parse("# c\nNAME=\"Talos\"\nID=talos\nVERSION_ID=v1.10.3\nPRETTY_NAME='Talos (v1.10.3)'\nX=\"a \\\"b\\\"\"\njunk\n");
        assert_eq!(e["NAME"], "Talos");
        assert_eq!(e["PRETTY_NAME"], "Talos (v1.10.3)");
        assert_eq!(e["X"], "a \"b\"");
        assert_eq!(
            version("v1.10.3"),
            None,
            "Talos' VERSION_ID has no leading number"
        );
        assert_eq!(version("20.04"), Some(20.04));
        assert_eq!(version("12"), Some(12.0));
        assert_eq!(version("9.3.2"), Some(9.3));
        testutil::assert_no_panic("NAME=\"Ubuntu\"\nVERSION_ID=\"20.04\"\n", 35, |t| {
            let e = parse(t);
            Ok::<_, ()>(version(e.get("VERSION_ID").map_or("", String::as_str)))
        });
    }
}
