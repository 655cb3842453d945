//! Kubernetes-derived signals (Linux): the node's pods from the kubelet
//! (`GET /pods`, or the API server's list for this node when the kubelet is
//! not configured or does not answer) and its Node object from the API
//! server, read in the background every `refresh`.
//!
//! Each good pod list refills the OOM reader's [`PodCache`], so OOM kills
//! carry namespace, pod and container names, and gives the node's effective
//! CPU and memory requests and limits and its image pull failures; the Node
//! object gives capacity and allocatable. The collector only copies the
//! last good answers into each collection: collection and OOM events never
//! wait on a kubelet or API round trip, and while either is away the last
//! values stay, the failures are counted per endpoint, and the change of
//! state is logged once.
//!
//! - [`quantity`]: `250m`, `1.5`, `128Mi` → numbers.
//! - [`image`]: registry of an image reference; why a pull failed.
//! - [`resources`]: pod list and Node parsers.
//! - [`client`]: the HTTPS GET with the bearer token.

pub mod client;
pub mod image;
pub mod quantity;
pub mod resources;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use nodewatch_proto::lifecycle::Shutdown;
use serde_json::Value;
use tracing::{info, warn};

use crate::collector::{now_ms, CollectError, Collector, Sink};
use crate::config::Kubernetes;
use crate::containers::pods::{PodCache, SharedPods};
use client::Endpoint;
use resources::{NodeResources, PodSummary};

/// Endpoint labels of the reader's own health metrics.
pub const KUBELET_PODS: &str = "kubelet_pods";
pub const APISERVER_PODS: &str = "apiserver_pods";
pub const APISERVER_NODE: &str = "apiserver_node";

/// One endpoint's health.
#[derive(Debug, Default)]
struct Health {
    errors: u64,
    /// Unix seconds of the last good answer.
    last_success: Option<f64>,
    /// `Some` while failing: the first error of the current failure.
    failing: Option<String>,
    /// Whether it ever answered (logged once).
    answered: bool,
}

/// The last good answers and each endpoint's health.
#[derive(Debug, Default)]
struct State {
    pods: Option<PodSummary>,
    node: Option<NodeResources>,
    health: BTreeMap<&'static str, Health>,
}

impl State {
    fn ok(&mut self, endpoint: &'static str, what: &str) {
        let h = self.health.entry(endpoint).or_default();
        h.last_success = Some(now_ms() as f64 / 1000.0);
        if h.failing.take().is_some() {
            info!(endpoint, "Kubernetes: {what} answers again.");
        } else if !h.answered {
            info!(endpoint, "Kubernetes: reading {what}.");
        }
        h.answered = true;
    }

    fn failed(&mut self, endpoint: &'static str, what: &str, error: &str) {
        let h = self.health.entry(endpoint).or_default();
        h.errors += 1;
        if h.failing.is_none() {
            warn!(endpoint, %error, "Kubernetes: cannot read {what}; keeping the last answer, retrying every refresh (said once until it recovers).");
            h.failing = Some(error.to_string());
        }
    }
}

/// The reader's settings after start-up checks.
struct Reader {
    kubelet: Option<Endpoint>,
    api: Option<Endpoint>,
    node: String,
    pods: Option<SharedPods>,
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding the lock leaves plain data behind; keep using it.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Reader {
    /// Reads the pod list from one endpoint and installs it; `Err` says why not.
    async fn pods_from(&self, ep: &Endpoint, path: &str) -> Result<(), String> {
        let body = ep.get(path).await.map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| format!("pod list: {e}"))?;
        let summary = PodSummary::from_value(&v)?;
        if let Some(shared) = &self.pods {
            PodCache::from_value(&v)?.install(shared)?;
        }
        lock(&self.state).pods = Some(summary);
        Ok(())
    }

