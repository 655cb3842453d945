//! eBPF signals: OOM kills as they happen, TCP retransmits and resets, packet
//! drops by kernel drop reason, block I/O latency histograms.
//!
//! The BPF programs are C in `ebpf/` at the repository root, compiled by
//! `ebpf/build.sh` into the committed `ebpf/*.bpf.o` that are embedded here,
//! so building the agent needs no clang. They are loaded with aya and attach
//! to tracepoints only, classic and `tp_btf` (no kprobes, no fentry: both are
//! refused on some kernels, see design §6).
//!
//! # Layout
//! - this file: load specs, the loader ([`Ebpf::start`]), lockdown and
//!   tracefs handling, the [`Collector`] that exports every map.
//! - [`tcp`], [`skb_drop`], [`blockio`]: one module per program's maps.

pub mod blockio;
pub mod skb_drop;
pub mod tcp;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::{BtfTracePoint, TracePoint};
use aya::EbpfLoader;

use crate::collector::{CollectError, Collector, EventSender, Paths, Sink, Unavailable};
use crate::containers::pods;

/// An embedded object, 8-byte aligned so the ELF parser can read its headers
/// in place (`include_bytes!` alone only guarantees byte alignment).
#[repr(C, align(8))]
struct Aligned<B: ?Sized>(B);

static OOM_OBJ: &Aligned<[u8]> = &Aligned(*include_bytes!("../../../ebpf/oom.bpf.o"));
static TCP_OBJ: &Aligned<[u8]> = &Aligned(*include_bytes!("../../../ebpf/tcp.bpf.o"));
static SKB_DROP_OBJ: &Aligned<[u8]> = &Aligned(*include_bytes!("../../../ebpf/skb_drop.bpf.o"));
static BLOCKIO_OBJ: &Aligned<[u8]> = &Aligned(*include_bytes!("../../../ebpf/blockio.bpf.o"));
static BLOCKIO_BTF_OBJ: &Aligned<[u8]> =
    &Aligned(*include_bytes!("../../../ebpf/blockio_btf.bpf.o"));

/// How a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// Classic tracepoint: reads the fixed-layout record only.
    TracePoint,
    /// BTF-typed raw tracepoint (`tp_btf`): gets the tracepoint's typed
    /// arguments (kernel pointers), resolved against the kernel's BTF.
    BtfTracePoint,
}

/// One BPF program and where it attaches.
#[derive(Clone, Copy, Debug)]
pub struct ProgramSpec {
    pub attach: Attach,
    /// Function name in the object (`SEC("tracepoint/...") int <program>(...)`).
    pub program: &'static str,
    /// Tracepoint group and event, as under `/sys/kernel/tracing/events/`.
    pub category: &'static str,
    pub tracepoint: &'static str,
    /// A required program that cannot load makes [`Ebpf::start`] fail; an
    /// optional one is logged and skipped.
    pub required: bool,
    /// Tried only when the named program of the same object (listed before
    /// it) did not attach, and then stands in for it: a required program is
    /// satisfied by its stand-in. The `tp_btf` twins of classic tracepoint
    /// programs, for kernels where tracefs lists no events
    /// (`lockdown=confidentiality`).
    pub instead_of: Option<&'static str>,
}

/// One object file and its programs.
struct ObjectSpec {
    name: &'static str,
    bytes: &'static [u8],
    programs: &'static [ProgramSpec],
    /// A fallback: loaded only when no program of the named object (listed
    /// earlier) attached. Its programs are otherwise reported as skipped.
    instead_of: Option<&'static str>,
}

const fn tp(
    program: &'static str,
    category: &'static str,
    tracepoint: &'static str,
    required: bool,
) -> ProgramSpec {
    ProgramSpec {
        attach: Attach::TracePoint,
        program,
        category,
        tracepoint,
        required,
        instead_of: None,
    }
}

/// The `tp_btf` twin of classic tracepoint program `classic`: the same
/// maps, attached by BTF name only where `classic` could not attach.
const fn btf_twin(
    program: &'static str,
    category: &'static str,
    tracepoint: &'static str,
    classic: &'static str,
) -> ProgramSpec {
    ProgramSpec {
        attach: Attach::BtfTracePoint,
        program,
        category,
        tracepoint,
        required: false,
        instead_of: Some(classic),
    }
}

