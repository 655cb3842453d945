//! Load averages on FreeBSD: `sysinfo` reads them with
//! `getloadavg(3)` (the `vm.loadavg` sysctl node_exporter reads, scaled by
//! its `fscale`).

#[cfg(test)]
use super::write;

/// The averages from `sysinfo`, which says why when the call fails.
pub fn read() -> Result<[f64; 3], String> {
    sysinfo::System::load_average()
        .map(|l| [l.one, l.five, l.fifteen])
        .map_err(|e| e.to_string())
}

/// Registry entry: reads the load averages each collection.
#[cfg(target_os = "freebsd")]
pub const SPEC: crate::collector::CollectorSpec =
    crate::collector::stateless_spec!("loadavg", |sink| {
        let load = read().map_err(|e| crate::collector::CollectError::other("getloadavg", e))?;
        super::write(sink, load);
        Ok(())
    });

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::Sink;
    use crate::collectors::testutil::value;

    #[test]
    fn names_and_values() {
        let mut sink = Sink::new();
        write(&mut sink, [0.21, 0.37, 0.39]);
        assert_eq!(value(&sink, "node_load1", &[]), Some(0.21));
        assert_eq!(value(&sink, "node_load5", &[]), Some(0.37));
        assert_eq!(value(&sink, "node_load15", &[]), Some(0.39));
        assert_eq!(sink.families["node_load15"].help, "15m load average.");
        assert_eq!(
            sink.families["node_load1"].kind,
            crate::collector::MetricKind::Gauge
        );
        assert_eq!(sink.samples.len(), 3);
    }

    /// The same `sysinfo` call the FreeBSD collector makes, on the test host.
    #[test]
    fn reads_the_host() {
        let load = read().unwrap_or_else(|e| panic!("load_average: {e}"));
        assert!(load.iter().all(|l| l.is_finite() && *l >= 0.0), "{load:?}");
    }
}