    async fn refresh(&self) {
        let mut have_pods = false;
        if let Some(k) = &self.kubelet {
            match self.pods_from(k, "/pods").await {
                Ok(()) => {
                    lock(&self.state).ok(KUBELET_PODS, "the kubelet's pod list");
                    have_pods = true;
                }
                Err(e) => lock(&self.state).failed(KUBELET_PODS, "the kubelet's pod list", &e),
            }
        }
        if let Some(api) = &self.api {
            if !have_pods {
                // The fallback: this node's pods from the API server.
                let path = format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{}", self.node);
                match self.pods_from(api, &path).await {
                    Ok(()) => {
                        lock(&self.state)
                            .ok(APISERVER_PODS, "this node's pods from the API server");
                    }
                    Err(e) => lock(&self.state).failed(
                        APISERVER_PODS,
                        "this node's pods from the API server",
                        &e,
                    ),
                }
            }
            let node = async {
                let body = api
                    .get(&format!("/api/v1/nodes/{}", self.node))
                    .await
                    .map_err(|e| e.to_string())?;
                let v: Value = serde_json::from_slice(&body).map_err(|e| format!("node: {e}"))?;
                NodeResources::from_value(&v)
            };
            match node.await {
                Ok(n) => {
                    let mut s = lock(&self.state);
                    s.node = Some(n);
                    s.ok(APISERVER_NODE, "the Node object");
                }
                Err(e) => lock(&self.state).failed(APISERVER_NODE, "the Node object", &e),
            }
        }
    }
}

/// Whether `name` can go into a URL path and query as it is: Node names are
/// DNS subdomains (RFC 1123: lower-case letters, digits, `-`, `.`).
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Starts the background reader for `node` and returns the collector that
/// exports what it read. `Err` says why it stays off (not in a cluster, no
/// token, no CA); the caller logs it once.
pub fn start(
    cfg: &Kubernetes,
    node: &str,
    pods: Option<SharedPods>,
    shutdown: Shutdown,
) -> Result<(KubeCollector, tokio::task::JoinHandle<()>), String> {
    let node = cfg.node_name.clone().unwrap_or_else(|| node.to_string());
    if !is_dns_subdomain(&node) {
        return Err(format!("node name {node:?} is not a Kubernetes node name"));
    }
    if cfg.kubelet.is_none() && cfg.api_server.is_none() {
        return Err(
            "no kubelet_url, no api_server, and not in a cluster (KUBERNETES_SERVICE_HOST unset)"
                .into(),
        );
    }
    if !cfg.token_file.is_file() {
        return Err(format!(
            "no ServiceAccount token at {}",
            cfg.token_file.display()
        ));
    }
    let ca = match &cfg.ca_file {
        Some(ca) => Some(client::verified(ca).map_err(|e| format!("ca_file: {e}"))?),
        None => None,
    };
    let endpoint = |base: &http::Uri, tls: Arc<rustls::ClientConfig>| Endpoint {
        base: base.clone(),
        tls,
        token_file: cfg.token_file.clone(),
    };
    let kubelet = match &cfg.kubelet {
        None => None,
        Some(base) if cfg.kubelet_insecure_skip_verify => Some(endpoint(base, client::unverified()?)),
        Some(base) => Some(endpoint(
            base,
            ca.clone()
                .ok_or("the kubelet's certificate cannot be checked: no ca_file (or set kubelet_insecure_skip_verify)")?,
        )),
    };
    let api = match (&cfg.api_server, &ca) {
        (Some(base), Some(tls)) => Some(endpoint(base, Arc::clone(tls))),
        (Some(_), None) if kubelet.is_some() => {
            info!("Kubernetes: no ca_file for the API server; reading the kubelet only (no Node figures).");
            None
        }
        (Some(_), None) => return Err("no ca_file for the API server".into()),
        (None, _) => None,
    };
    let state = Arc::new(Mutex::new(State::default()));
    let reader = Reader {
        kubelet,
        api,
        node,
        pods,
        state: Arc::clone(&state),
    };
    let every = cfg.refresh;
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = reader.refresh() => {}
                () = shutdown.requested() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.requested() => return,
            }
        }
    });
    Ok((KubeCollector { state }, task))
}

/// Copies the reader's last good answers into each collection.
pub struct KubeCollector {
    state: Arc<Mutex<State>>,
}

impl Collector for KubeCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        let s = lock(&self.state);
        write_state(&s, sink);
        Ok(())
    }
}

