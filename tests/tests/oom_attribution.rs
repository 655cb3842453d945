//! An OOM kill is attributed to its pod and container all the way to the
//! aggregator: a kubelet-style cgroup (`kubepods/burstable/pod<uid>/<64-hex
//! container id>`, cgroupfs driver) holds a first process that stays alive
//! and a second one that allocates past the limit. Kubernetes itself only
//! reports a kill of a container's main process; the agent must name the
//! second one with its pid, comm, cgroup, pod UID and container id, at the
//! aggregator within a second, and move `nodewatch_oom_kills_total` there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nodewatch_tests::{missing, operator_cli, start_agent, wait_for, Aggregator, Pki};

/// The memory limit of the container cgroup: small enough that `tail
/// /dev/zero` reaches it in milliseconds.
const LIMIT_BYTES: u64 = 32 << 20;

/// A kubelet-style cgroup path laid in the memory hierarchy; every folder
/// this test created is removed on drop, deepest first.
struct PodCgroup {
    /// Folders created, outermost first.
    created: Vec<PathBuf>,
    /// The container's cgroup.
    leaf: PathBuf,
    /// The path below the hierarchy root, as the kernel names it.
    path: String,
}

impl PodCgroup {
    fn new(pod_uid: &str, container_id: &str) -> Result<Self, String> {
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let unified = Path::new("/sys/fs/cgroup");
        let (root, v2) = if v1.join("memory.limit_in_bytes").exists() {
            (v1, false)
        } else if std::fs::read_to_string(unified.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|w| w == "memory"))
        {
            (unified, true)
        } else {
            return Err("a memory cgroup controller (v1 memory or v2 with memory)".into());
        };
        let segments = [
            "kubepods".to_string(),
            "burstable".to_string(),
            format!("pod{pod_uid}"),
            container_id.to_string(),
        ];
        let mut cg = Self {
            created: Vec::new(),
            leaf: root.to_path_buf(),
            path: String::new(),
        };
        for seg in &segments {
            // v2: a child only gets a memory controller when its parent
            // delegates it (no-internal-process rule: the processes live in
            // the leaf only).
            if v2 {
                let _ = std::fs::write(cg.leaf.join("cgroup.subtree_control"), "+memory");
            }
            cg.leaf = cg.leaf.join(seg);
            cg.path = format!("{}/{seg}", cg.path);
            if !cg.leaf.exists() {
                std::fs::create_dir(&cg.leaf)
                    .map_err(|e| format!("creating {}: {e}", cg.leaf.display()))?;
                cg.created.push(cg.leaf.clone());
            }
        }
        let limit_file = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(cg.leaf.join(limit_file), LIMIT_BYTES.to_string())
            .map_err(|e| format!("{limit_file}: {e}"))?;
        // No swap to escape into: the hog must hit the limit, not swap out.
        let _ = std::fs::write(cg.leaf.join("memory.swappiness"), "0");
        let _ = std::fs::write(cg.leaf.join("memory.swap.max"), "0");
        let _ = std::fs::write(
            cg.leaf.join("memory.memsw.limit_in_bytes"),
            LIMIT_BYTES.to_string(),
        );
        Ok(cg)
    }

    /// Starts `script` under `sh`, moved into this cgroup before it execs.
    fn spawn(&self, script: &str) -> Child {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && exec {script}",
                self.leaf.join("cgroup.procs").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            // A killed task leaves its cgroup a moment after it is reaped.
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A child killed and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh pod UID (UUID layout) and 64-hex container id, random per run.
fn ids() -> (String, String) {
    use std::hash::{BuildHasher, Hasher};
    let random = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    };
    let hex = format!("{:016x}{:016x}", random(), random());
    let uid = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    let cid = format!("{hex}{:016x}{:016x}", random(), random());
    (uid, cid)
}

