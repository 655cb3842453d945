//! OOM kills from the kernel log, for hosts where BPF cannot run (no
//! `CAP_BPF`, no BTF): the kernel's own OOM report read from `/dev/kmsg`.
//!
//! `mm/oom_kill.c` prints, for every victim:
//!
//! ```text
//! oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=…,mems_allowed=0,oom_memcg=/kubepods/…,task_memcg=/kubepods/burstable/pod<uid>/<id>,task=tail,pid=3142,uid=0
//! Memory cgroup out of memory: Killed process 3142 (tail) total-vm:…kB, anon-rss:…kB, file-rss:…kB, shmem-rss:…kB, UID:0 …
//! ```
//!
//! The `oom-kill:` summary (`dump_oom_summary`, Linux 4.19+, commit
//! ef8444ea01d7) names the victim's memory cgroup; older kernels print `Task
//! in <memcg> killed as a result of limit of <memcg>` instead
//! (`mem_cgroup_print_oom_info`, before 4.19). The `Killed process` line
//! (`__oom_kill_process`) carries the sizes; it is parsed by
//! [`parse_linux_line`]. [`KmsgParser`] joins them
//! into one `OomKill` per victim with `source = "kmsg"`; pod UID and
//! container id come from the cgroup path as for the eBPF events.
//!
//! The reader starts at the end of the log (kills before the agent started
//! were reported by its previous run) and wakes on each new record, so the
//! event is sent at once, not at the next collection.

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use nodewatch_proto::v1::OomKill;

use super::{attribute_memcg, kill_time_ms, name_pod, wait_readable, OomState, ReaderThread};
use crate::collector::{CollectError, Collector, EventSender, Paths, Sink, Unavailable};
use crate::containers::cgroup::{self, Memcg};
use crate::containers::pods::SharedPods;

/// The kernel log device (`Documentation/ABI/testing/dev-kmsg`).
pub const KMSG_PATH: &str = "/dev/kmsg";

/// `source` of the events this module makes.
const SOURCE: &str = "kmsg";

/// One `/dev/kmsg` read returns one record; the kernel caps a record's text
/// at 1024 bytes (`PRINTK_MESSAGE_MAX`/`CONSOLE_EXT_LOG_MAX` is 8 KiB with
/// its dictionary), so 8 KiB always holds one.
const RECORD_BUF: usize = 8192;

/// Pids of recently reported victims, so a `Killed process` line that comes
/// after its summary was already reported is not a second event.
const RECENT_PIDS: usize = 64;

/// The message of one `/dev/kmsg` record (`prio,seq,usec,flags;text\n
/// KEY=value…`) and its timestamp (µs since boot, the monotonic clock).
#[must_use]
pub fn parse_record(record: &str) -> Option<(u64, &str)> {
    let (head, rest) = record.split_once(';')?;
    let usec = head.split(',').nth(2)?.parse().ok()?;
    let text = rest.split('\n').next().unwrap_or(rest);
    Some((usec, text))
}

/// The `oom-kill:` summary line's fields; `None` for any other line.
#[must_use]
pub fn parse_summary(line: &str) -> Option<OomKill> {
    let start = line.find("oom-kill:constraint=")? + "oom-kill:".len();
    let fields = &line[start..];
    // The comm (`task=`) may hold a comma; the fields after it never do.
    let task_at = fields.rfind(",task=")?;
    let (head, tail) = fields.split_at(task_at);
    let tail = &tail[",task=".len()..];
    let pid_at = tail.rfind(",pid=")?;
    let comm = &tail[..pid_at];
    let mut pid = None;
    let mut uid = 0;
    for kv in tail[pid_at + 1..].split(',') {
        match kv.split_once('=') {
            Some(("pid", v)) => pid = v.trim().parse().ok(),
            Some(("uid", v)) => uid = v.trim().parse().unwrap_or(0),
            _ => {}
        }
    }
    let field = |key: &str| {
        head.split(',')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    };
    let constraint = match field("constraint")? {
        "CONSTRAINT_MEMCG" => "memcg".to_string(),
        "CONSTRAINT_NONE" => "global".to_string(),
        other => other
            .strip_prefix("CONSTRAINT_")
            .unwrap_or(other)
            .to_ascii_lowercase(),
    };
    let pid: u32 = pid?;
    Some(OomKill {
        pid,
        tgid: pid,
        comm: comm.to_string(),
        uid,
        cgroup: field("task_memcg").unwrap_or_default().to_string(),
        constraint,
        source: SOURCE.to_string(),
        ..OomKill::default()
    })
}

