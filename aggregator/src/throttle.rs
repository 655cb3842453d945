//! Repeated warnings, rate-limited: the first of a kind in each interval is
//! logged with the count of those suppressed since, the rest are only
//! counted. A probe hammering the aggregator with refused calls then costs
//! one log line per kind per interval, not one per call, and the metrics
//! (`nodewatch_aggregator_auth_failures_total{reason}` and friends) still
//! count every one.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// One line per kind per this interval: short enough that a real problem
/// shows in the log at once, long enough that a flood writes ~6 lines a minute.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Per kind: when its current interval started and how many were suppressed in it.
#[derive(Default)]
pub struct Throttle {
    kinds: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl Throttle {
    /// `Some(suppressed)` when a warning of `kind` should be logged now
    /// (with the count of those left out since the last one logged), `None`
    /// when it is only counted. Kinds are static strings, so the map is bounded.
    pub fn check(&self, kind: &'static str) -> Option<u64> {
        self.check_at(kind, Instant::now())
    }

    fn check_at(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut kinds = self
            .kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match kinds.get_mut(kind) {
            Some((start, suppressed)) if now.duration_since(*start) < INTERVAL => {
                *suppressed += 1;
                None
            }
            Some((start, suppressed)) => {
                let n = *suppressed;
                *start = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                kinds.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

/// The aggregator's throttle for warnings about refused connections and calls.
pub fn warnings() -> &'static Throttle {
    static T: OnceLock<Throttle> = OnceLock::new();
    T.get_or_init(Throttle::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_interval_with_the_count_left_out() {
        let t = Throttle::default();
        let t0 = Instant::now();
        assert_eq!(t.check_at("a", t0), Some(0));
        for i in 1..1000 {
            assert_eq!(t.check_at("a", t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(t.check_at("b", t0), Some(0), "kinds are apart");
        assert_eq!(t.check_at("a", t0 + INTERVAL), Some(999));
        assert_eq!(t.check_at("a", t0 + INTERVAL * 3), Some(0));
    }
}
