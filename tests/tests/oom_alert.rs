//! The whole path of an OOM kill, for real: a process is OOM-killed in a
//! memory cgroup, the agent's eBPF program sees it, the event and the moved
//! counter stream to the aggregator at once, the default rule pack's
//! `NodewatchOOMKill` fires there, and a real Alertmanager calls the webhook.
//! The agent collects every 10 s: the alert must not wait for that.

use std::process::Stdio;
use std::time::{Duration, Instant};

use nodewatch_tests::{
    missing, operator_cli, start_agent, start_alertmanager, wait_for, Aggregator, MemCgroup, Pki,
    Webhook,
};

#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
#[test]
fn oom_kill_reaches_alertmanager_within_a_second() {
    let _host = nodewatch_tests::host_exclusive();
    if !nix::unistd::Uid::effective().is_root() {
        return missing("root (memory cgroups and eBPF)");
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return missing("kernel BTF (/sys/kernel/btf/vmlinux)");
    }
    let pki = Pki::new();
    let dir = pki.dir.path();
    let hook = Webhook::start();
    let Some((_am, am_addr)) = start_alertmanager(dir, &hook) else {
        return;
    };
    let pack = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/rules/nodewatch.rules.yml"
    );
    let agg = Aggregator::start(
        &pki,
        "agg",
        &format!("rule_files: ['{pack}']\nalerting:\n  alertmanagers: ['http://{am_addr}']\n  resend_delay: 1s\n"),
    );
    let _agent = start_agent(
        &pki,
        "n1",
        &[&agg],
        "interval: 10s\ncollectors: {ebpf: true}\n",
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

    let Some(cg) = MemCgroup::new("e2e", 32 << 20) else {
        return missing("a memory cgroup controller (v1 memory or v2 with memory)");
    };
    // A live watcher, as a user would run it.
    let ops = pki.operator("ops");
    let cli = |args: &[&str]| {
        let mut c = operator_cli(&ops, &agg);
        c.args(args);
        c
    };
    let mut follow = cli(&["events", "--follow", "-o", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let follow_out = follow.stdout.take().unwrap();
    let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(follow_out)
            .lines()
            .map_while(Result::ok)
        {
            let _ = line_tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_millis(300));

    // `tail` of an endless file without newlines keeps everything: it grows until killed.
    let mut child = cg.hog();
    let pid = child.id();
    let status = child.wait().unwrap();
    let killed_at = Instant::now();
    assert!(!status.success(), "the hog was not killed");

    let (arrived, body) = wait_for(
        Duration::from_secs(30),
        "NodewatchOOMKill at the webhook",
        || {
            hook.find("NodewatchOOMKill")
                .filter(|(_, b)| b.contains("\"comm\":\"tail\""))
        },
    );
    let latency = arrived.saturating_duration_since(killed_at);
    println!(
        "OOM kill → Alertmanager webhook: {} ms",
        latency.as_millis()
    );
    assert!(
        latency < Duration::from_secs(1),
        "alert took {latency:?}, the agent's interval is 10 s"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let alert = v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["comm"] == "tail")
        .unwrap();
    assert_eq!(alert["labels"]["node"], "n1");
    assert_eq!(alert["status"], "firing");

    // `nodewatch events --follow` printed it live.
    let live = wait_for(Duration::from_secs(5), "the live event line", || {
        line_rx
            .try_iter()
            .find(|l| l.contains(&format!("\"pid\":{pid}")))
    });
    assert!(live.contains("\"type\":\"oom_kill\""), "{live}");
    let _ = follow.kill();
    let _ = follow.wait();

    // The event, attributed to the cgroup, is there for `nodewatch events`.
    let out = cli(&["events", "-o", "json"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let ev: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["oomKill"]["pid"] == pid)
        .unwrap_or_else(|| panic!("no event for pid {pid} in:\n{text}"));
    assert_eq!(ev["node"], "n1");
    assert_eq!(ev["oomKill"]["comm"], "tail");
    let cgroup = ev["oomKill"]["cgroup"].as_str().unwrap();
    assert!(
        cgroup.ends_with(&format!("nodewatch-e2e-{}", std::process::id())),
        "{cgroup}"
    );
    assert_eq!(ev["oomKill"]["memcgLimitBytes"], 32 << 20);
    drop(cg);
}