/// The victim's memory cgroup from a pre-4.19 `Task in <memcg> killed as a
/// result of limit of <memcg>` line.
#[must_use]
pub fn parse_task_in(line: &str) -> Option<&str> {
    let start = line.find("Task in ")? + "Task in ".len();
    let rest = &line[start..];
    let end = rest.find(" killed as a result of limit of ")?;
    Some(&rest[..end])
}

/// A `12345kB` field of the Linux line, in bytes.
fn kb_field(fields: &str, key: &str) -> Option<u64> {
    let start = fields.find(key)? + key.len();
    let digits: &str = fields[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?;
    digits.parse::<u64>().ok()?.checked_mul(1024)
}

/// Parses Linux's `Killed process <pid> (<comm>) total-vm:…kB, anon-rss:…kB,
/// file-rss:…kB, shmem-rss:…kB, UID:<uid> …` (the `shmem-rss` and `UID`
/// fields exist from 4.x and 5.x on); `None` for any other line.
#[must_use]
pub fn parse_linux_line(line: &str) -> Option<OomKill> {
    let start = line.find("Killed process ")? + "Killed process ".len();
    let rest = &line[start..];
    let (pid, rest) = rest.split_once(" (")?;
    let pid: u32 = pid.parse().ok()?;
    let (comm, fields) = rest.rsplit_once(") total-vm:")?;
    let uid = fields
        .find("UID:")
        .and_then(|i| fields[i + 4..].split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|u| u.parse().ok())
        .unwrap_or(0);
    Some(OomKill {
        pid,
        tgid: pid,
        comm: comm.to_string(),
        uid,
        rss_anon_bytes: kb_field(fields, "anon-rss:").unwrap_or(0),
        rss_file_bytes: kb_field(fields, "file-rss:").unwrap_or(0),
        rss_shmem_bytes: kb_field(fields, "shmem-rss:").unwrap_or(0),
        source: SOURCE.to_string(),
        ..OomKill::default()
    })
}

/// Joins the lines of one OOM report into one kill per victim.
#[derive(Debug, Default)]
pub struct KmsgParser {
    /// A summary waiting for its `Killed process` line.
    pending: Option<OomKill>,
    /// The memcg of a pre-4.19 `Task in` line, for the next `Killed process`.
    task_in: Option<String>,
    recent: VecDeque<u32>,
}

impl KmsgParser {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one log line; returns the kills it completes (at most two: a
    /// pending summary of another victim, and this line's own).
    pub fn feed(&mut self, line: &str) -> Vec<OomKill> {
        let mut out = Vec::new();
        if let Some(summary) = parse_summary(line) {
            out.extend(self.flush());
            self.pending = Some(summary);
        } else if let Some(memcg) = parse_task_in(line) {
            self.task_in = Some(memcg.to_string());
        } else if let Some(mut kill) = parse_linux_line(line) {
            match self.pending.take() {
                Some(mut summary) if summary.pid == kill.pid => {
                    summary.rss_anon_bytes = kill.rss_anon_bytes;
                    summary.rss_file_bytes = kill.rss_file_bytes;
                    summary.rss_shmem_bytes = kill.rss_shmem_bytes;
                    if summary.uid == 0 {
                        summary.uid = kill.uid;
                    }
                    self.remember(summary.pid);
                    out.push(summary);
                }
                other => {
                    self.pending = other;
                    out.extend(self.flush());
                    if !self.recent.contains(&kill.pid) {
                        if let Some(memcg) = self.task_in.take() {
                            kill.cgroup = memcg;
                        }
                        if line.contains("Memory cgroup out of memory") {
                            kill.constraint = "memcg".into();
                        }
                        self.remember(kill.pid);
                        out.push(kill);
                    }
                }
            }
        }
        out
    }

    /// The summary still waiting for its `Killed process` line (called when
    /// the log has nothing more for now: the kernel prints both at once).
    pub fn flush(&mut self) -> Option<OomKill> {
        let kill = self.pending.take()?;
        self.remember(kill.pid);
        Some(kill)
    }

    fn remember(&mut self, pid: u32) {
        if self.recent.len() == RECENT_PIDS {
            self.recent.pop_front();
        }
        self.recent.push_back(pid);
    }
}

/// Pod UID, container id, limit and usage from the kill's cgroup path.
pub fn attribute(paths: &Paths, kill: &mut OomKill) {
    if kill.cgroup.is_empty() {
        return;
    }
    let (_, version) = cgroup::memory_hierarchy(paths);
    let memcg = Memcg {
        path: kill.cgroup.clone(),
        version,
    };
    attribute_memcg(paths, &memcg, kill);
}

/// OOM kills from `/dev/kmsg`: a reader thread sends each as an event and
/// counts it; the collector exports `nodewatch_oom_kills_total`.
pub struct KmsgOom {
    _thread: ReaderThread,
    state: Arc<OomState>,
    lost: Arc<AtomicU64>,
}

/// What the reader thread works with.
struct Context {
    paths: Paths,
    pods: SharedPods,
    events: EventSender,
    state: Arc<OomState>,
    lost: Arc<AtomicU64>,
}

impl KmsgOom {
    /// Opens the kernel log at its end and starts the reader thread.
    pub fn start(
        paths: &Paths,
        events: EventSender,
        pods: SharedPods,
    ) -> Result<Self, Unavailable> {
        Self::start_at(Path::new(KMSG_PATH), paths, events, pods)
    }

    /// As [`KmsgOom::start`] on another record device (for tests).
    pub fn start_at(
        device: &Path,
        paths: &Paths,
        events: EventSender,
        pods: SharedPods,
    ) -> Result<Self, Unavailable> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(device)
            .map_err(|e| {
                Unavailable(format!(
                    "kernel log {}: {e} (needs CAP_SYSLOG where kernel.dmesg_restrict=1)",
                    device.display()
                ))
            })?;
        // SEEK_END on /dev/kmsg moves past every stored record.
        if let Err(error) = std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0)) {
            tracing::debug!(%error, path = %device.display(), "Could not skip the kernel log's history.");
        }
        let cx = Context {
            paths: paths.clone(),
            pods,
            events,
            state: Arc::new(OomState::default()),
            lost: Arc::new(AtomicU64::new(0)),
        };
        let (state, lost) = (cx.state.clone(), cx.lost.clone());
        let path: PathBuf = device.to_path_buf();
        let thread = ReaderThread::spawn("nodewatch-kmsg-oom", move |stop| {
            run(file, &path, &cx, stop);
        })
        .map_err(|e| Unavailable(format!("kernel log reader thread: {e}")))?;
        Ok(Self {
            _thread: thread,
            state,
            lost,
        })
    }
}

