//! eBPF signals: OOM kills as they happen, TCP retransmits and resets, packet
//! drops by kernel drop reason, block I/O latency histograms.
//!
//! The BPF programs are C in `ebpf/` at the repository root, compiled by
//! `ebpf/build.sh` into the committed `ebpf/*.bpf.o` that are embedded here,
//! so building the agent needs no clang. They are loaded with aya and attach
//! to tracepoints only, classic and `tp_btf` (no kprobes, no fentry: both are
//! refused on some kernels, see `ebpf/README.md`).
//!
//! Each program module exports its object's load spec and a `take` that
//! keeps the maps it reads once the programs are attached; [`Ebpf::start`]
//! walks the table `OBJECTS` in order, loading, attaching and taking.
//!
//! # Layout
//! - this file: the table, the loader loop ([`Ebpf::start`]), the
//!   [`Collector`] that exports every map.
//! - [`spec`]: load specs as data, program outcomes.
//! - [`mod@lockdown`], `tracefs`: what the kernel allows and where classic
//!   tracepoints are found.
//! - [`load`]: loading one object and attaching its programs.
//! - [`oom`], [`tcp`], [`skb_drop`], [`blockio`]: one module per program
//!   object: its spec and its maps (the OOM records are read and attributed
//!   in [`crate::oom`]).

pub mod blockio;
pub mod load;
pub mod lockdown;
pub mod oom;
pub mod skb_drop;
pub mod spec;
pub mod tcp;
mod tracefs;

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use aya::EbpfLoader;

use crate::collector::{CollectError, Collector, EventSender, Paths, Sink, Unavailable};
use crate::containers::pods;
use crate::oom::bpf::Reader;
use crate::oom::OomState;
use load::{load_object, log_state, release_freed_memory, Kernel, Loaded};
pub use lockdown::{lockdown, parse_lockdown, Lockdown};
use spec::ObjectSpec;
pub use spec::{Attach, Attached, ProgramSpec, ProgramState};

/// One row of the load table: an object, and what keeps its maps once it
/// is loaded and its programs attached.
struct Entry {
    object: &'static ObjectSpec,
    take: fn(&mut aya::Ebpf, &mut Ebpf, &mut Start) -> Result<(), Unavailable>,
}

/// Start-up state a `take` may use.
struct Start {
    paths: Paths,
    /// Each program's outcome so far, in load order.
    programs: Vec<(ProgramSpec, ProgramState)>,
    /// The OOM reader's event channel, taken by the one OOM object.
    events: Option<EventSender>,
    /// Drop reason names, read from the kernel's BTF before any object loads.
    skb_drop_names: Result<skb_drop::ReasonNames, String>,
    /// The object being taken.
    object: &'static ObjectSpec,
}

impl Start {
    fn attached(&self) -> Attached<'_> {
        Attached(&self.programs)
    }
}

/// The load table, in load order. OOM kills are the reason this module
/// exists, so their program is required; the rest add detail and are
/// optional. A fallback object comes after the object it stands in for.
static OBJECTS: &[Entry] = &[
    Entry {
        object: &oom::OBJECT,
        take: |bpf, ebpf, st| {
            let events = st
                .events
                .take()
                .ok_or_else(|| Unavailable("eBPF off: two OOM objects".into()))?;
            let (pods, paths, state) =
                (ebpf.pods.clone(), st.paths.clone(), ebpf.oom_state.clone());
            let spawn = |ring, victims| Reader::spawn(ring, victims, pods, paths, events, state);
            ebpf.oom = Some(oom::Oom::take(bpf, st.attached(), spawn)?);
            Ok(())
        },
    },
    Entry {
        object: &tcp::OBJECT,
        take: |bpf, ebpf, st| {
            ebpf.tcp = tcp::Tcp::take(bpf, st.attached());
            Ok(())
        },
    },
    Entry {
        object: &skb_drop::OBJECT,
        take: |bpf, ebpf, st| {
            let names = std::mem::replace(&mut st.skb_drop_names, Err("already used".into()));
            ebpf.skb_drop = skb_drop::SkbDrop::take(bpf, st.attached(), names);
            Ok(())
        },
    },
    Entry {
        object: &blockio::BTF_OBJECT,
        take: take_blockio,
    },
    Entry {
        object: &blockio::OBJECT,
        take: take_blockio,
    },
];

