//! The agent's main loop: collect on every tick (and at once when an event
//! source fires), number the collection, queue it for every aggregator.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nodewatch_proto::lifecycle::{Lifecycle, Shutdown};
use nodewatch_proto::tls::{self, Reloadable, TlsFiles};
use nodewatch_proto::v1::{Event, Hello};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::batch::Collection;
use crate::collector::{now_ms, CollectorSpec, Family, Paths, Running, Sample, Sink};
use crate::config::Config;
use crate::spool::{self, Shared, Spool};
use crate::stream::Streamer;

/// Events waiting for the main loop; sources count what they cannot send.
pub const EVENT_QUEUE: usize = 4096;

/// How long the agent tries to flush unacked data on SIGTERM (Kubernetes'
/// default grace period is 30 s; stay well inside it).
pub const FLUSH_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("certificate {path}: {msg}")]
    Identity { path: String, msg: String },
    #[error("spool: {0}")]
    Spool(#[from] spool::SpoolError),
}

/// Opens the spool; an unusable folder falls back to memory, said once.
fn open_spool(cfg: &Config) -> Result<Arc<Shared>, AgentError> {
    let n = cfg.aggregators.len();
    let (s, _) = match Spool::open(
        cfg.spool.dir.as_deref(),
        cfg.spool.max_bytes,
        cfg.spool.retain_acked,
        n,
    ) {
        Ok(r) => r,
        Err(error) => {
            warn!(%error, "Spool folder unusable; keeping unacknowledged data in memory only (lost if the agent restarts).");
            Spool::open(None, cfg.spool.max_bytes, cfg.spool.retain_acked, n)?
        }
    };
    Ok(Shared::new(s, n))
}

/// The agent's own delivery health, as samples of the next collection.
fn spool_metrics(spool: &Shared, cfg: &Config, sink: &mut Sink) {
    let s = spool.lock();
    for (i, target) in cfg.aggregators.iter().enumerate() {
        let t = target.to_string();
        sink.gauge(
            "nodewatch_agent_pending_batches",
            "Collections not yet acknowledged by an aggregator.",
            &[("aggregator", &t)],
            s.pending(i) as f64,
        );
        sink.gauge(
            "nodewatch_agent_acked_seq",
            "Highest collection seq an aggregator acknowledged.",
            &[("aggregator", &t)],
            s.acked(i) as f64,
        );
    }
    let d = s.dropped();
    let help = "Data the spool dropped: reason=\"full\" by its size cap (samples first, events last), reason=\"write_failed\" because it could not be written and no aggregator acknowledged it.";
    for (kind, reason, n) in [
        ("samples", "full", d.samples),
        ("events", "full", d.events),
        ("samples", "write_failed", d.write_failed_samples),
        ("events", "write_failed", d.write_failed_events),
    ] {
        // write_failed appears once it moves: nodewatch_agent_spool_writable
        // is the signal to alert on before anything is lost.
        if reason == "full" || n > 0 {
            sink.counter(
                "nodewatch_agent_spool_dropped_total",
                help,
                &[("kind", kind), ("reason", reason)],
                n as f64,
            );
        }
    }
    sink.gauge(
        "nodewatch_agent_spool_writable",
        "1 while the spool writes; 0 while writes fail (collections are then kept in memory).",
        &[],
        if s.write_error().is_some() { 0.0 } else { 1.0 },
    );
    sink.counter(
        "nodewatch_agent_spool_write_errors_total",
        "Spool writes that failed (a full disk, an I/O error).",
        &[],
        s.write_errors() as f64,
    );
    sink.gauge(
        "nodewatch_agent_spool_unspooled_collections",
        "Collections kept in memory because the spool could not write them.",
        &[],
        s.unspooled() as f64,
    );
    sink.gauge(
        "nodewatch_agent_spool_bytes",
        "Size of the spool on disk.",
        &[],
        s.bytes() as f64,
    );
    sink.counter(
        "nodewatch_agent_collections_total",
        "Collections made by this agent instance (its last seq).",
        &[],
        (s.next_seq() - 1) as f64,
    );
}

/// Builds the enabled collectors, saying once why any cannot run here.
pub fn build_collectors(
    specs: &[CollectorSpec],
    enabled: &BTreeMap<String, bool>,
    paths: &Paths,
    options: &crate::collector::CollectorOptions,
) -> Vec<Running> {
    let mut out = Vec::new();
    for spec in specs {
        if !enabled
            .get(spec.name)
            .copied()
            .unwrap_or(spec.default_enabled)
        {
            continue;
        }
        match (spec.build)(paths).and_then(|mut c| c.configure(options).map(|()| c)) {
            Ok(c) => out.push(Running::new(spec.name, c)),
            Err(why) => {
                info!(collector = spec.name, reason = %why, "Collector unavailable on this host; it stays off.");
            }
        }
    }
    out
}

