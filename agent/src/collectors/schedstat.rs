//! `/proc/schedstat`: `node_schedstat_{running,waiting}_seconds_total{cpu}`
//! and `node_schedstat_timeslices_total{cpu}`.

use std::path::Path;

use crate::collector::{path_spec, CollectError, CollectorSpec, FileCollector, Sink};
use crate::collectors::parse_field;

// Kernels without CONFIG_SCHEDSTATS have no file.
pub const SPEC: CollectorSpec = path_spec!(
    "schedstat",
    FileCollector::optional,
    proc,
    "schedstat",
    write
);

/// `(cpu, running ns, waiting ns, timeslices)` from the `cpuN` lines
/// (columns 7, 8 and 9 after the name).
pub fn parse(path: &Path, text: &str) -> Result<Vec<(String, u64, u64, u64)>, CollectError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some(rest) = line.strip_prefix("cpu") else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() < 10 {
            return Err(CollectError::parse(
                path,
                i + 1,
                format!("{} fields after cpu, expected 10", f.len()),
            ));
        }
        let cpu: u32 = parse_field(path, i + 1, "cpu number", f[0])?;
        out.push((
            cpu.to_string(),
            parse_field(path, i + 1, "running", f[7])?,
            parse_field(path, i + 1, "waiting", f[8])?,
            parse_field(path, i + 1, "timeslices", f[9])?,
        ));
    }
    Ok(out)
}

/// Writes what one read of the file holds.
fn write(path: &Path, text: &str, sink: &mut Sink) -> Result<(), CollectError> {
    for (cpu, running, waiting, slices) in parse(path, text)? {
        let l = [("cpu", cpu.as_str())];
        sink.counter(
            "node_schedstat_running_seconds_total",
            "Number of seconds CPU spent running a process.",
            &l,
            running as f64 / 1e9,
        );
        sink.counter(
            "node_schedstat_waiting_seconds_total",
            "Number of seconds spent by processing waiting for this CPU.",
            &l,
            waiting as f64 / 1e9,
        );
        sink.counter(
            "node_schedstat_timeslices_total",
            "Number of timeslices executed by CPU.",
            &l,
            slices as f64,
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "values compared are exact")]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    const T: &str = "version 15\ntimestamp 15819019232\ncpu0 498494191 0 3533438552 2553969831 3853684107 2465731542 2045936778163039 343796328169361 4767485306\ndomain0 00000000,00000003 212499247 210112015\n";

    #[test]
    fn parses_cpu_lines_only() {
        let p = Path::new("schedstat");
        let v = parse(p, T).unwrap();
        assert_eq!(
            v,
            [(
                "0".to_string(),
                2_045_936_778_163_039,
                343_796_328_169_361,
                4_767_485_306
            )]
        );
        assert!(parse(p, "cpu0 1 2 3\n").is_err());
        assert!(parse(p, "cpux 1 2 3 4 5 6 7 8 9\n").is_err());
        testutil::assert_no_panic(T, 34, |t| parse(p, t));
    }
}
