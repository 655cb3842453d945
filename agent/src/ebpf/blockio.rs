//! Block I/O latency histograms from `ebpf/blockio_btf.bpf.c` (or, where that
//! cannot load, `ebpf/blockio.bpf.c`): log2 microsecond slots per (device,
//! op, start point) in the kernel, turned into Prometheus cumulative buckets
//! here. The kernel keeps them in a per-CPU slot table (`block_io_slots`)
//! and, for what does not fit there, a per-CPU hash (`block_io_latency`);
//! both are summed by key over every CPU.

use std::collections::BTreeMap;

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};

use super::spec::{btf, object, take_map, tp, Aligned, Attached, ObjectSpec};
use crate::collector::{CollectError, Paths, Sink};

static BYTES: &Aligned<[u8]> = &Aligned(*include_bytes!("../../../ebpf/blockio.bpf.o"));
static BTF_BYTES: &Aligned<[u8]> = &Aligned(*include_bytes!("../../../ebpf/blockio_btf.bpf.o"));

/// Block I/O latency from the completion's `struct request` alone: no
/// in-flight map and no issue program. Where it does not attach (no `disk`
/// in `request_queue` before v5.15, no `tp_btf`) the classic pair in
/// [`OBJECT`] takes over.
pub(super) static BTF_OBJECT: ObjectSpec = object(
    "blockio_btf",
    &BTF_BYTES.0,
    &[btf("block_rq_complete_btf", "block", "block_rq_complete")],
);

/// The classic pair: issue time kept in flight, latency at completion.
pub(super) static OBJECT: ObjectSpec = ObjectSpec {
    instead_of: Some("blockio_btf"),
    ..object(
        "blockio",
        &BYTES.0,
        &[
            tp("block_rq_issue", "block", "block_rq_issue", false),
            tp("block_rq_complete", "block", "block_rq_complete", false),
        ],
    )
};

/// The map name in both objects (the metric's name, as `ebpf_exporter` does).
pub const MAP: &str = "block_io_latency";
/// The per-CPU slot table in front of [`MAP`], in both objects.
pub const SLOTS_MAP: &str = "block_io_slots";

/// `NW_BIO_SLOTS` in `ebpf/nodewatch.h`.
pub const SLOTS: usize = 28;

/// `struct bio_hist_key { u32 dev; u32 op; u32 from; }`: an array of three
/// u32 has the same layout and is already `aya::Pod`, so no unsafe impl is needed.
pub type HistKey = [u32; 3];
/// `struct bio_hist { u64 slots[SLOTS]; u64 sum_us; u64 count; }`, as an array.
pub type Hist = [u64; SLOTS + 2];

/// `struct bio_slot { u64 key; struct bio_hist hist; }`: the packed key,
/// then the histogram.
pub type Slot = [u64; SLOTS + 3];

const _: () = assert!(std::mem::size_of::<HistKey>() == 12);
const _: () = assert!(std::mem::size_of::<Hist>() == 240);
const _: () = assert!(std::mem::size_of::<Slot>() == 248);

/// `NW_BIO_SLOT_USED`: set in every claimed slot's key.
const SLOT_USED: u64 = 1 << 31;

/// The (dev, op, from) of a slot key (`NW_BIO_SLOT_KEY`), `None` for a free slot.
#[must_use]
pub fn unpack_slot_key(key: u64) -> Option<HistKey> {
    if key & SLOT_USED == 0 {
        return None;
    }
    Some([
        (key >> 32) as u32,
        ((key >> 1) & 0x7) as u32,
        (key & 1) as u32,
    ])
}

/// `NW_BIO_OP_*`.
#[must_use]
pub fn op_name(op: u32) -> &'static str {
    match op {
        0 => "read",
        1 => "write",
        2 => "discard",
        3 => "flush",
        _ => "other",
    }
}

/// `NW_BIO_FROM_*`: where the interval starts (it always ends at completion).
#[must_use]
pub fn from_name(from: u32) -> &'static str {
    match from {
        0 => "issue",
        _ => "alloc",
    }
}

/// Kernel-internal `dev_t` (`MINORBITS` = 20, `include/linux/kdev_t.h`), as the
/// block tracepoints record it.
#[must_use]
pub fn major_minor(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & ((1 << 20) - 1))
}

