//! The agent's main loop: collect on every tick (and at once when an event
//! source fires), number the collection, queue it for every aggregator.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use nodewatch_proto::tls::{self, Reloadable, TlsFiles};
use nodewatch_proto::v1::Event;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::batch::Collection;
use crate::collector::{now_ms, CollectorSpec, Paths, Running, Sink};
use crate::config::Config;
use crate::stream::{Queue, Streamer};

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
}

/// Builds the enabled collectors, saying once why any cannot run here.
pub fn build_collectors(
    specs: &[CollectorSpec],
    enabled: &BTreeMap<String, bool>,
    paths: &Paths,
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
        match (spec.build)(paths) {
            Ok(c) => out.push(Running::new(c)),
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

/// Runs the agent until `shutdown` turns true.
pub async fn run(
    cfg: Config,
    specs: Vec<CollectorSpec>,
    mut shutdown: watch::Receiver<bool>,
    mut events_rx: mpsc::Receiver<Event>,
) -> Result<(), AgentError> {
    let Some(tls_files) = cfg.tls.clone() else {
        return Err(AgentError::Identity {
            path: "tls".into(),
            msg: "no certificates configured".into(),
        });
    };
    let node = node_name(&cfg, &tls_files)?;
    let client_tls = Reloadable::new(tls::client_config(&tls_files)?);
    let reloader = tls::spawn_reloader(tls_files, Arc::clone(&client_tls), tls::client_config);

    let mut collectors = build_collectors(&specs, &cfg.collectors, &cfg.paths);
    let names: Vec<String> = collectors
        .iter()
        .map(|c| c.collector.name().to_string())
        .collect();
    info!(%node, collectors = ?names, interval = ?cfg.interval, "Agent starting.");
    let hello = crate::hostinfo::hello(&cfg.paths, &node, names, cfg.interval.as_millis() as u64);

    let mut queues = Vec::new();
    let mut streamers = Vec::new();
    for target in &cfg.aggregators {
        let queue = Arc::new(Queue::default());
        let s = Streamer {
            target: target.clone(),
            server_name: cfg.server_name.clone(),
            tls: Arc::clone(&client_tls),
            hello: hello.clone(),
            queue: Arc::clone(&queue),
        };
        queues.push((target.to_string(), queue));
        streamers.push(tokio::spawn(s.run(shutdown.clone(), FLUSH_GRACE)));
    }

    let mut seq = 0u64;
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let enqueue = |c: Collection| {
        let c = Arc::new(c);
        for (_, q) in &queues {
            q.lock().push(Arc::clone(&c));
            q.notify.notify_one();
        }
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let t_ms = now_ms();
                let mut cs = std::mem::take(&mut collectors);
                // Collectors read files and may block (a dead NFS mount): keep them off the async workers.
                let (cs, mut sink) = match tokio::task::spawn_blocking(move || {
                    let sink = collect_once(&mut cs);
                    (cs, sink)
                }).await {
                    Ok(r) => r,
                    Err(e) => {
                        warn!(error = %e, "Collection panicked; collectors rebuilt.");
                        (build_collectors(&specs, &cfg.collectors, &cfg.paths), Sink::new())
                    }
                };
                collectors = cs;
                for (target, q) in &queues {
                    let p = q.lock();
                    sink.gauge("nodewatch_agent_pending_batches", "Batches not yet acknowledged by an aggregator.", &[("aggregator", target)], p.len() as f64);
                    sink.counter("nodewatch_agent_dropped_samples_total", "Samples dropped because an aggregator was away longer than the queue holds.", &[("aggregator", target)], p.dropped_samples as f64);
                }
                seq += 1;
                let events = sink.events.drain(..).map(|kind| Event { t_ms, kind: Some(kind), node: String::new() }).collect();
                enqueue(Collection { seq, t_ms, families: Arc::new(sink.families), samples: sink.samples, events });
            }
            Some(first) = events_rx.recv() => {
                // Send events at once, with whatever else arrived in the same instant.
                let mut events = vec![first];
                while let Ok(e) = events_rx.try_recv() {
                    events.push(e);
                }
                seq += 1;
                enqueue(Collection { seq, t_ms: now_ms(), families: Arc::new(BTreeMap::new()), samples: Vec::new(), events });
            }
            _ = shutdown.wait_for(|v| *v) => break,
        }
    }
    info!("Stopping: flushing unacknowledged data.");
    for s in streamers {
        let _ = s.await;
    }
    reloader.abort();
    Ok(())
}