/// Runs every collector once into a sink (on the calling thread).
pub fn collect_once(collectors: &mut [Running]) -> Sink {
    let mut sink = Sink::new();
    for c in collectors.iter_mut() {
        c.run(&mut sink);
    }
    sink
}

/// Says clearly, at start-up, when the agent's own certificate is not valid
/// now: the aggregators will refuse every handshake until it is renewed.
fn warn_if_expired(tls: &TlsFiles) {
    let Ok(certs) = tls::load_certs(&tls.cert) else {
        return;
    };
    let Some((not_before, not_after)) = certs
        .first()
        .and_then(|c| nodewatch_proto::identity::validity(c))
    else {
        return;
    };
    let now = now_ms() / 1000;
    if now > not_after {
        tracing::error!(path = %tls.cert.display(), not_after, "Client certificate expired; aggregators will refuse it until it is renewed.");
    } else if now < not_before {
        tracing::error!(path = %tls.cert.display(), not_before, "Client certificate not valid yet (clock skew?); aggregators will refuse it.");
    }
}

/// Works out the node name: from the certificate, checked against the config.
pub fn node_name(cfg: &Config, tls: &TlsFiles) -> Result<String, AgentError> {
    let certs = tls::load_certs(&tls.cert)?;
    let path = tls.cert.display().to_string();
    let der = certs.first().ok_or_else(|| AgentError::Identity {
        path: path.clone(),
        msg: "empty".into(),
    })?;
    match nodewatch_proto::Identity::from_cert_der(der) {
        Ok(nodewatch_proto::Identity::Node(n)) => {
            if let Some(want) = &cfg.node_name {
                if want != n.as_str() {
                    return Err(AgentError::Identity {
                        path,
                        msg: format!("names node {n:?} but node_name is {want:?}; the aggregator would refuse it"),
                    });
                }
            }
            Ok(n.to_string())
        }
        Ok(other) => Err(AgentError::Identity {
            path,
            msg: format!("is an {other} certificate, not a node certificate"),
        }),
        Err(e) => Err(AgentError::Identity {
            path,
            msg: e.to_string(),
        }),
    }
}

/// Starts the eBPF programs (Linux), adding them as a collector; where BPF
/// cannot run it says why once, the procfs collectors carry on, and OOM
/// kills come from the kernel log (`/dev/kmsg`) instead.
#[cfg(target_os = "linux")]
fn start_ebpf(
    cfg: &Config,
    events: mpsc::Sender<Event>,
    collectors: &mut Vec<Running>,
    pods: crate::containers::pods::SharedPods,
) {
    if !cfg.collectors.get("ebpf").copied().unwrap_or(true) {
        return;
    }
    let ebpf_cfg = crate::ebpf::EbpfConfig {
        measure_cost: cfg.ebpf_measure_cost,
        pods: Some(pods.clone()),
        ..crate::ebpf::EbpfConfig::default()
    };
    match crate::ebpf::Ebpf::start_with(&cfg.paths, events.clone(), &ebpf_cfg) {
        Ok(e) => collectors.push(Running::new("ebpf", Box::new(e))),
        Err(why) => match crate::oom::kmsg::KmsgOom::start(&cfg.paths, events, pods) {
            Ok(k) => {
                info!(reason = %why, fallback = crate::oom::kmsg::KMSG_PATH, "eBPF signals off on this host; procfs collectors keep running, OOM kills come from the kernel log.");
                collectors.push(Running::new("kmsg_oom", Box::new(k)));
            }
            Err(kmsg) => {
                info!(reason = %why, fallback = %kmsg, "eBPF signals off on this host; procfs collectors keep running, no OOM kill events.");
            }
        },
    }
}

