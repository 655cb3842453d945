//! Helpers for the end-to-end tests: certificates made at test time, real
//! aggregator and agent processes on free loopback ports, and the rule that
//! a missing real component fails the test under `CI=true`.
//!
//! Modules, in the order a test uses them:
//! - [`pki`]: the throwaway CA and the certificates of aggregator, nodes and operators.
//! - [`net`]: free loopback ports, plain HTTP, the HTTPS stand-in for the kubelet or API server.
//! - [`processes`]: aggregator and agent processes, children killed on drop, polling.
//! - [`host`]: host-wide state: the lock that keeps tests changing it apart, memory cgroups.
//! - [`netns`]: network namespaces with a veth link, for cutting one agent's network.
//! - [`cli`]: the operator's view: the real `nodewatch` CLI and a gRPC channel.
//! - [`prometheus`]: a real Prometheus scraping or receiving from the aggregator.
//! - [`alertmanager`]: a real Alertmanager and the webhook receiver it notifies.
//! - [`victoria`]: a real VictoriaMetrics as a remote-write peer.
//! - [`bench`]: benchmark results for `nodewatch-bench-report`.
//!
//! Everything is re-exported here, so tests `use nodewatch_tests::{...}`.
#![allow(clippy::missing_panics_doc, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

pub mod alertmanager;
pub mod bench;
pub mod cli;
pub mod host;
pub mod net;
pub mod netns;
pub mod pki;
pub mod processes;
pub mod prometheus;
pub mod victoria;

pub use alertmanager::*;
pub use bench::*;
pub use cli::*;
pub use host::*;
pub use net::*;
pub use netns::Netns;
pub use pki::*;
pub use processes::*;

/// Whether tests run in CI, where a missing component is a failure.
#[must_use]
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Call when a real component is missing: fails under `CI=true`, otherwise
/// prints why and returns so the caller can `return` (skip). In a benchmark
/// run for the report the skip is recorded too, so the report shows it
/// instead of a silently absent row.
pub fn missing(what: &str) {
    BenchResult::skipped(what).record();
    assert!(!in_ci(), "required component missing (CI=true): {what}");
    eprintln!("SKIP: {what}");
}

/// Finds an executable on PATH or in the usual Debian places.
#[must_use]
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A small seeded generator (`SplitMix64`), so a randomized test can be
/// replayed from the seed it prints.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `NODEWATCH_TEST_SEED` when set, else from `default`.
    #[must_use]
    pub fn from_env(default: u64) -> Self {
        let seed = std::env::var("NODEWATCH_TEST_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default);
        println!("seed: {seed} (NODEWATCH_TEST_SEED={seed} replays this run)");
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A duration drawn uniformly from `lo..hi` (milliseconds).
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next_u64() % (hi - lo).max(1))
    }
}
