//! Loading one object and attaching its programs: the variants of an object
//! with a kernel memory switch, classic tracepoints and their `tp_btf`
//! twins, required programs, and the outcome of each.

use std::path::Path;

use aya::programs::{BtfTracePoint, TracePoint};
use aya::EbpfLoader;

use super::lockdown::Lockdown;
use super::spec::{Attach, Attached, ObjectSpec, ProgramSpec, ProgramState, READ_KERNEL};
use crate::collector::Unavailable;

/// What every object's load and attach needs from the kernel, read once.
pub(super) struct Kernel {
    pub lockdown: Option<Lockdown>,
    /// The tracefs directory for classic tracepoints, or why there is none.
    pub tracefs: Result<&'static str, String>,
    /// The kernel's parsed BTF, for CO-RE relocations and `tp_btf` attach.
    pub btf: Result<aya::Btf, String>,
    /// Load `tp_btf` programs ([`super::EbpfConfig::btf_tracepoints`]).
    pub btf_tracepoints: bool,
}

/// A loaded object whose required programs attached.
pub(super) struct Loaded {
    pub bpf: aya::Ebpf,
    /// Whether it was loaded with its kernel memory reads on.
    pub reads_kernel: bool,
}

/// The values of [`READ_KERNEL`] to try, in order. Where the lockdown mode
/// could not be read, try with the read and fall back to the variant without it.
fn read_kernel_variants(object: &ObjectSpec, lockdown: Option<Lockdown>) -> &'static [u32] {
    if !object.read_kernel_switch {
        return &[0];
    }
    match lockdown {
        Some(Lockdown::Confidentiality) => &[0],
        Some(_) => &[1],
        None => &[1, 0],
    }
}

/// Loads `object` and attaches its programs, pushing each program's outcome
/// onto `programs`. `Ok(None)`: the object could not load and has no
/// required program. `Err`: BPF cannot run here (`first`: no object was kept
/// before this one, so a permission error means BPF itself is refused), or a
/// required program cannot attach.
pub(super) fn load_object<'k>(
    object: &ObjectSpec,
    loader: &mut EbpfLoader<'k>,
    kernel: &'k Kernel,
    programs: &mut Vec<(ProgramSpec, ProgramState)>,
    first: bool,
) -> Result<Option<Loaded>, Unavailable> {
    let variants = read_kernel_variants(object, kernel.lockdown);
    for (i, read_kernel) in variants.iter().enumerate() {
        let last = i + 1 == variants.len();
        if let Ok(btf) = &kernel.btf {
            loader.btf(Some(btf));
        }
        // For an object without the variable the override is ignored.
        loader.override_global(READ_KERNEL, read_kernel, object.read_kernel_switch);
        let mut bpf = match loader.load(object.bytes) {
            Ok(b) => b,
            Err(e) => {
                if is_permission_error(&e) && first {
                    return Err(Unavailable(format!(
                        "eBPF off: the kernel refused to load BPF objects ({e}); needs CAP_BPF and CAP_PERFMON (or root)"
                    )));
                }
                if !last {
                    continue;
                }
                fail_object(
                    object,
                    &format!("loading {}.bpf.o: {e}", object.name),
                    programs,
                )?;
                return Ok(None);
            }
        };
        let states = attach_all(&mut bpf, object, kernel);
        if let Some((spec, st)) = required_failed(&states) {
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
            log_state(&spec, &st);
            programs.push((spec, st));
        }
        return Ok(Some(Loaded {
            bpf,
            reads_kernel: *read_kernel == 1,
        }));
    }
    Ok(None)
}

/// Marks every program of an object that could not load as failed; `Err`
/// when one of them is required.
fn fail_object(
    object: &ObjectSpec,
    msg: &str,
    programs: &mut Vec<(ProgramSpec, ProgramState)>,
) -> Result<(), Unavailable> {
    for spec in object.programs {
        if spec.required {
            return Err(Unavailable(format!("eBPF off: {msg}")));
        }
        tracing::warn!(program = spec.program, error = %msg, "eBPF program skipped.");
        programs.push((*spec, ProgramState::Failed(msg.to_string())));
    }
    Ok(())
}

/// Attaches each program of a loaded object in order; a `tp_btf` twin only
/// where its classic program did not attach.
fn attach_all(
    bpf: &mut aya::Ebpf,
    object: &ObjectSpec,
    kernel: &Kernel,
) -> Vec<(ProgramSpec, ProgramState)> {
    let mut states: Vec<(ProgramSpec, ProgramState)> = Vec::new();
    for spec in object.programs {
        let st = match spec.instead_of {
            Some(classic) if Attached(&states).has(classic) => {
                ProgramState::Skipped(format!("not needed: {classic} attached"))
            }
            _ if spec.attach == Attach::BtfTracePoint && !kernel.btf_tracepoints => {
                ProgramState::Skipped("BTF tracepoints turned off".into())
            }
            _ => attach(
                bpf,
                spec,
                kernel.tracefs.as_deref().map_err(String::as_str),
                kernel.btf.as_ref(),
            ),
        };
        states.push((*spec, st));
    }
    states
}

/// A required program that did not attach and has no twin that did.
fn required_failed(states: &[(ProgramSpec, ProgramState)]) -> Option<&(ProgramSpec, ProgramState)> {
    states.iter().find(|(spec, st)| {
        spec.required
            && *st != ProgramState::Attached
            && !states.iter().any(|(twin, tst)| {
                twin.instead_of == Some(spec.program) && *tst == ProgramState::Attached
            })
    })
}

/// Logs one program's outcome.
pub(super) fn log_state(spec: &ProgramSpec, st: &ProgramState) {
    match st {
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

/// Hands the heap freed after loading back to the system: glibc keeps freed
/// memory in its arenas (counted in RSS) until asked; musl's allocator
/// returns freed large blocks by itself.
#[cfg(target_env = "gnu")]
#[allow(unsafe_code)]
pub(super) fn release_freed_memory() {
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
pub(super) fn release_freed_memory() {}

/// Loads and attaches one program; its outcome.
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