fn run(mut file: std::fs::File, path: &Path, cx: &Context, stop: &AtomicBool) {
    let mut parser = KmsgParser::new();
    let mut buf = vec![0u8; RECORD_BUF];
    let mut last_usec = 0;
    let send = |mut kill: OomKill, usec: u64| {
        attribute(&cx.paths, &mut kill);
        name_pod(&cx.pods, &mut kill);
        cx.state.records.fetch_add(1, Ordering::Relaxed);
        cx.state
            .report(kill, kill_time_ms(usec.saturating_mul(1000)), &cx.events);
    };
    while !stop.load(Ordering::Relaxed) {
        match file.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                if let Some((usec, line)) = parse_record(&text) {
                    last_usec = usec;
                    for kill in parser.feed(line) {
                        send(kill, usec);
                    }
                }
                continue;
            }
            // Records were overwritten before we read them (a log flood).
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                cx.lost.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                tracing::warn!(%error, path = %path.display(), "Kernel log read failed; OOM events from it stop.");
                return;
            }
        }
        // Nothing more for now: a summary without its `Killed process`
        // line is complete as it is.
        if let Some(kill) = parser.flush() {
            send(kill, last_usec);
        }
        if let Err(error) = wait_readable(file.as_fd()) {
            tracing::warn!(%error, path = %path.display(), "Kernel log poll failed; OOM events from it stop.");
            return;
        }
    }
}

