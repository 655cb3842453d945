//! nodewatch agent: reads host signals and streams them to the aggregator.
//!
//! # Layout
//! - [`collector`]: the `Collector` trait, the `Sink` collectors write into, per-collector timing.
//! - [`collectors`]: one module per kernel source (`stat`, `meminfo`, `netdev`, …) and the registry list.

pub mod collector;
pub mod collectors;
pub mod ebpf;