/// Starts the OOM sources and the Kubernetes reader (Linux), which share one
/// pod name cache: the reader fills it, the OOM source names victims from it.
#[cfg(target_os = "linux")]
fn start_linux(
    cfg: &Config,
    node: &str,
    events: mpsc::Sender<Event>,
    collectors: &mut Vec<Running>,
    lifecycle: &mut Lifecycle,
) {
    let pods = crate::containers::pods::SharedPods::default();
    start_ebpf(cfg, events, collectors, pods.clone());
    let Some(k) = cfg.kubernetes.as_ref() else {
        return;
    };
    match crate::kube::start(k, node, Some(pods), lifecycle.shutdown()) {
        Ok((collector, task)) => {
            info!(kubelet = ?k.kubelet.as_ref().map(ToString::to_string), api_server = ?k.api_server.as_ref().map(ToString::to_string), refresh = ?k.refresh, "Kubernetes signals on.");
            collectors.push(Running::new("kubernetes", Box::new(collector)));
            lifecycle.adopt_background(task);
        }
        Err(reason) => {
            info!(%reason, "Kubernetes signals off.");
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn start_linux(
    cfg: &Config,
    _node: &str,
    _events: mpsc::Sender<Event>,
    _collectors: &mut [Running],
    _lifecycle: &mut Lifecycle,
) {
    if cfg.kubernetes.is_some() {
        info!("Kubernetes signals off: they are read on Linux nodes only.");
    }
}

/// With bootstrap, the certificate comes from an aggregator: gets it before
/// anything else, retrying until one answers, and keeps it renewed in the
/// background. `false` if shutdown came first.
async fn certificate(cfg: &Config, tls_files: &TlsFiles, lifecycle: &mut Lifecycle) -> bool {
    let Some(bs) = cfg.bootstrap.clone() else {
        return true;
    };
    let shutdown = lifecycle.shutdown();
    let mut delay = Duration::from_secs(1);
    loop {
        match crate::bootstrap::ensure(cfg, tls_files, &bs).await {
            Ok(_) => break,
            Err(error) => {
                warn!(%error, retry_in = ?delay, "Could not get a node certificate yet.");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.requested() => return false,
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
    lifecycle.adopt_background(crate::bootstrap::spawn_renewal(
        cfg.clone(),
        tls_files.clone(),
        bs,
    ));
    true
}

/// One streamer per aggregator, each flushing for [`FLUSH_GRACE`] at shutdown.
fn start_streamers(
    cfg: &Config,
    hello: &Hello,
    spool: &Arc<Shared>,
    client_tls: &Arc<Reloadable<rustls::ClientConfig>>,
    lifecycle: &mut Lifecycle,
) {
    for (index, target) in cfg.aggregators.iter().enumerate() {
        let s = Streamer {
            target: target.clone(),
            server_name: cfg.server_name.clone(),
            tls: Arc::clone(client_tls),
            hello: hello.clone(),
            spool: Arc::clone(spool),
            index,
            welcomed: AtomicBool::new(false),
        };
        lifecycle.spawn(s.run(lifecycle.shutdown(), FLUSH_GRACE));
    }
}

/// `/healthz` and `/readyz` on `health_listen`, if set and free.
async fn start_health(
    cfg: &Config,
    ready: &Arc<AtomicBool>,
    spool: &Arc<Shared>,
    lifecycle: &mut Lifecycle,
) {
    let Some(addr) = cfg.health_listen else {
        return;
    };
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => lifecycle.spawn_background(serve_health(
            l,
            Arc::clone(ready),
            Arc::clone(spool),
            lifecycle.shutdown(),
        )),
        Err(error) => warn!(%addr, %error, "Health endpoints unavailable."),
    }
}

/// The collecting side of the main loop: collectors in, numbered
/// collections out to the spool.
struct Collecting {
    cfg: Config,
    specs: Vec<CollectorSpec>,
    collectors: Vec<Running>,
    spool: Arc<Shared>,
    /// Readiness means "collecting", never "connected": an aggregator outage
    /// must not make Kubernetes restart every agent.
    ready: Arc<AtomicBool>,
}

impl Collecting {
    /// Runs every collector once, adds `events` and the agent's own
    /// delivery metrics, and appends the collection to the spool.
    async fn collect(&mut self, mut events: Vec<Event>) {
        let t_ms = now_ms();
        let mut cs = std::mem::take(&mut self.collectors);
        // Collectors read files and may block (a dead NFS mount): keep them off the async workers.
        let (cs, mut sink) = match tokio::task::spawn_blocking(move || {
            let sink = collect_once(&mut cs);
            (cs, sink)
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "Collection panicked; collectors rebuilt.");
                let cfg = &self.cfg;
                let rebuilt = build_collectors(
                    &self.specs,
                    &cfg.collectors,
                    &cfg.paths,
                    &cfg.collector_options,
                );
                (rebuilt, Sink::new())
            }
        };
        self.collectors = cs;
        spool_metrics(&self.spool, &self.cfg, &mut sink);
        events.extend(sink.events.drain(..).map(|kind| Event {
            t_ms,
            kind: Some(kind),
            node: String::new(),
        }));
        self.enqueue(t_ms, Arc::new(sink.families), sink.samples, events);
        self.ready.store(true, Ordering::Relaxed);
    }

    fn enqueue(
        &self,
        t_ms: i64,
        families: Arc<BTreeMap<String, Family>>,
        samples: Vec<Sample>,
        events: Vec<Event>,
    ) {
        let r = self.spool.lock().append(|seq| Collection {
            seq,
            t_ms,
            families,
            samples,
            events,
        });
        // The spool keeps the collection in memory and says once when writes
        // start failing and once when they work again; no line per collection.
        if let Err(error) = r {
            tracing::debug!(%error, "Collection kept in memory: the spool cannot write.");
        }
        self.spool.wake_all();
    }

    /// Collects on every tick, and at once when an event arrives, until
    /// shutdown.
    async fn run(&mut self, mut events_rx: mpsc::Receiver<Event>, shutdown: &Shutdown) {
        let mut tick = tokio::time::interval(self.cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                _ = tick.tick() => None,
                Some(e) = events_rx.recv() => Some(e),
                () = shutdown.requested() => return,
            };
            // An event (an OOM kill) triggers a collection at once, so the
            // counters that move with it (nodewatch_oom_kills_total,
            // node_vmstat_oom_kill) reach the aggregator in the same batch
            // and its rules fire within milliseconds.
            let mut events: Vec<Event> = first.into_iter().collect();
            while let Ok(e) = events_rx.try_recv() {
                events.push(e);
            }
            self.collect(events).await;
        }
    }
}

/// Runs the agent until `shutdown` is requested, then flushes what the
/// aggregators have not acknowledged (for up to [`FLUSH_GRACE`]).
pub async fn run(
    cfg: Config,
    specs: Vec<CollectorSpec>,
    shutdown: Shutdown,
) -> Result<(), AgentError> {
    let (events_tx, events_rx) = mpsc::channel::<Event>(EVENT_QUEUE);
    let Some(tls_files) = cfg.tls.clone() else {
        return Err(AgentError::Identity {
            path: "tls".into(),
            msg: "no certificates configured".into(),
        });
    };
    let mut lifecycle = Lifecycle::within(&shutdown);
    if !certificate(&cfg, &tls_files, &mut lifecycle).await {
        lifecycle.stop(None).await;
        return Ok(());
    }
    let node = node_name(&cfg, &tls_files)?;
    warn_if_expired(&tls_files);
    let client_tls = Reloadable::new(tls::client_config(&tls_files)?);
    lifecycle.adopt_background(tls::spawn_reloader(
        tls_files,
        Arc::clone(&client_tls),
        tls::client_config,
    ));

    let mut collectors =
        build_collectors(&specs, &cfg.collectors, &cfg.paths, &cfg.collector_options);
    start_linux(&cfg, &node, events_tx, &mut collectors, &mut lifecycle);
    let names: Vec<String> = collectors.iter().map(|c| c.name.to_string()).collect();
    info!(%node, collectors = ?names, interval = ?cfg.interval, "Agent starting.");
    let mut hello =
        crate::hostinfo::hello(&cfg.paths, &node, names, cfg.interval.as_millis() as u64);

    let spool = open_spool(&cfg)?;
    hello.instance_id = spool.lock().instance_id().to_string();
    start_streamers(&cfg, &hello, &spool, &client_tls, &mut lifecycle);
    let ready = Arc::new(AtomicBool::new(false));
    start_health(&cfg, &ready, &spool, &mut lifecycle).await;

    let mut collecting = Collecting {
        cfg,
        specs,
        collectors,
        spool: Arc::clone(&spool),
        ready,
    };
    collecting.run(events_rx, &lifecycle.shutdown()).await;
    info!("Stopping: flushing unacknowledged data.");
    // The streamers end once flushed or after FLUSH_GRACE; the file
    // watchers, renewal, Kubernetes reader and health endpoints are cut.
    lifecycle.stop(None).await;
    spool.lock().sync();
    Ok(())
}

async fn serve_health(
    listener: tokio::net::TcpListener,
    ready: Arc<AtomicBool>,
    spool: Arc<Shared>,
    shutdown: Shutdown,
) {
    use axum::http::StatusCode;
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = Arc::clone(&ready);
                let spool = Arc::clone(&spool);
                async move {
                    // A spool that cannot write is not ready: nothing is lost
                    // yet (collections stay in memory), but it will be.
                    let write_error = spool.lock().write_error().map(str::to_string);
                    if !ready.load(Ordering::Relaxed) {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not collecting yet\n".to_string(),
                        )
                    } else if let Some(error) = write_error {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("spool cannot write: {error}\n"),
                        )
                    } else {
                        (StatusCode::OK, "ready\n".to_string())
                    }
                }
            }),
        );
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.requested_owned())
        .await
    {
        warn!(%error, "Health endpoints stopped.");
    }
}