fn write_state(s: &State, sink: &mut Sink) {
    if let Some(p) = &s.pods {
        sink.gauge(
            "nodewatch_node_cpu_requests_cores",
            "CPU requested by the node's pods that are not Succeeded or Failed (Kubernetes' effective requests: init containers, sidecars, pod overhead).",
            &[],
            p.requests.cpu,
        );
        sink.gauge(
            "nodewatch_node_cpu_limits_cores",
            "CPU limits of the node's pods that are not Succeeded or Failed (containers without a limit count 0).",
            &[],
            p.limits.cpu,
        );
        sink.gauge(
            "nodewatch_node_memory_requests_bytes",
            "Memory requested by the node's pods that are not Succeeded or Failed.",
            &[],
            p.requests.memory,
        );
        sink.gauge(
            "nodewatch_node_memory_limits_bytes",
            "Memory limits of the node's pods that are not Succeeded or Failed (containers without a limit count 0).",
            &[],
            p.limits.memory,
        );
        sink.gauge(
            "nodewatch_node_pods",
            "Pods bound to the node that are not Succeeded or Failed.",
            &[],
            p.pods as f64,
        );
        for ((registry, reason), n) in &p.pull_failures {
            sink.gauge(
                "nodewatch_image_pull_failures",
                "Containers (init containers included) waiting in ErrImagePull or ImagePullBackOff, by registry and classified reason.",
                &[("registry", registry), ("reason", reason.as_str())],
                *n as f64,
            );
        }
    }
    if let Some(n) = &s.node {
        for (name, help, v) in [
            (
                "nodewatch_node_cpu_capacity_cores",
                "CPU capacity of the node (Node status.capacity).",
                n.cpu_capacity,
            ),
            (
                "nodewatch_node_cpu_allocatable_cores",
                "CPU the scheduler may hand to pods (Node status.allocatable).",
                n.cpu_allocatable,
            ),
            (
                "nodewatch_node_memory_capacity_bytes",
                "Memory capacity of the node (Node status.capacity).",
                n.memory_capacity,
            ),
            (
                "nodewatch_node_memory_allocatable_bytes",
                "Memory the scheduler may hand to pods (Node status.allocatable).",
                n.memory_allocatable,
            ),
        ] {
            if let Some(v) = v {
                sink.gauge(name, help, &[], v);
            }
        }
    }
    for (endpoint, h) in &s.health {
        sink.counter(
            "nodewatch_agent_kubernetes_errors_total",
            "Failed reads of the kubelet or the API server (connection, TLS, HTTP status, unparsable answer).",
            &[("endpoint", endpoint)],
            h.errors as f64,
        );
        sink.gauge(
            "nodewatch_agent_kubernetes_up",
            "Whether the last read of this endpoint succeeded (1) or failed (0).",
            &[("endpoint", endpoint)],
            if h.failing.is_none() && h.answered {
                1.0
            } else {
                0.0
            },
        );
        if let Some(t) = h.last_success {
            sink.gauge(
                "nodewatch_agent_kubernetes_last_success_timestamp_seconds",
                "When this endpoint last answered well (Unix seconds); the Kubernetes figures are that old.",
                &[("endpoint", endpoint)],
                t,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_logged_per_change_and_counted() {
        let mut s = State::default();
        s.failed(KUBELET_PODS, "x", "refused");
        s.failed(KUBELET_PODS, "x", "refused again");
        let h = &s.health[KUBELET_PODS];
        assert_eq!(h.errors, 2);
        assert_eq!(h.failing.as_deref(), Some("refused"));
        s.ok(KUBELET_PODS, "x");
        assert!(s.health[KUBELET_PODS].failing.is_none());
        let mut sink = Sink::new();
        write_state(&s, &mut sink);
        let text = sink.render_text();
        assert!(
            text.contains("nodewatch_agent_kubernetes_errors_total{endpoint=\"kubelet_pods\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("nodewatch_agent_kubernetes_up{endpoint=\"kubelet_pods\"} 1\n"),
            "{text}"
        );
        // Nothing read yet: no resource series at all, rather than zeros.
        assert!(!text.contains("nodewatch_node_cpu"), "{text}");
    }

    #[test]
    fn node_names() {
        assert!(is_dns_subdomain("talos-w1.lan"));
        assert!(!is_dns_subdomain("a/b"));
        assert!(!is_dns_subdomain("a&fieldSelector=x"));
        assert!(!is_dns_subdomain(""));
    }
}
