//! Packet drops by reason from `ebpf/skb_drop.bpf.c`, named with the running
//! kernel's own `enum skb_drop_reason` read from its BTF, so a new kernel's
//! new reasons get their names without an agent release.
//!
//! Two maps: core reasons in a per-CPU array indexed by the reason (the
//! program's fast path), the rest (subsystem ranges) in a per-CPU hash.

use std::collections::BTreeMap;
use std::path::Path;

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};

use crate::collector::{CollectError, Sink};

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
    let btf =
        btf_rs::Btf::from_file(btf_path).map_err(|e| format!("{}: {e}", btf_path.display()))?;
    let types = btf
        .resolve_types_by_name("skb_drop_reason")
        .map_err(|e| format!("enum skb_drop_reason: {e}"))?;
    let mut members = Vec::new();
    for t in types {
        if let btf_rs::Type::Enum(e) = t {
            for m in &e.members {
                let name = btf.resolve_name(m).map_err(|e| e.to_string())?;
                members.push((m.val(), name));
            }
        }
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
#[allow(clippy::unwrap_used, clippy::many_single_char_names)] // tests: a panic is the failure report
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
