//! Gateway quality from OPNsense's dpinger monitors.
//!
//! OPNsense runs one `dpinger` per monitored gateway with `-u
//! /var/run/dpinger_<gateway>.sock`. A client that connects to that unix
//! socket gets one line and EOF: `<name> <latency_us> <stddev_us> <loss_pct>`
//! (dpinger.c `usock_thread`: `"%s %u %u %u\n"`, averages over its
//! reporting window). Exported per gateway:
//!
//! - `nodewatch_gateway_rtt_seconds`, `nodewatch_gateway_rtt_stddev_seconds`,
//!   `nodewatch_gateway_loss_ratio` (0 to 1);
//! - `nodewatch_gateway_up`: 1 when the monitor answered and loss is below
//!   100 %, 0 when it answered with total loss or could not be read (a
//!   dead dpinger means the gateway is not being watched, which an alert
//!   should see too).

use std::path::PathBuf;
use std::time::Duration;

use crate::collector::{CollectError, Collector, Sink};

/// Directory and name pattern of the sockets (OPNsense `src/etc/inc/plugins.inc.d/dpinger.inc`).
pub const SOCKET_DIR: &str = "/var/run";
const SOCKET_PREFIX: &str = "dpinger_";
const SOCKET_SUFFIX: &str = ".sock";

/// How long to wait for a monitor's line. dpinger answers at once from its
/// own thread; a stuck one must not hold up the other collectors.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(2);

/// A status line is ~60 bytes; anything longer is not dpinger.
const MAX_LINE: u64 = 4096;

/// One gateway's report.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayStatus {
    pub name: String,
    pub rtt_seconds: f64,
    pub stddev_seconds: f64,
    /// 0 to 1.
    pub loss_ratio: f64,
}

/// Parses dpinger's status line. The name is everything before the last
/// three fields, so a name with spaces still parses.
#[must_use]
pub fn parse_status(line: &str) -> Option<GatewayStatus> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 4 {
        return None;
    }
    let n = fields.len();
    let latency: u64 = fields[n - 3].parse().ok()?;
    let stddev: u64 = fields[n - 2].parse().ok()?;
    let loss: u64 = fields[n - 1].parse().ok()?;
    if loss > 100 {
        return None;
    }
    Some(GatewayStatus {
        name: fields[..n - 3].join(" "),
        rtt_seconds: latency as f64 / 1e6,
        stddev_seconds: stddev as f64 / 1e6,
        loss_ratio: loss as f64 / 100.0,
    })
}

/// The gateway name a socket file stands for (`dpinger_WAN_DHCP.sock` →
/// `WAN_DHCP`); pfSense-style `dpinger_<gw>~<src>~<dst>.sock` keeps only `<gw>`.
#[must_use]
pub fn gateway_from_socket(file_name: &str) -> Option<&str> {
    let name = file_name
        .strip_prefix(SOCKET_PREFIX)?
        .strip_suffix(SOCKET_SUFFIX)?;
    let name = name.split('~').next().unwrap_or(name);
    (!name.is_empty()).then_some(name)
}

/// Writes one gateway; `None` = its monitor could not be read.
pub fn write(sink: &mut Sink, gateway: &str, status: Option<&GatewayStatus>) {
    let labels = [("gateway", gateway)];
    if let Some(s) = status {
        sink.gauge(
            "nodewatch_gateway_rtt_seconds",
            "Average round-trip time to the gateway's monitor address (dpinger).",
            &labels,
            s.rtt_seconds,
        );
        sink.gauge(
            "nodewatch_gateway_rtt_stddev_seconds",
            "Standard deviation of the round-trip time (dpinger).",
            &labels,
            s.stddev_seconds,
        );
        sink.gauge(
            "nodewatch_gateway_loss_ratio",
            "Share of probes lost (dpinger, 0 to 1).",
            &labels,
            s.loss_ratio,
        );
    }
    let up = status.is_some_and(|s| s.loss_ratio < 1.0);
    sink.gauge(
        "nodewatch_gateway_up",
        "Whether the gateway answers probes (1) or its monitor reports total loss or cannot be read (0).",
        &labels,
        if up { 1.0 } else { 0.0 },
    );
}

/// Reads one dpinger socket's line.
#[cfg(unix)]
pub fn read_socket(path: &std::path::Path, timeout: Duration) -> std::io::Result<String> {
    use std::io::Read;
    let stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut buf = Vec::new();
    stream.take(MAX_LINE).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// Reads every `dpinger_*.sock` in a directory each collection.
pub struct DpingerCollector {
    dir: PathBuf,
    timeout: Duration,
}

impl DpingerCollector {
    #[must_use]
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            timeout: SOCKET_TIMEOUT,
        }
    }
}

