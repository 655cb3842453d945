//! TCP retransmits and resets from `ebpf/tcp.bpf.c`: a per-CPU array of three
//! counters, summed over CPUs at each collection, and a bounded per-peer view.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::{HashMap, MapData, PerCpuArray};

use super::spec::{btf_twin, object, take_map, tp, Aligned, Attached, ObjectSpec};
use crate::collector::{CollectError, Sink};

static BYTES: &Aligned<[u8]> = &Aligned(*include_bytes!("../../../ebpf/tcp.bpf.o"));

/// Retransmits, resets sent and resets received; each classic tracepoint
/// has a `tp_btf` twin for kernels whose tracefs lists no events.
pub(super) static OBJECT: ObjectSpec = object(
    "tcp",
    &BYTES.0,
    &[
        tp("tcp_retransmit_skb", "tcp", "tcp_retransmit_skb", false),
        tp("tcp_send_reset", "tcp", "tcp_send_reset", false),
        tp("tcp_receive_reset", "tcp", "tcp_receive_reset", false),
        btf_twin(
            "tcp_retransmit_skb_btf",
            "tcp",
            "tcp_retransmit_skb",
            "tcp_retransmit_skb",
        ),
        btf_twin(
            "tcp_send_reset_btf",
            "tcp",
            "tcp_send_reset",
            "tcp_send_reset",
        ),
        btf_twin(
            "tcp_receive_reset_btf",
            "tcp",
            "tcp_receive_reset",
            "tcp_receive_reset",
        ),
    ],
);

/// Indexes in `tcp_counters` (`NW_TCP_*` in `ebpf/nodewatch.h`).
const RETRANSMIT: u32 = 0;
const RESET_SENT: u32 = 1;
const RESET_RECEIVED: u32 = 2;

/// The map name in the object.
pub const MAP: &str = "tcp_counters";
/// The per-peer map (LRU, `NW_TCP_PEERS` entries).
pub const PEERS_MAP: &str = "tcp_peers";

/// `struct tcp_peer_key { u8 addr[16]; u32 family; }` as bytes (already `aya::Pod`).
pub type PeerKey = [u8; 20];
/// `struct tcp_peer_counts { u64 counts[3]; }`, indexed like `tcp_counters`.
pub type PeerCounts = [u64; 3];

/// Peers exported per collection, the busiest first. The kernel map keeps up
/// to 1024; exporting them all would let a scan of the node's address space
/// create a thousand series.
pub const MAX_PEER_SERIES: usize = 50;

/// `AF_INET`, `AF_INET6`.
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// The peer address in a key, `None` for an unknown family.
#[must_use]
pub fn peer_addr(key: &PeerKey) -> Option<IpAddr> {
    let family = u32::from_ne_bytes([key[16], key[17], key[18], key[19]]);
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(key[0], key[1], key[2], key[3]))),
        AF_INET6 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&key[..16]);
            // IPv4 peers of dual-stack sockets appear as ::ffff:a.b.c.d.
            Some(Ipv6Addr::from(a).to_canonical())
        }
        _ => None,
    }
}

pub struct Tcp {
    counters: PerCpuArray<MapData, u64>,
    peers: Option<HashMap<MapData, PeerKey, PeerCounts>>,
    /// Whether the reset programs attached (else the family is not exported).
    pub resets: bool,
}

impl Tcp {
    #[must_use]
    pub fn new(
        counters: PerCpuArray<MapData, u64>,
        peers: Option<HashMap<MapData, PeerKey, PeerCounts>>,
        resets: bool,
    ) -> Self {
        Self {
            counters,
            peers,
            resets,
        }
    }

    /// The maps of a loaded [`OBJECT`], when its retransmit program attached.
    pub(super) fn take(bpf: &mut aya::Ebpf, attached: Attached<'_>) -> Option<Self> {
        if !attached.any(&["tcp_retransmit_skb", "tcp_retransmit_skb_btf"]) {
            return None;
        }
        let counters = take_map(bpf, MAP)?;
        let resets = attached.any(&[
            "tcp_send_reset",
            "tcp_receive_reset",
            "tcp_send_reset_btf",
            "tcp_receive_reset_btf",
        ]);
        let peers = take_map(bpf, PEERS_MAP);
        Some(Self::new(counters, peers, resets))
    }

    /// The busiest peers, by retransmits plus resets, at most [`MAX_PEER_SERIES`].
    #[must_use]
    pub fn top_peers(&self) -> Vec<(IpAddr, PeerCounts)> {
        let Some(map) = &self.peers else {
            return Vec::new();
        };
        let mut rows: Vec<(IpAddr, PeerCounts)> = map
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| peer_addr(&k).map(|a| (a, v)))
            .collect();
        rows.sort_by(|a, b| {
            let total = |c: &PeerCounts| c.iter().fold(0u64, |s, v| s.saturating_add(*v));
            total(&b.1).cmp(&total(&a.1)).then(a.0.cmp(&b.0))
        });
        rows.truncate(MAX_PEER_SERIES);
        rows
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
        for (addr, c) in self.top_peers() {
            let peer = addr.to_string();
            sink.counter(
                "nodewatch_tcp_peer_retransmits_total",
                "TCP retransmits per remote address, for the busiest peers (bounded; the kernel keeps the 1024 most recent).",
                &[("peer", &peer)],
                c[RETRANSMIT as usize] as f64,
            );
            if self.resets {
                let help = "TCP resets per remote address, for the busiest peers (bounded like nodewatch_tcp_peer_retransmits_total).";
                sink.counter(
                    "nodewatch_tcp_peer_resets_total",
                    help,
                    &[("peer", &peer), ("direction", "sent")],
                    c[RESET_SENT as usize] as f64,
                );
                sink.counter(
                    "nodewatch_tcp_peer_resets_total",
                    help,
                    &[("peer", &peer), ("direction", "received")],
                    c[RESET_RECEIVED as usize] as f64,
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(addr: &[u8], family: u32) -> PeerKey {
        let mut k = [0u8; 20];
        k[..addr.len()].copy_from_slice(addr);
        k[16..].copy_from_slice(&family.to_ne_bytes());
        k
    }

    #[test]
    fn peer_addresses() {
        assert_eq!(
            peer_addr(&key(&[10, 201, 0, 2], AF_INET))
                .unwrap()
                .to_string(),
            "10.201.0.2"
        );
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1];
        assert_eq!(
            peer_addr(&key(&mapped, AF_INET6)).unwrap().to_string(),
            "10.0.0.1"
        );
        let v6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(
            peer_addr(&key(&v6, AF_INET6)).unwrap().to_string(),
            "2001:db8::1"
        );
        assert_eq!(peer_addr(&key(&[1, 2, 3, 4], 99)), None);
    }
}
