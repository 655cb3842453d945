//! CPU time per CPU and mode on FreeBSD, from `kern.cp_times`, as
//! node_exporter's `collector/cpu_freebsd.go`.
//!
//! `kern.cp_times` is an array of `long`, `CPUSTATES` (5) tick counters per
//! CPU in the order `CP_USER, CP_NICE, CP_SYS, CP_INTR, CP_IDLE`
//! (`sys/sys/resource.h`). Ticks are counted at `stathz`, the fourth `int`
//! of `struct clockinfo` (`kern.clockrate`, `sys/sys/time.h`).
//!
//! Not through `sysinfo`, which the agent uses for load and host facts:
//! it reports each CPU's usage as a percentage since its last refresh, not
//! the cumulative seconds per mode a Prometheus counter needs.

use crate::collector::Sink;

/// Mode names in `CP_*` order, as node_exporter names them.
pub const MODES: [&str; 5] = ["user", "nice", "system", "interrupt", "idle"];

/// Parses `sysctl kern.cp_times` output (`kern.cp_times: 1 2 3 …`, or the
/// bare numbers of `sysctl -n`).
#[must_use]
pub fn parse_cp_times(text: &str) -> Vec<i64> {
    let values = text.split_once(':').map_or(text, |(_, v)| v);
    values
        .split_whitespace()
        .map_while(|v| v.parse::<i64>().ok())
        .collect()
}

/// Parses `sysctl kern.clockrate` output
/// (`kern.clockrate: { hz = 1000, tick = 1000, profhz = 8128, stathz = 127 }`)
/// for `stathz`.
#[must_use]
pub fn parse_stathz(text: &str) -> Option<u32> {
    text.split([',', '{', '}'])
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.trim() == "stathz")
        .and_then(|(_, v)| v.trim().parse().ok())
        .filter(|hz| *hz > 0)
}

/// Writes `node_cpu_seconds_total` for every complete group of five.
pub fn write(sink: &mut Sink, cp_times: &[i64], stathz: u32) {
    if stathz == 0 {
        return;
    }
    for (cpu, ticks) in cp_times.chunks_exact(MODES.len()).enumerate() {
        let seconds = ticks.iter().map(|t| (*t).max(0) as f64 / f64::from(stathz));
        super::write_seconds(sink, &cpu.to_string(), MODES.into_iter().zip(seconds));
    }
}

#[cfg(target_os = "freebsd")]
pub use imp::{CpuCollector, SPEC};

#[cfg(target_os = "freebsd")]
mod imp {
    use crate::collector::{CollectError, Collector, CollectorSpec, Paths, Sink, Unavailable};
    use crate::freebsd::sysctl;

    pub const SPEC: CollectorSpec = CollectorSpec::new("cpu", build);

    fn build(_: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
        // stathz does not change at run time; read it once.
        let clock = sysctl::read_int_array("kern.clockrate")
            .map_err(|e| Unavailable(format!("kern.clockrate: {e}")))?;
        match clock.get(3) {
            Some(hz) if *hz > 0 => Ok(Box::new(CpuCollector { stathz: *hz as u32 })),
            _ => Err(Unavailable("kern.clockrate: no stathz".into())),
        }
    }

    /// Reads `kern.cp_times` each collection.
    pub struct CpuCollector {
        stathz: u32,
    }

    impl Collector for CpuCollector {
        fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
            let times = sysctl::read_long_array("kern.cp_times")
                .map_err(|e| CollectError::other("kern.cp_times", e))?;
            super::write(sink, &times, self.stathz);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil::{fuzz_inputs, value};

    /// Two CPUs, as `sysctl kern.cp_times kern.clockrate` prints them on FreeBSD 14.
    const CP_TIMES: &str = "kern.cp_times: 12700 254 25400 1270 1270000 6350 0 12700 635 1300000";
    const CLOCKRATE: &str =
        "kern.clockrate: { hz = 1000, tick = 1000, profhz = 8128, stathz = 127 }";

    #[test]
    fn seconds_per_cpu_and_mode() {
        let times = parse_cp_times(CP_TIMES);
        assert_eq!(times.len(), 10);
        let hz = parse_stathz(CLOCKRATE).unwrap_or(0);
        assert_eq!(hz, 127);
        let mut sink = Sink::new();
        write(&mut sink, &times, hz);
        assert_eq!(sink.samples.len(), 10);
        assert_eq!(
            value(
                &sink,
                "node_cpu_seconds_total",
                &[("cpu", "0"), ("mode", "user")]
            ),
            Some(100.0)
        );
        assert_eq!(
            value(
                &sink,
                "node_cpu_seconds_total",
                &[("cpu", "0"), ("mode", "nice")]
            ),
            Some(2.0)
        );
        assert_eq!(
            value(
                &sink,
                "node_cpu_seconds_total",
                &[("cpu", "1"), ("mode", "user")]
            ),
            Some(50.0)
        );
        assert_eq!(
            value(
                &sink,
                "node_cpu_seconds_total",
                &[("cpu", "1"), ("mode", "interrupt")]
            ),
            Some(5.0)
        );
        assert_eq!(parse_stathz("kern.clockrate: { hz = 1000 }"), None);
    }

    #[test]
    fn never_panics() {
        for input in fuzz_inputs(&[CP_TIMES.to_string(), CLOCKRATE.to_string()], 0xc9) {
            let hz = parse_stathz(&input).unwrap_or(1);
            write(&mut Sink::new(), &parse_cp_times(&input), hz);
        }
    }
}
