//! An agent that may not use BPF still does its job: started as root but
//! without `CAP_BPF`, `CAP_PERFMON` and `CAP_SYS_ADMIN` (as a container
//! without those capabilities would be), it runs, says once why its eBPF
//! signals are off, the aggregator still gets its procfs series, and a real
//! OOM kill still arrives as an event, read from the kernel log.
//!
//! The capabilities are dropped from the bounding set by `capsh` (Debian
//! `libcap2-bin`) or, failing that, `setpriv` (`util-linux`); root's
//! permitted set after `exec` is the bounding set, so the agent starts
//! without them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nodewatch_tests::{bin, find_program, missing, spawn, wait_for, Aggregator, MemCgroup, Pki};

/// Capability numbers (`include/uapi/linux/capability.h`).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The log line the agent writes when eBPF cannot run (`runtime::start_ebpf`).
const EBPF_OFF: &str = "eBPF signals off on this host";

/// The agent's config: like `nodewatch_tests::start_agent_with`'s, with eBPF on.
fn agent_config(pki: &Pki, agg: &Aggregator) -> PathBuf {
    let node = pki.node("n1");
    let config = pki.path("agent-n1.yaml");
    std::fs::write(
        &config,
        format!(
            "aggregators: [\"{}\"]\nserver_name: localhost\ninterval: 1s\ncollectors: {{ebpf: true}}\nhealth_listen: \"\"\nspool: {{dir: {}}}\ntls:\n  ca: {}\n  cert: {}\n  key: {}\n",
            agg.grpc,
            pki.path("spool-n1").display(),
            node.ca.display(),
            node.cert.display(),
            node.key.display()
        ),
    )
    .unwrap();
    config
}

/// The command that runs `agent --config <config>` without the BPF
/// capabilities, or `None` when neither tool is installed.
fn without_bpf_caps(agent: &Path, config: &Path) -> Option<(PathBuf, Vec<String>)> {
    let agent = agent.display().to_string();
    let config = config.display().to_string();
    if let Some(capsh) = find_program("capsh") {
        return Some((
            capsh,
            vec![
                "--drop=cap_bpf,cap_perfmon,cap_sys_admin".into(),
                "--".into(),
                "-c".into(),
                "exec \"$0\" \"$@\"".into(),
                agent,
                "--config".into(),
                config,
            ],
        ));
    }
    let setpriv = find_program("setpriv")?;
    Some((
        setpriv,
        vec![
            "--bounding-set=-bpf,-perfmon,-sys_admin".into(),
            "--inh-caps=-bpf,-perfmon,-sys_admin".into(),
            "--".into(),
            agent,
            "--config".into(),
            config,
        ],
    ))
}

/// The effective capability mask of a process (`CapEff` in its status).
fn effective_caps(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

#[test]
fn agent_without_bpf_capabilities_keeps_procfs_series() {
    let _host = nodewatch_tests::host_exclusive();
    if !nix::unistd::Uid::effective().is_root() {
        return missing("root (to drop capabilities the agent would otherwise have)");
    }
    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    let config = agent_config(&pki, &agg);
    let Some((tool, args)) = without_bpf_caps(&bin("nodewatch-agent"), &config) else {
        return missing("capsh (Debian package `libcap2-bin`) or setpriv (`util-linux`)");
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = spawn(&tool, &args, pki.dir.path(), "agent-n1");

    // The procfs collectors' series arrive at the aggregator.
    let metrics = wait_for(
        Duration::from_secs(30),
        "the agent's procfs series on the aggregator",
        || {
            let m = agg.metrics();
            (m.contains("node_load1{node=\"n1\"}")
                && m.contains("node_memory_MemAvailable_bytes{node=\"n1\"}")
                && m.contains("node_cpu_seconds_total{"))
            .then_some(m)
        },
    );

    // It really ran without the capabilities (the same process: `exec`).
    let caps = effective_caps(agent.child.id()).expect("agent's /proc status");
    for (cap, name) in [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ] {
        assert_eq!(caps & (1 << cap), 0, "agent still has {name}: {caps:#x}");
    }
    assert!(
        !metrics.contains("nodewatch_agent_ebpf_programs{node=\"n1\""),
        "eBPF programs reported without the capabilities"
    );

    // Collections keep coming; the reason was said once, not per collection.
    std::thread::sleep(Duration::from_secs(3));
    let log = agent.log_text();
    let said: Vec<&str> = log.lines().filter(|l| l.contains(EBPF_OFF)).collect();
    println!("{}", said.join("\n"));
    assert_eq!(said.len(), 1, "reason said {} times:\n{log}", said.len());
    let reason = said[0];
    assert!(
        reason.contains("CAP_BPF") || reason.contains("not permitted"),
        "the reason does not say what is missing: {reason}"
    );
    assert!(
        agg.metrics()
            .contains("nodewatch_agent_collector_success{collector=\"loadavg\",node=\"n1\"} 1")
            || agg.metrics().contains("node_load1{node=\"n1\"}"),
        "procfs series stopped"
    );

    // A real OOM kill still becomes an event, from the kernel log.
    let Some(cg) = MemCgroup::new("nobpf", 32 << 20) else {
        return missing("a memory cgroup controller (v1 memory or v2 with memory)");
    };
    let mut hog = cg.hog();
    let pid = hog.id();
    assert!(!hog.wait().unwrap().success(), "the hog was not killed");
    let killed_at = Instant::now();
    let ops = pki.operator("ops");
    let ev = wait_for(
        Duration::from_secs(10),
        "the OOM event from /dev/kmsg",
        || {
            let out = Command::new(bin("nodewatch"))
                .args([
                    "--aggregator",
                    &agg.grpc.to_string(),
                    "--server-name",
                    "localhost",
                ])
                .args([
                    "--ca",
                    ops.ca.to_str().unwrap(),
                    "--cert",
                    ops.cert.to_str().unwrap(),
                ])
                .args(["--key", ops.key.to_str().unwrap(), "events", "-o", "json"])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|e| e["oomKill"]["pid"] == pid)
        },
    );
    println!(
        "OOM kill → event via /dev/kmsg within {} ms: {ev}",
        killed_at.elapsed().as_millis()
    );
    let k = &ev["oomKill"];
    assert_eq!(k["source"], "kmsg", "{ev}");
    assert_eq!(k["comm"], "tail", "{ev}");
    assert_eq!(k["constraint"], "memcg", "{ev}");
    let cgroup = k["cgroup"].as_str().unwrap_or_default();
    assert!(
        cgroup.ends_with(&format!("nodewatch-nobpf-{}", std::process::id())),
        "{ev}"
    );
    drop(cg);
}
