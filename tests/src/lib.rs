//! Helpers for the end-to-end tests: certificates made at test time, real
//! aggregator and agent processes on free loopback ports, and the rule that
//! a missing real component fails the test under `CI=true`.
#![allow(clippy::missing_panics_doc, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nodewatch_proto::certs::{Ca, Leaf, DEFAULT_CA_VALIDITY, DEFAULT_LEAF_VALIDITY};
use nodewatch_proto::tls::{self, Reloadable, Target, TlsFiles};
use nodewatch_proto::{Identity, NodeName};

pub mod victoria;

/// Whether tests run in CI, where a missing component is a failure.
#[must_use]
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Call when a real component is missing: fails under `CI=true`, otherwise
/// prints why and returns so the caller can `return` (skip). In a benchmark
/// run for the report the skip is recorded too, so the report shows it
/// instead of a silently absent row.
pub fn missing(what: &str) {
    BenchResult::skipped(what).record();
    assert!(!in_ci(), "required component missing (CI=true): {what}");
    eprintln!("SKIP: {what}");
}

/// Finds an executable on PATH or in the usual Debian places.
#[must_use]
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

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

/// A free TCP port on loopback, never the same twice in one test process.
///
/// Ports come from 20000–32767, below Linux's ephemeral range (32768–60999),
/// so no outgoing connection of an agent, Prometheus or another test can hold
/// one between this call and the listener's bind. Asking the kernel for port
/// 0 instead hands back ephemeral ports that a parallel test's client socket
/// may take first (seen as "Address already in use" at aggregator start).
#[must_use]
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_768;
    // Each test binary starts at its own offset so that two running at once
    // (or a leftover child of the previous one) rarely meet.
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(FIRST + n % SPAN).unwrap();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN);
}

/// A plain HTTP/1.0 GET; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((
        status,
        raw.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    ))
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