/// Each block I/O object's maps only when its own completion program attached.
#[allow(
    clippy::unnecessary_wraps,
    reason = "the signature every take of the table has"
)]
fn take_blockio(bpf: &mut aya::Ebpf, ebpf: &mut Ebpf, st: &mut Start) -> Result<(), Unavailable> {
    if let Some(b) = blockio::BlockIo::take(bpf, st.attached(), st.object, &st.paths) {
        ebpf.blockio = Some(b);
    }
    Ok(())
}

fn objects() -> impl Iterator<Item = &'static ObjectSpec> {
    OBJECTS.iter().map(|e| e.object)
}

/// The load specs, for diagnostics and tests.
pub fn program_specs() -> impl Iterator<Item = &'static ProgramSpec> {
    objects().flat_map(|o| o.programs.iter())
}

/// Options for [`Ebpf::start_with`].
#[derive(Clone, Debug)]
pub struct EbpfConfig {
    /// Mount tracefs at `/sys/kernel/tracing` when no tracefs is mounted
    /// (tracepoint attach looks up event ids there). Needs root.
    pub mount_tracefs: bool,
    /// Turn on the kernel's per-program run time accounting
    /// (`BPF_ENABLE_STATS`, held while the agent runs) and export
    /// `nodewatch_agent_ebpf_run_seconds_total{program}` and
    /// `nodewatch_agent_ebpf_run_count_total{program}`. Costs two clock
    /// reads per program run, so off by default.
    pub measure_cost: bool,
    /// Use this lockdown mode instead of reading it from the kernel (to run
    /// as under `confidentiality` on a host that is not, e.g. in tests).
    pub lockdown_override: Option<Lockdown>,
    /// Load `tp_btf` programs (default). Off: classic tracepoints only, as
    /// on a kernel where `tp_btf` does not attach (tests of the fallbacks).
    pub btf_tracepoints: bool,
    /// Pod names for OOM events: a cache the caller refreshes from the
    /// kubelet's pod list ([`pods::PodCache::replace_from_json`]). `None`:
    /// a new empty cache (see [`Ebpf::pods`]).
    pub pods: Option<pods::SharedPods>,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        Self {
            mount_tracefs: true,
            measure_cost: false,
            lockdown_override: None,
            btf_tracepoints: true,
            pods: None,
        }
    }
}

/// Run time per program, exported when [`EbpfConfig::measure_cost`] is on
/// (per-event cost is measured, `ebpf/README.md`).
pub const COST_SECONDS: &str = "nodewatch_agent_ebpf_run_seconds_total";
/// Runs per program, next to [`COST_SECONDS`]; their ratio is the cost per event.
pub const COST_COUNT: &str = "nodewatch_agent_ebpf_run_count_total";

/// Per-program cost counters from the kernel (`bpf_prog_info`).
#[derive(Clone, Debug)]
pub struct ProgramCost {
    pub program: &'static str,
    pub run_time_ns: u64,
    pub run_count: u64,
}

/// The loaded eBPF programs. Dropping it stops the OOM reader thread and
/// detaches every program.
pub struct Ebpf {
    // Field order is drop order: stop the reader before the objects go.
    oom: Option<oom::Oom>,
    oom_state: Arc<OomState>,
    pods: pods::SharedPods,
    tcp: Option<tcp::Tcp>,
    skb_drop: Option<skb_drop::SkbDrop>,
    blockio: Option<blockio::BlockIo>,
    programs: Vec<(ProgramSpec, ProgramState)>,
    objects: Vec<aya::Ebpf>,
    lockdown: Option<Lockdown>,
    /// Whether the OOM program reads the victim's comm from kernel memory.
    oom_reads_kernel: bool,
    /// Held to keep the kernel's BPF run-time statistics on (`BPF_ENABLE_STATS`);
    /// closing it turns them off again.
    stats_guard: Option<OwnedFd>,
    /// Whether cost measurement was asked for: the run time and count
    /// series are exported only then.
    export_cost: bool,
}

