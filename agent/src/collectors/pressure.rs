//! `/proc/pressure/{cpu,io,memory,irq}`: pressure stall information (PSI).
//!
//! As `node_exporter`'s `pressure` collector: the cumulative `total` (µs) of
//! `some` and `full` stalls, in seconds. CPU exports only `some` (its `full`
//! line is all zeros at system level); IRQ pressure (Linux 6.1+) has only `full`.
//! Hand-parsed: `procfs_core::pressure::parse_pressure_record` slices the
//! line at a fixed offset and panics on a short line.

use std::path::Path;

use crate::collector::{path_spec, CollectError, CollectorSpec, DirCollector, Sink};
use crate::collectors::parse_field;

pub const SPEC: CollectorSpec =
    path_spec!("pressure", DirCollector::boxed, proc, "pressure", collect);

/// The `total=` of the `some` and `full` lines, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Psi {
    pub some: Option<u64>,
    pub full: Option<u64>,
}

/// Parses one PSI file: lines `some|full avg10=… avg60=… avg300=… total=N`;
/// other line kinds are skipped.
pub fn parse(path: &Path, text: &str) -> Result<Psi, CollectError> {
    let mut psi = Psi::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let mut fields = line.split_whitespace();
        let slot = match fields.next() {
            Some("some") => &mut psi.some,
            Some("full") => &mut psi.full,
            // Empty lines, and a kind a future kernel adds (skipped, as procfs does).
            _ => continue,
        };
        let total = fields.find_map(|f| f.strip_prefix("total="));
        let Some(total) = total else {
            return Err(CollectError::parse(path, n, "missing total="));
        };
        *slot = Some(parse_field(path, n, "total", total)?);
    }
    Ok(psi)
}

/// Microseconds to seconds in `node_exporter`'s order of operations
/// (`float64(total)/1000.0/1000.0`), so values match to the last bit.
fn seconds(us: u64) -> f64 {
    us as f64 / 1000.0 / 1000.0
}

/// Per PSI file, the HELP of `node_pressure_<file>_waiting_seconds_total`
/// (from `some`) and of `node_pressure_<file>_stalled_seconds_total` (from
/// `full`), where `node_exporter` writes them.
const RESOURCES: [(&str, Option<&str>, Option<&str>); 4] = [
    (
        "cpu",
        Some("Total time in seconds that processes have waited for CPU time"),
        None,
    ),
    (
        "io",
        Some("Total time in seconds that processes have waited due to IO congestion"),
        Some("Total time in seconds no process could make progress due to IO congestion"),
    ),
    (
        "memory",
        Some("Total time in seconds that processes have waited for memory"),
        Some("Total time in seconds no process could make progress due to memory congestion"),
    ),
    (
        "irq",
        None,
        Some("Total time in seconds no process could make progress due to IRQ congestion"),
    ),
];

fn collect(dir: &Path, sink: &mut Sink) -> Result<(), CollectError> {
    for (res, waiting, stalled) in RESOURCES {
        let path = dir.join(res);
        let text = match crate::collector::read_cached(&path) {
            Ok(t) => t,
            // No PSI in this kernel (< 4.20, or < 6.1 for irq, or CONFIG_PSI=n): no data.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            // Built in but disabled (`psi=0`): reading fails with EOPNOTSUPP.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(()),
            Err(e) => return Err(CollectError::io(&path, e)),
        };
        let psi = parse(&path, &text)?;
        // node_exporter treats a missing `some` (or `full`, where it reads
        // it) as no data and stops there.
        if waiting.is_some() && psi.some.is_none() || stalled.is_some() && psi.full.is_none() {
            return Ok(());
        }
        for (kind, help, us) in [
            ("waiting", waiting, psi.some),
            ("stalled", stalled, psi.full),
        ] {
            if let (Some(help), Some(us)) = (help, us) {
                sink.counter(
                    &format!("node_pressure_{res}_{kind}_seconds_total"),
                    help,
                    &[],
                    seconds(us),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    const DIR: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/linux/proc/pressure"
    );

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{DIR}/{name}")).unwrap()
    }

    #[test]
    fn parses_fixtures() {
        let p = |n: &str| parse(Path::new(n), &fixture(n)).unwrap();
        assert_eq!(
            p("cpu"),
            Psi {
                some: Some(14_036_781),
                full: Some(0)
            }
        );
        assert_eq!(
            p("io"),
            Psi {
                some: Some(159_886_802),
                full: Some(159_229_614)
            }
        );
        // irq has only a `full` line (and no trailing newline).
        assert_eq!(
            p("irq"),
            Psi {
                some: None,
                full: Some(8494)
            }
        );
        assert!((seconds(14_036_781) - 14.036_781).abs() < 1e-12);
    }

    #[test]
    fn rejects_garbled_lines() {
        assert!(parse(Path::new("x"), "some avg10=0.00\n").is_err());
        assert_eq!(
            parse(Path::new("x"), "half total=1\n").unwrap(),
            Psi::default()
        );
        assert!(parse(Path::new("x"), "some total=-1\n").is_err());
        assert!(parse(Path::new("x"), "some").is_err());
    }

    #[test]
    fn fuzz_no_panic() {
        for (seed, name) in [(4, "cpu"), (5, "io"), (6, "memory"), (7, "irq")] {
            testutil::assert_no_panic(&fixture(name), seed, |t| parse(Path::new(name), t));
        }
    }
}
