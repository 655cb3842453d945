//! `nodewatch demo`: an aggregator and an agent for this machine, over mutual
//! TLS on loopback, with throwaway certificates in a temporary folder. The
//! aggregator evaluates the default rule pack, so `nodewatch alerts` shows
//! real state (on a healthy machine: only the always-firing `Watchdog`).
//! Runs until Ctrl-C, which stops both cleanly.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use nodewatch_proto::certs::{Ca, Leaf, DEFAULT_CA_VALIDITY, DEFAULT_LEAF_VALIDITY};
use nodewatch_proto::{Identity, NodeName};

/// The default rule pack the aggregators load (deploy/rules), as shipped.
pub const DEFAULT_RULES: &str = include_str!("../../deploy/rules/nodewatch.rules.yml");

/// How long the demo waits for the first samples to show up on /metrics.
const READY_TIMEOUT: Duration = Duration::from_mins(1);

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Agent collection interval.
    #[arg(long, default_value = "2s")]
    pub interval: String,
    /// Keep the generated files in this folder instead of a temporary one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        anyhow::bail!(
            "{} not found next to {}; build everything with `cargo build --release`",
            name,
            exe.display()
        );
    }
    Ok(path)
}

/// A plain HTTP GET (the demo needs nothing more).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// A node name for this host that passes validation.
fn this_node() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default();
    let clean: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect();
    NodeName::new(clean).map_or_else(|_| "demo-node".to_string(), |n| n.to_string())
}

struct Children(Vec<(String, Child)>);

impl Children {
    /// SIGTERM to each, then wait; returns whether all exited 0.
    fn stop(&mut self) -> bool {
        for (_, c) in &self.0 {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let mut ok = true;
        for (name, c) in &mut self.0 {
            match c.wait() {
                Ok(st) if st.success() => {}
                Ok(st) => {
                    eprintln!("demo: {name} exited with {st}");
                    ok = false;
                }
                Err(e) => {
                    eprintln!("demo: waiting for {name}: {e}");
                    ok = false;
                }
            }
        }
        self.0.clear();
        ok
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Throwaway PKI: CA, aggregator (server), this node's agent, and an operator for the CLI.
fn write_pki(dir: &Path, node: &str) -> anyhow::Result<()> {
    let ca = Ca::generate("nodewatch demo CA", DEFAULT_CA_VALIDITY)?;
    // Only the CA's certificate is written: its key signs every identity and
    // the demo needs it for nothing after this, so it is never on disk.
    write(&dir.join("ca.crt"), &ca.pem().cert)?;
    ca.issue(
        &Leaf::Server {
            names: vec!["localhost".into(), "127.0.0.1".into()],
        },
        DEFAULT_LEAF_VALIDITY,
    )?
    .write(dir, "aggregator")?;
    ca.issue(
        &Leaf::Client(Identity::Node(NodeName::new(node.to_string())?)),
        DEFAULT_LEAF_VALIDITY,
    )?
    .write(dir, "agent")?;
    ca.issue(
        &Leaf::Client(Identity::Operator("demo".into())),
        DEFAULT_LEAF_VALIDITY,
    )?
    .write(dir, "operator")?;
    Ok(())
}

/// Waits for the first samples of `node` on `/metrics`, failing early when
/// a child exits.
async fn wait_ready(http: SocketAddr, node: &str, children: &mut Children) -> anyhow::Result<()> {
    let want = format!("node=\"{node}\"");
    let start = Instant::now();
    loop {
        if let Ok(body) = http_get(http, "/metrics") {
            if body.contains(&want) {
                return Ok(());
            }
        }
        for (name, c) in &mut children.0 {
            if let Ok(Some(st)) = c.try_wait() {
                anyhow::bail!("{name} exited early ({st}); see its log above");
            }
        }
        if start.elapsed() > READY_TIMEOUT {
            anyhow::bail!(
                "no samples from the agent on http://{http}/metrics after {READY_TIMEOUT:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `nodewatch demo` until Ctrl-C, then stops both children.
pub async fn run(a: DemoArgs) -> anyhow::Result<()> {
    let aggregator_bin = sibling("nodewatch-aggregator")?;
    let agent_bin = sibling("nodewatch-agent")?;
    let tmp;
    let dir: PathBuf = if let Some(d) = a.dir.clone() {
        std::fs::create_dir_all(&d)?;
        d
    } else {
        tmp = tempfile::Builder::new()
            .prefix("nodewatch-demo-")
            .tempdir()?;
        tmp.path().to_path_buf()
    };
    let node = this_node();

    write_pki(&dir, &node)?;

    let grpc = format!("127.0.0.1:{}", free_port()?);
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let d = dir.display();
    write(&dir.join("nodewatch.rules.yml"), DEFAULT_RULES)?;
    write(
        &dir.join("aggregator.yaml"),
        &format!("listen:\n  grpc: {grpc}\n  http: {http}\ntls:\n  ca: {d}/ca.crt\n  cert: {d}/aggregator.crt\n  key: {d}/aggregator.key\nrule_files: ['{d}/nodewatch.rules.yml']\n"),
    )?;
    write(
        &dir.join("agent.yaml"),
        &format!("aggregators: [\"{grpc}\"]\nserver_name: localhost\ninterval: {}\nspool: {{dir: {d}/spool}}\nhealth_listen: 127.0.0.1:{}\ntls:\n  ca: {d}/ca.crt\n  cert: {d}/agent.crt\n  key: {d}/agent.key\n", a.interval, free_port()?),
    )?;
    let cli_config = dir.join("nodewatch.yaml");
    write(&cli_config, &format!("aggregator: {grpc}\nserver_name: localhost\ntls:\n  ca: ca.crt\n  cert: operator.crt\n  key: operator.key\n"))?;

    let mut children = Children(Vec::new());
    let spawn = |bin: &Path, cfg: &Path| {
        Command::new(bin)
            .arg("--config")
            .arg(cfg)
            .stdin(Stdio::null())
            .spawn()
    };
    children.0.push((
        "nodewatch-aggregator".into(),
        spawn(&aggregator_bin, &dir.join("aggregator.yaml"))?,
    ));
    children.0.push((
        "nodewatch-agent".into(),
        spawn(&agent_bin, &dir.join("agent.yaml"))?,
    ));

    wait_ready(http, &node, &mut children).await?;
    let me = std::env::current_exe()?;
    println!();
    println!("metrics: http://{http}/metrics");
    println!(
        "node:    {node} (agent every {}, mutual TLS on {grpc})",
        a.interval
    );
    println!("files:   {}", dir.display());
    println!(
        "try:     NODEWATCH_CONFIG={} {} nodes",
        cli_config.display(),
        me.display()
    );
    println!(
        "         NODEWATCH_CONFIG={} {} query 'node_memory_MemAvailable_bytes{{node=\"{node}\"}}'",
        cli_config.display(),
        me.display()
    );
    println!(
        "         NODEWATCH_CONFIG={} {} alerts   # the default rule pack; healthy: only Watchdog",
        cli_config.display(),
        me.display()
    );
    println!("Ctrl-C stops both.");
    std::io::stdout().flush()?;

    nodewatch_proto::shutdown_signal().await;
    eprintln!("demo: stopping");
    if children.stop() {
        Ok(())
    } else {
        anyhow::bail!("a component did not stop cleanly")
    }
}
