//! Wires the parts together: gRPC (Ingest, Query) over mutual TLS, HTTP
//! exposition, and an orderly shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use nodewatch_proto::tls::{self, Reloadable};
use nodewatch_proto::v1::ingest_server::IngestServer;
use nodewatch_proto::v1::query_server::QueryServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::bootstrap::BootstrapService;
use crate::config::Config;
use crate::events::EventLog;
use crate::ingest::{IngestHandle, IngestService};
use crate::nodes::Nodes;
use crate::notifier::{self, AlertmanagerTarget, Notifier, NotifierConfig};
use crate::query::QueryService;
use crate::rules::RuleManager;
use crate::rules::{ExternalContext, GroupOptions};
use crate::store::Store;
use nodewatch_proto::v1::bootstrap_server::BootstrapServer;

/// How long open agent streams get to finish after shutdown starts before
/// they are cut; agents resend whatever was not acked.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// How often the metrics recorder's histograms are compacted.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("metrics recorder: {0}")]
    Metrics(String),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("rule files:\n  {}", .0.join("\n  "))]
    Rules(Vec<String>),
    #[error("alerting.alertmanagers: {0}")]
    Alertmanager(String),
    #[error("bootstrap: {0}")]
    Bootstrap(String),
    #[error("remote_write: {0}")]
    RemoteWrite(#[from] crate::remote_write::RemoteWriteError),
}

fn bootstrap_service(b: &crate::config::Bootstrap) -> Result<BootstrapService, ServerError> {
    let ca = nodewatch_proto::certs::Ca::load_files(&b.ca_cert, &b.ca_key)
        .map_err(|e| ServerError::Bootstrap(e.to_string()))?;
    let tls = match &b.ca_file {
        Some(f) => Some(crate::bootstrap::api_tls(f)?),
        None => None,
    };
    let base: http::Uri = b
        .api
        .parse()
        .map_err(|e| ServerError::Bootstrap(format!("kubernetes.api {:?}: {e}", b.api)))?;
    Ok(BootstrapService {
        admission: crate::bootstrap::Admission::default(),
        ca: Arc::new(ca),
        audience: b.audience.clone(),
        service_accounts: b.service_accounts.clone(),
        node_service_accounts: b.node_service_accounts.clone(),
        validity: b.validity,
        kube: crate::bootstrap::KubeApi {
            base,
            token_file: b.token_file.clone(),
            tls,
        },
    })
}

/// The aggregator's shared state.
pub struct State {
    pub store: Arc<Store>,
    pub nodes: Arc<Nodes>,
    pub events: Arc<EventLog>,
    pub rules: Arc<RuleManager>,
}

