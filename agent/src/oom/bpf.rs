//! OOM kills from `ebpf/oom.bpf.c`: one ring-buffer record per victim,
//! attributed to a cgroup, pod and container in user space and sent as an
//! [`OomKill`] event at once.
//!
//! The record is decoded field by field from bytes (no pointer casts), so
//! this module needs no `unsafe`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use nodewatch_proto::v1::OomKill;

use super::{attribute_memcg, kill_time_ms, name_pod, wait_readable, OomState, ReaderThread};
use crate::collector::{EventSender, Paths};
use crate::containers::cgroup::{self, CgroupVersion, Memcg};
use crate::containers::pods::SharedPods;

/// `struct oom_event` in `ebpf/nodewatch.h`.
pub const OOM_EVENT_SIZE: usize = 96;
/// `struct oom_victim`.
pub const OOM_VICTIM_SIZE: usize = 32;
/// The map `oom_victim_memcg` fills: pid → [`OomVictim`].
pub const VICTIMS_MAP: &str = "oom_victims";

/// The victims map as aya sees it: the value is kept as raw bytes (a byte
/// array is already `aya::Pod`) and decoded by [`OomVictim::parse`].
pub type VictimsMap = BpfHashMap<MapData, u32, [u8; OOM_VICTIM_SIZE]>;
const COMM_LEN: usize = 16;

const HAVE_RSS: u32 = 0x1;
const HAVE_UID: u32 = 0x2;
const HAVE_COMM: u32 = 0x4;
const HAVE_SCORE_ADJ: u32 = 0x8;

/// Mirror of `struct oom_event` (`ebpf/nodewatch.h`), decoded from the ring buffer.
#[repr(C)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OomEvent {
    pub ktime_ns: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub killer_cgroup_id: u64,
    pub pid: u32,
    pub uid: u32,
    pub killer_tgid: u32,
    pub flags: u32,
    pub comm: [u8; COMM_LEN],
    pub killer_comm: [u8; COMM_LEN],
    pub oom_score_adj: i32,
    /// Explicit padding, as in the C struct.
    pub pad: u32,
}

const _: () = assert!(std::mem::size_of::<OomEvent>() == OOM_EVENT_SIZE);

impl OomEvent {
    /// Decodes a record (native endian: the kernel wrote it on this host).
    /// `None` when the record is shorter than the struct.
    #[must_use]
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < OOM_EVENT_SIZE {
            return None;
        }
        let u64_at = |o: usize| -> Option<u64> {
            Some(u64::from_ne_bytes(b.get(o..o + 8)?.try_into().ok()?))
        };
        let u32_at = |o: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?))
        };
        let comm_at =
            |o: usize| -> Option<[u8; COMM_LEN]> { b.get(o..o + COMM_LEN)?.try_into().ok() };
        Some(Self {
            ktime_ns: u64_at(0)?,
            anon_rss_kb: u64_at(8)?,
            file_rss_kb: u64_at(16)?,
            shmem_rss_kb: u64_at(24)?,
            killer_cgroup_id: u64_at(32)?,
            pid: u32_at(40)?,
            uid: u32_at(44)?,
            killer_tgid: u32_at(48)?,
            flags: u32_at(52)?,
            comm: comm_at(56)?,
            killer_comm: comm_at(72)?,
            oom_score_adj: i32::from_ne_bytes(b.get(88..92)?.try_into().ok()?),
            pad: 0,
        })
    }
}

/// Mirror of `struct oom_victim`: what the `tp_btf` program read from the victim's task.
#[repr(C)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OomVictim {
    /// Kernfs id of the victim's memory cgroup: the directory's inode number
    /// in the memory hierarchy (v1 `memory` or the unified one). 0: unknown.
    pub memcg_id: u64,
    pub tgid: u32,
    /// Explicit padding, as in the C struct.
    pub pad: u32,
    pub comm: [u8; COMM_LEN],
}

const _: () = assert!(std::mem::size_of::<OomVictim>() == OOM_VICTIM_SIZE);

impl OomVictim {
    #[must_use]
    pub fn parse(b: &[u8]) -> Option<Self> {
        Some(Self {
            memcg_id: u64::from_ne_bytes(b.get(0..8)?.try_into().ok()?),
            tgid: u32::from_ne_bytes(b.get(8..12)?.try_into().ok()?),
            pad: 0,
            comm: b.get(16..32)?.try_into().ok()?,
        })
    }
}

