//! Wires the parts together: gRPC (Ingest, Query) over mutual TLS, HTTP
//! exposition, and an orderly shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use nodewatch_proto::lifecycle::{Lifecycle, Shutdown, Stopped};
use nodewatch_proto::tls::{self, Reloadable};
use nodewatch_proto::v1::ingest_server::IngestServer;
use nodewatch_proto::v1::query_server::QueryServer;
use tokio::net::TcpListener;
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
    /// Every task of the server, ended by [`Running::stop`].
    lifecycle: Lifecycle,
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

/// Counters that only move on trouble are exported at 0 from the start,
/// so rate() and dashboards see them before the first denial.
fn zero_trouble_counters(config: &Config) {
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
}

/// The gRPC port's TLS configuration, reloaded by a background task when
/// its files change.
fn server_tls(
    config: &Config,
    lifecycle: &mut Lifecycle,
) -> Result<Arc<Reloadable<rustls::ServerConfig>>, ServerError> {
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
    lifecycle.adopt_background(tls::spawn_reloader_also(
        config.tls.clone(),
        node_ca.iter().cloned().collect(),
        Arc::clone(&server_tls),
        move |f| tls::server_config_split(f, node_ca.as_deref(), anonymous),
    ));
    Ok(server_tls)
}

/// Binds a listener and reads back its address (port 0 becomes the real one).
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let listen = |source| ServerError::Listen { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(listen)?;
    let local = listener.local_addr().map_err(listen)?;
    Ok((listener, local))
}

/// Rule group options from the configuration.
fn group_options(config: &Config) -> GroupOptions {
    GroupOptions {
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
    }
}

/// The store, keeping at least the longest range the rules read.
fn store(config: &Config, opts: &GroupOptions) -> Arc<Store> {
    let configured_ms = config.retention.as_millis() as i64;
    let retention_ms =
        crate::rules::manager::retention_for_rules(&config.rule_files, opts, configured_ms);
    if retention_ms > configured_ms {
        info!(
            retention_ms,
            configured_ms, "Store retention raised to the longest range the rules read."
        );
    }
    Store::new(retention_ms)
}

/// Remote write: every sample the store accepts, to each receiver's queue.
fn start_remote_write(
    config: &Config,
    store: &Store,
    lifecycle: &mut Lifecycle,
) -> Result<(), ServerError> {
    let mut queues = Vec::new();
    for target in &config.remote_write {
        let (queue, sender) = crate::remote_write::Sender::new(target)?;
        queues.push(queue);
        lifecycle.spawn(sender.run(lifecycle.shutdown().requested_owned()));
    }
    if !queues.is_empty() {
        store.set_sink(Box::new(move |samples| {
            for q in &queues {
                q.push(samples.iter().cloned());
            }
        }));
    }
    Ok(())
}

/// One Alertmanager of `alerting.alertmanagers`.
fn alertmanager_target(
    am: &crate::config::AlertmanagerConfig,
) -> Result<AlertmanagerTarget, ServerError> {
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
    Ok(target)
}

/// Alerts: Alertmanager API v2 with Prometheus' resend semantics; `None`
/// without Alertmanagers.
fn start_notifier(
    config: &Config,
    lifecycle: &mut Lifecycle,
) -> Result<Option<Notifier>, ServerError> {
    if config.alertmanagers.is_empty() {
        return Ok(None);
    }
    let targets = config
        .alertmanagers
        .iter()
        .map(alertmanager_target)
        .collect::<Result<Vec<_>, _>>()?;
    let (n, task) = Notifier::new(NotifierConfig {
        targets,
        external_labels: crate::promql::Labels::from_pairs(config.external_labels.clone()),
        external_url: config.external_url.clone(),
        resend_delay: config.resend_delay,
        ..NotifierConfig::default()
    });
    lifecycle.spawn(task.run(lifecycle.shutdown().requested_owned()));
    Ok(Some(n))
}

/// The rule manager, its files loaded, evaluating until shutdown.
fn start_rules(
    config: &Config,
    store: &Arc<Store>,
    opts: GroupOptions,
    notifier: Option<Notifier>,
    lifecycle: &mut Lifecycle,
) -> Result<Arc<RuleManager>, ServerError> {
    let rules = RuleManager::new(Arc::clone(store), config.rule_files.clone(), opts, notifier);
    if !config.rule_files.is_empty() {
        rules.reload().map_err(ServerError::Rules)?;
    }
    lifecycle.spawn(Arc::clone(&rules).run(lifecycle.shutdown()));
    Ok(rules)
}

