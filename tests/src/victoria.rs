//! VictoriaMetrics single-node (Debian's `victoria-metrics`) as a benchmark
//! peer: started on loopback with its data in a folder of the benchmark's,
//! fed over Prometheus remote write (`/api/v1/write`) or its text import
//! API, and queried through its Prometheus-compatible `/api/v1/query`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{free_port, http_get, parse_response, spawn, wait_for, Proc};

/// The program's name on Debian.
pub const PROGRAM: &str = "victoria-metrics";

/// Starts VictoriaMetrics with its data in `dir/vm-<tag>`.
///
/// - `-search.latencyOffset=0s`: by default it hides the last 30 s of data
///   from queries, which the benchmarks ask for;
/// - `-search.disableCache`: every query is evaluated, as on the other sides
///   (its response cache would otherwise answer a repeated query without
///   evaluating it);
/// - `-retentionPeriod=100y`: benchmark data carries timestamps around now.
#[must_use]
pub fn start(bin: &Path, dir: &Path, tag: &str) -> (Proc, SocketAddr) {
    let port = free_port();
    let data = dir.join(format!("vm-{tag}"));
    let p = spawn(
        bin,
        &[
            &format!("-storageDataPath={}", data.display()),
            &format!("-httpListenAddr=127.0.0.1:{port}"),
            "-search.latencyOffset=0s",
            "-search.disableCache",
            "-retentionPeriod=100y",
            "-loggerLevel=WARN",
        ],
        dir,
        &format!("victoria-metrics-{tag}"),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for(Duration::from_secs(30), "victoria-metrics ready", || {
        http_get(addr, "/health").ok().filter(|(s, _)| *s == 200)
    });
    (p, addr)
}

/// "VictoriaMetrics <version>" from the Debian package (its `-version`
/// prints nothing in Debian's build).
#[must_use]
pub fn peer_name() -> String {
    let version = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", PROGRAM])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    match version {
        // "1.79.12+ds1-1": the upstream part.
        Some(v) if !v.is_empty() => {
            let v = v.split(['+', '-']).next().unwrap_or(&v);
            format!("VictoriaMetrics {v}")
        }
        _ => "VictoriaMetrics".to_string(),
    }
}

/// POSTs `body` to `path` (HTTP/1.0, one request per connection); returns
/// the status and body of the answer.
pub fn post(addr: SocketAddr, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    Ok(parse_response(&raw))
}

/// Makes everything imported so far searchable (`/internal/force_flush`).
pub fn flush(addr: SocketAddr) {
    let (status, body) = http_get(addr, "/internal/force_flush").unwrap();
    assert!((200..300).contains(&status), "force_flush: {status} {body}");
}