/// The OOM victim's memory cgroup comes from walking kernel pointers from its
/// task: optional (the classic record plus /proc still attribute most kills).
/// BTF-checked loads are not `bpf_probe_read_kernel`: this loads under
/// `lockdown=confidentiality` too (seen on Debian's 6.12, `tests/tests/kernels.rs`).
const OOM_VICTIM_MEMCG: ProgramSpec = ProgramSpec {
    attach: Attach::BtfTracePoint,
    program: "oom_victim_memcg",
    category: "oom",
    tracepoint: "mark_victim",
    required: false,
    instead_of: None,
};

/// Block I/O latency from the completion's `struct request` alone: no
/// in-flight map and no issue program. Where it does not attach (no `disk`
/// in `request_queue` before v5.15, no `tp_btf`) the classic pair in
/// `blockio.bpf.o` takes over.
const BLOCK_RQ_COMPLETE_BTF: ProgramSpec = ProgramSpec {
    attach: Attach::BtfTracePoint,
    program: "block_rq_complete_btf",
    category: "block",
    tracepoint: "block_rq_complete",
    required: false,
    instead_of: None,
};

/// The load specs. OOM kills are the reason this module exists, so their
/// program is required; the rest add detail and are optional.
static OBJECTS: &[ObjectSpec] = &[
    ObjectSpec {
        name: "oom",
        bytes: &OOM_OBJ.0,
        instead_of: None,
        // Attach order is call order at the tracepoint (probes of equal
        // priority run in registration order, kernel/tracepoint.c): the
        // victim map entry is written before the ring record wakes the reader.
        programs: &[
            OOM_VICTIM_MEMCG,
            tp("oom_mark_victim", "oom", "mark_victim", true),
            btf_twin(
                "oom_mark_victim_btf",
                "oom",
                "mark_victim",
                "oom_mark_victim",
            ),
        ],
    },
    ObjectSpec {
        name: "tcp",
        bytes: &TCP_OBJ.0,
        instead_of: None,
        programs: &[
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
    },
    ObjectSpec {
        name: "skb_drop",
        bytes: &SKB_DROP_OBJ.0,
        instead_of: None,
        programs: &[
            tp("skb_kfree_skb", "skb", "kfree_skb", false),
            btf_twin("skb_kfree_skb_btf", "skb", "kfree_skb", "skb_kfree_skb"),
        ],
    },
    ObjectSpec {
        name: "blockio_btf",
        bytes: &BLOCKIO_BTF_OBJ.0,
        programs: &[BLOCK_RQ_COMPLETE_BTF],
        instead_of: None,
    },
    ObjectSpec {
        name: "blockio",
        bytes: &BLOCKIO_OBJ.0,
        instead_of: Some("blockio_btf"),
        programs: &[
            tp("block_rq_issue", "block", "block_rq_issue", false),
            tp("block_rq_complete", "block", "block_rq_complete", false),
        ],
    },
];

/// The load specs, for diagnostics and tests.
pub fn program_specs() -> impl Iterator<Item = &'static ProgramSpec> {
    OBJECTS.iter().flat_map(|o| o.programs.iter())
}

/// Kernel lockdown mode (`/sys/kernel/security/lockdown`, Linux 5.4+).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lockdown {
    None,
    Integrity,
    /// BPF may not read kernel memory (`LOCKDOWN_BPF_READ_KERNEL`): Talos
    /// with `SecureBoot` up to 1.13.
    Confidentiality,
}

/// Parses `none [integrity] confidentiality`: the bracketed word is in force.
#[must_use]
pub fn parse_lockdown(text: &str) -> Option<Lockdown> {
    let start = text.find('[')?;
    let end = start + text.get(start..)?.find(']')?;
    match text.get(start + 1..end)? {
        "none" => Some(Lockdown::None),
        "integrity" => Some(Lockdown::Integrity),
        "confidentiality" => Some(Lockdown::Confidentiality),
        _ => None,
    }
}

