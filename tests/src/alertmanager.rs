//! A real Alertmanager and the webhook receiver it sends to, where the tests
//! read what was notified and when.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::net::{free_port, http_get, read_request};
use crate::processes::{spawn, wait_for, Proc};
use crate::{find_program, missing};

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
                    let Some((_, body)) = read_request(&mut conn) else {
                        return;
                    };
                    store.lock().unwrap().push((Instant::now(), body));
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
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
