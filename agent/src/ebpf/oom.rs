//! `ebpf/oom.bpf.c`: its load spec, and the maps handed to the OOM reader
//! ([`crate::oom::bpf`]) once its programs are attached.

use aya::maps::{Array, MapData, RingBuf};

use super::spec::{btf, btf_twin, object, take_map, tp, Aligned, Attached, ObjectSpec};
use crate::collector::{Sink, Unavailable};
use crate::oom::bpf::{Reader, VictimsMap, VICTIMS_MAP};

static BYTES: &Aligned<[u8]> = &Aligned(*include_bytes!("../../../ebpf/oom.bpf.o"));

/// The OOM victim's memory cgroup comes from walking kernel pointers from its
/// task: optional (the classic record plus /proc still attribute most kills).
/// BTF-checked loads are not `bpf_probe_read_kernel`: this loads under
/// `lockdown=confidentiality` too (seen on Debian's 6.12, `tests/tests/kernels.rs`).
const VICTIM_MEMCG: &str = "oom_victim_memcg";

/// OOM kills are the reason the eBPF module exists, so the record program is
/// required (classic or its `tp_btf` twin).
pub(super) static OBJECT: ObjectSpec = ObjectSpec {
    // The record program reads the victim's comm with bpf_probe_read_kernel
    // unless told not to.
    read_kernel_switch: true,
    // Attach order is call order at the tracepoint (probes of equal
    // priority run in registration order, kernel/tracepoint.c): the
    // victim map entry is written before the ring record wakes the reader.
    ..object(
        "oom",
        &BYTES.0,
        &[
            btf(VICTIM_MEMCG, "oom", "mark_victim"),
            tp("oom_mark_victim", "oom", "mark_victim", true),
            btf_twin(
                "oom_mark_victim_btf",
                "oom",
                "mark_victim",
                "oom_mark_victim",
            ),
        ],
    )
};

/// The ring buffer's reader and the kernel's count of records it lost.
pub struct Oom {
    _reader: Reader,
    lost: Option<Array<MapData, u64>>,
}

impl Oom {
    /// Takes the ring buffer (and the victims map, when its program
    /// attached) and starts the reader with `spawn`.
    pub(super) fn take(
        bpf: &mut aya::Ebpf,
        attached: Attached<'_>,
        spawn: impl FnOnce(RingBuf<MapData>, Option<VictimsMap>) -> std::io::Result<Reader>,
    ) -> Result<Self, Unavailable> {
        let lost = take_map(bpf, "oom_events_lost");
        let ring = bpf
            .take_map("oom_events")
            .ok_or_else(|| Unavailable("eBPF off: oom.bpf.o has no oom_events map".into()))
            .and_then(|m| {
                RingBuf::try_from(m).map_err(|e| Unavailable(format!("eBPF off: oom_events: {e}")))
            })?;
        let victims = if attached.has(VICTIM_MEMCG) {
            take_map(bpf, VICTIMS_MAP)
        } else {
            None
        };
        let reader = spawn(ring, victims)
            .map_err(|e| Unavailable(format!("eBPF off: OOM reader thread: {e}")))?;
        Ok(Self {
            _reader: reader,
            lost,
        })
    }
}

/// Exports the events lost on the way: in the kernel's ring buffer (full),
/// and into the stream's channel (`channel_dropped`).
pub(super) fn export_lost(oom: Option<&Oom>, channel_dropped: u64, sink: &mut Sink) {
    let ring_lost = oom
        .and_then(|o| o.lost.as_ref())
        .and_then(|m| m.get(&0, 0).ok())
        .unwrap_or(0);
    let help =
        "OOM events lost: ring buffer full in the kernel, or the event channel to the stream full.";
    for (stage, n) in [("ringbuf", ring_lost), ("channel", channel_dropped)] {
        sink.counter(
            "nodewatch_agent_ebpf_events_lost_total",
            help,
            &[("stage", stage)],
            n as f64,
        );
    }
}