#[cfg(unix)]
impl Collector for DpingerCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(CollectError::io(&self.dir, e)),
        };
        let mut sockets: Vec<(String, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let file = e.file_name();
                let gw = gateway_from_socket(file.to_str()?)?.to_string();
                Some((gw, e.path()))
            })
            .collect();
        sockets.sort();
        for (gw, path) in sockets {
            match read_socket(&path, self.timeout) {
                Ok(line) => {
                    let status = parse_status(&line);
                    let name = status.as_ref().map_or(gw.as_str(), |s| s.name.as_str());
                    write(sink, name, status.as_ref());
                }
                Err(error) => {
                    // A stale socket of a stopped monitor: the gateway is unwatched.
                    tracing::debug!(path = %path.display(), %error, "dpinger socket unreadable");
                    write(sink, &gw, None);
                }
            }
        }
        Ok(())
    }
}

#[cfg(target_os = "freebsd")]
pub const SPEC: crate::collector::CollectorSpec =
    crate::collector::CollectorSpec::new("dpinger", |paths| {
        Ok(Box::new(DpingerCollector::new(paths.root(SOCKET_DIR))))
    });

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixListener;

    use super::*;
    use crate::collectors::testutil::{fuzz_inputs, value};

    #[test]
    fn parses_line() {
        assert_eq!(
            parse_status("WAN_DHCP 12345 678 3\n"),
            Some(GatewayStatus {
                name: "WAN_DHCP".into(),
                rtt_seconds: 0.012_345,
                stddev_seconds: 0.000_678,
                loss_ratio: 0.03,
            })
        );
        assert_eq!(parse_status("GW 1 2"), None);
        assert_eq!(parse_status("GW 1 2 101"), None);
        assert_eq!(parse_status("GW x 2 3"), None);
        assert_eq!(gateway_from_socket("dpinger_WAN_GW.sock"), Some("WAN_GW"));
        assert_eq!(
            gateway_from_socket("dpinger_WAN~192.0.2.1~192.0.2.254.sock"),
            Some("WAN")
        );
        assert_eq!(gateway_from_socket("dpinger_.sock"), None);
        assert_eq!(gateway_from_socket("other.sock"), None);
    }

    /// Real unix sockets answering as dpinger does (write one line, close),
    /// plus a stale socket file nobody listens on.
    #[test]
    fn reads_real_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let mut servers = Vec::new();
        for (gw, line) in [
            ("WAN_GW", "WAN_GW 15250 1200 0\n"),
            ("LTE_GW", "LTE_GW 0 0 100\n"),
        ] {
            let listener =
                UnixListener::bind(dir.path().join(format!("dpinger_{gw}.sock"))).unwrap();
            servers.push(std::thread::spawn(move || {
                let (mut conn, _) = listener.accept().unwrap();
                conn.write_all(line.as_bytes()).unwrap();
            }));
        }
        // Bound, then dropped: connecting is refused, like a dead dpinger's leftover socket.
        drop(UnixListener::bind(dir.path().join("dpinger_DEAD_GW.sock")).unwrap());
        std::fs::write(dir.path().join("unrelated.sock"), "").unwrap();

        let mut c = DpingerCollector::new(dir.path().to_path_buf());
        let mut sink = Sink::new();
        c.collect(&mut sink).unwrap();
        for s in servers {
            s.join().unwrap();
        }
        let gw = |g| [("gateway", g)];
        assert_eq!(
            value(&sink, "nodewatch_gateway_rtt_seconds", &gw("WAN_GW")),
            Some(0.015_25)
        );
        assert_eq!(
            value(&sink, "nodewatch_gateway_rtt_stddev_seconds", &gw("WAN_GW")),
            Some(0.0012)
        );
        assert_eq!(
            value(&sink, "nodewatch_gateway_loss_ratio", &gw("WAN_GW")),
            Some(0.0)
        );
        assert_eq!(
            value(&sink, "nodewatch_gateway_up", &gw("WAN_GW")),
            Some(1.0)
        );
        assert_eq!(
            value(&sink, "nodewatch_gateway_loss_ratio", &gw("LTE_GW")),
            Some(1.0)
        );
        assert_eq!(
            value(&sink, "nodewatch_gateway_up", &gw("LTE_GW")),
            Some(0.0)
        );
        assert_eq!(
            value(&sink, "nodewatch_gateway_up", &gw("DEAD_GW")),
            Some(0.0)
        );
        assert_eq!(
            value(&sink, "nodewatch_gateway_rtt_seconds", &gw("DEAD_GW")),
            None
        );
    }

    #[test]
    fn missing_dir_is_no_data() {
        let mut sink = Sink::new();
        DpingerCollector::new("/nonexistent/run".into())
            .collect(&mut sink)
            .unwrap();
        assert!(sink.samples.is_empty());
    }

    #[test]
    fn never_panics() {
        let seeds = [
            "WAN_DHCP 12345 678 3\n".to_string(),
            "a b c 1 2 3".to_string(),
        ];
        for input in fuzz_inputs(&seeds, 0xd9) {
            if let Some(s) = parse_status(&input) {
                write(&mut Sink::new(), &s.name, Some(&s));
            }
            let _ = gateway_from_socket(&input);
        }
    }
}
