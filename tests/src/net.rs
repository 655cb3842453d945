//! Loopback plumbing: free ports, a plain HTTP GET, and [`FakeServer`], the
//! HTTPS stand-in for the kubelet or the Kubernetes API server (no cluster
//! exists where the tests run).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    Ok(parse_response(&raw))
}

/// The status (0 if none) and body of a whole HTTP/1.0 answer.
#[must_use]
pub fn parse_response(raw: &str) -> (u16, String) {
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Reads one HTTP request from `conn`: its head (request line and headers)
/// and a body of `Content-Length` bytes; `None` if the connection ends or
/// fails first.
pub fn read_request(conn: &mut impl Read) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
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
                return Some((head.to_string(), body[..len].to_string()));
            }
        }
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
