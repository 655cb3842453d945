//! `adjtimex(2)`: `node_timex_*`, the kernel's clock discipline (offset,
//! frequency, error estimates, PPS, sync status), as `node_exporter`'s `timex`
//! collector; node-mixin's `NodeClockNotSynchronising` and
//! `NodeClockSkewDetected` read it.

use crate::collector::{CollectError, Collector, CollectorSpec, Paths, Sink, Unavailable};

pub const SPEC: CollectorSpec = CollectorSpec::new("timex", build);

pub fn build(_: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
    Ok(Box::new(TimexCollector))
}

/// The fields of `struct timex` that are exported, plus the call's return value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timex {
    pub state: i32,
    pub status: i64,
    pub offset: i64,
    pub freq: i64,
    pub maxerror: i64,
    pub esterror: i64,
    pub constant: i64,
    pub tick: i64,
    pub ppsfreq: i64,
    pub jitter: i64,
    pub shift: i64,
    pub stabil: i64,
    pub jitcnt: i64,
    pub calcnt: i64,
    pub errcnt: i64,
    pub stbcnt: i64,
    pub tai: i64,
}

/// Reads the kernel's clock state without changing it (`modes = 0`).
#[allow(unsafe_code, reason = "adjtimex(2) has no safe wrapper in libc or nix")]
pub fn read() -> std::io::Result<Timex> {
    // SAFETY: an all-zero `struct timex` is valid (modes 0: read only), and
    // the pointer is to a live, exclusively borrowed local for the call.
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&raw mut t) };
    if state < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Timex {
        state,
        status: i64::from(t.status),
        offset: t.offset,
        freq: t.freq,
        maxerror: t.maxerror,
        esterror: t.esterror,
        constant: t.constant,
        tick: t.tick,
        ppsfreq: t.ppsfreq,
        jitter: t.jitter,
        shift: i64::from(t.shift),
        stabil: t.stabil,
        jitcnt: t.jitcnt,
        calcnt: t.calcnt,
        errcnt: t.errcnt,
        stbcnt: t.stbcnt,
        tai: i64::from(t.tai),
    })
}

/// `TIME_ERROR`: the clock is not synchronised.
const TIME_ERROR: i32 = 5;
/// `STA_NANO`: offset and jitter are in nanoseconds, not microseconds.
const STA_NANO: i64 = 0x2000;
/// Scaled parts per million (`freq`, `ppsfreq`, `stabil` are ppm × 2^16).
const PPM16FRAC: f64 = 1_000_000.0 * 65536.0;

/// `(counter, name, help, value)` of one reading's clock state, in node_exporter's order.
type Row = (bool, &'static str, &'static str, f64);

/// Writes the samples of one reading (pure: tests call it with made-up states).
pub fn write(t: &Timex, sink: &mut Sink) {
    for (counter, name, help, v) in clock_rows(t).into_iter().chain(pps_rows(t)) {
        if counter {
            sink.counter(name, help, &[], v);
        } else {
            sink.gauge(name, help, &[], v);
        }
    }
}

/// The kernel clock discipline: sync state, offset, frequency, errors, tick.
fn clock_rows(t: &Timex) -> [Row; 8] {
    let divisor = if t.status & STA_NANO != 0 { 1e9 } else { 1e6 };
    [
        (
            false,
            "node_timex_sync_status",
            "Is clock synchronized to a reliable server (1 = yes, 0 = no).",
            if t.state == TIME_ERROR { 0.0 } else { 1.0 },
        ),
        (
            false,
            "node_timex_offset_seconds",
            "Time offset in between local system and reference clock.",
            t.offset as f64 / divisor,
        ),
        (
            false,
            "node_timex_frequency_adjustment_ratio",
            "Local clock frequency adjustment.",
            1.0 + t.freq as f64 / PPM16FRAC,
        ),
        (
            false,
            "node_timex_maxerror_seconds",
            "Maximum error in seconds.",
            t.maxerror as f64 / 1e6,
        ),
        (
            false,
            "node_timex_estimated_error_seconds",
            "Estimated error in seconds.",
            t.esterror as f64 / 1e6,
        ),
        (
            false,
            "node_timex_status",
            "Value of the status array bits.",
            t.status as f64,
        ),
        (
            false,
            "node_timex_loop_time_constant",
            "Phase-locked loop time constant.",
            t.constant as f64,
        ),
        (
            false,
            "node_timex_tick_seconds",
            "Seconds between clock ticks.",
            t.tick as f64 / 1e6,
        ),
    ]
}

