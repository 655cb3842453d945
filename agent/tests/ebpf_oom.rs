//! Real OOM kills in a memory cgroup, seen by `tracepoint/oom/mark_victim`.
//!
//! The memory hog is this test binary itself, re-executed with
//! `NW_OOM_ROLE` set (no python or other tool needed): `hog` joins the cgroup
//! and allocates until killed; `parent` joins the cgroup, starts a `hog`
//! grandchild and sleeps, to show a process that is not the main one is
//! caught too.

// Linux only: cgroups, network namespaces, loop devices and BPF.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "ebpf_support.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nodewatch_agent::collector::Paths;
use nodewatch_agent::ebpf::{Ebpf, EbpfConfig, Lockdown, ProgramState};
use nodewatch_proto::v1::{event, OomKill};

/// The OOM tests run one at a time: the no-kernel-reads path names the
/// group by which OOM kill counter rose, which two simultaneous kills in
/// different groups would make ambiguous.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The cgroup's memory limit: small enough to hit in a fraction of a
/// second, large enough for the test binary's own pages (~10 MiB).
const LIMIT: u64 = 32 << 20;

/// Entry point of the re-executed roles; a no-op in a normal test run.
#[test]
fn oom_child_role() {
    let Ok(role) = std::env::var("NW_OOM_ROLE") else {
        return;
    };
    let procs = std::env::var("NW_OOM_CGROUP_PROCS").unwrap();
    std::fs::write(&procs, std::process::id().to_string()).unwrap();
    match role.as_str() {
        "hog" => {
            let mut chunks: Vec<Vec<u8>> = Vec::new();
            loop {
                // vec![1; n] writes every byte, so every page is charged.
                chunks.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&chunks);
            }
        }
        "parent" => {
            let me = std::env::current_exe().unwrap();
            let child = Command::new(me)
                .args([
                    "--exact",
                    "oom_child_role",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("NW_OOM_ROLE", "hog")
                .env("NW_OOM_CGROUP_PROCS", &procs)
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            println!("GRANDCHILD {}", child.id());
            let mut child = child;
            let _ = child.wait();
            // Stay alive: the test checks that only the grandchild died.
            std::thread::sleep(Duration::from_mins(1));
        }
        _ => {}
    }
}

/// A memory cgroup removed on drop (after its processes are gone).
struct Cgroup {
    dir: PathBuf,
    /// Path as `/proc/<pid>/cgroup` shows it.
    rel: String,
    procs: PathBuf,
    children: Vec<Child>,
}

impl Cgroup {
    fn new(tag: &str) -> Self {
        let name = format!("nodewatch-test-{}-{tag}", std::process::id());
        let v1 = PathBuf::from("/sys/fs/cgroup/memory");
        let (dir, limit_file) = if v1.join("memory.limit_in_bytes").exists() {
            (v1.join(&name), "memory.limit_in_bytes")
        } else {
            (PathBuf::from("/sys/fs/cgroup").join(&name), "memory.max")
        };
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        std::fs::write(dir.join(limit_file), LIMIT.to_string()).unwrap();
        // No swap escape: the hog must hit the limit, not page out.
        let _ = std::fs::write(dir.join("memory.swappiness"), "0");
        let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), LIMIT.to_string());
        Self {
            procs: dir.join("cgroup.procs"),
            dir,
            rel: format!("/{name}"),
            children: Vec::new(),
        }
    }

    fn spawn(&mut self, role: &str) -> u32 {
        let me = std::env::current_exe().unwrap();
        let child = Command::new(me)
            .args([
                "--exact",
                "oom_child_role",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("NW_OOM_ROLE", role)
            .env("NW_OOM_CGROUP_PROCS", &self.procs)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        self.children.push(child);
        pid
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Anything left (a grandchild) goes with the cgroup's processes.
        if let Ok(procs) = std::fs::read_to_string(&self.procs) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Waits for the OOM event of `pid`, and returns it with the time between
/// the process's death (as seen by polling /proc) and the event's arrival.
fn wait_for_kill(
    rx: &mut tokio::sync::mpsc::Receiver<nodewatch_proto::v1::Event>,
    pid: u32,
) -> (OomKill, Duration) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut died_at: Option<Instant> = None;
    let mut got: Option<(OomKill, Instant)> = None;
    while Instant::now() < deadline {
        while let Ok(ev) = rx.try_recv() {
            if let Some(event::Kind::OomKill(k)) = ev.kind {
                if k.pid == pid {
                    // t_ms is when the kernel marked the victim.
                    let delivered_after = nodewatch_agent::collector::now_ms() - ev.t_ms;
                    eprintln!("pid {pid}: event delivered {delivered_after} ms after the kernel marked the victim");
                    assert!((0..1000).contains(&delivered_after), "{delivered_after} ms");
                    got = Some((k, Instant::now()));
                }
            }
        }
        if died_at.is_none() {
            // A zombie (State: Z) has released its memory: that is the kill.
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if status.is_empty() || status.contains("State:\tZ") {
                died_at = Some(Instant::now());
            }
        }
        if let (Some(d), Some((k, at))) = (died_at, &got) {
            let latency = if *at > d { *at - d } else { d - *at };
            return (k.clone(), latency);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("no OomKill event for pid {pid} within 30 s (died: {died_at:?}, event: {got:?})");
}

#[test]
fn oom_kill_of_child_and_grandchild_is_reported() {
    if std::env::var("NW_OOM_ROLE").is_ok() {
        return;
    }
    if !support::require("ebpf_oom", &[]) {
        return;
    }
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (mut ebpf, mut rx) = support::start();
    let mut cg = Cgroup::new("main");

    // 1. The main process of the cgroup is the hog.
    let pid = cg.spawn("hog");
    std::thread::sleep(Duration::from_millis(30));
    let comm = comm_of(pid);
    let (kill, latency) = wait_for_kill(&mut rx, pid);
    eprintln!("child OOM kill: {kill:?}\nevent vs death: {latency:?}");
    assert!(
        latency < Duration::from_secs(1),
        "event {latency:?} from the kill"
    );
    assert_eq!(kill.comm, comm);
    assert_eq!(kill.tgid, pid);
    assert_eq!(kill.cgroup, cg.rel);
    // Attributed from the victim's task by the tp_btf program where it
    // loads; from /proc otherwise.
    assert!(kill.source.starts_with("ebpf"), "{}", kill.source);
    assert_eq!(kill.constraint, "memcg");
    assert_eq!(kill.memcg_limit_bytes, LIMIT);
    assert!(kill.rss_anon_bytes > 8 << 20, "{kill:?}");
    assert!(
        kill.killer_pid != 0 && !kill.killer_comm.is_empty(),
        "{kill:?}"
    );

    // 2. A grandchild is the hog; its parent (the "main process") survives.
    let parent = cg.spawn("parent");
    let stdout = cg.children.last_mut().unwrap().stdout.take().unwrap();
    // The test harness prints its own lines too ("running 1 test").
    let grandchild: u32 = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            // The harness's "test oom_child_role ... " may share the line.
            l.split("GRANDCHILD ")
                .nth(1)
                .and_then(|p| p.trim().parse().ok())
        })
        .expect("parent never reported its child");
    let (gkill, glatency) = wait_for_kill(&mut rx, grandchild);
    eprintln!("grandchild OOM kill: {gkill:?}\nevent vs death: {glatency:?}");
    assert!(glatency < Duration::from_secs(1));
    assert_eq!(gkill.cgroup, cg.rel);
    assert_ne!(grandchild, parent);
    let parent_status = std::fs::read_to_string(format!("/proc/{parent}/status")).unwrap();
    assert!(
        !parent_status.contains("State:\tZ"),
        "the parent should have survived"
    );

    // 3. The counter moved for that comm.
    let sink = support::collect(&mut ebpf);
    let n = support::value(&sink, "nodewatch_oom_kills_total", &[("comm", &comm)]);
    assert!(
        n >= 2.0,
        "nodewatch_oom_kills_total{{comm={comm}}} = {n}\n{}",
        sink.render_text()
    );
    assert!(ebpf.oom_records() >= 2);
    let attached = support::value(
        &sink,
        "nodewatch_agent_ebpf_programs",
        &[("program", "oom_mark_victim"), ("state", "attached")],
    );
    assert!(
        (attached - 1.0).abs() < f64::EPSILON,
        "{}",
        sink.render_text()
    );
    support::print_costs(&ebpf);
}

/// The classic record alone, loaded as under `lockdown=confidentiality`
/// (no `bpf_probe_read_kernel`: no comm in the record) and without the
/// `tp_btf` programs (as on a kernel where they do not attach): it still
/// reports the kill at once with pid and rss.
#[test]
fn oom_kill_is_reported_without_kernel_reads() {
    if std::env::var("NW_OOM_ROLE").is_ok() {
        return;
    }
    if !support::require("ebpf_oom", &[]) {
        return;
    }
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let cfg = EbpfConfig {
        lockdown_override: Some(Lockdown::Confidentiality),
        btf_tracepoints: false,
        ..EbpfConfig::default()
    };
    let ebpf = Ebpf::start_with(&Paths::default(), tx, &cfg).unwrap();
    assert!(!ebpf.oom_reads_kernel());
    let skipped = ebpf
        .programs()
        .iter()
        .any(|(s, st)| s.program == "oom_victim_memcg" && matches!(st, ProgramState::Skipped(_)));
    assert!(skipped, "{:?}", ebpf.programs());

    let mut cg = Cgroup::new("lockdown");
    let pid = cg.spawn("hog");
    let (kill, latency) = wait_for_kill(&mut rx, pid);
    eprintln!("OOM kill without kernel reads: {kill:?}\nevent vs death: {latency:?}");
    assert!(latency < Duration::from_secs(1));
    assert!(kill.rss_anon_bytes > 8 << 20, "{kill:?}");
    // /proc names the group while the victim lives (on v2 until it is
    // reaped); otherwise the group's OOM kill counter does.
    assert!(
        kill.source == "ebpf+procfs" || kill.source == "ebpf+memory.events",
        "{}",
        kill.source
    );
    assert_eq!(kill.cgroup, cg.rel);
    assert_eq!(kill.memcg_limit_bytes, LIMIT);
}

/// Without kernel BTF the module says why once and stays off (no root needed).
#[test]
fn start_without_kernel_btf_is_unavailable() {
    if std::env::var("NW_OOM_ROLE").is_ok() {
        return;
    }
    let tmp = std::env::temp_dir().join(format!("nodewatch-nobtf-{}", std::process::id()));
    let paths = Paths {
        procfs: "/proc".into(),
        sysfs: tmp.join("sys"),
        rootfs: "/".into(),
    };
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    match Ebpf::start(&paths, tx) {
        Ok(_) => panic!("started without BTF"),
        Err(u) => assert!(u.0.contains("no kernel BTF"), "{u}"),
    }
}