/// A NUL-terminated kernel `comm` as text.
#[must_use]
pub fn comm_str(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Reads what `/proc/<pid>` still says about a victim that is exiting.
#[derive(Debug, Default)]
struct ProcView {
    tgid: Option<u32>,
    comm: Option<String>,
    memcg: Option<Memcg>,
}

fn read_proc(paths: &Paths, pid: u32) -> ProcView {
    let mut v = ProcView {
        memcg: cgroup::memcg_of_pid(paths, pid),
        ..ProcView::default()
    };
    if let Ok(status) = std::fs::read_to_string(paths.proc(&format!("{pid}/status"))) {
        for line in status.lines() {
            if let Some(t) = line.strip_prefix("Tgid:") {
                v.tgid = t.trim().parse().ok();
            } else if let Some(n) = line.strip_prefix("Name:") {
                v.comm = Some(n.trim().to_string());
            }
        }
    }
    v
}

/// Turns a record into the wire event. The victim's cgroup comes from, in
/// order: the memory cgroup id the `tp_btf` program read from the victim's
/// task (`source = "ebpf"`); `/proc/<pid>/cgroup` while the victim still
/// exists (`"ebpf+procfs"`), except a v1 `/` which the kernel prints for any
/// exiting task (`proc_cgroup_show()`, kernel/cgroup/cgroup.c); the cgroup
/// of the task that ran the OOM killer, by id in the unified hierarchy
/// (`"ebpf"`; for a memcg OOM that task charged the same memcg, so its
/// cgroup is the victim's or a child of it). When the `tp_btf` program is not
/// loaded, the group whose OOM kill counter rose (`"ebpf+memory.events"`)
/// comes before the killer's cgroup.
#[must_use]
pub fn attribute(
    paths: &Paths,
    ev: &OomEvent,
    victim: Option<&OomVictim>,
    counters: Option<&mut cgroup::OomCounters>,
) -> OomKill {
    let proc_view = read_proc(paths, ev.pid);
    // Rescan on every event, used or not, so the baseline stays current.
    let counted = counters.and_then(cgroup::OomCounters::rescan);
    let mut used_proc = false;
    let mut kill = OomKill {
        pid: ev.pid,
        uid: if ev.flags & HAVE_UID != 0 { ev.uid } else { 0 },
        oom_score_adj: if ev.flags & HAVE_SCORE_ADJ != 0 {
            ev.oom_score_adj
        } else {
            0
        },
        killer_pid: ev.killer_tgid,
        killer_comm: comm_str(&ev.killer_comm),
        ..OomKill::default()
    };
    kill.tgid = match (victim, proc_view.tgid) {
        (Some(v), _) if v.tgid != 0 => v.tgid,
        (_, Some(t)) => {
            used_proc = true;
            t
        }
        _ => ev.pid,
    };
    kill.comm = if ev.flags & HAVE_COMM != 0 {
        comm_str(&ev.comm)
    } else if let Some(v) = victim.filter(|v| v.comm[0] != 0) {
        comm_str(&v.comm)
    } else if let Some(c) = &proc_view.comm {
        used_proc = true;
        c.clone()
    } else {
        String::new()
    };
    if ev.flags & HAVE_RSS != 0 {
        kill.rss_anon_bytes = ev.anon_rss_kb.saturating_mul(1024);
        kill.rss_file_bytes = ev.file_rss_kb.saturating_mul(1024);
        kill.rss_shmem_bytes = ev.shmem_rss_kb.saturating_mul(1024);
    }
    let from_victim = victim
        .filter(|v| v.memcg_id != 0)
        .and_then(|v| cgroup::memcg_of_id(paths, v.memcg_id));
    let from_proc = || {
        proc_view
            .memcg
            .clone()
            .filter(|m| !(m.version == CgroupVersion::V1 && m.path == "/"))
    };
    let from_killer = || {
        // Id 1 is the root of the unified hierarchy: no information.
        (ev.killer_cgroup_id > 1)
            .then(|| cgroup::path_of_cgroup_id(&cgroup::unified_root(paths), ev.killer_cgroup_id))
            .flatten()
            .map(|path| Memcg {
                path,
                version: CgroupVersion::V2,
            })
    };
    let mut used_counters = false;
    let memcg = if from_victim.is_some() {
        from_victim
    } else if let Some(m) = from_proc() {
        used_proc = true;
        Some(m)
    } else if counted.is_some() {
        used_counters = true;
        counted
    } else {
        from_killer()
    };
    kill.source = match (used_counters, used_proc) {
        (true, _) => "ebpf+memory.events",
        (false, true) => "ebpf+procfs",
        (false, false) => "ebpf",
    }
    .to_string();
    if let Some(m) = memcg {
        let limit = attribute_memcg(paths, &m, &mut kill);
        // A kill inside a limited memcg is that memcg's OOM; the root or an
        // unlimited group can only have been hit by a global OOM. (Heuristic:
        // a limited group can also lose a task to a global OOM.)
        kill.constraint = if m.path != "/" && limit > 0 {
            "memcg"
        } else {
            "global"
        }
        .to_string();
        kill.cgroup = m.path;
    }
    kill
}

/// Owns the thread that drains the ring buffer.
pub struct Reader {
    _thread: ReaderThread,
}

impl Reader {
    /// Starts the reader thread.
    pub fn spawn(
        ring: RingBuf<MapData>,
        victims: Option<VictimsMap>,
        pods: SharedPods,
        paths: Paths,
        events: EventSender,
        state: Arc<OomState>,
    ) -> std::io::Result<Self> {
        let thread = ReaderThread::spawn("nodewatch-ebpf-oom", move |stop| {
            run(ring, victims, &pods, &paths, &events, &state, stop);
        })?;
        Ok(Self { _thread: thread })
    }
}

/// How long to wait for the `tp_btf` program's entry if the ring record
/// arrives first. It is attached first, so it normally runs first; both run
/// in the same `trace_mark_victim()` call, so a lag is a preemption between
/// the two, rarely longer than a scheduler tick.
const VICTIM_GRACE: Duration = Duration::from_millis(10);

fn take_victim(victims: &mut Option<VictimsMap>, pid: u32) -> Option<OomVictim> {
    let map = victims.as_mut()?;
    let mut raw = map.get(&pid, 0).ok();
    if raw.is_none() {
        std::thread::sleep(VICTIM_GRACE);
        raw = map.get(&pid, 0).ok();
    }
    let _ = map.remove(&pid);
    OomVictim::parse(&raw?)
}

fn run(
    mut ring: RingBuf<MapData>,
    mut victims: Option<VictimsMap>,
    pods: &SharedPods,
    paths: &Paths,
    events: &EventSender,
    state: &OomState,
    stop: &AtomicBool,
) {
    use std::os::fd::AsFd;

    // Without the tp_btf program, the per-memcg OOM kill counters are the
    // fallback that still names the group on cgroup v1 hosts.
    let mut counters = victims
        .is_none()
        .then(|| cgroup::OomCounters::snapshot(paths));
    while !stop.load(Ordering::Relaxed) {
        if let Err(error) = wait_readable(ring.as_fd()) {
            tracing::warn!(%error, "OOM ring buffer poll failed; OOM events stop.");
            return;
        }
        // Copy records out first: attribution reads /proc and must not hold
        // the ring's slot (the kernel could not reuse it meanwhile).
        let mut batch = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(ev) = OomEvent::parse(&item) {
                batch.push(ev);
            }
        }
        for ev in batch {
            state.records.fetch_add(1, Ordering::Relaxed);
            let victim = take_victim(&mut victims, ev.pid);
            let mut kill = attribute(paths, &ev, victim.as_ref(), counters.as_mut());
            name_pod(pods, &mut kill);
            state.report(kill, kill_time_ms(ev.ktime_ns), events);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Vec<u8> {
        let mut b = Vec::new();
        for v in [1u64, 100, 200, 300, 42] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        for v in [
            1234u32,
            1000,
            1234,
            HAVE_RSS | HAVE_UID | HAVE_COMM | HAVE_SCORE_ADJ,
        ] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        let mut comm = [0u8; 16];
        comm[..7].copy_from_slice(b"python3");
        b.extend_from_slice(&comm);
        b.extend_from_slice(&comm);
        b.extend_from_slice(&(-999i32).to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b
    }

    #[test]
    fn parse_record() {
        let b = record();
        assert_eq!(b.len(), OOM_EVENT_SIZE);
        let ev = OomEvent::parse(&b).unwrap();
        assert_eq!(ev.pid, 1234);
        assert_eq!(ev.anon_rss_kb, 100);
        assert_eq!(ev.killer_cgroup_id, 42);
        assert_eq!(comm_str(&ev.comm), "python3");
        assert_eq!(ev.oom_score_adj, -999);
        assert_eq!(OomEvent::parse(&b[..95]), None);
    }

    #[test]
    fn attribute_gone_process_keeps_record_fields() {
        let tmp = std::env::temp_dir().join(format!("nw-oom-{}", std::process::id()));
        let paths = Paths {
            procfs: tmp.join("proc"),
            sysfs: tmp.join("sys"),
            rootfs: tmp.clone(),
        };
        let ev = OomEvent::parse(&record()).unwrap();
        let kill = attribute(&paths, &ev, None, None);
        assert_eq!(kill.pid, 1234);
        assert_eq!(kill.tgid, 1234);
        assert_eq!(kill.comm, "python3");
        assert_eq!(kill.rss_anon_bytes, 100 * 1024);
        assert_eq!(kill.source, "ebpf");
        assert_eq!(kill.cgroup, "");
    }

    #[test]
    fn fuzz_parse_no_panic() {
        let base = record();
        for len in 0..=base.len() + 4 {
            let mut b = base.clone();
            b.resize(len, 0xff);
            let _ = OomEvent::parse(&b).map(|e| comm_str(&e.comm));
        }
    }
}
