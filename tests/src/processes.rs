//! Real processes of the tests: a child killed on drop with its log
//! ([`Proc`]), the aggregator and the agent started from this workspace's
//! binaries ([`bin`]) on free loopback ports, and [`wait_for`] to poll until
//! they answer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nodewatch_proto::tls::{Target, TlsFiles};

use crate::net::{free_port, http_get};
use crate::pki::Pki;

/// A binary built from this workspace (target/<profile>/<name>).
#[must_use]
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built; run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    /// Sends SIGTERM and waits up to `timeout`; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The process' combined output so far.
    #[must_use]
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.log_text());
        }
    }
}

/// Spawns `bin` with `args`, output to a log file in `dir` (started afresh).
#[must_use]
pub fn spawn(bin: &Path, args: &[&str], dir: &Path, name: &str) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    start_logged(bin, args, &[], out, name, log)
}

/// Starts `bin` with its stdout and stderr going to `out`, the file at `log`.
fn start_logged(
    bin: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    out: std::fs::File,
    name: &str,
    log: PathBuf,
) -> Proc {
    let err = out.try_clone().unwrap();
    let child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    Proc {
        child,
        name: name.into(),
        log,
    }
}

/// A running aggregator process.
pub struct Aggregator {
    pub proc: Proc,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub config: PathBuf,
}

impl Aggregator {
    /// Starts an aggregator with `extra` YAML appended to its config.
    #[must_use]
    pub fn start(pki: &Pki, name: &str, extra: &str) -> Self {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::start_at(pki, name, grpc, grpc, extra)
    }

    /// Starts an aggregator listening for gRPC on `listen` (`0.0.0.0:<port>`
    /// or a veth's address, for agents in a network namespace), which the
    /// test reaches at `grpc`; HTTP on a free loopback port.
    #[must_use]
    pub fn start_at(
        pki: &Pki,
        name: &str,
        listen: SocketAddr,
        grpc: SocketAddr,
        extra: &str,
    ) -> Self {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = pki.path(&format!("{name}.yaml"));
        let d = pki.dir.path().display();
        std::fs::write(
            &config,
            format!("listen:\n  grpc: {listen}\n  http: {http}\ntls:\n  ca: {d}/ca.crt\n  cert: {d}/aggregator.crt\n  key: {d}/aggregator.key\n{extra}"),
        )
        .unwrap();
        let proc = spawn(
            &bin("nodewatch-aggregator"),
            &["--config", config.to_str().unwrap()],
            pki.dir.path(),
            name,
        );
        let agg = Self {
            proc,
            grpc,
            http,
            config,
        };
        agg.wait_healthy("aggregator /healthz");
        agg
    }

    /// Waits until `/healthz` answers 200.
    fn wait_healthy(&self, what: &str) {
        wait_for(Duration::from_secs(20), what, || {
            http_get(self.http, "/healthz")
                .ok()
                .filter(|(s, _)| *s == 200)
                .map(|_| ())
        });
    }

    /// `kill -9`: no flush, no goodbye.
    pub fn kill9(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }

    /// Starts it again on the same ports with the same configuration.
    pub fn restart(&mut self, pki: &Pki, name: &str) {
        self.kill9();
        self.proc = spawn(
            &bin("nodewatch-aggregator"),
            &["--config", self.config.to_str().unwrap()],
            pki.dir.path(),
            name,
        );
        self.wait_healthy("aggregator /healthz after restart");
    }

    /// The `/metrics` body.
    #[must_use]
    pub fn metrics(&self) -> String {
        http_get(self.http, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    #[must_use]
    pub fn target(&self) -> Target {
        Target {
            host: "127.0.0.1".into(),
            port: self.grpc.port(),
        }
    }
}

/// Starts an agent for `node` streaming to `aggregators`, with `extra` YAML.
#[must_use]
pub fn start_agent(pki: &Pki, node: &str, aggregators: &[&Aggregator], extra: &str) -> Proc {
    start_agent_with(pki, node, &pki.node(node), aggregators, extra)
}

/// Starts an agent presenting `files`.
#[must_use]
pub fn start_agent_with(
    pki: &Pki,
    node: &str,
    files: &TlsFiles,
    aggregators: &[&Aggregator],
    extra: &str,
) -> Proc {
    start_agent_env(pki, node, files, aggregators, extra, &[])
}

/// Writes the configuration of agent `node` (`agent-<node>.yaml`) streaming
/// to `aggregators` (addresses), with `extra` YAML; returns its path.
#[must_use]
pub fn write_agent_config(
    pki: &Pki,
    node: &str,
    files: &TlsFiles,
    aggregators: &[String],
    extra: &str,
) -> PathBuf {
    let config = pki.path(&format!("agent-{node}.yaml"));
    let list: Vec<String> = aggregators.iter().map(|a| format!("\"{a}\"")).collect();
    std::fs::write(
        &config,
        format!(
            "aggregators: [{}]\nserver_name: localhost\n{}{}{}{}tls:\n  ca: {}\n  cert: {}\n  key: {}\n{extra}",
            list.join(", "),
            if extra.contains("interval:") { "" } else { "interval: 1s\n" },
            // eBPF only where a test asks for it: every agent would otherwise see every test's OOM kills.
            if extra.contains("collectors:") { "" } else { "collectors: {ebpf: false}\n" },
            if extra.contains("health_listen:") { "" } else { "health_listen: \"\"\n" },
            if extra.contains("spool:") { String::new() } else { format!("spool: {{dir: {}}}\n", pki.path(&format!("spool-{node}")).display()) },
            files.ca.display(),
            files.cert.display(),
            files.key.display()
        ),
    )
    .unwrap();
    config
}

/// Starts an agent presenting `files` with extra environment variables
/// (e.g. `NODEWATCH_TESTSEQ_SERIES` for the test collector).
#[must_use]
pub fn start_agent_env(
    pki: &Pki,
    node: &str,
    files: &TlsFiles,
    aggregators: &[&Aggregator],
    extra: &str,
    env: &[(&str, &str)],
) -> Proc {
    let list: Vec<String> = aggregators.iter().map(|a| a.grpc.to_string()).collect();
    let config = write_agent_config(pki, node, files, &list, extra);
    spawn_env(
        &bin("nodewatch-agent"),
        &["--config", config.to_str().unwrap()],
        pki.dir.path(),
        &format!("agent-{node}"),
        env,
    )
}

/// Spawns `bin` as [`spawn`] with extra environment variables. The log file
/// is appended to, so restarts of the same process keep one log.
#[must_use]
pub fn spawn_env(bin: &Path, args: &[&str], dir: &Path, name: &str, env: &[(&str, &str)]) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    start_logged(bin, args, env, out, name, log)
}

/// A process's CPU time (utime + stime, dead threads included) in clock ticks.
#[must_use]
pub fn process_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised comm; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}