/// Reads what loading needs from the kernel: its BTF (parsed once for every
/// object's CO-RE relocations and every `tp_btf` attach; each parse takes
/// seconds on a slow machine), the drop reason names (from a scan of the
/// same bytes, which are let go before any object loads: `ebpf/README.md`,
/// "Agent memory"), and where tracefs is.
fn read_kernel(
    btf_path: &std::path::Path,
    lockdown: Option<Lockdown>,
    cfg: &EbpfConfig,
) -> (Kernel, Result<skb_drop::ReasonNames, String>) {
    // Without tracefs events only the `tp_btf` programs can attach.
    let tracefs = tracefs::ensure_tracefs(cfg.mount_tracefs);
    if let Err(why) = &tracefs {
        tracing::info!(reason = %why, "Classic tracepoints unavailable; BTF tracepoints only.");
    }
    let btf_bytes = std::fs::read(btf_path).map_err(|e| format!("{}: {e}", btf_path.display()));
    let btf = btf_bytes
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|b| aya::Btf::parse(b, aya::Endianness::default()).map_err(|e| e.to_string()));
    let names = btf_bytes
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|b| skb_drop::reason_names_from_btf(b));
    let kernel = Kernel {
        lockdown,
        tracefs,
        btf,
        btf_tracepoints: cfg.btf_tracepoints,
    };
    (kernel, names)
}

impl Ebpf {
    /// Loads and attaches every program with the default options.
    pub fn start(paths: &Paths, events: EventSender) -> Result<Self, Unavailable> {
        Self::start_with(paths, events, &EbpfConfig::default())
    }

    /// Loads and attaches every program. Fails (once, with the reason) when
    /// BPF cannot run here at all: no kernel BTF, no permission, no tracefs,
    /// or the required OOM program cannot attach. Optional programs that fail
    /// are logged, skipped and reported in `nodewatch_agent_ebpf_programs`.
    pub fn start_with(
        paths: &Paths,
        events: EventSender,
        cfg: &EbpfConfig,
    ) -> Result<Self, Unavailable> {
        let btf_path = paths.sys("kernel/btf/vmlinux");
        if !btf_path.exists() {
            return Err(Unavailable(format!(
                "eBPF off: no kernel BTF at {} (CO-RE programs need CONFIG_DEBUG_INFO_BTF)",
                btf_path.display()
            )));
        }
        let lockdown = cfg.lockdown_override.or_else(|| lockdown(paths));
        // `EbpfLoader::new` parses the kernel's BTF itself, every time:
        // one loader serves every object, and its own parse is let go before
        // ours is made, so two parses are never held at once.
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        release_freed_memory();
        let (kernel, names) = read_kernel(&btf_path, lockdown, cfg);
        let mut state = Self {
            oom: None,
            oom_state: Arc::new(OomState::default()),
            pods: cfg.pods.clone().unwrap_or_default(),
            tcp: None,
            skb_drop: None,
            blockio: None,
            programs: Vec::new(),
            objects: Vec::new(),
            lockdown,
            oom_reads_kernel: false,
            stats_guard: None,
            export_cost: cfg.measure_cost,
        };
        let mut start = Start {
            paths: paths.clone(),
            programs: Vec::new(),
            events: Some(events),
            skb_drop_names: names,
            object: OBJECTS[0].object,
        };
        for entry in OBJECTS {
            state.load_entry(entry, &mut loader, &kernel, &mut start)?;
        }
        // The parsed kernel BTF is the largest thing start-up allocates;
        // nothing needs it once every program is loaded and attached.
        drop(loader);
        drop(kernel);
        let Start { programs, .. } = start;
        release_freed_memory();
        state.programs = programs;
        state.finish_start(cfg);
        Ok(state)
    }

