//! A real Prometheus (Debian's `prometheus`) on loopback: scraping the
//! aggregator, receiving its remote write, or serving prepared blocks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::net::{free_port, http_get};
use crate::processes::{spawn, wait_for, Proc};
use crate::{find_program, missing};

/// The `prometheus` program, or `None` after [`missing`] (a failure under
/// `CI=true`).
#[must_use]
pub fn program() -> Option<PathBuf> {
    let found = find_program("prometheus");
    if found.is_none() {
        missing("prometheus (Debian package `prometheus`)");
    }
    found
}

/// How [`start`] runs Prometheus.
#[derive(Debug, Clone, Default)]
pub struct Options<'a> {
    /// Process and log name, and the stem of its config file (`<name>.yml`)
    /// and data folder (`<name>-data`) in the folder given to [`start`].
    pub name: &'a str,
    /// The whole `prometheus.yml`.
    pub config: &'a str,
    /// The TSDB folder, where it is not `<name>-data` (prepared blocks).
    pub data: Option<&'a Path>,
    /// Port to listen on (a free one if `None`).
    pub port: Option<u16>,
    /// More flags (`--web.enable-remote-write-receiver`).
    pub args: &'a [&'a str],
}

/// Starts Prometheus as `opts` says, with its files in `dir`, and waits
/// until `/-/ready` answers 200.
#[must_use]
pub fn start(program: &Path, dir: &Path, opts: &Options<'_>) -> (Proc, SocketAddr) {
    let name = opts.name;
    let cfg = dir.join(format!("{name}.yml"));
    std::fs::write(&cfg, opts.config).unwrap();
    let data = opts
        .data
        .map_or_else(|| dir.join(format!("{name}-data")), Path::to_path_buf);
    let port = opts.port.unwrap_or_else(free_port);
    let mut args = vec![
        format!("--config.file={}", cfg.display()),
        format!("--storage.tsdb.path={}", data.display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
    ];
    args.extend(opts.args.iter().map(ToString::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = spawn(program, &args, dir, name);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for(Duration::from_mins(2), "prometheus ready", || {
        http_get(addr, "/-/ready").ok().filter(|(s, _)| *s == 200)
    });
    (p, addr)
}
