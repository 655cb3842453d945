//! `/proc/sys/kernel/random/{entropy_avail,poolsize}`:
//! `node_entropy_available_bits`, `node_entropy_pool_size_bits`.

use std::path::{Path, PathBuf};

use crate::collector::{
    read_file, CollectError, Collector, CollectorSpec, Paths, Sink, Unavailable,
};
use crate::collectors::parse_field;

pub const SPEC: CollectorSpec = CollectorSpec::new("entropy", build);

pub fn build(paths: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
    Ok(Box::new(EntropyCollector {
        avail: paths.proc("sys/kernel/random/entropy_avail"),
        pool: paths.proc("sys/kernel/random/poolsize"),
    }))
}

/// One integer in a file of its own.
pub fn parse(path: &Path, text: &str) -> Result<f64, CollectError> {
    let v: u64 = parse_field(path, 1, "value", text.trim())?;
    Ok(v as f64)
}

pub struct EntropyCollector {
    avail: PathBuf,
    pool: PathBuf,
}

impl Collector for EntropyCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        let avail = parse(&self.avail, &read_file(&self.avail)?)?;
        sink.gauge(
            "node_entropy_available_bits",
            "Bits of available entropy.",
            &[],
            avail,
        );
        let pool = parse(&self.pool, &read_file(&self.pool)?)?;
        sink.gauge(
            "node_entropy_pool_size_bits",
            "Bits of entropy pool.",
            &[],
            pool,
        );
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "values compared are exact")]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let p = Path::new("entropy_avail");
        assert_eq!(parse(p, "1337\n").unwrap(), 1337.0);
        assert!(parse(p, "").is_err());
        assert!(parse(p, "-1").is_err());
    }
}
