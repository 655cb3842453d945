//! Packet drops by reason from `ebpf/skb_drop.bpf.c`, named with the running
//! kernel's own `enum skb_drop_reason` read from its BTF, so a new kernel's
//! new reasons get their names without an agent release.
//!
//! Two maps: core reasons in a per-CPU array indexed by the reason (the
//! program's fast path), the rest (subsystem ranges) in a per-CPU hash.

use std::collections::BTreeMap;
use std::path::Path;

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};

use super::spec::{btf_twin, object, take_map, tp, Aligned, Attached, ObjectSpec};
use crate::collector::{CollectError, Sink};

static BYTES: &Aligned<[u8]> = &Aligned(*include_bytes!("../../../ebpf/skb_drop.bpf.o"));

/// Packets freed with a drop reason (`skb/kfree_skb`), or its `tp_btf` twin.
pub(super) static OBJECT: ObjectSpec = object(
    "skb_drop",
    &BYTES.0,
    &[
        tp("skb_kfree_skb", "skb", "kfree_skb", false),
        btf_twin("skb_kfree_skb_btf", "skb", "kfree_skb", "skb_kfree_skb"),
    ],
);

/// The per-CPU array of core reasons, indexed by the reason value.
pub const CORE_MAP: &str = "skb_drop_core";
/// `NW_SKB_DROP_CORE_SLOTS` in `ebpf/nodewatch.h`: the array's length.
pub const CORE_SLOTS: u32 = 256;
/// The per-CPU hash of reasons at or above [`CORE_SLOTS`].
pub const MAP: &str = "skb_drops";

/// `NW_SKB_DROP_OVERFLOW_KEY` in `ebpf/nodewatch.h`: drops whose reason found the map full.
pub const OVERFLOW_KEY: u32 = u32::MAX;

/// The enum's constants start with this prefix (include/net/dropreason-core.h).
const PREFIX: &str = "SKB_DROP_REASON_";

/// Reason value → name, as the running kernel defines them.
pub type ReasonNames = BTreeMap<u32, String>;

/// Reads `enum skb_drop_reason` from a BTF file (`/sys/kernel/btf/vmlinux`).
pub fn reason_names(btf_path: &Path) -> Result<ReasonNames, String> {
    let bytes = std::fs::read(btf_path).map_err(|e| format!("{}: {e}", btf_path.display()))?;
    reason_names_from_btf(&bytes).map_err(|e| format!("{}: {e}", btf_path.display()))
}

/// `BTF_KIND_ENUM`, `BTF_KIND_ENUM64` (include/uapi/linux/btf.h).
const KIND_ENUM: u32 = 6;
const KIND_ENUM64: u32 = 19;
/// The enum's name in the kernel's BTF.
const ENUM_NAME: &[u8] = b"skb_drop_reason";