/// Device name from `/sys/dev/block/MAJ:MIN/uevent` (`DEVNAME=`), else `MAJ:MIN`.
#[must_use]
pub fn device_name(paths: &Paths, dev: u32) -> String {
    let (major, minor) = major_minor(dev);
    std::fs::read_to_string(paths.sys(&format!("dev/block/{major}:{minor}/uevent")))
        .ok()
        .and_then(|u| parse_devname(&u))
        .unwrap_or_else(|| format!("{major}:{minor}"))
}

#[must_use]
pub fn parse_devname(uevent: &str) -> Option<String> {
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Cumulative Prometheus buckets from log2 slots: slot i counts latencies in
/// [2^i, 2^(i+1)) µs (slot 0 also takes 0 µs), so its upper bound is
/// 2^(i+1) µs. The last slot is open-ended and only enters `+Inf`.
#[must_use]
pub fn buckets(slots: &[u64]) -> Vec<(f64, u64)> {
    let mut out = Vec::with_capacity(slots.len());
    let mut cum = 0u64;
    for (i, n) in slots.iter().enumerate().take(slots.len().saturating_sub(1)) {
        cum = cum.wrapping_add(*n);
        out.push(((1u64 << (i + 1)) as f64 / 1e6, cum));
    }
    out
}

/// What the histogram measures, per `from` label value.
const HELP: &str = "Block I/O request latency until completion (tracepoint block/block_rq_complete), by where the interval starts: from=issue since the driver was handed the request (block_rq_issue, or the request's io_start_time_ns); from=alloc since the request was allocated (its start_time_ns, where /proc/diskstats I/O time starts: includes plug, scheduler and tag waits), on queues that do not stamp the issue time.";

/// Adds one CPU's histogram into `into` (counters wrap like the kernel's u64).
pub fn add_hist(into: &mut Hist, other: &Hist) {
    for (a, b) in into.iter_mut().zip(other) {
        *a = a.wrapping_add(*b);
    }
}

/// Adds one CPU's copy of a slot into `rows` under its key (free slots add nothing).
pub fn add_slot(rows: &mut BTreeMap<HistKey, Hist>, slot: &Slot) {
    let Some((key, hist)) = slot.split_first() else {
        return;
    };
    let Some(key) = unpack_slot_key(*key) else {
        return;
    };
    let into = rows.entry(key).or_insert([0u64; SLOTS + 2]);
    for (a, b) in into.iter_mut().zip(hist) {
        *a = a.wrapping_add(*b);
    }
}

pub struct BlockIo {
    /// Per-CPU slot table: each CPU claims its own slots, so a key may sit
    /// in different slots on different CPUs.
    slots: PerCpuArray<MapData, Slot>,
    /// Per-CPU histograms for what the slot table had no room for.
    map: PerCpuHashMap<MapData, HistKey, Hist>,
    paths: Paths,
    /// dev → name, refreshed when a dev is new (names are stable while a device exists).
    names: BTreeMap<u32, String>,
}

impl BlockIo {
    #[must_use]
    pub fn new(
        slots: PerCpuArray<MapData, Slot>,
        map: PerCpuHashMap<MapData, HistKey, Hist>,
        paths: Paths,
    ) -> Self {
        Self {
            slots,
            map,
            paths,
            names: BTreeMap::new(),
        }
    }

    /// The maps of a loaded `object` ([`OBJECT`] or [`BTF_OBJECT`]), when
    /// its own completion program attached.
    pub(super) fn take(
        bpf: &mut aya::Ebpf,
        attached: Attached<'_>,
        object: &ObjectSpec,
        paths: &Paths,
    ) -> Option<Self> {
        let completion = object
            .programs
            .iter()
            .find(|p| p.tracepoint == "block_rq_complete")?;
        if !attached.has(completion.program) {
            return None;
        }
        Some(Self::new(
            take_map(bpf, SLOTS_MAP)?,
            take_map(bpf, MAP)?,
            paths.clone(),
        ))
    }

    /// Every histogram, summed over CPUs, slots and the hash.
    fn read(&self) -> Result<BTreeMap<HistKey, Hist>, CollectError> {
        let mut rows: BTreeMap<HistKey, Hist> = BTreeMap::new();
        for idx in 0..self.slots.len() {
            let per_cpu = self
                .slots
                .get(&idx, 0)
                .map_err(|e| CollectError::Other(format!("{SLOTS_MAP}[{idx}]: {e}")))?;
            for slot in per_cpu.iter() {
                add_slot(&mut rows, slot);
            }
        }
        for item in &self.map {
            let (key, per_cpu) = item.map_err(|e| CollectError::Other(format!("{MAP}: {e}")))?;
            let hist = rows.entry(key).or_insert([0u64; SLOTS + 2]);
            for h in per_cpu.iter() {
                add_hist(hist, h);
            }
        }
        Ok(rows)
    }

    pub fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        for ([dev, op, from], hist) in self.read()? {
            let name = self
                .names
                .entry(dev)
                .or_insert_with(|| device_name(&self.paths, dev))
                .clone();
            let (slots, rest) = hist.split_at(SLOTS);
            let sum_us = rest.first().copied().unwrap_or(0);
            let count = rest.get(1).copied().unwrap_or(0);
            sink.histogram(
                "nodewatch_block_io_latency_seconds",
                HELP,
                &[
                    ("device", &name),
                    ("op", op_name(op)),
                    ("from", from_name(from)),
                ],
                &buckets(slots),
                sum_us as f64 / 1e6,
                count,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bounds() {
        let mut slots = [0u64; SLOTS];
        slots[0] = 1; // < 2 µs
        slots[10] = 3; // [1024, 2048) µs
        slots[SLOTS - 1] = 1; // ≥ 2^27 µs
        let b = buckets(&slots);
        assert_eq!(b.len(), SLOTS - 1);
        assert!((b[0].0 - 2e-6).abs() < 1e-12);
        assert_eq!(b[0].1, 1);
        assert!((b[10].0 - 2048e-6).abs() < 1e-12);
        assert_eq!(b[10].1, 4);
        assert_eq!(b[SLOTS - 2].1, 4);
    }

    #[test]
    fn per_cpu_sum() {
        let mut a = [0u64; SLOTS + 2];
        let mut b = [0u64; SLOTS + 2];
        b[3] = 2;
        b[SLOTS] = 7;
        b[SLOTS + 1] = u64::MAX;
        add_hist(&mut a, &b);
        b[SLOTS + 1] = 2;
        add_hist(&mut a, &b);
        assert_eq!(a[3], 4);
        assert_eq!(a[SLOTS], 14);
        assert_eq!(a[SLOTS + 1], 1); // wraps, as the kernel's counter would
    }

    #[test]
    fn slot_keys_and_sums() {
        // NW_BIO_SLOT_KEY(dev, op, from) as blockio.h packs it.
        let pack = |dev: u32, op: u32, from: u32| {
            (u64::from(dev) << 32) | SLOT_USED | (u64::from(op & 7) << 1) | u64::from(from & 1)
        };
        let dev = (259 << 20) | 0x11;
        assert_eq!(unpack_slot_key(pack(dev, 3, 1)), Some([dev, 3, 1]));
        assert_eq!(unpack_slot_key(pack(0, 4, 0)), Some([0, 4, 0]));
        assert_eq!(unpack_slot_key(0), None);

        // One key in different slots of two CPUs, a free slot, another key.
        let mut a = [0u64; SLOTS + 3];
        a[0] = pack(dev, 0, 0);
        a[1 + 5] = 2;
        a[1 + SLOTS] = 100; // sum_us
        a[1 + SLOTS + 1] = 2; // count
        let mut b = a;
        b[1 + 5] = 1;
        b[1 + SLOTS] = 7;
        b[1 + SLOTS + 1] = 1;
        let free = [0u64; SLOTS + 3];
        let mut c = a;
        c[0] = pack(dev, 1, 0);
        let mut rows = BTreeMap::new();
        for s in [&a, &free, &b, &c] {
            add_slot(&mut rows, s);
        }
        assert_eq!(rows.len(), 2);
        let r = rows[&[dev, 0, 0]];
        assert_eq!((r[5], r[SLOTS], r[SLOTS + 1]), (3, 107, 3));
        assert_eq!(rows[&[dev, 1, 0]][SLOTS + 1], 2);
    }

    #[test]
    fn devs() {
        assert_eq!(major_minor((7 << 20) | 3), (7, 3));
        assert_eq!(
            parse_devname("MAJOR=7\nMINOR=3\nDEVNAME=loop3\nDEVTYPE=disk\n").as_deref(),
            Some("loop3")
        );
        assert_eq!(parse_devname("MAJOR=7\n"), None);
        assert_eq!(op_name(9), "other");
        assert_eq!(from_name(0), "issue");
        assert_eq!(from_name(1), "alloc");
    }
}