/// The lockdown mode in force, from `/sys/kernel/security/lockdown` (mounting
/// securityfs when it is not). `None` when it cannot be read (kernel without
/// the lockdown LSM, or not root): the loader then tries and falls back.
#[must_use]
pub fn lockdown(paths: &Paths) -> Option<Lockdown> {
    let file = paths.sys("kernel/security/lockdown");
    let read = || {
        std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| parse_lockdown(&t))
    };
    if let Some(l) = read() {
        return Some(l);
    }
    // securityfs is not always mounted (minimal images, containers that
    // bind /sys without it): mount it when root, as systemd would.
    let dir = paths.sys("kernel/security");
    let empty = std::fs::read_dir(&dir).is_ok_and(|mut e| e.next().is_none());
    if empty && nix::unistd::geteuid().is_root() {
        if let Err(error) = nix::mount::mount(
            Some("securityfs"),
            &dir,
            Some("securityfs"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            None::<&str>,
        ) {
            tracing::debug!(%error, path = %dir.display(), "Could not mount securityfs.");
        }
    }
    read()
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

/// What happened to one program at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProgramState {
    Attached,
    /// Loading or attaching failed (the error).
    Failed(String),
    /// Not tried: tracepoint absent, or not allowed under lockdown.
    Skipped(String),
}

impl ProgramState {
    fn label(&self) -> &'static str {
        match self {
            ProgramState::Attached => "attached",
            ProgramState::Failed(_) => "failed",
            ProgramState::Skipped(_) => "skipped",
        }
    }
}

/// Run time per program, exported when [`EbpfConfig::measure_cost`] is on
/// (design §6: per-event cost is measured).
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
    oom_reader: Option<crate::oom::bpf::Reader>,
    oom_state: Arc<crate::oom::OomState>,
    pods: pods::SharedPods,
    oom_lost: Option<Array<MapData, u64>>,
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

/// Directories aya looks in for tracefs (`aya::programs::utils::find_tracefs_path`).
const TRACEFS_DIRS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// What one of [`TRACEFS_DIRS`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TracefsDir {
    /// tracefs with its `events/`: classic tracepoints can be attached.
    Events,
    /// tracefs is mounted but lists no events: lockdown=confidentiality
    /// (`LOCKDOWN_TRACEFS`) has the kernel create none of its files.
    Empty,
    /// Something else (nothing mounted, or another filesystem).
    NotTracefs,
}

/// What to do about tracefs, from what each directory holds.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TracefsPlan {
    Use(&'static str),
    /// Mount tracefs at the first directory, then look again.
    Mount,
    /// No usable tracefs; the reason. Classic tracepoints are skipped,
    /// `tp_btf` programs (attached by BTF name) are still tried.
    Without(String),
}

fn plan_tracefs(found: [TracefsDir; 2], mount_allowed: bool, root: bool) -> TracefsPlan {
    if let Some(i) = found.iter().position(|f| *f == TracefsDir::Events) {
        return TracefsPlan::Use(TRACEFS_DIRS[i]);
    }
    // Mounted but empty: mounting again would fail (EBUSY: the same
    // superblock on the same mount point) and would list nothing more.
    if let Some(i) = found.iter().position(|f| *f == TracefsDir::Empty) {
        return TracefsPlan::Without(format!(
            "tracefs at {} lists no events (the kernel hides them under lockdown=confidentiality)",
            TRACEFS_DIRS[i]
        ));
    }
    let target = TRACEFS_DIRS[0];
    if !mount_allowed {
        TracefsPlan::Without(format!(
            "tracefs is not mounted at {target} and mounting it is disabled"
        ))
    } else if !root {
        TracefsPlan::Without(format!(
            "tracefs is not mounted at {target} and the agent is not root to mount it (mount -t tracefs tracefs {target})"
        ))
    } else {
        TracefsPlan::Mount
    }
}

/// What `dir` holds: tracefs is recognised by its filesystem magic, not by
/// whether it can be listed (under lockdown=confidentiality it is empty).
fn look_at_tracefs(dir: &str) -> TracefsDir {
    let listable = |d: &Path| {
        std::fs::read_dir(d)
            .ok()
            .and_then(|mut e| e.next())
            .is_some()
    };
    if listable(&Path::new(dir).join("events")) {
        TracefsDir::Events
    } else if nix::sys::statfs::statfs(dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TRACEFS_MAGIC)
    {
        TracefsDir::Empty
    } else {
        TracefsDir::NotTracefs
    }
}

