//! TCP retransmits and resets from `ebpf/tcp.bpf.c`: a per-CPU array of three
//! counters, summed over CPUs at each collection.

use aya::maps::{MapData, PerCpuArray};

use crate::collector::{CollectError, Sink};

/// Indexes in `tcp_counters` (`NW_TCP_*` in `ebpf/nodewatch.h`).
const RETRANSMIT: u32 = 0;
const RESET_SENT: u32 = 1;
const RESET_RECEIVED: u32 = 2;

/// The map name in the object.
pub const MAP: &str = "tcp_counters";

pub struct Tcp {
    counters: PerCpuArray<MapData, u64>,
    /// Whether the reset programs attached (else the family is not exported).
    pub resets: bool,
}

impl Tcp {
    #[must_use]
    pub fn new(counters: PerCpuArray<MapData, u64>, resets: bool) -> Self {
        Self { counters, resets }
    }

    fn sum(&self, idx: u32) -> Result<u64, CollectError> {
        let values = self
            .counters
            .get(&idx, 0)
            .map_err(|e| CollectError::Other(format!("{MAP}[{idx}]: {e}")))?;
        Ok(values.iter().copied().fold(0u64, u64::wrapping_add))
    }

    pub fn collect(&self, sink: &mut Sink) -> Result<(), CollectError> {
        sink.counter(
            "nodewatch_tcp_retransmits_total",
            "TCP segments retransmitted (tracepoint tcp/tcp_retransmit_skb).",
            &[],
            self.sum(RETRANSMIT)? as f64,
        );
        if self.resets {
            let help = "TCP resets sent and received (tracepoints tcp/tcp_send_reset, tcp/tcp_receive_reset).";
            sink.counter(
                "nodewatch_tcp_resets_total",
                help,
                &[("direction", "sent")],
                self.sum(RESET_SENT)? as f64,
            );
            sink.counter(
                "nodewatch_tcp_resets_total",
                help,
                &[("direction", "received")],
                self.sum(RESET_RECEIVED)? as f64,
            );
        }
        Ok(())
    }
}
