//! `/proc/sys/fs/file-nr`: `node_filefd_allocated`, `node_filefd_maximum`
//! (`node_exporter`'s `filefd` collector; node-mixin's `NodeFileDescriptorLimit`).

use std::path::Path;

use crate::collector::{path_spec, CollectError, CollectorSpec, FileCollector, Sink};
use crate::collectors::parse_field;

pub const SPEC: CollectorSpec = path_spec!(
    "filefd",
    FileCollector::required,
    proc,
    "sys/fs/file-nr",
    write
);

/// `allocated unused maximum`, tab-separated: returns `(allocated, maximum)`.
pub fn parse(path: &Path, text: &str) -> Result<(f64, f64), CollectError> {
    let f: Vec<&str> = text.split_whitespace().collect();
    let [allocated, _, maximum, ..] = f.as_slice() else {
        return Err(CollectError::parse(path, 1, "expected 3 fields"));
    };
    Ok((
        parse_field(path, 1, "allocated", allocated)?,
        parse_field(path, 1, "maximum", maximum)?,
    ))
}

/// Writes what one read of the file holds.
fn write(path: &Path, text: &str, sink: &mut Sink) -> Result<(), CollectError> {
    let (allocated, maximum) = parse(path, text)?;
    sink.gauge(
        "node_filefd_allocated",
        "File descriptor statistics: allocated.",
        &[],
        allocated,
    );
    sink.gauge(
        "node_filefd_maximum",
        "File descriptor statistics: maximum.",
        &[],
        maximum,
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "values compared are exact")]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    #[test]
    fn parses_and_rejects() {
        let p = Path::new("file-nr");
        assert_eq!(
            parse(p, "1024\t0\t1631329\n").unwrap(),
            (1024.0, 1_631_329.0)
        );
        assert!(parse(p, "1024\t0").is_err());
        assert!(parse(p, "x\t0\t1").is_err());
        testutil::assert_no_panic("1024\t0\t1631329\n", 30, |t| parse(p, t));
    }
}