/// The tracefs directory whose `events/` classic tracepoints are attached
/// through, mounting tracefs when none is (minimal systems, and this
/// project's build machine, boot without it). `Err`: why there is none.
fn ensure_tracefs(cfg: &EbpfConfig) -> Result<&'static str, String> {
    let look = || TRACEFS_DIRS.map(look_at_tracefs);
    match plan_tracefs(look(), cfg.mount_tracefs, nix::unistd::geteuid().is_root()) {
        TracefsPlan::Use(dir) => Ok(dir),
        TracefsPlan::Without(why) => Err(why),
        TracefsPlan::Mount => {
            let target = TRACEFS_DIRS[0];
            nix::mount::mount(
                Some("tracefs"),
                target,
                Some("tracefs"),
                nix::mount::MsFlags::MS_NOSUID
                    | nix::mount::MsFlags::MS_NODEV
                    | nix::mount::MsFlags::MS_NOEXEC,
                None::<&str>,
            )
            .map_err(|e| format!("mounting tracefs at {target}: {e}"))?;
            tracing::info!(path = target, "Mounted tracefs for tracepoint programs.");
            match plan_tracefs(look(), false, false) {
                TracefsPlan::Use(dir) => Ok(dir),
                TracefsPlan::Without(why) => Err(why),
                TracefsPlan::Mount => Err(format!("tracefs at {target} is empty after mounting")),
            }
        }
    }
}