    /// Loads one object of the table, attaches its programs and takes its
    /// maps; a fallback object whose primary attached is skipped.
    fn load_entry<'k>(
        &mut self,
        entry: &Entry,
        loader: &mut EbpfLoader<'k>,
        kernel: &'k Kernel,
        start: &mut Start,
    ) -> Result<(), Unavailable> {
        let obj = entry.object;
        if let Some(primary) = obj
            .instead_of
            .and_then(|name| objects().find(|o| o.name == name))
            .and_then(|o| start.attached().first_of(o))
        {
            // The preferred object does the job: loading this one would
            // only create its maps and attach programs with nothing to add.
            for spec in obj.programs {
                let st = ProgramState::Skipped(format!("not needed: {} attached", primary.program));
                log_state(spec, &st);
                start.programs.push((*spec, st));
            }
            return Ok(());
        }
        let first = self.objects.is_empty();
        let Some(Loaded {
            mut bpf,
            reads_kernel,
        }) = load_object(obj, loader, kernel, &mut start.programs, first)?
        else {
            return Ok(());
        };
        if obj.read_kernel_switch {
            self.oom_reads_kernel = reads_kernel;
        }
        start.object = obj;
        (entry.take)(&mut bpf, self, start)?;
        // An object none of whose programs attached (the block tp_btf
        // object on a kernel without `request_queue.disk`) would only keep its maps.
        if start.attached().first_of(obj).is_some() {
            self.objects.push(bpf);
        }
        Ok(())
    }

    /// Turns on cost measurement when asked, and logs the outcome.
    fn finish_start(&mut self, cfg: &EbpfConfig) {
        if cfg.measure_cost {
            match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => self.stats_guard = Some(fd),
                // Still exported: with `kernel.bpf_stats_enabled=1` set by the
                // operator the counters grow; otherwise they stay at 0, visibly.
                Err(error) => {
                    tracing::warn!(%error, "Could not turn on BPF run time statistics (sysctl kernel.bpf_stats_enabled=1 does it for the whole host).");
                }
            }
        }
        let attached = self
            .programs
            .iter()
            .filter(|(_, s)| *s == ProgramState::Attached)
            .count();
        tracing::info!(
            attached,
            total = self.programs.len(),
            lockdown = ?self.lockdown,
            "eBPF programs loaded."
        );
    }

    /// Each program's start-up outcome.
    #[must_use]
    pub fn programs(&self) -> &[(ProgramSpec, ProgramState)] {
        &self.programs
    }

    /// The pod name cache OOM events are resolved against: refresh it with
    /// [`pods::PodCache::replace_from_json`] from the kubelet's `/pods`.
    #[must_use]
    pub fn pods(&self) -> pods::SharedPods {
        self.pods.clone()
    }

    /// Whether this agent turned on the kernel's BPF run-time statistics.
    #[must_use]
    pub fn measuring_cost(&self) -> bool {
        self.stats_guard.is_some()
    }

    /// The lockdown mode the programs were chosen for.
    #[must_use]
    pub fn lockdown(&self) -> Option<Lockdown> {
        self.lockdown
    }

    /// Whether the OOM program was loaded with its kernel memory read (off
    /// under `lockdown=confidentiality`: the comm then comes from `/proc`).
    #[must_use]
    pub fn oom_reads_kernel(&self) -> bool {
        self.oom_reads_kernel
    }

    /// OOM records decoded so far.
    #[must_use]
    pub fn oom_records(&self) -> u64 {
        self.oom_state.records.load(Ordering::Relaxed)
    }

    /// Run time and count per attached program. Counts only grow while
    /// statistics are on (`EbpfConfig::measure_cost` or `kernel.bpf_stats_enabled=1`).
    #[must_use]
    pub fn costs(&self) -> Vec<ProgramCost> {
        let mut out = Vec::new();
        for bpf in &self.objects {
            for (name, prog) in bpf.programs() {
                let Some(spec) = program_specs().find(|s| s.program == name) else {
                    continue;
                };
                if let Ok(info) = prog.info() {
                    out.push(ProgramCost {
                        program: spec.program,
                        run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                        run_count: info.run_count(),
                    });
                }
            }
        }
        out
    }
}