#[test]
fn oom_kill_of_a_second_process_names_pod_and_container() {
    if !nix::unistd::Uid::effective().is_root() {
        return missing("root (memory cgroups and eBPF)");
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return missing("kernel BTF (/sys/kernel/btf/vmlinux)");
    }
    let (pod_uid, container_id) = ids();
    let cg = match PodCgroup::new(&pod_uid, &container_id) {
        Ok(cg) => cg,
        Err(what) => return missing(&what),
    };

    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    // 10 s interval: the event must not wait for the next collection.
    // With cost measurement on, the OOM program's runs are counted too.
    let _agent = start_agent(
        &pki,
        "n1",
        &[&agg],
        "interval: 10s\ncollectors: {ebpf: true}\nebpf_measure_cost: true\n",
    );
    wait_for(
        Duration::from_secs(60),
        "the agent's OOM program attached",
        || {
            agg.metrics()
                .contains("nodewatch_agent_ebpf_programs{node=\"n1\",program=\"oom_mark_victim\",state=\"attached\"} 1")
                .then_some(())
        },
    );

    let ops = pki.operator("ops");
    let cli = |args: &[&str]| {
        let mut c = operator_cli(&ops, &agg);
        c.args(args);
        c
    };
    let mut follow = Reaped(
        cli(&["events", "--follow", "-o", "json"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let follow_out = follow.0.stdout.take().unwrap();
    let (line_tx, line_rx) = std::sync::mpsc::channel::<(Instant, String)>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(follow_out)
            .lines()
            .map_while(Result::ok)
        {
            let _ = line_tx.send((Instant::now(), line));
        }
    });
    std::thread::sleep(Duration::from_millis(300));

    // The container's first process, small and alive throughout.
    let mut first = Reaped(cg.spawn("sleep 120"));
    wait_for(
        Duration::from_secs(5),
        "the first process in the cgroup",
        || {
            std::fs::read_to_string(cg.leaf.join("cgroup.procs"))
                .ok()
                .filter(|p| p.contains(&first.0.id().to_string()))
        },
    );
    // The second: `tail` of an endless file without newlines keeps
    // everything it reads, so it grows until the OOM killer picks it.
    let mut hog = cg.spawn("tail /dev/zero");
    let pid = hog.id();
    let status = hog.wait().unwrap();
    let killed_at = Instant::now();
    assert!(!status.success(), "the hog was not killed");
    assert!(
        first.0.try_wait().unwrap().is_none(),
        "the first process died too: the kill was not of the second one alone"
    );

    let (arrived, line) = wait_for(
        Duration::from_secs(10),
        "the OOM event at the aggregator",
        || {
            line_rx
                .try_iter()
                .find(|(_, l)| l.contains(&format!("\"pid\":{pid}")))
        },
    );
    let latency = arrived.saturating_duration_since(killed_at);
    println!(
        "OOM kill of pid {pid} → `nodewatch events --follow`: {} ms",
        latency.as_millis()
    );
    assert!(
        latency < Duration::from_secs(1),
        "event took {latency:?}: {line}"
    );

    // The stored event, as `nodewatch events -o json` prints it.
    let out = cli(&["events", "-o", "json"]).output().unwrap();
    assert!(
        out.status.success(),
        "nodewatch events: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let ev: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["oomKill"]["pid"] == pid)
        .unwrap_or_else(|| panic!("no event for pid {pid} in:\n{text}"));
    let k = &ev["oomKill"];
    println!("event: {ev}");
    assert_eq!(ev["node"], "n1");
    assert_eq!(k["comm"], "tail", "{ev}");
    assert_eq!(k["cgroup"], cg.path.as_str(), "{ev}");
    assert_eq!(k["podUid"], pod_uid.as_str(), "{ev}");
    assert_eq!(k["containerId"], container_id.as_str(), "{ev}");
    assert_eq!(k["memcgLimitBytes"], LIMIT_BYTES, "{ev}");

    // The counter moved on the aggregator's /metrics, labelled with the pod
    // UID and container id (no kubelet names configured).
    let series = wait_for(
        Duration::from_secs(5),
        "nodewatch_oom_kills_total for the pod",
        || {
            agg.metrics()
                .lines()
                .find(|l| {
                    l.starts_with("nodewatch_oom_kills_total{")
                        && l.contains(&format!("pod=\"{pod_uid}\""))
                        && l.contains(&format!("container=\"{container_id}\""))
                        && l.contains("comm=\"tail\"")
                        && l.contains("node=\"n1\"")
                })
                .map(str::to_string)
        },
    );
    let value: f64 = series
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(value >= 1.0, "{series}");

    // `ebpf_measure_cost: true`: the kernel counted the OOM program's runs.
    let m = agg.metrics();
    let runs = m
        .lines()
        .find(|l| {
            l.starts_with("nodewatch_agent_ebpf_run_count_total{")
                && l.contains("program=\"oom_mark_victim\"")
                && l.contains("node=\"n1\"")
        })
        .unwrap_or_else(|| panic!("no run count for oom_mark_victim in:\n{m}"));
    assert!(
        runs.rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v >= 1.0),
        "{runs}"
    );
    assert!(
        m.contains("nodewatch_agent_ebpf_run_seconds_total{"),
        "no run time series"
    );

    drop(follow);
    drop(first);
    drop(cg);
}
