//! Load averages on Linux, from `/proc/loadavg`.
//!
//! Hand-parsed: `procfs::LoadAverage` holds the averages as `f32`, which would
//! turn `0.21` into `0.2099999934…`; `node_exporter` parses them as `float64`.

use std::path::Path;

use crate::collector::{path_spec, CollectError, CollectorSpec, FileCollector, Sink};
use crate::collectors::parse_field;

pub const SPEC: CollectorSpec =
    path_spec!("loadavg", FileCollector::required, proc, "loadavg", write);

/// Parses the first three fields (1, 5 and 15 minute averages), as `node_exporter`'s `parseLoad`.
pub fn parse(path: &Path, text: &str) -> Result<[f64; 3], CollectError> {
    let mut fields = text.split_whitespace();
    let mut loads = [0.0; 3];
    for (slot, what) in loads.iter_mut().zip(["load1", "load5", "load15"]) {
        let Some(f) = fields.next() else {
            return Err(CollectError::parse(path, 1, format!("{what}: missing")));
        };
        *slot = parse_field(path, 1, what, f)?;
    }
    Ok(loads)
}

/// Writes what one read of the file holds.
fn write(path: &Path, text: &str, sink: &mut Sink) -> Result<(), CollectError> {
    super::write(sink, parse(path, text)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    const FIXTURE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/linux/proc/loadavg"
    ));

    #[test]
    fn parses_fixture() {
        let l = parse(Path::new("loadavg"), FIXTURE).unwrap();
        for (got, want) in l.iter().zip([0.21, 0.37, 0.39]) {
            assert!((got - want).abs() < 1e-12, "{got} != {want}");
        }
    }

    #[test]
    fn rejects_short_or_garbled() {
        assert!(parse(Path::new("loadavg"), "0.1 0.2").is_err());
        assert!(parse(Path::new("loadavg"), "0.1 x 0.3").is_err());
        assert!(parse(Path::new("loadavg"), "").is_err());
    }

    #[test]
    fn fuzz_no_panic() {
        testutil::assert_no_panic(FIXTURE, 2, |t| parse(Path::new("loadavg"), t));
    }
}
