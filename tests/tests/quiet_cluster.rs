//! The shipped alerting, end to end: the aggregator configuration of
//! `deploy/kubernetes/aggregator-config.yaml` and the rule pack
//! `deploy/rules/nodewatch.rules.yml`, on a real aggregator pair with three
//! agents, sending to a real Alertmanager whose webhook is the test.
//!
//! - With nothing wrong, Alertmanager receives the Watchdog and nothing
//!   else over the quiet window (3 minutes; `NODEWATCH_QUIET_MINUTES=10`
//!   for a longer one).
//! - Each failure the pack covers that this machine can cause for real
//!   fires exactly its own alert, once, not once per replica: an agent
//!   stopped, a node lost across an aggregator restart, a node's stream cut
//!   in a network namespace, an OOM kill, a file system filled on a loop
//!   device, TCP retransmits from `iptables -m statistic` drops.
//!
//! The shipped `for:` durations are kept (2 minutes for a node down), so
//! these tests take minutes each and run side by side; the three agents
//! share one kernel, so the OOM test runs alone and only its `n1` reads the
//! kernel's host-wide OOM counter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodewatch_tests::{
    bin, find_program, free_port, host_exclusive, host_shared, http_get, in_ci, missing,
    operator_cli, query_scalar, spawn, start_alertmanager, wait_for, write_agent_config,
    Aggregator, MemCgroup, Netns, Pki, Proc, Webhook,
};
use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The agents' collection interval in the shipped agent config.
const AGENT_INTERVAL: Duration = Duration::from_secs(10);

/// `NodewatchNodeDown`'s `for:` in the shipped pack.
const NODE_DOWN_FOR: Duration = Duration::from_mins(2);

/// The aggregator's `aggregator.yaml` from the shipped ConfigMap, adapted
/// to this machine: listen addresses and TLS files come from the test, the
/// Kubernetes bootstrap is left out, rule files are the pack in the
/// repository, Alertmanager is the test's, the known-nodes file lies in
/// `state`. Everything else (retention, limits, liveness, resend delay) is
/// as shipped.
fn shipped_aggregator_config(am: SocketAddr, state: &Path) -> String {
    let text =
        std::fs::read_to_string(repo().join("deploy/kubernetes/aggregator-config.yaml")).unwrap();
    let cm: Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut cfg: Value =
        serde_yaml_ng::from_str(cm["data"]["aggregator.yaml"].as_str().unwrap()).unwrap();
    let map = cfg.as_mapping_mut().unwrap();
    for k in ["listen", "tls", "bootstrap"] {
        map.remove(k);
    }
    let shipped_rules = map["rule_files"].clone();
    assert_eq!(
        shipped_rules[0].as_str(),
        Some("/etc/nodewatch/rules/*.yml"),
        "the shipped config loads the rules ConfigMap"
    );
    map.insert(
        "rule_files".into(),
        serde_yaml_ng::from_str(&format!(
            "['{}']",
            repo().join("deploy/rules/nodewatch.rules.yml").display()
        ))
        .unwrap(),
    );
    map["alerting"].as_mapping_mut().unwrap().insert(
        "alertmanagers".into(),
        serde_yaml_ng::from_str(&format!("['http://{am}']")).unwrap(),
    );
    assert!(
        map["liveness"]["state_file"].is_string(),
        "the shipped config keeps known nodes"
    );
    map["liveness"]
        .as_mapping_mut()
        .unwrap()
        .insert("state_file".into(), state.display().to_string().into());
    assert!(
        !map.contains_key("external_labels"),
        "a per-replica external label would split each alert in two"
    );
    serde_yaml_ng::to_string(&cfg).unwrap()
}

/// Starts an aggregator listening for gRPC on every address (agents in a
/// network namespace reach it through their veth), HTTP on loopback.
fn start_aggregator(pki: &Pki, name: &str, extra: &str) -> Aggregator {
    let port = free_port();
    let listen: SocketAddr = format!("0.0.0.0:{port}").parse().unwrap();
    let grpc: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    Aggregator::start_at(pki, name, listen, grpc, extra)
}

/// One alert as the webhook received it.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    name: String,
    status: String,
    labels: BTreeMap<String, String>,
}

struct Cluster {
    pki: Pki,
    hook: Webhook,
    _am: Proc,
    aggs: Vec<Aggregator>,
    agents: BTreeMap<String, Proc>,
    started: Instant,
    /// The kernel's OOM kill count when the cluster started.
    oom_kills_at_start: Option<u64>,
}

/// The kernel's OOM kill count (`/proc/vmstat` `oom_kill`), host-wide.
/// The filesystem alerts of the shipped pack and the free fraction under
/// which each goes pending.
const FILESYSTEM_ALERTS: [(&str, f64); 2] = [
    ("NodeFilesystemAlmostFull", 0.10),
    ("NodeFilesystemFull", 0.03),
];