impl Collector for KmsgOom {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        self.state.export_kills(sink);
        sink.counter(
            "nodewatch_agent_kmsg_records_lost_total",
            "Kernel log records overwritten before the agent read them (EPIPE on /dev/kmsg).",
            &[],
            self.lost.load(Ordering::Relaxed) as f64,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil::{fixture_text, fuzz_inputs};

    /// Every line of a fixture through the parser, then flushed.
    fn kills_of(rel: &str) -> Vec<OomKill> {
        let mut p = KmsgParser::new();
        let mut out = Vec::new();
        for line in fixture_text(rel).lines() {
            out.extend(p.feed(line));
        }
        out.extend(p.flush());
        out
    }

    #[test]
    fn records() {
        let r = "6,1234,541471893603,-;oom-kill:constraint=CONSTRAINT_MEMCG,task=a,pid=1,uid=0\n SUBSYSTEM=x\n";
        let (usec, text) = parse_record(r).unwrap();
        assert_eq!(usec, 541_471_893_603);
        assert!(text.starts_with("oom-kill:") && !text.contains('\n'));
        assert!(parse_record("no header").is_none());
        // A continuation of a record (`;` in the text) keeps the text whole.
        assert_eq!(parse_record("4,1,2,c;a;b").unwrap().1, "a;b");
    }

    #[test]
    fn summary_lines_from_paasta_fixtures() {
        let cases = [
            (
                "oom/paasta-k8s-cgroupfs-burstable-oom-kill-constraint.log",
                "b56c3a7a-a84d-4f84-b97e-446c4e705259",
                None,
            ),
            (
                "oom/paasta-k8s-systemd-cri-containerd-burstable-oom-kill-constraint.log",
                "",
                Some("containerd"),
            ),
            (
                "oom/paasta-k8s-systemd-docker-burstable-oom-kill-constraint.log",
                "",
                Some("docker"),
            ),
            (
                "oom/paasta-k8s-systemd-v1-containerd-colon-notation-oom-kill-constraint.log",
                "73331cbb-9b96-4a62-9702-46a56ad49dd0",
                Some("containerd"),
            ),
        ];
        let paths = Paths::default();
        for (file, uid, runtime) in cases {
            let kills = kills_of(file);
            assert_eq!(kills.len(), 1, "{file}: {kills:?}");
            let mut k = kills[0].clone();
            assert!(k.pid > 0 && !k.comm.is_empty(), "{file}: {k:?}");
            assert_eq!(k.constraint, "memcg", "{file}");
            assert_eq!(k.source, "kmsg");
            assert!(k.cgroup.starts_with('/'), "{file}: {k:?}");
            attribute(&paths, &mut k);
            assert_eq!(k.container_id.len(), 64, "{file}: {k:?}");
            if uid.is_empty() {
                assert!(!k.pod_uid.is_empty(), "{file}: {k:?}");
            } else {
                assert_eq!(k.pod_uid, uid, "{file}");
            }
            if let Some(r) = runtime {
                assert_eq!(k.container_runtime, r, "{file}");
            }
        }
    }

    #[test]
    fn task_in_lines_from_paasta_fixtures() {
        for file in [
            "oom/paasta-k8s-cgroupfs-burstable-task-in.log",
            "oom/paasta-k8s-cgroupfs-besteffort-task-in.log",
            "oom/paasta-k8s-cgroupfs-guaranteed-task-in.log",
            "oom/paasta-docker-cgroupv1-task-in.log",
        ] {
            let text = fixture_text(file);
            let memcg = text.lines().find_map(parse_task_in).unwrap();
            assert!(memcg.starts_with('/'), "{file}: {memcg}");
            let id = cgroup::identify(memcg);
            assert!(id.container_id.is_some(), "{file}: {memcg}");
        }
        let line = "[30533610.306529] Task in /kubepods/burstable/podf91e9681-4741-4ef4-8f5a-182c5683df8b/0e4a814eda03622476ff47871e6c397e5b8747af209b44f3b3e1c5289b0f9772 killed as a result of limit of /kubepods/burstable/podf91e9681-4741-4ef4-8f5a-182c5683df8b/0e4a814eda03622476ff47871e6c397e5b8747af209b44f3b3e1c5289b0f9772";
        let mut p = KmsgParser::new();
        assert!(p.feed(line).is_empty());
        let k = p.feed("Memory cgroup out of memory: Killed process 77 (java) total-vm:10kB, anon-rss:8kB, file-rss:0kB, shmem-rss:0kB").remove(0);
        assert_eq!(
            (k.pid, k.comm.as_str(), k.rss_anon_bytes),
            (77, "java", 8192)
        );
        assert!(
            k.cgroup.starts_with("/kubepods/burstable/podf91e9681"),
            "{k:?}"
        );
        assert_eq!(k.constraint, "memcg");
    }

    #[test]
    fn killed_process_lines_from_cadvisor_fixtures() {
        let kills = kills_of("oom/cadvisor-v1-docker-memcg-oom-kernel4.8-part1.log");
        assert!(
            kills.iter().any(|k| k.comm == "gunpowder-memho"),
            "{kills:?}"
        );
        let global = kills_of("oom/cadvisor-global-oom-kernel3.13-badsysprogram.log");
        assert!(
            global
                .iter()
                .any(|k| k.pid == 1532 && k.comm == "badsysprogram"),
            "{global:?}"
        );
    }

    #[test]
    fn summary_and_killed_line_make_one_event() {
        let mut p = KmsgParser::new();
        let summary = "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/kubepods/burstable/pod1,task_memcg=/kubepods/burstable/pod1/c,task=a,b,pid=42,uid=1000";
        assert!(p.feed(summary).is_empty());
        let k = p.feed("Memory cgroup out of memory: Killed process 42 (a,b) total-vm:100kB, anon-rss:40kB, file-rss:4kB, shmem-rss:0kB, UID:1000 pgtables:40kB oom_score_adj:0");
        assert_eq!(k.len(), 1);
        let k = &k[0];
        assert_eq!((k.pid, k.comm.as_str(), k.uid), (42, "a,b", 1000));
        assert_eq!(k.cgroup, "/kubepods/burstable/pod1/c");
        assert_eq!((k.rss_anon_bytes, k.rss_file_bytes), (40 * 1024, 4 * 1024));
        assert!(p.flush().is_none());
        // Summary reported alone (flushed), its late `Killed` line is not a second event.
        assert!(p.feed(&summary.replace("pid=42", "pid=43")).is_empty());
        assert_eq!(p.flush().unwrap().pid, 43);
        assert!(p
            .feed("Killed process 43 (a,b) total-vm:1kB, anon-rss:1kB, file-rss:0kB")
            .is_empty());
        assert_eq!(
            parse_summary("oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/,task=x,pid=1,uid=0").unwrap().constraint,
            "global"
        );
    }

    #[test]
    fn linux_lines_from_cadvisor_fixtures() {
        let mut kills = Vec::new();
        for f in [
            "oom/cadvisor-global-oom-kernel3.13-badsysprogram.log",
            "oom/cadvisor-v1-memcg-oom-kernel3.13-mem2.log",
            "oom/cadvisor-v1-docker-memcg-oom-kernel4.8-part1.log",
            "oom/cadvisor-v1-docker-memcg-oom-kernel4.8-part2.log",
            "oom/cadvisor-single-lines.log",
        ] {
            kills.extend(fixture_text(f).lines().filter_map(parse_linux_line));
        }
        let got: Vec<(u32, &str)> = kills.iter().map(|k| (k.pid, k.comm.as_str())).collect();
        assert!(got.contains(&(1532, "badsysprogram")), "{got:?}");
        assert!(got.contains(&(13536, "memorymonster")), "{got:?}");
        assert!(got.contains(&(1381, "gunpowder-memho")), "{got:?}");
        let k = kills.iter().find(|k| k.pid == 1532).unwrap();
        assert_eq!(
            (k.rss_anon_bytes, k.rss_file_bytes),
            (1_595_164 * 1024, 76 * 1024)
        );
        let k = kills.iter().find(|k| k.pid == 1381).unwrap();
        assert_eq!((k.rss_anon_bytes, k.rss_shmem_bytes), (18_624 * 1024, 0));
        // `Out of memory: Kill process …` and task dumps are not the kill line.
        assert!(parse_linux_line(
            "Out of memory: Kill process 1532 (badsysprogram) score 919 or sacrifice child"
        )
        .is_none());
        let k = parse_linux_line("[  42.1] Out of memory: Killed process 9 (a b) total-vm:10kB, anon-rss:4kB, file-rss:0kB, shmem-rss:0kB, UID:1000 pgtables:40kB oom_score_adj:0").unwrap();
        assert_eq!(
            (k.pid, k.comm.as_str(), k.uid, k.rss_anon_bytes),
            (9, "a b", 1000, 4096)
        );
    }

    #[test]
    fn fuzz_no_panic() {
        let seeds = [
            fixture_text("oom/paasta-k8s-cgroupfs-burstable-oom-kill-constraint.log"),
            fixture_text("oom/paasta-k8s-cgroupfs-burstable-task-in.log"),
            "6,1,2,-;oom-kill:constraint=CONSTRAINT_MEMCG,task=,pid=,uid=".to_string(),
        ];
        for seed in seeds {
            let b = seed.as_bytes();
            let mut p = KmsgParser::new();
            for i in (0..b.len()).step_by(7) {
                let s = String::from_utf8_lossy(&b[..i]);
                let _ = parse_record(&s);
                let _ = p.feed(&s);
                let s = String::from_utf8_lossy(&b[i..]);
                let _ = p.feed(&s);
            }
        }
        // The cadvisor captures, mutated, line by line and whole.
        let seeds = [
            fixture_text("oom/cadvisor-v1-docker-memcg-oom-kernel4.8-part2.log"),
            fixture_text("oom/cadvisor-single-lines.log"),
        ];
        let mut p = KmsgParser::new();
        for input in fuzz_inputs(&seeds, 0x0077) {
            for line in input.lines() {
                let _ = p.feed(line);
            }
            let _ = parse_linux_line(&input);
        }
    }
}