/// Whether an error says BPF itself is not allowed (rather than one program failing).
fn is_permission_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
                return true;
            }
        }
        let text = err.to_string();
        if text.contains("Operation not permitted") || text.contains("Permission denied") {
            return true;
        }
        cur = err.source();
    }
    false
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
        // Without tracefs events only the `tp_btf` programs can attach.
        let tracefs = ensure_tracefs(cfg);
        if let Err(why) = &tracefs {
            tracing::info!(reason = %why, "Classic tracepoints unavailable; BTF tracepoints only.");
        }
        let tracefs = tracefs.as_deref().map_err(String::as_str);
        // Read once, parsed once for every object's CO-RE relocations and
        // every `tp_btf` attach (each parse takes seconds on a slow machine);
        // the drop reason names come from a scan of the same bytes, which
        // are let go before any object loads (ebpf/README.md, "Agent memory").
        // `EbpfLoader::new` parses the kernel's BTF itself, every time:
        // one loader serves every object, and its own parse is let go before
        // ours is made, so two parses are never held at once.
        let mut obj_loader = EbpfLoader::new();
        obj_loader.btf(None);
        release_freed_memory();
        let btf_bytes =
            std::fs::read(&btf_path).map_err(|e| format!("{}: {e}", btf_path.display()));
        let kernel_btf = btf_bytes.as_ref().map_err(Clone::clone).and_then(|b| {
            aya::Btf::parse(b, aya::Endianness::default()).map_err(|e| e.to_string())
        });
        let mut skb_drop_names = Some(
            btf_bytes
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|b| skb_drop::reason_names_from_btf(b)),
        );
        drop(btf_bytes);

        let mut events = Some(events);
        let mut programs = Vec::new();
        let mut objects = Vec::new();
        let mut state = Self {
            oom_reader: None,
            oom_state: Arc::new(crate::oom::OomState::default()),
            pods: cfg.pods.clone().unwrap_or_default(),
            oom_lost: None,
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

        for obj in OBJECTS {
            if let Some(primary) = obj.instead_of.and_then(|name| {
                OBJECTS.iter().find(|o| o.name == name).and_then(|o| {
                    o.programs
                        .iter()
                        .find(|p| attached_in(&programs, p.program))
                })
            }) {
                // The preferred object does the job: loading this one would
                // only create its maps and attach programs with nothing to add.
                for spec in obj.programs {
                    let why = format!("not needed: {} attached", primary.program);
                    tracing::info!(program = spec.program, reason = %why, "eBPF program skipped.");
                    programs.push((*spec, ProgramState::Skipped(why)));
                }
                continue;
            }
            // The OOM program reads the victim's comm with bpf_probe_read_kernel
            // unless told not to. Where the lockdown mode could not be read,
            // try with the read and fall back to the variant without it.
            let variants: &[u32] = if obj.name == "oom" {
                match lockdown {
                    Some(Lockdown::Confidentiality) => &[0],
                    Some(_) => &[1],
                    None => &[1, 0],
                }
            } else {
                &[0]
            };
            let mut loaded = None;
            for (i, read_kernel) in variants.iter().enumerate() {
                let last = i + 1 == variants.len();
                if let Ok(btf) = &kernel_btf {
                    obj_loader.btf(Some(btf));
                }
                // Only the OOM object has the variable; for the others the
                // override is ignored.
                obj_loader.override_global("cfg_read_kernel", read_kernel, obj.name == "oom");
                let mut bpf = match obj_loader.load(obj.bytes) {
                    Ok(b) => b,
                    Err(e) => {
                        if is_permission_error(&e) && objects.is_empty() {
                            return Err(Unavailable(format!(
                                "eBPF off: the kernel refused to load BPF objects ({e}); needs CAP_BPF and CAP_PERFMON (or root)"
                            )));
                        }
                        if !last {
                            continue;
                        }
                        let msg = format!("loading {}.bpf.o: {e}", obj.name);
                        for spec in obj.programs {
                            if spec.required {
                                return Err(Unavailable(format!("eBPF off: {msg}")));
                            }
                            tracing::warn!(program = spec.program, error = %msg, "eBPF program skipped.");
                            programs.push((*spec, ProgramState::Failed(msg.clone())));
                        }
                        break;
                    }
                };
                let mut states: Vec<(ProgramSpec, ProgramState)> = Vec::new();
                for spec in obj.programs {
                    let st = match spec.instead_of {
                        Some(classic) if attached_in(&states, classic) => {
                            ProgramState::Skipped(format!("not needed: {classic} attached"))
                        }
                        _ if spec.attach == Attach::BtfTracePoint && !cfg.btf_tracepoints => {
                            ProgramState::Skipped("BTF tracepoints turned off".into())
                        }
                        _ => attach(&mut bpf, spec, tracefs, kernel_btf.as_ref()),
                    };
                    states.push((*spec, st));
                }
                let required_failed = states.iter().find(|(spec, st)| {
                    spec.required
                        && *st != ProgramState::Attached
                        && !states.iter().any(|(twin, tst)| {
                            twin.instead_of == Some(spec.program) && *tst == ProgramState::Attached
                        })
                });
                if let Some((spec, st)) = required_failed {
                    if !last {
                        tracing::info!(program = spec.program, state = ?st, "Retrying without kernel memory reads.");
                        continue;
                    }
                    return Err(Unavailable(format!(
                        "eBPF off: required program {} ({}/{}): {st:?}",
                        spec.program, spec.category, spec.tracepoint
                    )));
                }
                for (spec, st) in states {
                    match &st {
                        ProgramState::Attached => {
                            tracing::debug!(program = spec.program, "eBPF program attached.");
                        }
                        ProgramState::Failed(error) => {
                            tracing::warn!(program = spec.program, %error, "eBPF program skipped.");
                        }
                        ProgramState::Skipped(reason) => {
                            tracing::info!(program = spec.program, %reason, "eBPF program skipped.");
                        }
                    }
                    programs.push((spec, st));
                }
                if obj.name == "oom" {
                    state.oom_reads_kernel = *read_kernel == 1;
                }
                loaded = Some(bpf);
                break;
            }
            let Some(mut bpf) = loaded else {
                continue;
            };
            let attached = |name: &str| attached_in(&programs, name);
            match obj.name {
                "oom" => {
                    state.oom_lost = bpf
                        .take_map("oom_events_lost")
                        .and_then(|m| Array::try_from(m).ok());
                    let ring = bpf
                        .take_map("oom_events")
                        .ok_or_else(|| {
                            Unavailable("eBPF off: oom.bpf.o has no oom_events map".into())
                        })
                        .and_then(|m| {
                            RingBuf::try_from(m)
                                .map_err(|e| Unavailable(format!("eBPF off: oom_events: {e}")))
                        })?;
                    let victims = if attached(OOM_VICTIM_MEMCG.program) {
                        bpf.take_map(crate::oom::bpf::VICTIMS_MAP)
                            .and_then(|m| HashMap::try_from(m).ok())
                    } else {
                        None
                    };
                    state.oom_reader = Some(
                        crate::oom::bpf::Reader::spawn(
                            ring,
                            victims,
                            state.pods.clone(),
                            paths.clone(),
                            events
                                .take()
                                .ok_or_else(|| Unavailable("eBPF off: two OOM objects".into()))?,
                            state.oom_state.clone(),
                        )
                        .map_err(|e| Unavailable(format!("eBPF off: OOM reader thread: {e}")))?,
                    );
                }
                "tcp" if attached("tcp_retransmit_skb") || attached("tcp_retransmit_skb_btf") => {
                    if let Some(m) = bpf
                        .take_map(tcp::MAP)
                        .and_then(|m| PerCpuArray::try_from(m).ok())
                    {
                        let resets = [
                            "tcp_send_reset",
                            "tcp_receive_reset",
                            "tcp_send_reset_btf",
                            "tcp_receive_reset_btf",
                        ]
                        .iter()
                        .any(|p| attached(p));
                        let peers = bpf
                            .take_map(tcp::PEERS_MAP)
                            .and_then(|p| HashMap::try_from(p).ok());
                        state.tcp = Some(tcp::Tcp::new(m, peers, resets));
                    }
                }
                "skb_drop" if attached("skb_kfree_skb") || attached("skb_kfree_skb_btf") => {
                    let names = skb_drop_names
                        .take()
                        .unwrap_or_else(|| Err("already used".into()))
                        .unwrap_or_else(|error| {
                            tracing::warn!(%error, "No drop reason names; reasons are exported as numbers.");
                            skb_drop::ReasonNames::new()
                        });
                    let core = bpf
                        .take_map(skb_drop::CORE_MAP)
                        .and_then(|m| PerCpuArray::try_from(m).ok());
                    let other = bpf
                        .take_map(skb_drop::MAP)
                        .and_then(|m| PerCpuHashMap::try_from(m).ok());
                    if let (Some(core), Some(other)) = (core, other) {
                        state.skb_drop = Some(skb_drop::SkbDrop::new(core, other, names));
                    }
                }
                // Each object's maps only when its own completion program attached.
                name @ ("blockio_btf" | "blockio")
                    if attached(if name == "blockio" {
                        "block_rq_complete"
                    } else {
                        BLOCK_RQ_COMPLETE_BTF.program
                    }) =>
                {
                    let slots = bpf
                        .take_map(blockio::SLOTS_MAP)
                        .and_then(|m| PerCpuArray::try_from(m).ok());
                    let hash = bpf
                        .take_map(blockio::MAP)
                        .and_then(|m| PerCpuHashMap::try_from(m).ok());
                    if let (Some(slots), Some(hash)) = (slots, hash) {
                        state.blockio = Some(blockio::BlockIo::new(slots, hash, paths.clone()));
                    }
                }
                _ => {}
            }
            // An object none of whose programs attached (the block tp_btf
            // object on a kernel without `request_queue.disk`) would only keep its maps.
            if obj
                .programs
                .iter()
                .any(|p| attached_in(&programs, p.program))
            {
                objects.push(bpf);
            }
        }

        // The parsed kernel BTF is the largest thing start-up allocates;
        // nothing needs it once every program is loaded and attached.
        drop(obj_loader);
        drop(kernel_btf);
        drop(skb_drop_names);
        release_freed_memory();

        if cfg.measure_cost {
            match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => state.stats_guard = Some(fd),
                // Still exported: with `kernel.bpf_stats_enabled=1` set by the
                // operator the counters grow; otherwise they stay at 0, visibly.
                Err(error) => {
                    tracing::warn!(%error, "Could not turn on BPF run time statistics (sysctl kernel.bpf_stats_enabled=1 does it for the whole host).");
                }
            }
        }
        let attached = programs
            .iter()
            .filter(|(_, s)| *s == ProgramState::Attached)
            .count();
        tracing::info!(
            attached,
            total = programs.len(),
            lockdown = ?lockdown,
            "eBPF programs loaded."
        );
        state.programs = programs;
        state.objects = objects;
        Ok(state)
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