/// The node table, restored from the known-nodes file, and the task that
/// writes liveness into the store.
fn start_liveness(config: &Config, store: &Arc<Store>, lifecycle: &mut Lifecycle) -> Arc<Nodes> {
    let nodes = Arc::new(Nodes::default());
    if let Some(path) = &config.liveness.state_file {
        crate::liveness::restore(path, &nodes);
    }
    lifecycle.spawn(crate::liveness::run(
        Arc::clone(store),
        Arc::clone(&nodes),
        config.liveness.clone(),
        lifecycle.shutdown(),
    ));
    nodes
}

/// gRPC: Ingest, Query and (with bootstrap) Bootstrap, over mutual TLS.
fn serve_grpc(
    config: &Config,
    state: &State,
    listener: TcpListener,
    server_tls: Arc<Reloadable<rustls::ServerConfig>>,
    bootstrap: Option<BootstrapService>,
    lifecycle: &mut Lifecycle,
) {
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
    let incoming = crate::accept::incoming(listener, server_tls);
    let grpc_server = tonic::transport::Server::builder()
        .add_service(
            IngestServer::new(IngestHandle(Arc::new(ingest)))
                .max_decoding_message_size(config.limits.max_frame_bytes),
        )
        .add_service(QueryServer::new(query))
        .add_optional_service(bootstrap.map(BootstrapServer::new))
        .serve_with_incoming_shutdown(incoming, lifecycle.shutdown().requested_owned());
    lifecycle.spawn(async move {
        if let Err(error) = grpc_server.await {
            warn!(%error, "gRPC server stopped with an error.");
        }
    });
}

/// HTTP: `/metrics`, `/healthz` and, when enabled, Prometheus' query API.
fn serve_http(
    config: &Config,
    state: &State,
    listener: TcpListener,
    own: PrometheusHandle,
    lifecycle: &mut Lifecycle,
) {
    let store = Arc::clone(&state.store);
    let stop = lifecycle.shutdown().requested_owned();
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
    lifecycle.spawn(async move {
        if let Err(error) =
            crate::expose::serve(listener, store, own, metrics_token, api, stop).await
        {
            warn!(%error, "HTTP server stopped with an error.");
        }
    });
}

/// Compacts the recorder's histograms and sets the series gauge, every
/// [`METRICS_UPKEEP`], until shutdown.
async fn upkeep(own: PrometheusHandle, state: Arc<State>, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(METRICS_UPKEEP);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                own.run_upkeep();
                metrics::gauge!("nodewatch_aggregator_series").set(state.store.read().len() as f64);
            }
            () = shutdown.requested() => return,
        }
    }
}

/// Binds the ports and starts serving.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    let own = recorder()?;
    zero_trouble_counters(&config);
    let mut lifecycle = Lifecycle::new();
    let server_tls = server_tls(&config, &mut lifecycle)?;
    let bootstrap = match &config.bootstrap {
        None => None,
        Some(b) => Some(bootstrap_service(b)?),
    };
    let (grpc, grpc_addr) = bind(config.grpc_listen).await?;
    let (http, http_addr) = bind(config.http_listen).await?;

    let opts = group_options(&config);
    let store = store(&config, &opts);
    start_remote_write(&config, &store, &mut lifecycle)?;
    let notifier = start_notifier(&config, &mut lifecycle)?;
    let rules = start_rules(&config, &store, opts, notifier, &mut lifecycle)?;
    let nodes = start_liveness(&config, &store, &mut lifecycle);
    let state = Arc::new(State {
        store,
        nodes,
        events: Arc::new(EventLog::default()),
        rules,
    });
    serve_grpc(&config, &state, grpc, server_tls, bootstrap, &mut lifecycle);
    serve_http(&config, &state, http, own.clone(), &mut lifecycle);
    lifecycle.spawn(upkeep(own, Arc::clone(&state), lifecycle.shutdown()));

    info!(grpc = %grpc_addr, http = %http_addr, "Aggregator listening.");
    Ok(Running {
        grpc_addr,
        http_addr,
        state,
        lifecycle,
    })
}

impl Running {
    /// Stops serving: new connections are refused, open streams get
    /// [`SHUTDOWN_GRACE`] to end, then everything is cut.
    pub async fn stop(self) {
        if self.lifecycle.stop(Some(SHUTDOWN_GRACE)).await == Stopped::Cut {
            info!("Open streams did not end within the grace period; closing them.");
        }
    }
}