impl Collector for Ebpf {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        for (spec, st) in &self.programs {
            for state in ["attached", "failed", "skipped"] {
                sink.gauge(
                    "nodewatch_agent_ebpf_programs",
                    "eBPF programs by start-up outcome (1 for the program's state).",
                    &[("program", spec.program), ("state", state)],
                    if st.label() == state { 1.0 } else { 0.0 },
                );
            }
        }

        self.oom_state.export_kills(sink);
        oom::export_lost(
            self.oom.as_ref(),
            self.oom_state.channel_dropped.load(Ordering::Relaxed),
            sink,
        );

        if let Some(t) = &self.tcp {
            t.collect(sink)?;
        }
        if let Some(s) = &self.skb_drop {
            s.collect(sink)?;
        }
        if let Some(b) = &mut self.blockio {
            b.collect(sink)?;
        }

        if self.export_cost {
            for c in self.costs() {
                sink.counter(
                    COST_SECONDS,
                    "Time spent in each eBPF program (kernel BPF statistics, BPF_ENABLE_STATS).",
                    &[("program", c.program)],
                    c.run_time_ns as f64 / 1e9,
                );
                sink.counter(
                    COST_COUNT,
                    "Runs of each eBPF program (kernel BPF statistics, BPF_ENABLE_STATS).",
                    &[("program", c.program)],
                    c.run_count as f64,
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn btf_twins_stand_in_for_classic_programs_of_their_object() {
        for o in objects() {
            for (i, p) in o.programs.iter().enumerate() {
                if let Some(classic) = p.instead_of {
                    let c = o.programs[..i].iter().find(|c| c.program == classic);
                    let c = c.unwrap_or_else(|| panic!("{}: {classic} not before it", p.program));
                    assert_eq!(c.attach, Attach::TracePoint, "{}", p.program);
                    assert_eq!(p.attach, Attach::BtfTracePoint, "{}", p.program);
                    assert_eq!((c.category, c.tracepoint), (p.category, p.tracepoint));
                    assert!(!p.required, "{}", p.program);
                }
            }
        }
        // The required OOM record has a twin: OOM kills come from BPF under
        // lockdown=confidentiality too.
        assert!(program_specs().any(|s| s.instead_of == Some("oom_mark_victim")));
    }

    #[test]
    fn specs_are_consistent() {
        let names: Vec<_> = program_specs().map(|s| s.program).collect();
        let mut dedup = names.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(names.len(), dedup.len());
        assert!(program_specs().any(|s| s.required && s.tracepoint == "mark_victim"));
        let all: Vec<_> = objects().collect();
        for (i, o) in all.iter().enumerate() {
            // ELF magic: the committed objects are real BPF objects.
            assert_eq!(o.bytes.get(..4), Some(&b"\x7fELF"[..]), "{}", o.name);
            // A fallback names an object loaded before it, which has no
            // required program (it may be skipped) and no fallback itself.
            if let Some(primary) = o.instead_of {
                let p = all[..i].iter().find(|p| p.name == primary).unwrap();
                assert!(p.programs.iter().all(|s| !s.required), "{}", o.name);
                assert!(p.instead_of.is_none(), "{}", o.name);
                assert!(o.programs.iter().all(|s| !s.required), "{}", o.name);
            }
        }
    }
}
