//! Load specs as data: which object holds which programs, where each
//! attaches, which are required and which stand in for another, and what
//! happened to each at start-up.

/// An embedded object, 8-byte aligned so the ELF parser can read its headers
/// in place (`include_bytes!` alone only guarantees byte alignment).
#[repr(C, align(8))]
pub(super) struct Aligned<B: ?Sized>(pub B);

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
    /// A required program that cannot load makes [`super::Ebpf::start`] fail; an
    /// optional one is logged and skipped.
    pub required: bool,
    /// Tried only when the named program of the same object (listed before
    /// it) did not attach, and then stands in for it: a required program is
    /// satisfied by its stand-in. The `tp_btf` twins of classic tracepoint
    /// programs, for kernels where tracefs lists no events
    /// (`lockdown=confidentiality`).
    pub instead_of: Option<&'static str>,
}

/// The global that turns an object's kernel memory reads
/// (`bpf_probe_read_kernel`) on (1) or off (0).
pub(super) const READ_KERNEL: &str = "cfg_read_kernel";

/// One object file and its programs.
pub(super) struct ObjectSpec {
    pub name: &'static str,
    pub bytes: &'static [u8],
    pub programs: &'static [ProgramSpec],
    /// A fallback: loaded only when no program of the named object (listed
    /// earlier) attached. Its programs are otherwise reported as skipped.
    pub instead_of: Option<&'static str>,
    /// Whether the object has the global [`READ_KERNEL`], set from the
    /// lockdown mode.
    pub read_kernel_switch: bool,
}

/// An object that stands in for no other and has no kernel memory switch.
pub(super) const fn object(
    name: &'static str,
    bytes: &'static [u8],
    programs: &'static [ProgramSpec],
) -> ObjectSpec {
    ObjectSpec {
        name,
        bytes,
        programs,
        instead_of: None,
        read_kernel_switch: false,
    }
}

/// An optional classic tracepoint program.
pub(super) const fn tp(
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

/// An optional `tp_btf` program with no classic twin.
pub(super) const fn btf(
    program: &'static str,
    category: &'static str,
    tracepoint: &'static str,
) -> ProgramSpec {
    ProgramSpec {
        attach: Attach::BtfTracePoint,
        program,
        category,
        tracepoint,
        required: false,
        instead_of: None,
    }
}

/// The `tp_btf` twin of classic tracepoint program `classic`: the same
/// maps, attached by BTF name only where `classic` could not attach.
pub(super) const fn btf_twin(
    program: &'static str,
    category: &'static str,
    tracepoint: &'static str,
    classic: &'static str,
) -> ProgramSpec {
    ProgramSpec {
        instead_of: Some(classic),
        ..btf(program, category, tracepoint)
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
    pub(super) fn label(&self) -> &'static str {
        match self {
            ProgramState::Attached => "attached",
            ProgramState::Failed(_) => "failed",
            ProgramState::Skipped(_) => "skipped",
        }
    }
}

/// The start-up outcome of the programs so far, to ask which attached.
#[derive(Clone, Copy)]
pub struct Attached<'a>(pub(super) &'a [(ProgramSpec, ProgramState)]);

impl Attached<'_> {
    /// Whether `program` attached.
    #[must_use]
    pub fn has(&self, program: &str) -> bool {
        self.0
            .iter()
            .any(|(s, st)| s.program == program && *st == ProgramState::Attached)
    }

    /// Whether any of `programs` attached.
    #[must_use]
    pub fn any(&self, programs: &[&str]) -> bool {
        programs.iter().any(|p| self.has(p))
    }

    /// The first program of `object` that attached.
    pub(super) fn first_of(&self, object: &ObjectSpec) -> Option<&'static ProgramSpec> {
        object.programs.iter().find(|p| self.has(p.program))
    }
}

/// Takes map `name` out of a loaded object as the map type `T`; `None` when
/// the object has no such map or it is of another kind.
pub(super) fn take_map<T: TryFrom<aya::maps::Map>>(bpf: &mut aya::Ebpf, name: &str) -> Option<T> {
    bpf.take_map(name).and_then(|m| T::try_from(m).ok())
}
