//! `/proc/vmstat`: `node_vmstat_<field>` for the fields `node_exporter` exports by default.
//!
//! Its default `--collector.vmstat.fields` keeps paging, swapping, page
//! faults and `oom_kill` (the kernel's count of OOM kills since boot, Linux
//! 4.13+), which is what alert rules on OOM kills read.

use std::path::{Path, PathBuf};

use regex::Regex;

use crate::collector::{
    read_file, CollectError, Collector, CollectorSpec, Paths, Sink, Unavailable,
};
use crate::collectors::parse_field;

pub const SPEC: CollectorSpec = CollectorSpec::new("vmstat", build);

/// `node_exporter`'s default `--collector.vmstat.fields` (unanchored at the end, as there).
pub const DEFAULT_FIELDS: &str = r"^(oom_kill|pgpg|pswp|pg.*fault).*";

pub fn build(paths: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
    let fields = Regex::new(DEFAULT_FIELDS)
        .map_err(|e| Unavailable(format!("vmstat field pattern: {e}")))?;
    Ok(Box::new(VmstatCollector {
        path: paths.proc("vmstat"),
        fields,
    }))
}

/// Parses `name value` lines, all of them (as `node_exporter`, a bad value is
/// an error even in a field that would be filtered out).
pub fn parse(path: &Path, text: &str) -> Result<Vec<(String, f64)>, CollectError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut fields = line.split_whitespace();
        let Some(name) = fields.next() else { continue };
        let Some(value) = fields.next() else {
            return Err(CollectError::parse(
                path,
                i + 1,
                format!("{name}: missing value"),
            ));
        };
        out.push((name.to_string(), parse_field(path, i + 1, name, value)?));
    }
    Ok(out)
}

pub struct VmstatCollector {
    path: PathBuf,
    fields: Regex,
}

impl Collector for VmstatCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        let text = read_file(&self.path)?;
        for (name, value) in parse(&self.path, &text)? {
            if !self.fields.is_match(&name) {
                continue;
            }
            sink.untyped(
                &format!("node_vmstat_{name}"),
                &format!("/proc/vmstat information field {name}."),
                &[],
                value,
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

    const FIXTURE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/linux/proc/vmstat"
    ));

    #[test]
    fn parses_fixture_and_filters_like_node_exporter() {
        let v = parse(Path::new("vmstat"), FIXTURE).unwrap();
        assert!(v.iter().any(|(n, x)| n == "oom_kill" && *x == 0.0));
        let re = Regex::new(DEFAULT_FIELDS).unwrap();
        let kept: Vec<&str> = v
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| re.is_match(n))
            .collect();
        assert_eq!(
            kept,
            [
                "pgpgin",
                "pgpgout",
                "pswpin",
                "pswpout",
                "pgfault",
                "pgmajfault",
                "oom_kill"
            ]
        );
    }

    #[test]
    fn rejects_garbled_lines() {
        assert!(parse(Path::new("v"), "oom_kill\n").is_err());
        assert!(parse(Path::new("v"), "oom_kill x\n").is_err());
    }

    #[test]
    fn fuzz_no_panic() {
        testutil::assert_no_panic(FIXTURE, 9, |t| parse(Path::new("vmstat"), t));
    }
}
