//! A network partition between an agent and its aggregator: the agent runs
//! in its own network namespace joined to the host's by a veth pair, the
//! link is cut with a firewall rule that silently drops every packet (no
//! reset, as a real partition looks) for ~10 s, then restored. Nothing the
//! agent collected meanwhile may be lost or stored twice.
//!
//! Needs root (network namespaces, iptables): under `CI=true` its absence
//! fails the test, elsewhere the test is skipped with a message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use nodewatch_tests::{
    bin, cli_events, find_program, free_port, http_get, missing, query_scalar, spawn, wait_for,
    write_agent_config, Aggregator, Pki, Proc,
};

/// Runs `ip`/`iptables` with `args`; returns whether it succeeded (stderr on failure).
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The agent's network namespace and its veth link to the host; removed on
/// drop (deleting the namespace deletes the veth pair and its firewall rules).
struct Netns {
    name: String,
    host_if: String,
}

impl Netns {
    fn create(tag: u32) -> Result<(Self, String, String), String> {
        let name = format!("nwpart{tag}");
        let host_if = format!("nwh{tag}");
        let ns_if = format!("nwa{tag}");
        let net = format!("10.213.{}", tag % 250);
        let gateway = format!("{net}.1");
        let agent_addr = format!("{net}.2");
        // Left over from an earlier run killed before its cleanup.
        let _ = run("ip", &["netns", "del", &name]);
        let _ = run("ip", &["link", "del", &host_if]);
        run("ip", &["netns", "add", &name])?;
        let ns = Self {
            name: name.clone(),
            host_if: host_if.clone(),
        };
        run(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
            ],
        )?;
        run("ip", &["link", "set", &ns_if, "netns", &name])?;
        run(
            "ip",
            &["addr", "add", &format!("{gateway}/24"), "dev", &host_if],
        )?;
        run("ip", &["link", "set", &host_if, "up"])?;
        let exec = |args: &[&str]| {
            let mut a = vec!["netns", "exec", name.as_str()];
            a.extend_from_slice(args);
            run("ip", &a)
        };
        exec(&[
            "ip",
            "addr",
            "add",
            &format!("{agent_addr}/24"),
            "dev",
            &ns_if,
        ])?;
        exec(&["ip", "link", "set", &ns_if, "up"])?;
        exec(&["ip", "link", "set", "lo", "up"])?;
        Ok((ns, gateway, agent_addr))
    }

    /// Runs a command inside the namespace.
    fn exec(&self, args: &[&str]) -> Result<(), String> {
        let mut a = vec!["netns", "exec", self.name.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
        let _ = run("ip", &["link", "del", &self.host_if]);
    }
}

#[test]
fn a_ten_second_partition_loses_nothing() {
    if find_program("ip").is_none() || find_program("iptables").is_none() {
        return missing("ip and iptables (Debian packages `iproute2`, `iptables`)");
    }
    if !nix::unistd::Uid::effective().is_root() {
        return missing("root, for network namespaces and iptables");
    }
    let (ns, host_ip, _agent_ip) = match Netns::create(std::process::id() % 10_000) {
        Ok(v) => v,
        Err(e) => return missing(&format!("network namespaces with veth: {e}")),
    };

    // The aggregator on the host side of the veth; its HTTP port on loopback for the test.
    let pki = Pki::new();
    let grpc: SocketAddr = format!("{host_ip}:{}", free_port()).parse().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = pki.path("agg.yaml");
    let d = pki.dir.path().display();
    std::fs::write(
        &config,
        format!("listen:\n  grpc: {grpc}\n  http: {http}\ntls:\n  ca: {d}/ca.crt\n  cert: {d}/aggregator.crt\n  key: {d}/aggregator.key\n"),
    )
    .unwrap();
    let proc = spawn(
        &bin("nodewatch-aggregator"),
        &["--config", config.to_str().unwrap()],
        pki.dir.path(),
        "agg",
    );
    let agg = Aggregator {
        proc,
        grpc,
        http,
        config,
    };
    wait_for(Duration::from_secs(20), "aggregator /healthz", || {
        http_get(http, "/healthz")
            .ok()
            .filter(|(s, _)| *s == 200)
            .map(|_| ())
    });

    let files = pki.node("part");
    let agent_cfg = write_agent_config(
        &pki,
        "part",
        &files,
        &[grpc.to_string()],
        "interval: 200ms\ncollectors: {ebpf: false, testseq: true}\n",
    );
    let agent_bin = bin("nodewatch-agent");
    let _agent: Proc = spawn(
        &find_program("ip").unwrap(),
        &[
            "netns",
            "exec",
            &ns.name,
            agent_bin.to_str().unwrap(),
            "--config",
            agent_cfg.to_str().unwrap(),
        ],
        pki.dir.path(),
        "agent-part",
    );
    let series = "nodewatch_testseq_total{node=\"part\"}";
    let max = |sel: &str| query_scalar(&pki, &agg, &format!("max_over_time({sel}[15m])"));
    wait_for(Duration::from_secs(30), "samples through the veth", || {
        max(series).filter(|v| *v >= 3.0)
    });

    // Cut: every packet in and out of the agent's namespace silently dropped.
    ns.exec(&["iptables", "-A", "INPUT", "-j", "DROP"]).unwrap();
    ns.exec(&["iptables", "-A", "OUTPUT", "-j", "DROP"])
        .unwrap();
    let before = max(series).unwrap();
    std::thread::sleep(Duration::from_secs(10));
    let during = max(series).unwrap();
    assert!(
        during - before < 2.0,
        "samples arrived through the cut: {before} → {during}"
    );
    ns.exec(&["iptables", "-F"]).unwrap();
    let cut_at = Instant::now();

    // Restored: the agent resumes (same TCP connection or a new one) and
    // sends what it spooled during the cut.
    let (count, min, max_v) = wait_for(Duration::from_secs(60), "catch-up after the cut", || {
        let sel = format!("{series}[15m]");
        let count = query_scalar(&pki, &agg, &format!("count_over_time({sel})"))?;
        let min = query_scalar(&pki, &agg, &format!("min_over_time({sel})"))?;
        let max_v = query_scalar(&pki, &agg, &format!("max_over_time({sel})"))?;
        (max_v >= during + 50.0 && (count - (max_v - min + 1.0)).abs() < 0.5)
            .then_some((count, min, max_v))
    });
    println!(
        "caught up {:?} after the cut ended: {count} samples, values {min}..={max_v}",
        cut_at.elapsed()
    );
    assert!((min - 1.0).abs() < 0.5, "the first value is missing: {min}");
    let events = cli_events(&pki, &agg)
        .iter()
        .filter(|e| e["node"] == "part" && e["linkStateChange"]["device"] == "testseq")
        .count();
    assert!(
        events as f64 >= (max_v / 10.0).floor() - 0.5,
        "{events} test events for {max_v} collections"
    );
}