/// The pulse-per-second discipline, then the TAI offset.
fn pps_rows(t: &Timex) -> [Row; 9] {
    let divisor = if t.status & STA_NANO != 0 { 1e9 } else { 1e6 };
    [
        (
            false,
            "node_timex_pps_frequency_hertz",
            "Pulse per second frequency.",
            t.ppsfreq as f64 / PPM16FRAC,
        ),
        (
            false,
            "node_timex_pps_jitter_seconds",
            "Pulse per second jitter.",
            t.jitter as f64 / divisor,
        ),
        (
            false,
            "node_timex_pps_shift_seconds",
            "Pulse per second interval duration.",
            t.shift as f64,
        ),
        (
            false,
            "node_timex_pps_stability_hertz",
            "Pulse per second stability, average of recent frequency changes.",
            t.stabil as f64 / PPM16FRAC,
        ),
        (
            true,
            "node_timex_pps_jitter_total",
            "Pulse per second count of jitter limit exceeded events.",
            t.jitcnt as f64,
        ),
        (
            true,
            "node_timex_pps_calibration_total",
            "Pulse per second count of calibration intervals.",
            t.calcnt as f64,
        ),
        (
            true,
            "node_timex_pps_error_total",
            "Pulse per second count of calibration errors.",
            t.errcnt as f64,
        ),
        (
            true,
            "node_timex_pps_stability_exceeded_total",
            "Pulse per second count of stability limit exceeded events.",
            t.stbcnt as f64,
        ),
        (
            false,
            "node_timex_tai_offset_seconds",
            "International Atomic Time (TAI) offset.",
            t.tai as f64,
        ),
    ]
}

pub struct TimexCollector;

impl Collector for TimexCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        match read() {
            Ok(t) => {
                write(&t, sink);
                Ok(())
            }
            // Seccomp or a sandbox may forbid it: no data, as node_exporter.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
            Err(e) => Err(CollectError::other("adjtimex", e)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "values compared are exact")]
mod tests {
    use super::*;

    fn value(sink: &Sink, name: &str) -> f64 {
        sink.samples.iter().find(|s| s.name == name).unwrap().value
    }

    #[test]
    fn units_follow_sta_nano_and_state() {
        let mut sink = Sink::new();
        write(
            &Timex {
                state: TIME_ERROR,
                offset: 1500,
                freq: 65536 * 10,
                maxerror: 16000,
                tick: 10000,
                ..Timex::default()
            },
            &mut sink,
        );
        assert_eq!(value(&sink, "node_timex_sync_status"), 0.0);
        assert!((value(&sink, "node_timex_offset_seconds") - 0.0015).abs() < 1e-15);
        assert!((value(&sink, "node_timex_frequency_adjustment_ratio") - 1.00001).abs() < 1e-12);
        assert!((value(&sink, "node_timex_maxerror_seconds") - 0.016).abs() < 1e-15);
        assert!((value(&sink, "node_timex_tick_seconds") - 0.01).abs() < 1e-15);
        let mut sink = Sink::new();
        write(
            &Timex {
                state: 0,
                status: STA_NANO,
                offset: 1500,
                ..Timex::default()
            },
            &mut sink,
        );
        assert_eq!(value(&sink, "node_timex_sync_status"), 1.0);
        assert!((value(&sink, "node_timex_offset_seconds") - 1.5e-6).abs() < 1e-18);
        assert_eq!(sink.families.len(), 17);
    }

    #[test]
    fn reads_this_kernel() {
        let t = read().unwrap();
        // USER_HZ ticks: the tick is 1e6/HZ microseconds, never zero.
        assert!(t.tick > 0, "{t:?}");
    }
}