/// A throwaway PKI in a temporary folder.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    #[must_use]
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("test CA", DEFAULT_CA_VALIDITY).unwrap();
        ca.pem().write(dir.path(), "ca").unwrap();
        let pki = Self { dir, ca };
        let _ = pki.issue(
            "aggregator",
            &Leaf::Server {
                names: vec!["localhost".into(), "127.0.0.1".into()],
            },
        );
        pki
    }

    #[must_use]
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Issues `<stem>.crt/.key`.
    #[must_use]
    pub fn issue(&self, stem: &str, leaf: &Leaf) -> TlsFiles {
        self.issue_for(stem, leaf, DEFAULT_LEAF_VALIDITY)
    }

    #[must_use]
    pub fn issue_for(&self, stem: &str, leaf: &Leaf, validity: Duration) -> TlsFiles {
        let (cert, key) = self
            .ca
            .issue(leaf, validity)
            .unwrap()
            .write(self.dir.path(), stem)
            .unwrap();
        TlsFiles {
            ca: self.path("ca.crt"),
            cert,
            key,
        }
    }

    /// Issues `<stem>.crt/.key` valid only from `not_before` to `not_after` (e.g. already expired).
    #[must_use]
    pub fn issue_expired(
        &self,
        stem: &str,
        leaf: &Leaf,
        not_before: nodewatch_proto::certs::OffsetDateTime,
        not_after: nodewatch_proto::certs::OffsetDateTime,
    ) -> TlsFiles {
        let (cert, key) = self
            .ca
            .issue_window(leaf, not_before, not_after)
            .unwrap()
            .write(self.dir.path(), stem)
            .unwrap();
        TlsFiles {
            ca: self.path("ca.crt"),
            cert,
            key,
        }
    }

    /// A node certificate (`node-<name>`).
    #[must_use]
    pub fn node(&self, name: &str) -> TlsFiles {
        self.issue(
            &format!("node-{name}"),
            &Leaf::Client(Identity::Node(NodeName::new(name).unwrap())),
        )
    }

    /// An operator certificate (`operator-<who>`).
    #[must_use]
    pub fn operator(&self, who: &str) -> TlsFiles {
        self.issue(
            &format!("operator-{who}"),
            &Leaf::Client(Identity::Operator(who.into())),
        )
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
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
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = pki.path(&format!("{name}.yaml"));
        let d = pki.dir.path().display();
        std::fs::write(
            &config,
            format!("listen:\n  grpc: {grpc}\n  http: {http}\ntls:\n  ca: {d}/ca.crt\n  cert: {d}/aggregator.crt\n  key: {d}/aggregator.key\n{extra}"),
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
        wait_for(Duration::from_secs(20), "aggregator /healthz", || {
            http_get(agg.http, "/healthz")
                .ok()
                .filter(|(s, _)| *s == 200)
                .map(|_| ())
        });
        agg
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
        let http = self.http;
        wait_for(
            Duration::from_secs(20),
            "aggregator /healthz after restart",
            || {
                http_get(http, "/healthz")
                    .ok()
                    .filter(|(s, _)| *s == 200)
                    .map(|_| ())
            },
        );
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

/// Every event the aggregator keeps, through `nodewatch events -o json`.
#[must_use]
pub fn cli_events(pki: &Pki, agg: &Aggregator) -> Vec<serde_json::Value> {
    let ops = pki.operator("cli");
    let out = Command::new(bin("nodewatch"))
        .args([
            "--aggregator",
            &agg.grpc.to_string(),
            "--server-name",
            "localhost",
            "--ca",
            ops.ca.to_str().unwrap(),
            "--cert",
            ops.cert.to_str().unwrap(),
            "--key",
            ops.key.to_str().unwrap(),
            "events",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nodewatch events: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A small seeded generator (`SplitMix64`), so a randomized test can be
/// replayed from the seed it prints.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `NODEWATCH_TEST_SEED` when set, else from `default`.
    #[must_use]
    pub fn from_env(default: u64) -> Self {
        let seed = std::env::var("NODEWATCH_TEST_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default);
        println!("seed: {seed} (NODEWATCH_TEST_SEED={seed} replays this run)");
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A duration drawn uniformly from `lo..hi` (milliseconds).
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next_u64() % (hi - lo).max(1))
    }
}

/// Counts stored for an instant-vector expression, or `None` if empty.
#[must_use]
pub fn query_scalar(pki: &Pki, agg: &Aggregator, expr: &str) -> Option<f64> {
    scalar_of(&cli_query(pki, agg, expr))
}

/// Runs an instant `PromQL` query through the real CLI with an operator certificate; returns the JSON result.
#[must_use]
pub fn cli_query(pki: &Pki, agg: &Aggregator, expr: &str) -> serde_json::Value {
    let ops = pki.operator("cli");
    let out = operator_cli(&ops, agg)
        .args(["query", "-o", "json", expr])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nodewatch query {expr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The single value of an instant query's vector result, if any.
#[must_use]
pub fn scalar_of(v: &serde_json::Value) -> Option<f64> {
    v["result"].get(0)?["value"][1].as_str()?.parse().ok()
}

/// A gRPC channel to an aggregator presenting `files`.
#[must_use]
pub fn channel(agg: &Aggregator, files: &TlsFiles) -> tonic::transport::Channel {
    let cfg = tls::client_config(files).unwrap();
    tls::channel(
        &agg.target(),
        Reloadable::new(Arc::clone(&cfg)),
        Some("localhost".into()),
        Duration::from_secs(5),
    )
    .unwrap()
}

/// A webhook receiver: an HTTP server on loopback that stores each POST body.
pub struct Webhook {
    pub addr: SocketAddr,
    pub bodies: Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
}

impl Webhook {
    #[must_use]
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let store = Arc::clone(&bodies);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    // Read headers, then Content-Length bytes of body.
                    loop {
                        let Ok(n) = conn.read(&mut chunk) else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let len = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if body.len() >= len {
                                store
                                    .lock()
                                    .unwrap()
                                    .push((Instant::now(), body[..len].to_string()));
                                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                                return;
                            }
                        }
                    }
                });
            }
        });
        Self { addr, bodies }
    }

    /// Every body containing `needle`, in arrival order.
    #[must_use]
    pub fn find_all(&self, needle: &str) -> Vec<(Instant, String)> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, b)| b.contains(needle))
            .cloned()
            .collect()
    }

    /// The first body containing `needle`, with when it arrived.
    #[must_use]
    pub fn find(&self, needle: &str) -> Option<(Instant, String)> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .find(|(_, b)| b.contains(needle))
            .cloned()
    }
}

