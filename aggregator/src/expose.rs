//! `/metrics` (Prometheus text format) and `/healthz` over plain HTTP.
//!
//! Every node series carries `node="<name>"`; Prometheus scrapes with
//! `honor_labels: true` so that label is kept. The aggregator's own health
//! (`nodewatch_aggregator_*`) follows, from `metrics-exporter-prometheus`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use nodewatch_proto::text;

use crate::store::now_ms;
use crate::store::{Series, Store};

/// Renders the latest sample of every live series, grouped by family with
/// `# HELP` and `# TYPE`.
#[must_use]
pub fn render(store: &Store, now_ms: i64) -> String {
    let inner = store.read();
    let mut families: BTreeMap<&str, Vec<(&Series, f64)>> = BTreeMap::new();
    for s in inner.all() {
        if let Some((_, v)) = s.at(now_ms) {
            families
                .entry(inner.family_of(s.name()))
                .or_default()
                .push((s, v));
        }
    }
    let mut out = String::with_capacity(families.len() * 256);
    for (family, mut series) in families {
        if let Some(meta) = inner.family(family) {
            out.push_str("# HELP ");
            out.push_str(family);
            out.push(' ');
            out.push_str(&text::escape_help(&meta.help));
            out.push_str("\n# TYPE ");
            out.push_str(family);
            out.push(' ');
            out.push_str(meta.kind.as_str());
            out.push('\n');
        }
        // Stable output: by series name, then labels (histogram buckets stay together).
        series.sort_by(|a, b| {
            a.0.name()
                .cmp(b.0.name())
                .then_with(|| a.0.labels.cmp(&b.0.labels))
        });
        for (s, v) in series {
            text::write_sample(
                &mut out,
                s.name(),
                s.labels
                    .iter()
                    .filter(|(k, _)| k != "__name__")
                    .map(|(k, v)| (k.as_str(), v.as_str())),
                v,
            );
        }
    }
    out
}

#[derive(Clone)]
struct AppState {
    store: Arc<Store>,
    own: PrometheusHandle,
}

async fn metrics(axum::extract::State(st): axum::extract::State<AppState>) -> impl IntoResponse {
    let store = Arc::clone(&st.store);
    let own = st.own.clone();
    // Rendering walks every series; keep it off the async workers.
    let body = tokio::task::spawn_blocking(move || {
        let mut body = render(&store, now_ms());
        body.push_str(&own.render());
        body
    })
    .await
    .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

/// Serves `/metrics` and `/healthz`, and Prometheus' query API when `api`
/// is given, until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<Store>,
    own: PrometheusHandle,
    api: Option<crate::api::ApiState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ok\n" }))
        .with_state(AppState { store, own });
    if let Some(api) = api {
        app = app.merge(crate::api::router(api));
    }
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FamilyMeta, FamilyType};

    #[test]
    fn renders_families_with_node_label() {
        let store = Store::new(60_000);
        store.set_family(
            "lat",
            FamilyMeta {
                kind: FamilyType::Histogram,
                help: "Latency.".into(),
            },
        );
        store.set_family(
            "up_x",
            FamilyMeta {
                kind: FamilyType::Gauge,
                help: "Up.".into(),
            },
        );
        let mk = |pairs: &[(&str, &str)]| {
            let mut v: Vec<(String, String)> = pairs
                .iter()
                .map(|(a, b)| ((*a).into(), (*b).into()))
                .collect();
            v.sort();
            store.series_id(v.into())
        };
        let a = mk(&[("__name__", "lat_bucket"), ("le", "+Inf"), ("node", "n1")]);
        let b = mk(&[("__name__", "lat_count"), ("node", "n1")]);
        let c = mk(&[("__name__", "up_x"), ("node", "n1")]);
        store.append(&[(a, 1000, 3.0), (b, 1000, 3.0), (c, 1000, 1.0)]);
        let text = render(&store, 2000);
        assert_eq!(
            text,
            "# HELP lat Latency.\n# TYPE lat histogram\nlat_bucket{le=\"+Inf\",node=\"n1\"} 3\nlat_count{node=\"n1\"} 3\n# HELP up_x Up.\n# TYPE up_x gauge\nup_x{node=\"n1\"} 1\n"
        );
    }
}