/// Whether a filesystem alert for `mountpoint` is the host's own truth: the
/// agents of these tests read this machine's mounts, and a disk of the host
/// that really is nearly full earns the alert on every node (not a fault of
/// the cluster under test). Checked with statvfs(2) now, with a small margin
/// for the disk moving between the agent's reading and this one.
fn host_earns_filesystem_alert(alertname: &str, mountpoint: &str) -> bool {
    let Some((_, under)) = FILESYSTEM_ALERTS.iter().find(|(n, _)| *n == alertname) else {
        return false;
    };
    // Only a mount of this namespace: a test's own mount in an agent's
    // namespace is a plain directory here, on whatever disk holds it.
    let mounted = std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|t| {
        t.lines()
            .any(|l| l.split(' ').nth(4).is_some_and(|m| m == mountpoint))
    });
    if !mounted {
        return false;
    }
    let Ok(st) = nix::sys::statvfs::statvfs(mountpoint) else {
        return false;
    };
    #[allow(clippy::cast_precision_loss)] // a ratio of block counts
    let free = st.blocks_available() as f64 / (st.blocks() as f64).max(1.0);
    free < under + 0.01
}

fn host_oom_kills() -> Option<u64> {
    std::fs::read_to_string("/proc/vmstat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
}

impl Cluster {
    /// Alertmanager, two aggregators with the shipped config and pack, and
    /// agents n1..n3 (`agent_extra(node)` YAML each, `None`: started by the
    /// test itself).
    fn start(agent_extra: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let pki = Pki::new();
        let dir = pki.dir.path().to_path_buf();
        let hook = Webhook::start();
        let (am, am_addr) = start_alertmanager(&dir, &hook)?;
        let aggs: Vec<Aggregator> = ["agg-0", "agg-1"]
            .iter()
            .map(|name| {
                let cfg =
                    shipped_aggregator_config(am_addr, &dir.join(format!("{name}-known-nodes")));
                start_aggregator(&pki, name, &cfg)
            })
            .collect();
        let mut c = Self {
            pki,
            hook,
            _am: am,
            aggs,
            agents: BTreeMap::new(),
            started: Instant::now(),
            oom_kills_at_start: host_oom_kills(),
        };
        for node in ["n1", "n2", "n3"] {
            if let Some(extra) = agent_extra(node) {
                let addrs: Vec<String> = c.aggs.iter().map(|a| a.grpc.to_string()).collect();
                c.start_agent(node, &addrs, &extra, None);
            }
        }
        Some(c)
    }

    /// Starts agent `node` streaming to `addrs`, inside network namespace
    /// `netns` if given.
    fn start_agent(&mut self, node: &str, addrs: &[String], extra: &str, netns: Option<&str>) {
        let extra = format!("interval: {}s\n{extra}", AGENT_INTERVAL.as_secs());
        let cfg = write_agent_config(&self.pki, node, &self.pki.node(node), addrs, &extra);
        let agent = bin("nodewatch-agent");
        let p = match netns {
            None => spawn(
                &agent,
                &["--config", cfg.to_str().unwrap()],
                self.pki.dir.path(),
                &format!("agent-{node}"),
            ),
            Some(ns) => spawn(
                &find_program("ip").unwrap(),
                &[
                    "netns",
                    "exec",
                    ns,
                    agent.to_str().unwrap(),
                    "--config",
                    cfg.to_str().unwrap(),
                ],
                self.pki.dir.path(),
                &format!("agent-{node}"),
            ),
        };
        self.agents.insert(node.to_string(), p);
    }

    /// Waits until both aggregators see every running agent up and the
    /// Watchdog reached the webhook.
    fn wait_healthy(&self, nodes: &[&str]) {
        for a in &self.aggs {
            for n in nodes {
                wait_for(
                    Duration::from_mins(1),
                    &format!("{n} up on {}", a.proc.name),
                    || {
                        query_scalar(
                            &self.pki,
                            a,
                            &format!("up{{job=\"nodewatch-agent\",node=\"{n}\"}}"),
                        )
                        .filter(|v| (*v - 1.0).abs() < 1e-9)
                    },
                );
            }
        }
        wait_for(
            Duration::from_mins(1),
            "the Watchdog at the webhook",
            || {
                self.received()
                    .iter()
                    .any(|r| r.name == "Watchdog")
                    .then_some(())
            },
        );
    }

    /// Every alert the webhook received, in order.
    fn received(&self) -> Vec<Received> {
        let mut out = Vec::new();
        for (at, body) in self.hook.find_all("") {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            for a in v["alerts"].as_array().unwrap() {
                let labels: BTreeMap<String, String> = a["labels"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                out.push(Received {
                    at,
                    name: labels.get("alertname").cloned().unwrap_or_default(),
                    status: a["status"].as_str().unwrap_or_default().to_string(),
                    labels,
                });
            }
        }
        out
    }

    /// The firing alerts received, as `alertname` or `alertname/node`, each
    /// with how many distinct label sets it came with (1: the replicas'
    /// copies were identical and Alertmanager merged them).
    fn firing(&self) -> BTreeMap<String, usize> {
        let mut sets: BTreeMap<String, BTreeSet<BTreeMap<String, String>>> = BTreeMap::new();
        for r in self.received().into_iter().filter(|r| r.status == "firing") {
            let key = match r.labels.get("node") {
                Some(n) => format!("{}/{n}", r.name),
                None => r.name.clone(),
            };
            sets.entry(key).or_default().insert(r.labels);
        }
        sets.into_iter().map(|(k, v)| (k, v.len())).collect()
    }

    /// Asserts the firing alerts received are exactly `want`, each once.
    fn assert_exactly(&self, want: &[&str]) {
        let mut got = self.firing();
        // The three agents share this host's kernel: an OOM kill anywhere on
        // it moves every node's `node_vmstat_oom_kill`. Within this test
        // binary only the OOM test causes one (alone, see `host_exclusive`), and CI runs
        // test binaries one after another; on a shared machine another
        // program's OOM kill is not this test's failure.
        if self.foreign_oom() && !want.iter().any(|w| w.starts_with("NodeOOMKillDetected")) {
            let before = got.len();
            got.retain(|k, _| !k.starts_with("NodeOOMKillDetected/"));
            if got.len() != before {
                println!("note: OOM kills elsewhere on this host during the test; NodeOOMKillDetected left out of the check");
            }
        }
        let names: BTreeSet<&str> = got.keys().map(String::as_str).collect();
        let want: BTreeSet<&str> = want.iter().copied().collect();
        assert_eq!(
            names,
            want,
            "alerts received {:?} after {:?}; logs in {}",
            self.received()
                .iter()
                .map(|r| format!("{} {} {:?}", r.name, r.status, r.labels))
                .collect::<Vec<_>>(),
            self.started.elapsed(),
            self.pki.dir.path().display()
        );
        for (k, n) in &got {
            assert_eq!(
                *n, 1,
                "{k} came with {n} different label sets (once per replica?)"
            );
        }
    }

    /// Outside CI: whether the host's OOM kill count moved since the
    /// cluster started (another program's, on a shared machine).
    fn foreign_oom(&self) -> bool {
        !in_ci() && host_oom_kills() != self.oom_kills_at_start
    }

    /// Whether an alert of `nodewatch alerts -o json` is one the host earns
    /// itself (see [`host_earns_filesystem_alert`]); said once per check.
    fn host_earned(alert: &serde_json::Value) -> bool {
        let labels = &alert["labels"];
        let name = labels["alertname"].as_str().unwrap_or_default();
        let mountpoint = labels["mountpoint"].as_str().unwrap_or_default();
        let earned = host_earns_filesystem_alert(name, mountpoint);
        if earned {
            println!("note: {mountpoint} on this host really is nearly full; {name} left out of the check");
        }
        earned
    }

    /// `nodewatch alerts -o json` of aggregator `i`: (alertname, node, state);
    /// without `NodeOOMKillDetected` when [`Cluster::foreign_oom`], and
    /// without the filesystem alerts the host earns itself.
    fn alerts_on(&self, i: usize) -> Vec<(String, String, String)> {
        let ops = self.pki.operator("ops");
        let out = nodewatch_tests::cli_output(
            operator_cli(&ops, &self.aggs[i]).args(["alerts", "-o", "json"]),
            "nodewatch",
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter(|x| !Self::host_earned(x))
                    .map(|x| {
                        (
                            x["labels"]["alertname"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                            x["labels"]["node"].as_str().unwrap_or_default().to_string(),
                            x["state"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .filter(|(n, _, _)| !(n == "NodeOOMKillDetected" && self.foreign_oom()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits for `alertname` firing for `node` at the webhook; returns when it arrived.
    fn wait_firing(&self, alertname: &str, node: &str, timeout: Duration) -> Instant {
        wait_for(
            timeout,
            &format!("{alertname} for {node} at the webhook"),
            || {
                self.received()
                    .into_iter()
                    .find(|r| {
                        r.name == alertname
                            && r.status == "firing"
                            && r.labels.get("node").map(String::as_str) == Some(node)
                    })
                    .map(|r| r.at)
            },
        )
    }
}

#[allow(clippy::unnecessary_wraps)] // the shape Cluster::start takes
fn all_agents(_: &str) -> Option<String> {
    Some(String::new())
}

/// Root is needed for what the failure tests do; under CI its absence fails.
fn need_root(what: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        true
    } else {
        missing(&format!("root ({what})"));
        false
    }
}

fn quiet_window() -> Duration {
    let minutes = std::env::var("NODEWATCH_QUIET_MINUTES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(3)
        .max(3);
    Duration::from_mins(minutes)
}

#[test]
fn a_healthy_cluster_sends_only_the_watchdog() {
    let _host = host_shared();
    let Some(c) = Cluster::start(all_agents) else {
        return;
    };
    c.wait_healthy(&["n1", "n2", "n3"]);
    let quiet = quiet_window();
    let start = Instant::now();
    while start.elapsed() < quiet {
        std::thread::sleep(Duration::from_secs(10));
        // Fail early, with the offending alert, rather than at the end.
        c.assert_exactly(&["Watchdog"]);
        for (i, _) in c.aggs.iter().enumerate() {
            let active: Vec<_> = c
                .alerts_on(i)
                .into_iter()
                .filter(|(n, _, _)| n != "Watchdog")
                .collect();
            assert!(active.is_empty(), "aggregator {i} holds {active:?}");
        }
    }
    println!("quiet for {:?}: only the Watchdog", start.elapsed());
    c.assert_exactly(&["Watchdog"]);
    // Still firing: Alertmanager holds one Watchdog, merged from both replicas.
    let ams = c.received().iter().filter(|r| r.name == "Watchdog").count();
    assert!(ams >= 1);
}

#[test]
fn a_stopped_agent_fires_node_down_once() {
    let _host = host_shared();
    let Some(mut c) = Cluster::start(all_agents) else {
        return;
    };
    c.wait_healthy(&["n1", "n2", "n3"]);
    c.assert_exactly(&["Watchdog"]);
    let stopped = Instant::now();
    c.agents
        .get_mut("n3")
        .unwrap()
        .terminate(Duration::from_secs(10));

    // Pending on both replicas at once (its streams closed)...
    wait_for(Duration::from_mins(1), "NodewatchNodeDown pending", || {
        (0..2)
            .all(|i| {
                c.alerts_on(i)
                    .iter()
                    .any(|(n, node, s)| n == "NodewatchNodeDown" && node == "n3" && s == "pending")
            })
            .then_some(())
    });
    // ...firing at Alertmanager within `for` plus one evaluation (and a
    // little delivery slack).
    let at = c.wait_firing("NodewatchNodeDown", "n3", Duration::from_mins(4));
    let took = at.saturating_duration_since(stopped);
    println!("agent stopped → NodewatchNodeDown at the webhook: {took:?}");
    // A stopped agent closes its streams: its liveness drops at the next
    // write (1 s); the alert fires at the first evaluation (1 s) after `for`.
    let bound = NODE_DOWN_FOR + Duration::from_secs(2) + Duration::from_secs(8);
    assert!(took <= bound, "took {took:?}, bound {bound:?}");
    assert!(took >= NODE_DOWN_FOR, "fired before its `for`: {took:?}");
    std::thread::sleep(Duration::from_secs(5));
    c.assert_exactly(&["Watchdog", "NodewatchNodeDown/n3"]);
}

#[test]
fn a_node_lost_across_aggregator_restarts_still_fires() {
    let _host = host_shared();
    let Some(mut c) = Cluster::start(all_agents) else {
        return;
    };
    c.wait_healthy(&["n1", "n2", "n3"]);
    // The known-nodes files hold all three before anything fails.
    for a in ["agg-0", "agg-1"] {
        let f = c.pki.dir.path().join(format!("{a}-known-nodes"));
        wait_for(Duration::from_secs(40), "known nodes saved", || {
            let t = std::fs::read_to_string(&f).ok()?;
            ["n1 ", "n2 ", "n3 "]
                .iter()
                .all(|n| t.contains(n))
                .then_some(())
        });
    }
    c.agents
        .get_mut("n3")
        .unwrap()
        .terminate(Duration::from_secs(10));
    // Both replicas die (no goodbye, no final save) and come back; n3 never does.
    let pki = &c.pki;
    for (i, a) in c.aggs.iter_mut().enumerate() {
        a.restart(pki, &format!("agg-{i}"));
    }
    let restarted = Instant::now();
    let at = c.wait_firing("NodewatchNodeDown", "n3", Duration::from_mins(4));
    let took = at.saturating_duration_since(restarted);
    println!("aggregators restarted → NodewatchNodeDown for the lost node: {took:?}");
    assert!(
        took <= NODE_DOWN_FOR + Duration::from_secs(15),
        "took {took:?}"
    );
    std::thread::sleep(Duration::from_secs(5));
    c.assert_exactly(&["Watchdog", "NodewatchNodeDown/n3"]);
    // The others reconnected and are up on both.
    for i in 0..2 {
        let held: Vec<_> = c
            .alerts_on(i)
            .into_iter()
            .filter(|(n, _, _)| n != "Watchdog")
            .collect();
        assert_eq!(
            held,
            [("NodewatchNodeDown".into(), "n3".into(), "firing".into())],
            "aggregator {i}"
        );
    }
}

/// A cluster whose agent `node` lives in a network namespace of its own
/// (its TCP counters are that namespace's), streaming to the aggregators
/// over its veth; healthy, with only the Watchdog firing. `k` (0 or 1) tells
/// apart two namespaces of one test process. `None`: skipped (see
/// [`Netns::for_test`] and [`Cluster::start`]).
fn cluster_with_node_in_netns(k: u32, node: &str) -> Option<(Netns, Cluster)> {
    let tag = (std::process::id() % 5_000) * 2 + k;
    let ns = Netns::for_test(
        &format!("nwalerts{tag}"),
        &format!("nwalh{tag}"),
        &format!("nwala{tag}"),
        &format!("10.{}.{}", 214 + k, tag % 250),
    )?;
    let mut c = Cluster::start(|n| (n != node).then(String::new))?;
    let addrs: Vec<String> = c
        .aggs
        .iter()
        .map(|a| format!("{}:{}", ns.host_ip, a.grpc.port()))
        .collect();
    c.start_agent(node, &addrs, "", Some(&ns.name));
    c.wait_healthy(&["n1", "n2", "n3"]);
    c.assert_exactly(&["Watchdog"]);
    Some((ns, c))
}

#[test]
fn a_cut_stream_fires_node_down_once() {
    let _host = host_shared();
    let Some((ns, mut c)) = cluster_with_node_in_netns(0, "n3") else {
        return;
    };
    // Every packet in and out of n3's namespace dropped: no reset, no FIN,
    // the streams just go silent, as a real partition looks.
    ns.exec(&["iptables", "-A", "INPUT", "-j", "DROP"]).unwrap();
    ns.exec(&["iptables", "-A", "OUTPUT", "-j", "DROP"])
        .unwrap();
    let cut = Instant::now();
    let at = c.wait_firing("NodewatchNodeDown", "n3", Duration::from_mins(4));
    let took = at.saturating_duration_since(cut);
    println!("stream cut → NodewatchNodeDown at the webhook: {took:?}");
    assert!(
        took <= NODE_DOWN_FOR + 2 * AGENT_INTERVAL + Duration::from_secs(11),
        "took {took:?}"
    );
    std::thread::sleep(Duration::from_secs(5));
    c.assert_exactly(&["Watchdog", "NodewatchNodeDown/n3"]);
    // The agent process itself is alive: this is the stream, not the agent.
    assert!(c
        .agents
        .get_mut("n3")
        .unwrap()
        .child
        .try_wait()
        .unwrap()
        .is_none());
}

#[test]
fn an_oom_kill_fires_its_alerts_once() {
    if !need_root("memory cgroups and eBPF") {
        return;
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return missing("kernel BTF (/sys/kernel/btf/vmlinux)");
    }
    // Every agent on this host sees the kernel's OOM counter move: nothing
    // else runs meanwhile, and only n1 reads it (the three share a kernel).
    let _host = host_exclusive();
    let Some(c) = Cluster::start(|n| {
        Some(if n == "n1" {
            "collectors: {ebpf: true}\n".to_string()
        } else {
            "collectors: {ebpf: false, vmstat: false}\n".to_string()
        })
    }) else {
        return;
    };
    c.wait_healthy(&["n1", "n2", "n3"]);
    wait_for(Duration::from_mins(1), "n1's OOM program attached", || {
        c.aggs[0]
            .metrics()
            .contains("nodewatch_agent_ebpf_programs{node=\"n1\",program=\"oom_mark_victim\",state=\"attached\"} 1")
            .then_some(())
    });
    if c.foreign_oom() {
        return missing("a host without other programs' OOM kills during the test");
    }
    c.assert_exactly(&["Watchdog"]);
    let before = host_oom_kills();
    let Some(cg) = MemCgroup::new("alerts", 32 << 20) else {
        return missing("a memory cgroup controller (v1 memory or v2 with memory)");
    };
    let mut child = cg.hog();
    assert!(!child.wait().unwrap().success(), "the hog was not killed");
    c.wait_firing("NodewatchOOMKill", "n1", Duration::from_secs(30));
    // The procfs counter follows at n1's next collection.
    c.wait_firing("NodeOOMKillDetected", "n1", 3 * AGENT_INTERVAL);
    std::thread::sleep(Duration::from_secs(5));
    if !in_ci() && host_oom_kills() != before.map(|n| n + 1) {
        return missing("a host without other programs' OOM kills during the test");
    }
    c.assert_exactly(&["Watchdog", "NodewatchOOMKill/n1", "NodeOOMKillDetected/n1"]);
    drop(cg);
}

#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
#[test]
fn a_full_filesystem_fires_filesystem_full_once() {
    if !need_root("loop devices, mount and PID namespaces") {
        return;
    }
    let (Some(mkfs), Some(unshare)) = (find_program("mkfs.ext4"), find_program("unshare")) else {
        return missing("mkfs.ext4 and unshare (Debian packages `e2fsprogs`, `util-linux`)");
    };
    let _host = host_shared();
    let Some(mut c) = Cluster::start(|n| (n != "n1").then(String::new)) else {
        return;
    };
    // A small ext4 image mounted on a loop device in n1's own mount
    // namespace (n1's agent is PID 1 of its own PID namespace, so
    // /proc/1/mountinfo, where it reads mounts, is its own): only n1 has
    // this file system, as only one node has a given disk.
    let dir = c.pki.dir.path().to_path_buf();
    let img = dir.join("nwalerts-fill.img");
    let mnt = dir.join("nwalerts-fill");
    let trigger = dir.join("fill-now");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let out = Command::new(mkfs)
        .args(["-q", "-F"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let addrs: Vec<String> = c.aggs.iter().map(|a| a.grpc.to_string()).collect();
    let cfg = write_agent_config(
        &c.pki,
        "n1",
        &c.pki.node("n1"),
        &addrs,
        &format!("interval: {}s\n", AGENT_INTERVAL.as_secs()),
    );
    let script = format!(
        "mount -o loop {img} {mnt} || exit 1; \
         (while [ ! -e {trigger} ]; do sleep 1; done; dd if=/dev/zero of={mnt}/fill bs=1M 2>/dev/null; sync; touch {trigger}.done) & \
         exec {agent} --config {cfg}",
        img = img.display(),
        mnt = mnt.display(),
        trigger = trigger.display(),
        agent = bin("nodewatch-agent").display(),
        cfg = cfg.display(),
    );
    let p = spawn(
        &unshare,
        &[
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "sh",
            "-c",
            &script,
        ],
        &dir,
        "agent-n1",
    );
    c.agents.insert("n1".into(), p);
    c.wait_healthy(&["n1", "n2", "n3"]);
    let size = format!(
        "node_filesystem_size_bytes{{node=\"n1\",mountpoint=\"{}\"}}",
        mnt.display()
    );
    wait_for(
        Duration::from_secs(40),
        "n1 reports the loop file system",
        || query_scalar(&c.pki, &c.aggs[0], &size).filter(|v| *v > 0.0),
    );
    for other in ["n2", "n3"] {
        let sel = size.replace("n1", other);
        assert!(
            query_scalar(&c.pki, &c.aggs[0], &sel).is_none(),
            "{other} sees n1's mount"
        );
    }
    c.assert_exactly(&["Watchdog"]);
    std::fs::write(&trigger, "").unwrap();
    wait_for(Duration::from_secs(60), "the file system filled", || {
        trigger.with_extension("done").exists().then_some(())
    });
    let full = Instant::now();
    let avail = size.replace("size_bytes", "avail_bytes");
    wait_for(Duration::from_secs(30), "n1 reports it full", || {
        query_scalar(&c.pki, &c.aggs[0], &avail).filter(|v| *v < 1_000_000.0)
    });
    let at = c.wait_firing("NodeFilesystemFull", "n1", Duration::from_mins(7));
    let took = at.saturating_duration_since(full);
    println!("file system filled → NodeFilesystemFull at the webhook: {took:?}");
    assert!(
        took >= Duration::from_mins(5),
        "fired before its `for`: {took:?}"
    );
    // NodeFilesystemAlmostFull (15m `for`) is on its way, not yet sent.
    std::thread::sleep(Duration::from_secs(5));
    c.assert_exactly(&["Watchdog", "NodeFilesystemFull/n1"]);
    assert!(c.alerts_on(0).contains(&(
        "NodeFilesystemAlmostFull".into(),
        "n1".into(),
        "pending".into()
    )));
}

/// TCP traffic over the loopback of network namespace `ns`, where
/// `iptables -m statistic` drops 5 % of it on input: real retransmits,
/// counted in that namespace's `/proc/net/snmp` only (a drop on output is
/// not a loss to TCP: the send fails locally and is retried, uncounted).
/// Runs until `stop`.
fn lossy_traffic(ns: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        // This thread (and the sink it starts) joins the namespace.
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let mut buf = vec![0u8; 65536];
            while s.read(&mut buf).is_ok_and(|n| n > 0) {}
        });
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_nodelay(true).unwrap();
        let chunk = [0u8; 1000];
        while !stop.load(Ordering::Relaxed) {
            if conn.write_all(&chunk).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })
}

// Named to sort first: the test harness starts tests in name order, and this
// one waits out the longest `for:` (about 11 minutes), so the others run
// beside it instead of after it.
#[test]
fn a_bad_link_fires_the_tcp_retransmit_alert_once() {
    let _host = host_shared();
    let Some((ns, c)) = cluster_with_node_in_netns(1, "n1") else {
        return;
    };
    ns.exec(&[
        "iptables",
        "-A",
        "INPUT",
        "-i",
        "lo",
        "-p",
        "tcp",
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        "0.05",
        "-j",
        "DROP",
    ])
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = lossy_traffic(&ns.name, Arc::clone(&stop));
    let started = Instant::now();
    let ratio = "rate(node_netstat_Tcp_RetransSegs{node=\"n1\"}[5m]) / rate(node_netstat_Tcp_OutSegs{node=\"n1\"}[5m])";
    let r = wait_for(
        Duration::from_mins(2),
        "n1's retransmit ratio above 1 %",
        || query_scalar(&c.pki, &c.aggs[0], ratio).filter(|v| *v > 0.01),
    );
    println!("n1 retransmits {:.1} % of its segments", r * 100.0);
    let at = c.wait_firing("NodeTCPRetransmitRatioHigh", "n1", Duration::from_mins(13));
    println!(
        "lossy traffic → NodeTCPRetransmitRatioHigh at the webhook: {:?}",
        at.saturating_duration_since(started)
    );
    assert!(at.saturating_duration_since(started) >= Duration::from_mins(10));
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.join();
    std::thread::sleep(Duration::from_secs(5));
    c.assert_exactly(&["Watchdog", "NodeTCPRetransmitRatioHigh/n1"]);
}

/// `check-rules` output per file: rules found, and the warning lines.
fn check_rules_output(text: &str) -> BTreeMap<String, (usize, Vec<String>)> {
    let mut out: BTreeMap<String, (usize, Vec<String>)> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(f) = line.strip_prefix("Checking ") {
            current = Path::new(f.trim())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string();
            out.entry(current.clone()).or_default();
        } else if let Some(rest) = line.trim().strip_prefix("SUCCESS: ") {
            let n = rest.split_whitespace().next().unwrap().parse().unwrap();
            out.get_mut(&current).unwrap().0 = n;
        } else if let Some(w) = line.trim().strip_prefix("WARNING: ") {
            out.get_mut(&current).unwrap().1.push(w.to_string());
        }
    }
    out
}

/// The report of a rule checker (`cmd` given the rule `files`), which must
/// succeed.
fn checked_rules(cmd: &mut Command, files: &[PathBuf]) -> String {
    let out = cmd.args(files).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The split pack loads the same groups and rules in Prometheus' checker
/// and the aggregator's; the aggregator warns about every rule of the
/// Prometheus-only file that reads a series it never holds, and about
/// none of its own file's.
#[test]
fn the_rule_split_loads_the_same_groups_in_promtool_and_check_rules() {
    let rules = repo().join("deploy/rules");
    let files = [
        rules.join("nodewatch.rules.yml"),
        rules.join("nodewatch-aggregators.rules.yml"),
    ];
    let groups = |f: &Path| -> Vec<(String, Vec<String>)> {
        let v: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        v["groups"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|g| {
                let names = g["rules"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|r| {
                        r["alert"]
                            .as_str()
                            .or(r["record"].as_str())
                            .unwrap()
                            .to_string()
                    })
                    .collect();
                (g["name"].as_str().unwrap().to_string(), names)
            })
            .collect()
    };
    let ours = groups(&files[0]);
    let prom_only = groups(&files[1]);
    let names = |g: &[(String, Vec<String>)]| -> BTreeSet<String> {
        g.iter().map(|(n, _)| n.clone()).collect()
    };
    assert!(
        names(&ours).is_disjoint(&names(&prom_only)),
        "a group in both files"
    );
    assert!(ours
        .iter()
        .any(|(_, r)| r.contains(&"Watchdog".to_string())));
    assert!(ours
        .iter()
        .any(|(_, r)| r.contains(&"NodewatchNodeDown".to_string())));
    for a in [
        "NodewatchAggregatorDown",
        "NodewatchAggregatorsAbsent",
        "NodewatchAggregatorDenied",
    ] {
        assert!(
            prom_only.iter().any(|(_, r)| r.contains(&a.to_string())),
            "{a} is Prometheus'"
        );
    }

    // The aggregator's checker, the real binary.
    let text = checked_rules(
        Command::new(bin("nodewatch-aggregator")).arg("check-rules"),
        &files,
    );
    let ours_check = check_rules_output(&text);
    let count = |g: &[(String, Vec<String>)]| g.iter().map(|(_, r)| r.len()).sum::<usize>();
    assert_eq!(ours_check["nodewatch.rules.yml"].0, count(&ours), "{text}");
    assert_eq!(
        ours_check["nodewatch-aggregators.rules.yml"].0,
        count(&prom_only),
        "{text}"
    );
    assert!(ours_check["nodewatch.rules.yml"].1.is_empty(), "{text}");
    let warnings = &ours_check["nodewatch-aggregators.rules.yml"].1;
    let f = files[1].display().to_string();
    assert!(
        warnings.iter().any(|w| w.starts_with(&f)
            && w.contains("group \"nodewatch.aggregators\"")
            && w.contains("(\"NodewatchAggregatorsAbsent\")")
            && w.contains("selector `up{job=\"nodewatch-aggregator\"}`")),
        "{text}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("(\"NodewatchAggregatorDenied\")")
                && w.contains("selector `nodewatch_aggregator_denied_total`")),
        "{text}"
    );

    // Prometheus' checker finds the same rules in each file.
    let Some(promtool) = find_program("promtool") else {
        return missing("promtool (Debian package `prometheus`)");
    };
    let text = checked_rules(Command::new(promtool).args(["check", "rules"]), &files);
    let prom = check_rules_output(&text);
    for (file, (n, _)) in &ours_check {
        assert_eq!(prom[file].0, *n, "{file}: promtool {text}");
    }
}

/// `nodewatch demo` evaluates the default pack: after a minute on a healthy
/// machine `nodewatch alerts` shows the Watchdog firing and nothing else.
#[test]
fn the_demo_shows_only_the_watchdog_after_a_minute() {
    let _host = host_shared();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("demo.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut demo = Command::new(bin("nodewatch"))
        .args(["demo", "--dir"])
        .arg(dir.path().join("demo"))
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let cli_config = dir.path().join("demo/nodewatch.yaml");
    wait_for(Duration::from_mins(2), "the demo ready", || {
        std::fs::read_to_string(&log)
            .ok()?
            .contains("Ctrl-C stops both")
            .then_some(())
    });
    let ready = Instant::now();
    let alerts = || -> Vec<(String, String)> {
        let out = nodewatch_tests::cli_output(
            Command::new(bin("nodewatch"))
                .env("NODEWATCH_CONFIG", &cli_config)
                .current_dir(dir.path().join("demo"))
                .args(["alerts", "-o", "json"]),
            "nodewatch",
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter(|a| !Cluster::host_earned(a))
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap().to_string(),
                    a["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    // The pack is loaded: the Watchdog fires at once.
    wait_for(
        Duration::from_secs(20),
        "the Watchdog in `nodewatch alerts`",
        || {
            alerts()
                .contains(&("Watchdog".into(), "firing".into()))
                .then_some(())
        },
    );
    while ready.elapsed() < Duration::from_mins(1) {
        std::thread::sleep(Duration::from_secs(5));
    }
    let got = alerts();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(demo.id()).unwrap());
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let status = demo.wait().unwrap();
    assert_eq!(
        got,
        [("Watchdog".to_string(), "firing".to_string())],
        "demo log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(status.success(), "the demo did not stop cleanly: {status}");
}

/// Values of `expr` in a real Prometheus, by `node`.
fn prom_by_node(addr: SocketAddr, expr: &str) -> BTreeMap<String, f64> {
    let q: String = expr
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let Ok((200, body)) = http_get(addr, &format!("/api/v1/query?query={q}")) else {
        return BTreeMap::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["data"]["result"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|s| {
                    Some((
                        s["metric"]["node"].as_str()?.to_string(),
                        s["value"][1].as_str()?.parse().ok()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The liveness an aggregator writes is what Prometheus scrapes (with
/// `honor_labels`), so the node-down rule reads the same series in both:
/// `up{job="nodewatch-agent",node}` next to Prometheus' own `up` of the
/// aggregator target, 1 while the agent streams, 0 once it stops.
#[test]
fn prometheus_scrapes_the_same_node_liveness() {
    let Some(prometheus) = nodewatch_tests::prometheus::program() else {
        return;
    };
    let _host = host_shared();
    let pki = Pki::new();
    let dir = pki.dir.path().to_path_buf();
    let agg = start_aggregator(&pki, "agg", "");
    let addrs = vec![agg.grpc.to_string()];
    let mut agents: Vec<Proc> = ["n1", "n2"]
        .iter()
        .map(|n| {
            let cfg = write_agent_config(&pki, n, &pki.node(n), &addrs, "interval: 2s\n");
            spawn(
                &bin("nodewatch-agent"),
                &["--config", cfg.to_str().unwrap()],
                &dir,
                &format!("agent-{n}"),
            )
        })
        .collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: nodewatch-aggregator\n    honor_labels: true\n    static_configs:\n      - targets: ['{}']\n",
        agg.http
    );
    let (_prom, prom) = nodewatch_tests::prometheus::start(
        &prometheus,
        &dir,
        &nodewatch_tests::prometheus::Options {
            name: "prometheus",
            config: &config,
            ..Default::default()
        },
    );
    let live = "up{job=\"nodewatch-agent\"}";
    let ours = |expr: &str| -> BTreeMap<String, f64> {
        ["n1", "n2"]
            .iter()
            .filter_map(|n| {
                let sel = expr.replace('}', &format!(",node=\"{n}\"}}"));
                Some(((*n).to_string(), query_scalar(&pki, &agg, &sel)?))
            })
            .collect()
    };
    let both_up = BTreeMap::from([("n1".to_string(), 1.0), ("n2".to_string(), 1.0)]);
    wait_for(
        Duration::from_mins(1),
        "both nodes up in Prometheus",
        || (prom_by_node(prom, live) == both_up).then_some(()),
    );
    assert_eq!(ours(live), both_up);
    // Prometheus' own `up` of the aggregator target is a separate series.
    let (_, body) = http_get(
        prom,
        "/api/v1/query?query=up%7Bjob%3D%22nodewatch-aggregator%22%7D",
    )
    .unwrap();
    assert!(
        body.contains("\"value\"") && !body.contains("\"node\""),
        "{body}"
    );
    // Batches counted per node, in both.
    let batches = prom_by_node(prom, "nodewatch_aggregator_batches_total");
    assert_eq!(batches.len(), 2, "{batches:?}");

    // n2 stops: its liveness drops to 0 in the aggregator and in Prometheus.
    agents[1].terminate(Duration::from_secs(10));
    let n2_down = BTreeMap::from([("n1".to_string(), 1.0), ("n2".to_string(), 0.0)]);
    wait_for(Duration::from_secs(30), "n2 down in the aggregator", || {
        (ours(live) == n2_down).then_some(())
    });
    wait_for(Duration::from_secs(10), "n2 down in Prometheus", || {
        (prom_by_node(prom, live) == n2_down).then_some(())
    });
    // The shipped rule's expression gives the same answer in both.
    let expr = "max without (instance, aggregator) (up{job=\"nodewatch-agent\"}) == 0";
    assert_eq!(
        prom_by_node(prom, expr),
        BTreeMap::from([("n2".to_string(), 0.0)])
    );
    let v = nodewatch_tests::cli_query(&pki, &agg, expr);
    assert_eq!(v["result"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["result"][0]["metric"]["node"], "n2", "{v}");
}