/// How a [`FakeServer`] answers a request path: HTTP status line text
/// (`"200 OK"`) and a JSON body.
type Route = Arc<dyn Fn(&str) -> (&'static str, String) + Send + Sync>;

/// A stand-in HTTPS server for the kubelet or the API server (no cluster
/// exists where the tests run): answers each request from `route(path)` when
/// it carries `Authorization: Bearer <token>`, 401 otherwise, and records
/// every request's path and `Authorization` header.
pub struct FakeServer {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeServer {
    /// Serves with the PEM certificate chain and key given.
    #[must_use]
    pub fn start(
        cert_pem: &str,
        key_pem: &str,
        token: &str,
        route: impl Fn(&str) -> (&'static str, String) + Send + Sync + 'static,
    ) -> Self {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let cfg = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (Arc::clone(&seen), Arc::clone(&stop));
        let route: Route = Arc::new(route);
        let bearer = format!("Bearer {token}");
        let thread = std::thread::spawn(move || {
            for tcp in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(tcp) = tcp else { continue };
                let _ = serve_one(tcp, &cfg, &route, &bearer, &seen2);
            }
            // The listener is dropped here: connections are refused from now on.
        });
        Self {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Goes away: stops accepting and closes the listening socket.
    pub fn shut_down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    /// Every request so far: path and `Authorization` header.
    #[must_use]
    pub fn requests(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn serve_one(
    tcp: TcpStream,
    cfg: &Arc<rustls::ServerConfig>,
    route: &Route,
    bearer: &str,
    seen: &Mutex<Vec<(String, String)>>,
) -> std::io::Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let conn = rustls::ServerConnection::new(Arc::clone(cfg)).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut reader = BufReader::new(&mut tls);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut auth = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                auth = v.trim().to_string();
            }
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    seen.lock().unwrap().push((path.clone(), auth.clone()));
    let (status, body) = if auth == bearer {
        route(&path)
    } else {
        ("401 Unauthorized", r#"{"kind":"Status","code":401}"#.into())
    };
    write!(
        tls,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    tls.conn.send_close_notify();
    tls.flush()
}

/// A real Alertmanager sending every alert to `hook` at once.
#[must_use]
pub fn start_alertmanager(dir: &Path, hook: &Webhook) -> Option<(Proc, SocketAddr)> {
    start_alertmanager_with(dir, hook, &AlertmanagerOptions::default())
}

/// How [`start_alertmanager_with`] runs Alertmanager.
#[derive(Debug, Clone)]
pub struct AlertmanagerOptions {
    /// Port to listen on (a free one if `None`).
    pub port: Option<u16>,
    /// The route's `group_by`.
    pub group_by: Vec<String>,
    /// `--web.config.file` contents (basic auth, TLS), if any.
    pub web_config: Option<String>,
    /// Process and log name (several Alertmanagers may share a folder).
    pub name: String,
}

impl Default for AlertmanagerOptions {
    fn default() -> Self {
        Self {
            port: None,
            group_by: vec!["alertname".into(), "node".into()],
            web_config: None,
            name: "alertmanager".into(),
        }
    }
}

/// A real Alertmanager as `opts` says, waiting until it is ready (with a
/// web config, any HTTP answer says it is up: a 401 for basic auth, a 400
/// to plain HTTP for TLS).
#[must_use]
pub fn start_alertmanager_with(
    dir: &Path,
    hook: &Webhook,
    opts: &AlertmanagerOptions,
) -> Option<(Proc, SocketAddr)> {
    let Some(bin) =
        find_program("prometheus-alertmanager").or_else(|| find_program("alertmanager"))
    else {
        missing("alertmanager (Debian package `prometheus-alertmanager`)");
        return None;
    };
    let port = opts.port.unwrap_or_else(free_port);
    let name = &opts.name;
    let cfg = dir.join(format!("{name}.yml"));
    let group_by: Vec<String> = opts.group_by.iter().map(|g| format!("'{g}'")).collect();
    std::fs::write(
        &cfg,
        format!(
            "route:\n  receiver: hook\n  group_by: [{}]\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: http://{}/\n        send_resolved: true\n",
            group_by.join(", "),
            hook.addr
        ),
    )
    .unwrap();
    let mut args = vec![
        format!("--config.file={}", cfg.display()),
        format!(
            "--storage.path={}",
            dir.join(format!("{name}-data")).display()
        ),
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--cluster.listen-address=".to_string(),
    ];
    if let Some(web) = &opts.web_config {
        let f = dir.join(format!("{name}-web.yml"));
        std::fs::write(&f, web).unwrap();
        args.push(format!("--web.config.file={}", f.display()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = spawn(&bin, &args, dir, name);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let auth = opts.web_config.is_some();
    wait_for(Duration::from_secs(20), "alertmanager ready", || {
        http_get(addr, "/-/ready")
            .ok()
            .filter(|(s, _)| *s == 200 || (auth && *s != 0))
    });
    Some((p, addr))
}

/// A memory cgroup (v1 `memory` controller, or v2 where that is what is
/// mounted) with a limit, removed on drop. `None` where neither is available.
pub struct MemCgroup {
    pub dir: PathBuf,
}

impl MemCgroup {
    /// `nodewatch-<tag>-<pid>` limited to `limit` bytes, with swap closed so
    /// a process over the limit is OOM-killed rather than paged out.
    #[must_use]
    pub fn new(tag: &str, limit: u64) -> Option<Self> {
        let name = format!("nodewatch-{tag}-{}", std::process::id());
        let v1 = PathBuf::from("/sys/fs/cgroup/memory");
        let (dir, limit_file) = if v1.join("memory.limit_in_bytes").exists() {
            (v1.join(&name), "memory.limit_in_bytes")
        } else if PathBuf::from("/sys/fs/cgroup/cgroup.controllers").exists() {
            (PathBuf::from("/sys/fs/cgroup").join(&name), "memory.max")
        } else {
            return None;
        };
        std::fs::create_dir(&dir).ok()?;
        let cg = Self { dir };
        std::fs::write(cg.dir.join(limit_file), limit.to_string()).ok()?;
        let _ = std::fs::write(cg.dir.join("memory.swappiness"), "0");
        let _ = std::fs::write(cg.dir.join("memory.swap.max"), "0");
        let _ = std::fs::write(
            cg.dir.join("memory.memsw.limit_in_bytes"),
            limit.to_string(),
        );
        Some(cg)
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The real `nodewatch` CLI pointed at `agg` with the operator certificate `ops`; add the command's arguments.
#[must_use]
pub fn operator_cli(ops: &TlsFiles, agg: &Aggregator) -> Command {
    let mut c = Command::new(bin("nodewatch"));
    c.args([
        "--aggregator",
        &agg.grpc.to_string(),
        "--server-name",
        "localhost",
    ])
    .arg("--ca")
    .arg(&ops.ca)
    .arg("--cert")
    .arg(&ops.cert)
    .arg("--key")
    .arg(&ops.key);
    c
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

/// The file benchmarks append their results to, one JSON object a line
/// (`nodewatch-bench-report` sets it; unset, nothing is written).
pub const BENCH_RESULTS_ENV: &str = "NODEWATCH_BENCH_RESULTS";

/// Which way a measure improves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Lower,
    Higher,
}

impl Better {
    /// Whether `value` is on the good side of `bound` (ties count as met).
    #[must_use]
    pub fn meets(self, value: f64, bound: f64) -> bool {
        match self {
            Self::Lower => value <= bound,
            Self::Higher => value >= bound,
        }
    }
}

/// One measure of a benchmark, nodewatch's figure beside its peer's from the
/// same run, in the machine-readable form `nodewatch-bench-report` collects.
/// Figures that came out NaN or infinite are written as `null`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BenchResult {
    pub bench: String,
    pub measure: String,
    pub unit: String,
    pub nodewatch: Option<f64>,
    /// The peer as it ran (name and version); `None` where there is none.
    pub peer: Option<String>,
    pub peer_value: Option<f64>,
    pub better: Better,
    /// A goal for nodewatch's own figure, in `unit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<f64>,
    /// A goal for nodewatch / peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal_ratio: Option<f64>,
    /// Set when the benchmark could not run: the component it lacked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// The running benchmark's name: cargo names bench executables `<name>-<hash>`.
fn bench_name() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let stem = exe
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name.to_string()
        }
        _ => stem,
    }
}

impl BenchResult {
    /// nodewatch's figure for `measure`, in `unit`, with no peer or goal yet.
    #[must_use]
    pub fn new(measure: &str, unit: &str, nodewatch: f64, better: Better) -> Self {
        Self {
            bench: bench_name(),
            measure: measure.to_string(),
            unit: unit.to_string(),
            nodewatch: finite(nodewatch),
            peer: None,
            peer_value: None,
            better,
            goal: None,
            goal_ratio: None,
            missing: None,
        }
    }

    /// The record of a benchmark that could not run for lack of `what`.
    #[must_use]
    pub fn skipped(what: &str) -> Self {
        let mut r = Self::new("(not run)", "", f64::NAN, Better::Lower);
        r.missing = Some(what.to_string());
        r
    }

    /// The peer's figure for the same measure in the same run.
    #[must_use]
    pub fn peer(mut self, peer: &str, value: f64) -> Self {
        self.peer = Some(peer.to_string());
        self.peer_value = finite(value);
        self
    }

    /// A goal for nodewatch's figure itself.
    #[must_use]
    pub fn goal(mut self, goal: f64) -> Self {
        self.goal = Some(goal);
        self
    }

    /// A goal for nodewatch's figure over the peer's.
    #[must_use]
    pub fn goal_ratio(mut self, ratio: f64) -> Self {
        self.goal_ratio = Some(ratio);
        self
    }

    /// nodewatch / peer, where both were measured.
    #[must_use]
    pub fn ratio(&self) -> Option<f64> {
        finite(self.nodewatch? / self.peer_value?)
    }

    /// Whether the goal is met; `None` without a goal or a figure to judge.
    #[must_use]
    pub fn goal_met(&self) -> Option<bool> {
        let nw = self.nodewatch?;
        match (self.goal, self.goal_ratio) {
            (Some(g), _) => Some(self.better.meets(nw, g)),
            (None, Some(g)) => Some(self.better.meets(self.ratio()?, g)),
            (None, None) => None,
        }
    }

    /// Appends this result to the file named by [`BENCH_RESULTS_ENV`], if set.
    pub fn record(&self) {
        let Some(path) = std::env::var_os(BENCH_RESULTS_ENV) else {
            return;
        };
        // One write of a whole line to an O_APPEND file: lines never interleave.
        let mut line = serde_json::to_string(self).unwrap();
        line.push('\n');
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .unwrap_or_else(|e| panic!("{}: {e}", Path::new(&path).display()));
    }
}

/// A peer's name with the version its `--version` reports ("Prometheus
/// 2.42.0"), so results say what actually ran; the bare name if it says none.
#[must_use]
pub fn peer_name(name: &str, program: &Path) -> String {
    let version = Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let mut words = text.split_whitespace();
            words.find(|w| *w == "version")?;
            // Debian's builds say "2.42.0+ds"; the upstream version is what compares.
            let v = words.next()?;
            Some(v.split('+').next().unwrap_or(v).to_string())
        });
    match version {
        Some(v) => format!("{name} {v}"),
        None => name.to_string(),
    }
}