/// Hands the heap freed after loading back to the system: glibc keeps freed
/// memory in its arenas (counted in RSS) until asked; musl's allocator
/// returns freed large blocks by itself.
#[cfg(target_env = "gnu")]
#[allow(unsafe_code)]
fn release_freed_memory() {
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
fn release_freed_memory() {}

/// Whether `program` is among `programs` and attached.
fn attached_in(programs: &[(ProgramSpec, ProgramState)], program: &str) -> bool {
    programs
        .iter()
        .any(|(s, st)| s.program == program && *st == ProgramState::Attached)
}

fn attach(
    bpf: &mut aya::Ebpf,
    spec: &ProgramSpec,
    tracefs: Result<&str, &str>,
    kernel_btf: Result<&aya::Btf, &String>,
) -> ProgramState {
    if spec.attach == Attach::TracePoint {
        // Classic tracepoints are attached by the event id tracefs lists.
        let tracefs = match tracefs {
            Ok(dir) => dir,
            Err(why) => return ProgramState::Skipped(why.to_string()),
        };
        let events = Path::new(tracefs)
            .join("events")
            .join(spec.category)
            .join(spec.tracepoint);
        if !events.exists() {
            return ProgramState::Skipped(format!(
                "no tracepoint {}/{} in this kernel",
                spec.category, spec.tracepoint
            ));
        }
    }
    let Some(prog) = bpf.program_mut(spec.program) else {
        return ProgramState::Failed("not in the object".into());
    };
    let result = match spec.attach {
        Attach::TracePoint => {
            let prog: &mut TracePoint = match prog.try_into() {
                Ok(p) => p,
                Err(e) => return ProgramState::Failed(e.to_string()),
            };
            prog.load()
                .map_err(|e| format!("load: {}", error_chain(&e)))
                .and_then(|()| {
                    prog.attach(spec.category, spec.tracepoint)
                        .map_err(|e| format!("attach: {}", error_chain(&e)))
                })
                .map(drop)
        }
        Attach::BtfTracePoint => {
            let prog: &mut BtfTracePoint = match prog.try_into() {
                Ok(p) => p,
                Err(e) => return ProgramState::Failed(e.to_string()),
            };
            let btf = match kernel_btf {
                Ok(b) => b,
                Err(e) => return ProgramState::Failed(format!("kernel BTF: {e}")),
            };
            prog.load(spec.tracepoint, btf)
                .map_err(|e| format!("load: {}", error_chain(&e)))
                .and_then(|()| {
                    prog.attach()
                        .map_err(|e| format!("attach: {}", error_chain(&e)))
                })
                .map(drop)
        }
    };
    // The program owns its link: it stays attached until the program is dropped.
    match result {
        Ok(()) => ProgramState::Attached,
        Err(e) => ProgramState::Failed(e),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

impl Collector for Ebpf {
    fn name(&self) -> &'static str {
        "ebpf"
    }

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
        let ring_lost = self
            .oom_lost
            .as_ref()
            .and_then(|m| m.get(&0, 0).ok())
            .unwrap_or(0);
        let help = "OOM events lost: ring buffer full in the kernel, or the event channel to the stream full.";
        sink.counter(
            "nodewatch_agent_ebpf_events_lost_total",
            help,
            &[("stage", "ringbuf")],
            ring_lost as f64,
        );
        sink.counter(
            "nodewatch_agent_ebpf_events_lost_total",
            help,
            &[("stage", "channel")],
            self.oom_state.channel_dropped.load(Ordering::Relaxed) as f64,
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
#[allow(clippy::unwrap_used, clippy::many_single_char_names)] // tests: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn lockdown_modes() {
        assert_eq!(
            parse_lockdown("none [integrity] confidentiality\n"),
            Some(Lockdown::Integrity)
        );
        assert_eq!(
            parse_lockdown("[none] integrity confidentiality\n"),
            Some(Lockdown::None)
        );
        assert_eq!(
            parse_lockdown("none integrity [confidentiality]\n"),
            Some(Lockdown::Confidentiality)
        );
        assert_eq!(parse_lockdown("none integrity confidentiality"), None);
        assert_eq!(parse_lockdown("]["), None);
        assert_eq!(parse_lockdown("[bogus]"), None);
    }

    #[test]
    fn lockdown_fuzz_no_panic() {
        let seed = b"none [integrity] confidentiality\n";
        for i in 0..seed.len() {
            for j in i..=seed.len() {
                let s = String::from_utf8_lossy(&seed[i..j]);
                let _ = parse_lockdown(&s);
                let mut m = seed.to_vec();
                m[i] = b"[]\xff "[j % 4];
                let _ = parse_lockdown(&String::from_utf8_lossy(&m));
            }
        }
    }

    #[test]
    fn tracefs_mounted_but_empty_is_not_mounted_again() {
        use TracefsDir::{Empty, Events, NotTracefs};
        // lockdown=confidentiality: tracefs is mounted (by the system, as
        // Talos does) but lists nothing. Mounting it again failed with EBUSY
        // and turned every program off; now only classic tracepoints go.
        let plan = plan_tracefs([Empty, NotTracefs], true, true);
        assert!(
            matches!(&plan, TracefsPlan::Without(why) if why.contains("/sys/kernel/tracing") && why.contains("confidentiality")),
            "{plan:?}"
        );
        assert!(matches!(
            plan_tracefs([NotTracefs, Empty], true, true),
            TracefsPlan::Without(_)
        ));
        assert_eq!(
            plan_tracefs([Empty, Events], true, true),
            TracefsPlan::Use("/sys/kernel/debug/tracing")
        );
        assert_eq!(
            plan_tracefs([Events, NotTracefs], false, false),
            TracefsPlan::Use("/sys/kernel/tracing")
        );
        assert_eq!(
            plan_tracefs([NotTracefs, NotTracefs], true, true),
            TracefsPlan::Mount
        );
        assert!(matches!(
            plan_tracefs([NotTracefs, NotTracefs], false, true),
            TracefsPlan::Without(why) if why.contains("disabled")
        ));
        assert!(matches!(
            plan_tracefs([NotTracefs, NotTracefs], true, false),
            TracefsPlan::Without(why) if why.contains("not root")
        ));
    }

    #[test]
    fn tracefs_of_this_host() {
        // A plain directory is not tracefs, however it is listed.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("events")).unwrap();
        std::fs::write(dir.path().join("events/x"), "").unwrap();
        assert_eq!(
            look_at_tracefs(dir.path().to_str().unwrap()),
            TracefsDir::Events
        );
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            look_at_tracefs(empty.path().to_str().unwrap()),
            TracefsDir::NotTracefs
        );
        // Where the host has tracefs mounted (tests/run.sh does), it is seen with its events.
        if nix::sys::statfs::statfs("/sys/kernel/tracing")
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TRACEFS_MAGIC)
        {
            assert_eq!(look_at_tracefs("/sys/kernel/tracing"), TracefsDir::Events);
        }
    }

    #[test]
    fn btf_twins_stand_in_for_classic_programs_of_their_object() {
        for o in OBJECTS {
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
        for (i, o) in OBJECTS.iter().enumerate() {
            // ELF magic: the committed objects are real BPF objects.
            assert_eq!(o.bytes.get(..4), Some(&b"\x7fELF"[..]), "{}", o.name);
            // A fallback names an object loaded before it, which has no
            // required program (it may be skipped) and no fallback itself.
            if let Some(primary) = o.instead_of {
                let p = OBJECTS[..i].iter().find(|p| p.name == primary).unwrap();
                assert!(p.programs.iter().all(|s| !s.required), "{}", o.name);
                assert!(p.instead_of.is_none(), "{}", o.name);
                assert!(o.programs.iter().all(|s| !s.required), "{}", o.name);
            }
        }
    }
}