/// A started aggregator.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub state: Arc<State>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn recorder() -> Result<PrometheusHandle, ServerError> {
    // The process-wide recorder can be installed once; a second server in the
    // same process (tests) gets a handle to a fresh, unregistered recorder.
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| ServerError::Metrics(e.to_string()))?;
    crate::own_metrics::describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Binds the ports and starts serving.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    let own = recorder()?;
    // Counters that only move on trouble are exported at 0 from the start,
    // so rate() and dashboards see them before the first denial.
    for rpc in ["ingest", "query", "hello_identity"] {
        metrics::counter!("nodewatch_aggregator_denied_total", "rpc" => rpc).increment(0);
    }
    if config.bootstrap.is_some() {
        for result in [
            "issued",
            "token",
            "service_account",
            "no_node_annotation",
            "rate_limited",
            "token_too_large",
        ] {
            metrics::counter!("nodewatch_aggregator_bootstrap_total", "result" => result)
                .increment(0);
        }
    }
    // With bootstrap on, clients may connect without a certificate, for that one RPC.
    let anonymous = config.bootstrap.is_some();
    // With bootstrap on, trust is split by role: node certificates chain to
    // the CA the aggregator signs them with (bootstrap.ca_cert, a node-issuing
    // CA in Kubernetes), operator certificates are signed by tls.ca itself, so
    // the key this process holds can mint node identities and nothing else.
    let node_ca = config.bootstrap.as_ref().map(|b| b.ca_cert.clone());
    let server_tls = Reloadable::new(tls::server_config_split(
        &config.tls,
        node_ca.as_deref(),
        anonymous,
    )?);
    let reloader = tls::spawn_reloader_also(
        config.tls.clone(),
        node_ca.iter().cloned().collect(),
        Arc::clone(&server_tls),
        move |f| tls::server_config_split(f, node_ca.as_deref(), anonymous),
    );
    let bootstrap = match &config.bootstrap {
        None => None,
        Some(b) => Some(bootstrap_service(b)?),
    };

    let grpc = TcpListener::bind(config.grpc_listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: config.grpc_listen,
            source,
        })?;
    let http = TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: config.http_listen,
            source,
        })?;
    let grpc_addr = grpc.local_addr().map_err(|source| ServerError::Listen {
        addr: config.grpc_listen,
        source,
    })?;
    let http_addr = http.local_addr().map_err(|source| ServerError::Listen {
        addr: config.http_listen,
        source,
    })?;

    let opts = GroupOptions {
        default_interval_ms: config.evaluation_interval.as_millis() as i64,
        external: ExternalContext {
            labels: config.external_labels.clone(),
            url: config.external_url.clone(),
        },
        // Subqueries without a step take the global evaluation interval.
        engine: crate::promql::EngineOptions {
            subquery_step_ms: config.evaluation_interval.as_millis() as i64,
            ..crate::promql::EngineOptions::default()
        },
    };
    let configured_ms = config.retention.as_millis() as i64;
    let retention_ms =
        crate::rules::manager::retention_for_rules(&config.rule_files, &opts, configured_ms);
    if retention_ms > configured_ms {
        info!(
            retention_ms,
            configured_ms, "Store retention raised to the longest range the rules read."
        );
    }
    let state_store = Store::new(retention_ms);
    let (shutdown, rx) = watch::channel(false);
    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let mut tasks = Vec::new();

    // Remote write: every sample the store accepts, to each receiver's queue.
    let mut queues = Vec::new();
    for target in &config.remote_write {
        let (queue, sender) = crate::remote_write::Sender::new(target)?;
        queues.push(queue);
        tasks.push(tokio::spawn(sender.run(wait(rx.clone()))));
    }
    if !queues.is_empty() {
        state_store.set_sink(Box::new(move |samples| {
            for q in &queues {
                q.push(samples.iter().cloned());
            }
        }));
    }

    // Alerts: Alertmanager API v2 with Prometheus' resend semantics.
    let notifier = if config.alertmanagers.is_empty() {
        None
    } else {
        let mut targets = Vec::new();
        for am in &config.alertmanagers {
            let u = &am.url;
            let url: http::Uri = u
                .parse()
                .map_err(|e| ServerError::Alertmanager(format!("{u:?}: {e}")))?;
            let mut target = AlertmanagerTarget::new(url);
            target.auth.clone_from(&am.auth);
            if let Some(t) = &am.tls {
                let cert_key = t.cert_key.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
                target.tls = Some(
                    notifier::tls_client_config(&t.ca, cert_key)
                        .map_err(|e| ServerError::Alertmanager(format!("{u}: {e}")))?,
                );
                target.server_name.clone_from(&t.server_name);
            }
            targets.push(target);
        }
        let (n, task) = Notifier::new(NotifierConfig {
            targets,
            external_labels: crate::promql::Labels::from_pairs(config.external_labels.clone()),
            external_url: config.external_url.clone(),
            resend_delay: config.resend_delay,
            ..NotifierConfig::default()
        });
        tasks.push(tokio::spawn(task.run(wait(rx.clone()))));
        Some(n)
    };
    let rules = RuleManager::new(
        Arc::clone(&state_store),
        config.rule_files.clone(),
        opts,
        notifier,
    );
    if !config.rule_files.is_empty() {
        rules.reload().map_err(ServerError::Rules)?;
    }
    tasks.push(tokio::spawn(Arc::clone(&rules).run(rx.clone())));

    let nodes = Arc::new(Nodes::default());
    if let Some(path) = &config.liveness.state_file {
        crate::liveness::restore(path, &nodes);
    }
    tasks.push(tokio::spawn(crate::liveness::run(
        Arc::clone(&state_store),
        Arc::clone(&nodes),
        config.liveness.clone(),
        rx.clone(),
    )));
    let state = Arc::new(State {
        store: state_store,
        nodes,
        events: Arc::new(EventLog::default()),
        rules: Arc::clone(&rules),
    });
    let ingest = IngestService {
        live: crate::ingest::LiveStreams::default(),
        rules: Some(Arc::clone(&state.rules)),
        store: Arc::clone(&state.store),
        nodes: Arc::clone(&state.nodes),
        events: Arc::clone(&state.events),
        max_series_per_node: config.limits.max_series_per_node,
        max_samples_per_second: config.limits.max_samples_per_second_per_node,
    };
    let query = QueryService {
        store: Arc::clone(&state.store),
        nodes: Arc::clone(&state.nodes),
        events: Arc::clone(&state.events),
        rules: Some(Arc::clone(&state.rules)),
    };
    let incoming = crate::accept::incoming(grpc, server_tls);
    let grpc_server = tonic::transport::Server::builder()
        .add_service(
            IngestServer::new(IngestHandle(Arc::new(ingest)))
                .max_decoding_message_size(config.limits.max_frame_bytes),
        )
        .add_service(QueryServer::new(query))
        .add_optional_service(bootstrap.map(BootstrapServer::new))
        .serve_with_incoming_shutdown(incoming, wait(rx.clone()));
    let grpc_task = tokio::spawn(async move {
        if let Err(error) = grpc_server.await {
            warn!(%error, "gRPC server stopped with an error.");
        }
    });

    let http_task = {
        let store = Arc::clone(&state.store);
        let own = own.clone();
        let stop = wait(rx.clone());
        let metrics_token = config.metrics.bearer_token.clone().map(Arc::from);
        let api = config.query_api.enabled.then(|| crate::api::ApiState {
            store: Arc::clone(&state.store),
            rules: Some(Arc::clone(&state.rules)),
            limits: crate::api::ApiLimits {
                timeout: config.query_api.timeout,
                max_samples: config.query_api.max_samples,
            },
            subquery_step_ms: config.evaluation_interval.as_millis() as i64,
            bearer_token: config.query_api.bearer_token.clone().map(Arc::from),
        });
        tokio::spawn(async move {
            if let Err(error) =
                crate::expose::serve(http, store, own, metrics_token, api, stop).await
            {
                warn!(%error, "HTTP server stopped with an error.");
            }
        })
    };

    let upkeep = {
        let mut rx = rx.clone();
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(METRICS_UPKEEP);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        own.run_upkeep();
                        metrics::gauge!("nodewatch_aggregator_series").set(state.store.read().len() as f64);
                    }
                    _ = rx.wait_for(|v| *v) => return,
                }
            }
        })
    };

    info!(grpc = %grpc_addr, http = %http_addr, "Aggregator listening.");
    tasks.extend([grpc_task, http_task, upkeep, reloader]);
    Ok(Running {
        grpc_addr,
        http_addr,
        state,
        shutdown,
        tasks,
    })
}

impl Running {
    /// Stops serving: new connections are refused, open streams get
    /// [`SHUTDOWN_GRACE`] to end, then everything is cut.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let mut tasks = self.tasks;
        // The reloader never ends on its own.
        if let Some(reloader) = tasks.pop() {
            reloader.abort();
        }
        let all = futures::future::join_all(tasks.iter_mut());
        if tokio::time::timeout(SHUTDOWN_GRACE, all).await.is_err() {
            info!("Open streams did not end within the grace period; closing them.");
            for t in &tasks {
                t.abort();
            }
        }
    }
}
