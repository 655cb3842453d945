//! FreeBSD (OPNsense) sources.
//!
//! The parsers are pure functions on text (on bytes for `kern.devstat.all`)
//! and compile and run their tests on every OS; only the parts that call into
//! the FreeBSD kernel (sysctl, `getifaddrs`, `getfsstat`, `statfs`) are
//! `#[cfg(target_os = "freebsd")]`, because those interfaces and structure
//! layouts exist nowhere else.
//!
//! # Layout
//! - [`sysctl`]: reading sysctls by name, `getifaddrs`, `getfsstat`, each
//!   returning its own raw types (the only module with `unsafe`).
//! - [`arc`]: `kstat.zfs.misc.arcstats.*` → node_exporter's FreeBSD `node_zfs_*` names.
//! - [`pf`]: `pfctl -si` / `pfctl -sm` → pf state table and counters.
//! - [`carp`]: `ifconfig` CARP lines → `nodewatch_carp_master`.
//! - [`dpinger`]: OPNsense gateway monitor sockets → gateway RTT, loss, up.
//! - [`mem`]: `vm.stats.vm.*` → `node_memory_*`.
//! - [`devstat`]: the binary `kern.devstat.all` → `node_devstat_*` (disk I/O).
//!
//! The signals Linux has too are written once, in their module below
//! [`collectors`](crate::collectors), whose `freebsd` part reads them here:
//! [`cpu`](crate::collectors::cpu::freebsd) (`kern.cp_times`),
//! [`loadavg`](crate::collectors::loadavg::freebsd) (`getloadavg(3)`),
//! [`netdev`](crate::collectors::netdev::freebsd) (`getifaddrs` `if_data`) and
//! [`filesystem`](crate::collectors::filesystem::freebsd) (`getfsstat(2)`, `statfs(2)`).
//!
//! Commands (`pfctl`, `ifconfig`) run through
//! [`CommandRunner`](crate::sys::command::CommandRunner), with its timeout.

#![allow(
    clippy::doc_markdown,
    reason = "system and tool names (OPNsense, FreeBSD, node_exporter) are prose here, not code"
)]

pub mod arc;
pub mod carp;
pub mod devstat;
pub mod dpinger;
pub mod mem;
pub mod pf;
pub mod sysctl;

/// The FreeBSD collectors, for the registry.
#[cfg(target_os = "freebsd")]
#[must_use]
pub fn specs() -> Vec<crate::collector::CollectorSpec> {
    vec![
        crate::collectors::cpu::freebsd::SPEC,
        mem::SPEC,
        crate::collectors::loadavg::freebsd::SPEC,
        crate::collectors::filesystem::freebsd::SPEC,
        devstat::SPEC,
        crate::collectors::netdev::freebsd::SPEC,
        arc::SPEC,
        pf::SPEC,
        carp::SPEC,
        dpinger::SPEC,
        crate::oom::freebsd::SPEC,
    ]
}

/// Runs on FreeBSD only: every collector builds (or says why not) and
/// collects once against the live kernel without failing. Cross-linking this
/// test binary also proves the libc symbols used exist for the target.
#[cfg(all(test, target_os = "freebsd"))]
mod live_tests {
    #[test]
    fn every_collector_builds_and_collects() {
        let paths = crate::collector::Paths::default();
        for spec in super::specs() {
            match (spec.build)(&paths) {
                Ok(mut c) => {
                    let mut sink = crate::collector::Sink::new();
                    let result = c.collect(&mut sink);
                    assert!(result.is_ok(), "{}: {result:?}", spec.name);
                }
                Err(why) => eprintln!("{}: unavailable: {why}", spec.name),
            }
        }
    }
}