/// Reads `enum skb_drop_reason` from raw BTF bytes in this machine's byte
/// order (the kernel's `/sys/kernel/btf/vmlinux`) with one pass over the
/// type section that keeps nothing but the enum's names: no type table is
/// built, so it costs no more memory than the names themselves.
pub fn reason_names_from_btf(data: &[u8]) -> Result<ReasonNames, String> {
    let u16_at = |off: usize| -> Option<u16> {
        Some(u16::from_ne_bytes(
            data.get(off..off.checked_add(2)?)?.try_into().ok()?,
        ))
    };
    let u32_at = |off: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(
            data.get(off..off.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    if u16_at(0) != Some(0xeb9f) {
        return Err("not BTF in this byte order (magic is not 0xeb9f)".into());
    }
    let header = |i: usize| u32_at(8 + 4 * i).map(|v| v as usize);
    let (Some(hdr_len), Some(type_off), Some(type_len), Some(str_off), Some(str_len)) = (
        u32_at(4).map(|v| v as usize),
        header(0),
        header(1),
        header(2),
        header(3),
    ) else {
        return Err("BTF header truncated".into());
    };
    let section = |off: usize, len: usize, what: &str| {
        hdr_len
            .checked_add(off)
            .and_then(|start| Some((start, start.checked_add(len)?)))
            .and_then(|(start, end)| data.get(start..end))
            .ok_or_else(|| format!("BTF {what} section ({len} bytes at {off}) outside the data"))
    };
    let types = section(type_off, type_len, "type")?;
    let strings = section(str_off, str_len, "string")?;
    let string = |off: u32| -> Option<&[u8]> {
        let rest = strings.get(off as usize..)?;
        Some(&rest[..rest.iter().position(|&b| b == 0)?])
    };
    let word = |off: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(
            types.get(off..off.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    let mut members = Vec::new();
    let mut pos = 0usize;
    while pos < types.len() {
        let (Some(name_off), Some(info)) = (word(pos), word(pos + 4)) else {
            return Err(format!(
                "BTF type truncated at byte {pos} of the type section"
            ));
        };
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        // Each kind's fixed 12 bytes, then its kind-specific data.
        let extra = match kind {
            2 | 7..=12 | 16 | 18 => 0, // ptr, fwd, typedef, qualifiers, func, float, type tag
            1 | 14 | 17 => 4,          // int, var, decl tag
            3 => 12,                   // array
            4 | 5 | 15 | KIND_ENUM64 => 12 * vlen, // struct, union, datasec, enum64
            KIND_ENUM | 13 => 8 * vlen, // enum, func proto
            _ => {
                return Err(format!(
                    "unknown BTF kind {kind} at byte {pos} of the type section"
                ))
            }
        };
        let body = pos + 12;
        let next = body + extra;
        if next > types.len() {
            return Err(format!("BTF type at byte {pos} runs past the type section"));
        }
        if (kind == KIND_ENUM || kind == KIND_ENUM64) && string(name_off) == Some(ENUM_NAME) {
            let step = if kind == KIND_ENUM { 8 } else { 12 };
            for i in 0..vlen {
                let m = body + i * step;
                let (Some(name), Some(val)) = (word(m).and_then(string), word(m + 4)) else {
                    return Err(format!("enum {} member {i}: bad name", "skb_drop_reason"));
                };
                members.push((val, String::from_utf8_lossy(name).into_owned()));
            }
        }
        pos = next;
    }
    if members.is_empty() {
        return Err("no enum skb_drop_reason in BTF".into());
    }
    Ok(names_from_members(members))
}

/// Strips the common prefix and drops the `_MAX` sentinel; the first name
/// wins when two constants share a value.
#[must_use]
pub fn names_from_members(members: impl IntoIterator<Item = (u32, String)>) -> ReasonNames {
    let mut out = ReasonNames::new();
    for (val, name) in members {
        let short = name.strip_prefix(PREFIX).unwrap_or(&name);
        if short == "MAX" || short.is_empty() {
            continue;
        }
        out.entry(val).or_insert_with(|| short.to_string());
    }
    out
}

/// The label for a reason value: the kernel's name, else the number (a
/// reason from a subsystem range not in the core enum, e.g. mac80211's).
#[must_use]
pub fn label(names: &ReasonNames, reason: u32) -> String {
    if reason == OVERFLOW_KEY {
        return "other".into();
    }
    names
        .get(&reason)
        .cloned()
        .unwrap_or_else(|| format!("unknown_{reason:#x}"))
}

/// Sums per-CPU values (counters wrap like the kernel's u64).
fn total(values: &PerCpuValues<u64>) -> u64 {
    values.iter().copied().fold(0u64, u64::wrapping_add)
}

pub struct SkbDrop {
    core: PerCpuArray<MapData, u64>,
    map: PerCpuHashMap<MapData, u32, u64>,
    names: ReasonNames,
}

impl SkbDrop {
    pub fn new(
        core: PerCpuArray<MapData, u64>,
        mut map: PerCpuHashMap<MapData, u32, u64>,
        names: ReasonNames,
    ) -> Self {
        // Reserve the overflow slot now, so there is room for it when the
        // map fills up (the program only increments it then).
        let cpus = aya::util::nr_cpus().map_or(1, |n| n.max(1));
        if let Ok(zero) = PerCpuValues::try_from(vec![0u64; cpus]) {
            if let Err(error) = map.insert(OVERFLOW_KEY, zero, 0) {
                tracing::debug!(%error, "Could not reserve the skb_drops overflow slot.");
            }
        }
        Self { core, map, names }
    }

    /// The maps of a loaded [`OBJECT`], when its program attached. `names`:
    /// the kernel's drop reason names, read from its BTF before any object
    /// loaded; without them reasons are exported as numbers.
    pub(super) fn take(
        bpf: &mut aya::Ebpf,
        attached: Attached<'_>,
        names: Result<ReasonNames, String>,
    ) -> Option<Self> {
        if !attached.any(&["skb_kfree_skb", "skb_kfree_skb_btf"]) {
            return None;
        }
        let names = names.unwrap_or_else(|error| {
            tracing::warn!(%error, "No drop reason names; reasons are exported as numbers.");
            ReasonNames::new()
        });
        Some(Self::new(
            take_map(bpf, CORE_MAP)?,
            take_map(bpf, MAP)?,
            names,
        ))
    }

    pub fn collect(&self, sink: &mut Sink) -> Result<(), CollectError> {
        let mut by_label: BTreeMap<String, u64> = BTreeMap::new();
        for reason in 0..CORE_SLOTS {
            let values = self
                .core
                .get(&reason, 0)
                .map_err(|e| CollectError::Other(format!("{CORE_MAP}[{reason}]: {e}")))?;
            let n = total(&values);
            // Every slot exists in an array; a reason that never happened is not a series.
            if n == 0 {
                continue;
            }
            *by_label.entry(label(&self.names, reason)).or_insert(0) += n;
        }
        for item in &self.map {
            let (reason, values) = item.map_err(|e| CollectError::Other(format!("{MAP}: {e}")))?;
            let n = total(&values);
            if reason == OVERFLOW_KEY && n == 0 {
                continue;
            }
            *by_label.entry(label(&self.names, reason)).or_insert(0) += n;
        }
        for (reason, n) in by_label {
            sink.counter(
                "nodewatch_skb_drops_total",
                "Packets dropped by the kernel, by drop reason (tracepoint skb/kfree_skb; names from the kernel's enum skb_drop_reason).",
                &[("reason", &reason)],
                n as f64,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let names = names_from_members([
            (0, "SKB_NOT_DROPPED_YET".to_string()),
            (2, "SKB_DROP_REASON_NOT_SPECIFIED".to_string()),
            (12, "SKB_DROP_REASON_NETFILTER_DROP".to_string()),
            (128, "SKB_DROP_REASON_MAX".to_string()),
        ]);
        assert_eq!(label(&names, 12), "NETFILTER_DROP");
        assert_eq!(label(&names, 0), "SKB_NOT_DROPPED_YET");
        assert_eq!(label(&names, 128), "unknown_0x80");
        assert_eq!(label(&names, OVERFLOW_KEY), "other");
    }

    /// The running kernel's BTF, when there is one: `NETFILTER_DROP` must be named.
    #[test]
    fn running_kernel() {
        let p = Path::new("/sys/kernel/btf/vmlinux");
        if !p.exists() {
            eprintln!("skipped: no {}", p.display());
            return;
        }
        let names = reason_names(p).unwrap();
        assert!(names.values().any(|n| n == "NETFILTER_DROP"), "{names:?}");
        assert!(names.values().all(|n| n != "MAX"));
        // The one-pass scan finds what a full BTF parser finds.
        let btf = btf_rs::Btf::from_file(p).unwrap();
        let mut members = Vec::new();
        for t in btf.resolve_types_by_name("skb_drop_reason").unwrap() {
            if let btf_rs::Type::Enum(e) = t {
                for m in &e.members {
                    members.push((m.val(), btf.resolve_name(m).unwrap()));
                }
            }
        }
        assert_eq!(names, names_from_members(members));
    }

    /// Truncated, corrupted or foreign bytes give an error, never a panic.
    #[test]
    fn scan_bad_btf() {
        assert!(reason_names_from_btf(b"").is_err());
        assert!(reason_names_from_btf(&[0x9f, 0xeb, 1, 0]).is_err());
        let p = Path::new("/sys/kernel/btf/vmlinux");
        let Ok(real) = std::fs::read(p) else {
            eprintln!("skipped the kernel part: no {}", p.display());
            return;
        };
        for cut in [24, 100, real.len() / 2, real.len() - 1] {
            let _ = reason_names_from_btf(&real[..cut]);
        }
        let mut state: u32 = 7;
        let mut bytes = real.clone();
        let span = bytes.len().min(1 << 16);
        for _ in 0..300 {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let i = (state as usize >> 3) % span;
            bytes[i] = (state >> 24) as u8;
            let _ = reason_names_from_btf(&bytes);
        }
    }

    #[test]
    fn fuzz_names_no_panic() {
        let mut state: u32 = 12345;
        let mut members = Vec::new();
        for i in 0..500u32 {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let name = match state % 4 {
                0 => String::new(),
                1 => PREFIX.to_string(),
                2 => format!("{PREFIX}X{i}"),
                _ => format!("\u{fffd}{i}"),
            };
            members.push((state, name));
        }
        let names = names_from_members(members);
        for k in [0, 1, u32::MAX, state] {
            let _ = label(&names, k);
        }
    }
}
