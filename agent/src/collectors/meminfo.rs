//! `/proc/meminfo`: `node_memory_<Field>_bytes` (and unit-less `node_memory_HugePages_*`).
//!
//! Every field the kernel reports is exported under `node_exporter`'s naming
//! rule (`Active(anon)` → `Active_anon`; a `kB` unit → ×1024 and `_bytes`).
//! Hand-parsed rather than through `procfs::Meminfo`, whose fixed struct drops
//! fields it does not know (newer kernels keep adding some).

use std::collections::HashSet;
use std::path::Path;

use crate::collector::{path_spec, CollectError, CollectorSpec, FileCollector, Sink};
use crate::collectors::parse_field;

pub const SPEC: CollectorSpec =
    path_spec!("meminfo", FileCollector::required, proc, "meminfo", write);

/// Parses `/proc/meminfo` into `(metric suffix, value)` pairs in file order,
/// e.g. `("MemTotal_bytes", 16_042_172_416.0)`. A repeated field keeps its
/// first value.
pub fn parse(path: &Path, text: &str) -> Result<Vec<(String, f64)>, CollectError> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let parts: Vec<&str> = line.split_whitespace().collect();
        let Some((first, rest)) = parts.split_first() else {
            continue;
        };
        let Some(key) = first.strip_suffix(':') else {
            return Err(CollectError::parse(path, n, "field name without ':'"));
        };
        // node_exporter's regexp `\((.*)\)` → `_$1`.
        let mut key = match (key.find('('), key.rfind(')')) {
            (Some(open), Some(close)) if open < close => {
                format!(
                    "{}_{}{}",
                    &key[..open],
                    &key[open + 1..close],
                    &key[close + 1..]
                )
            }
            _ => key.to_string(),
        };
        let value: f64 = match rest {
            [v] => parse_field::<u64>(path, n, &key, v)? as f64,
            // The only unit the kernel prints is kB (KiB).
            [v, _unit] => {
                let v = parse_field::<u64>(path, n, &key, v)? as f64 * 1024.0;
                key.push_str("_bytes");
                v
            }
            _ => return Err(CollectError::parse(path, n, "expected `Name: value [kB]`")),
        };
        if seen.insert(key.clone()) {
            out.push((key, value));
        }
    }
    Ok(out)
}

/// Writes what one read of the file holds.
fn write(path: &Path, text: &str, sink: &mut Sink) -> Result<(), CollectError> {
    for (key, value) in parse(path, text)? {
        let name = format!("node_memory_{key}");
        let help = format!("Memory information field {key}.");
        // node_exporter types a field as a counter only when it ends in `_total`.
        if key.ends_with("_total") {
            sink.counter(&name, &help, &[], value);
        } else {
            sink.gauge(&name, &help, &[], value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    const FIXTURE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/linux/proc/meminfo"
    ));

    #[test]
    fn parses_fixture() {
        let m = parse(Path::new("meminfo"), FIXTURE).unwrap();
        let get = |k: &str| m.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        assert_eq!(get("MemTotal_bytes"), Some(3_742_148.0 * 1024.0));
        assert!(get("Active_anon_bytes").is_some());
        assert!(get("Inactive_file_bytes").is_some());
        assert_eq!(get("HugePages_Total"), Some(0.0));
        assert!(get("Active(anon)_bytes").is_none());
    }

    #[test]
    fn rejects_garbled_lines() {
        assert!(parse(Path::new("m"), "MemTotal 5 kB\n").is_err());
        assert!(parse(Path::new("m"), "MemTotal: x kB\n").is_err());
        assert!(parse(Path::new("m"), "MemTotal: 1 kB extra\n").is_err());
        assert!(parse(Path::new("m"), "\n\n").unwrap().is_empty());
    }

    #[test]
    fn fuzz_no_panic() {
        testutil::assert_no_panic(FIXTURE, 3, |t| parse(Path::new("meminfo"), t));
    }
}
